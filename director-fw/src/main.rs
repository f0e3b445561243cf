//! The `director-fw` command: each subcommand is a thin call into the library.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use director_fw::datapath::{object_id, OBJECT};

fn main() -> ExitCode {
    // The build: version, commit and the kernel object it carries (which `status` also shows
    // for a running agent, so an operator can tell whether the agent runs this binary's object).
    let version = format!(
        "{} (commit {}, kernel object {})",
        env!("CARGO_PKG_VERSION"),
        env!("DIRECTOR_FW_COMMIT"),
        object_id(OBJECT)
    );
    let matches = cli::Cli::command().version(version).get_matches();
    let args = match cli::Cli::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(err) => err.exit(),
    };
    match cli::dispatch(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("director-fw: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
