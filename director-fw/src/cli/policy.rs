use std::path::PathBuf;

use anyhow::Result;
use director_fw::{
    compile,
    control::{Request, Response},
    instance::Instance,
    Policy,
};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Validate a policy file and report what it compiles to; changes nothing.
    Check { file: PathBuf },
    /// The policy in force: rules, options and peers, from the running agent.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Apply the policy file again (or FILE instead) with the runtime peers, atomically.
    Reload {
        file: Option<PathBuf>,
        /// Revert to the current policy unless `policy confirm` comes within SECS.
        #[arg(long, value_name = "SECS")]
        confirm_within: Option<u64>,
    },
    /// Keep a reload made with --confirm-within.
    Confirm,
}

pub fn run(instance: &Instance, command: Command) -> Result<()> {
    match command {
        Command::Check { file } => {
            let policy = Policy::from_file(&file)?;
            let compiled = compile(&policy)?;
            println!(
                "{}: ok: {} rules, {} roles, {} peers ({} hosts, {} prefixes), {} rule entries",
                file.display(),
                policy.rules.len(),
                policy.roles.len(),
                policy.peers.len(),
                compiled.hosts_v4.hosts + compiled.hosts_v6.hosts,
                compiled.nets_v4.len() + compiled.nets_v6.len(),
                compiled.rules.len()
            );
            Ok(())
        }
        Command::Reload {
            file,
            confirm_within,
        } => {
            // The agent reads the file: make a relative path mean what the operator sees.
            let file = file.map(|f| std::path::absolute(&f).unwrap_or(f));
            super::print_change(super::call(
                instance,
                Request::PolicyReload {
                    file,
                    confirm_within,
                },
            )?)
        }
        Command::Confirm => super::print_change(super::call(instance, Request::PolicyConfirm)?),
        Command::Show { json } => {
            let view = match super::call(instance, Request::PolicyShow)? {
                Response::Policy(view) => view,
                other => return Err(super::unexpected(other)),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
                return Ok(());
            }
            println!("policy: {}", view.source);
            println!(
                "{:<24} {:<18} {:<16} {:<6} {:<12} ORIGIN",
                "ID", "FROM", "TO", "PROTO", "PORTS"
            );
            for r in &view.rules {
                println!(
                    "{:<24} {:<18} {:<16} {:<6} {:<12} {}",
                    r.id, r.from, r.to, r.proto, r.ports, r.origin
                );
            }
            println!("\n{:<20} {:<44} SOURCE", "ROLE", "PEER");
            for p in &view.peers {
                println!("{:<20} {:<44} {}", p.role, p.cidr, p.source);
            }
            for note in &view.notes {
                println!("\n{note}");
            }
            Ok(())
        }
    }
}
