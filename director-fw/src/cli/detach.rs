use std::io::IsTerminal;

use anyhow::Result;
use director_fw::{
    agent,
    control::{Client, ClientError, Request, Response},
    instance::Instance,
};

#[derive(clap::Args)]
pub struct Args {
    /// Confirm: the interfaces pass everything afterwards.
    #[arg(long)]
    yes: bool,
}

pub fn run(instance: &Instance, args: Args) -> Result<()> {
    if !args.yes && std::io::stdin().is_terminal() {
        anyhow::bail!(
            "detach removes the firewall from its interfaces: they pass everything afterwards. Run `director-fw detach --yes --instance {}` to do it",
            instance.name
        );
    }
    // A running agent detaches and stops; without one, the pins are removed here.
    let interfaces = match Client::connect(instance) {
        Ok(client) => match client.call(Request::Detach)? {
            Response::Detached { interfaces } => interfaces,
            other => return Err(super::unexpected(other)),
        },
        Err(ClientError::NotRunning { .. }) => agent::detach(instance)?,
        Err(err) => return Err(err.into()),
    };
    if interfaces.is_empty() {
        println!(
            "instance {:?}: nothing was attached; pins removed",
            instance.name
        );
    } else {
        println!(
            "instance {:?}: detached from {}; they pass everything now",
            instance.name,
            interfaces.join(", ")
        );
    }
    Ok(())
}
