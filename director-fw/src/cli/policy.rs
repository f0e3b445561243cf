use std::path::PathBuf;

use anyhow::Result;
use director_fw::{
    compile,
    instance::Instance,
    policy::{format_ports, profile},
};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Validate a policy file and report what it compiles to; changes nothing.
    Check { file: PathBuf },
    /// Print the rules of a policy (default: the running agent's, else the built-in profile).
    Show {
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(instance: &Instance, command: Command) -> Result<()> {
    match command {
        Command::Check { file } => {
            let policy = director_fw::Policy::from_file(&file)?;
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
        Command::Show { policy, json } => {
            let policy = super::load_policy(instance, policy.as_ref())?;
            if json {
                let rules: Vec<_> = policy
                    .rules
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "id": r.id,
                            "from": policy.source_name(r.from),
                            "to": policy.role_name(r.to),
                            "proto": r.protocol.name(),
                            "ports": format_ports(&r.ports),
                            "origin": r.origin,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "source": policy.source,
                        "rules": rules,
                        "options": policy.options,
                    }))?
                );
                return Ok(());
            }
            println!("policy: {}", policy.source);
            println!(
                "{:<24} {:<18} {:<16} {:<6} {:<12} ORIGIN",
                "ID", "FROM", "TO", "PROTO", "PORTS"
            );
            for r in &policy.rules {
                println!(
                    "{:<24} {:<18} {:<16} {:<6} {:<12} {}",
                    r.id,
                    policy.source_name(r.from),
                    policy.role_name(r.to),
                    r.protocol.name(),
                    format_ports(&r.ports),
                    r.origin
                );
            }
            if policy.profile.is_some() {
                println!("\n{}", profile::ANOMALY_NOTE);
            }
            Ok(())
        }
    }
}
