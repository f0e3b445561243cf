//! `cargo xtask`: the one entry point for building, running and testing director-fw.
//!
//! Every subcommand first runs the bootstrap, so a fresh machine needs nothing done by
//! hand: the toolchain pieces, bpf-linker, Debian tools and bpffs are all set up here.

mod bench;
mod bootstrap;
mod build;
mod demo;
mod kernels;
mod package;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test director-fw"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the agent (and, through its build script, the eBPF object) in release mode.
    Build,
    /// Build, then run `director-fw run ARGS...`, forwarding its exit code.
    Run {
        /// Arguments passed to `director-fw run` (put them after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Formatting, clippy (user and eBPF side) and the whole test suite on the host kernel,
    /// stopping at the first failure; then the kernel matrix: the kernel, differential, lab and
    /// attachment tests inside qemu VMs booted with each of Debian's supported kernels.
    Test {
        /// Only the VMs, with this Debian kernel: 5.10, 6.1, 6.12, or all (repeatable).
        #[arg(long = "kernel", value_name = "VERSION", value_parser = kernels::parse_choice, conflicts_with = "host")]
        kernels: Vec<kernels::KernelChoice>,
        /// Only the host kernel, without the VMs: the quick run while working.
        #[arg(long)]
        host: bool,
    },
    /// Build, then run the lab demo.
    Demo,
    /// Build, then make the Debian package (target/package/) and verify it.
    Package,
    /// Build, then run the benchmarks.
    Bench {
        /// Arguments passed to the benchmark runner.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line, which is what a CI log needs.
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    let env = bootstrap::ensure()?;
    match command {
        Command::Build => build::release(&env),
        Command::Run { args } => {
            build::release(&env)?;
            build::exec_agent(&env, &args)
        }
        Command::Test { host: true, .. } => test::run(&env),
        Command::Test { kernels, .. } if kernels.is_empty() => {
            test::run(&env)?;
            kernels::run(&env, &[kernels::KernelChoice::All])
        }
        Command::Test { kernels, .. } => kernels::run(&env, &kernels),
        Command::Demo => {
            build::release(&env)?;
            demo::run(&[])
        }
        Command::Package => {
            build::release(&env)?;
            package::verify(&package::build(&env)?)
        }
        Command::Bench { args } => {
            build::release(&env)?;
            bench::run(&args)
        }
    }
}

/// Small helpers for running child processes with errors that name the command.
pub(crate) mod process {
    use std::path::Path;
    use std::process::Command;

    use anyhow::{bail, Context, Result};

    /// The command line as a user would type it, for error messages and step headers.
    /// Only the program's file name is shown: `CARGO` is a long toolchain path that would
    /// hide the interesting part.
    pub fn describe(cmd: &Command) -> String {
        let program = Path::new(cmd.get_program());
        let mut text = program
            .file_name()
            .unwrap_or(program.as_os_str())
            .to_string_lossy()
            .into_owned();
        for arg in cmd.get_args() {
            text.push(' ');
            text.push_str(&arg.to_string_lossy());
        }
        text
    }

    /// Runs `cmd` with inherited stdio and fails unless it exits successfully.
    pub fn run(cmd: &mut Command) -> Result<()> {
        let status = cmd
            .status()
            .with_context(|| format!("could not start `{}`", describe(cmd)))?;
        if !status.success() {
            bail!("`{}` failed ({status})", describe(cmd));
        }
        Ok(())
    }

    /// Runs `cmd`, returns its stdout; on failure the error carries its stderr.
    pub fn capture(cmd: &mut Command) -> Result<String> {
        let out = cmd
            .output()
            .with_context(|| format!("could not start `{}`", describe(cmd)))?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                describe(cmd),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8(out.stdout)
            .with_context(|| format!("`{}` printed non-UTF-8 output", describe(cmd)))
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_forwards_everything_after_the_separator() {
        let cli = Cli::try_parse_from(["xtask", "run", "--", "--config", "fw.toml", "-v"]);
        match cli.map(|cli| cli.command) {
            Ok(Command::Run { args }) => assert_eq!(args, ["--config", "fw.toml", "-v"]),
            _ => panic!("`run -- ARGS` did not parse as Run"),
        }
    }

    #[test]
    fn test_takes_repeated_kernels() {
        match Cli::try_parse_from(["xtask", "test"]).map(|cli| cli.command) {
            Ok(Command::Test { kernels, host }) => assert!(kernels.is_empty() && !host),
            _ => panic!("`test` did not parse as Test"),
        }
        match Cli::try_parse_from(["xtask", "test", "--host"]).map(|cli| cli.command) {
            Ok(Command::Test { kernels, host }) => assert!(kernels.is_empty() && host),
            _ => panic!("`test --host` did not parse as Test"),
        }
        let cli = Cli::try_parse_from(["xtask", "test", "--kernel", "6.1", "--kernel", "all"]);
        match cli.map(|cli| cli.command) {
            Ok(Command::Test { kernels, .. }) => assert_eq!(kernels.len(), 2),
            _ => panic!("`test --kernel 6.1 --kernel all` did not parse as Test"),
        }
        assert!(Cli::try_parse_from(["xtask", "test", "--kernel", "4.19"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "test", "--kernel", "6.1", "--host"]).is_err());
    }

    #[test]
    fn bench_takes_arguments() {
        let cli = Cli::try_parse_from(["xtask", "bench", "--quick"]);
        match cli.map(|cli| cli.command) {
            Ok(Command::Bench { args }) => assert_eq!(args, ["--quick"]),
            _ => panic!("`bench ARGS` did not parse as Bench"),
        }
    }
}
