use anyhow::Result;
use director_fw::{
    control::{Request, Response},
    instance::Instance,
};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Add addresses or CIDRs to a role; all take effect together, or none does.
    Add {
        role: String,
        #[arg(required = true, value_name = "CIDR")]
        cidrs: Vec<String>,
    },
    /// Remove runtime peers from a role; all or none.
    Del {
        role: String,
        #[arg(required = true, value_name = "CIDR")]
        cidrs: Vec<String>,
    },
    /// The peers in force: the policy file's and the runtime ones.
    List {
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(instance: &Instance, command: Command) -> Result<()> {
    match command {
        Command::Add { role, cidrs } => {
            super::print_change(super::call(instance, Request::PeersAdd { role, cidrs })?)
        }
        Command::Del { role, cidrs } => {
            super::print_change(super::call(instance, Request::PeersDel { role, cidrs })?)
        }
        Command::List { role, json } => {
            let peers = match super::call(instance, Request::PeersList { role })? {
                Response::Peers { peers } => peers,
                other => return Err(super::unexpected(other)),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&peers)?);
                return Ok(());
            }
            println!("{:<20} {:<44} SOURCE", "ROLE", "CIDR");
            for p in peers {
                println!("{:<20} {:<44} {}", p.role, p.cidr, p.source);
            }
            Ok(())
        }
    }
}
