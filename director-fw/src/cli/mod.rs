//! Command-line interface (SPEC section 4).

mod explain;
mod policy;
mod run;
mod stats;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use director_fw::{instance::Instance, Policy};

#[derive(Parser)]
#[command(
    name = "director-fw",
    version,
    about = "eBPF firewall for a Lync Server 2013 / Skype for Business Director topology"
)]
pub struct Cli {
    /// Instance name: separate pins, socket and state for each.
    #[arg(long, global = true, default_value = "default")]
    instance: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the datapath, attach it to interfaces, and enforce the policy until stopped.
    Run(run::Args),
    /// Check or show a policy.
    #[command(subcommand)]
    Policy(policy::Command),
    /// Counters per rule, per pass kind and per drop reason.
    Stats(stats::Args),
    /// What the policy does to one packet (the first of a new connection).
    Explain(explain::Args),
}

pub fn dispatch(cli: Cli) -> Result<()> {
    let instance = Instance::new(&cli.instance)?;
    match cli.command {
        Command::Run(args) => run::run(&instance, args),
        Command::Policy(command) => policy::run(&instance, command),
        Command::Stats(args) => stats::run(&instance, args),
        Command::Explain(args) => explain::run(&instance, args),
    }
}

/// The policy a command works with: the named file, else the running agent's, else the
/// built-in profile with no peers.
fn load_policy(instance: &Instance, file: Option<&PathBuf>) -> Result<Policy> {
    let file = match file {
        Some(file) => Some(file.clone()),
        None => instance.agent().ok().and_then(|agent| agent.policy_file),
    };
    Ok(match file {
        Some(file) => Policy::from_file(&file)?,
        None => Policy::builtin(),
    })
}
