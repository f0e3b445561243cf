//! `director-fw generate completions SHELL` and `director-fw generate man DIR`: what the package
//! ships, written from the command line definition itself so it never drifts from it.

use anyhow::Result;
use clap::CommandFactory;
use clap_complete::Shell;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Shell completions on stdout.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// The man pages (roff): director-fw(1) and one per command (director-fw-run(1), ...),
    /// written into DIR.
    Man { dir: std::path::PathBuf },
}

pub fn run(command: Command) -> Result<()> {
    let mut cli = super::Cli::command();
    let mut out = std::io::stdout().lock();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut cli, "director-fw", &mut out);
        }
        Command::Man { dir } => clap_mangen::generate_to(cli, dir)?,
    }
    Ok(())
}
