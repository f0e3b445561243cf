//! Command-line interface (SPEC section 4). Every command but `run`, `policy check` and
//! `detach` asks the running agent through its control socket.

mod audit;
mod detach;
mod drops;
mod explain;
mod generate;
mod peers;
mod policy;
mod run;
mod stats;
mod status;
mod watch;

use anyhow::Result;
use clap::{Parser, Subcommand};
use director_fw::{
    control::{Client, Request, Response},
    instance::Instance,
};

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
    /// Load or adopt the datapath, attach it to interfaces, and serve until stopped. The
    /// datapath stays attached when the agent stops; `detach` removes it.
    Run(run::Args),
    /// The running agent: pid, interfaces, mode, policy and its hash, peers, audit.
    Status(status::Args),
    /// Add, remove or list peers at runtime.
    #[command(subcommand)]
    Peers(peers::Command),
    /// Check, show, reload or confirm the policy.
    #[command(subcommand)]
    Policy(policy::Command),
    /// Switch audit mode (count would-be drops, drop nothing) on or off at runtime.
    Audit(audit::Args),
    /// Counters per rule, per pass kind and per drop reason.
    Stats(stats::Args),
    /// What the policy in force does to one packet (the first of a new connection).
    Explain(explain::Args),
    /// Sampled drop events: time, interface, addresses and ports, reason, roles.
    Drops(drops::Args),
    /// Remove the programs and pins: the interfaces pass everything afterwards.
    Detach(detach::Args),
    /// Shell completions or the man page, for packaging.
    #[command(hide = true, subcommand)]
    Generate(generate::Command),
}

pub fn dispatch(cli: Cli) -> Result<()> {
    let instance = Instance::new(&cli.instance)?;
    if !matches!(cli.command, Command::Run(_)) {
        // A command's output piped into `head` ends quietly, as for other Unix tools. Not
        // for the agent: a client that hangs up must not kill it.
        // SAFETY: sets a signal disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Run(args) => run::run(instance, args),
        Command::Status(args) => status::run(&instance, args),
        Command::Peers(command) => peers::run(&instance, command),
        Command::Policy(command) => policy::run(&instance, command),
        Command::Audit(args) => audit::run(&instance, args),
        Command::Stats(args) => stats::run(&instance, args),
        Command::Explain(args) => explain::run(&instance, args),
        Command::Drops(args) => drops::run(&instance, args),
        Command::Detach(args) => detach::run(&instance, args),
        Command::Generate(command) => generate::run(command),
    }
}

/// Sends one request to the instance's agent.
fn call(instance: &Instance, request: Request) -> Result<Response> {
    Ok(Client::connect(instance)?.call(request)?)
}

/// A response of a kind the command did not ask for: a different agent version.
fn unexpected(response: Response) -> anyhow::Error {
    anyhow::anyhow!("the agent answered {response:?}, which this command did not ask for")
}

/// Prints what a change did.
fn print_change(response: Response) -> Result<()> {
    match response {
        Response::Changed(change) => {
            println!(
                "{} (generation {}, enforced after {:.1} ms)",
                change.message,
                change.generation,
                change.micros as f64 / 1000.0
            );
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}
