//! The `director-fw` command: each subcommand is a thin call into the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::dispatch(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("director-fw: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
