//! Building and running the agent.
//!
//! The eBPF object is built by director-fw's own build script; it finds bpf-linker through
//! the PATH and `DIRECTOR_FW_BPF_LINKER` that the bootstrap exported, so a plain
//! `cargo build` is all that is needed here.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::bootstrap::Env;
use crate::process;

/// `cargo build --release -p director-fw` in the workspace.
pub fn release(env: &Env) -> Result<()> {
    let mut cmd = env.cargo();
    cmd.args(["build", "--release", "-p", "director-fw"]);
    process::run(&mut cmd).context("building director-fw failed")
}

/// Replaces this process with `director-fw run ARGS...`.
///
/// exec (rather than spawn and wait) forwards the exit code and signals unchanged, so
/// `cargo xtask run` behaves exactly like running the agent directly.
pub fn exec_agent(env: &Env, args: &[String]) -> Result<()> {
    let binary = target_dir(env).join("release").join("director-fw");
    let mut cmd = Command::new(&binary);
    cmd.arg("run").args(args);
    // exec only returns on failure.
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not start {}", binary.display()))
}

/// Where cargo put the build: `CARGO_TARGET_DIR` wins over the workspace default, as in cargo.
pub fn target_dir(env: &Env) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => env.workspace.join(dir),
        None => env.workspace.join("target"),
    }
}
