use std::path::PathBuf;

use anyhow::Result;
use director_fw::{
    compile,
    control::{protocol::PolicyView, Request, Response},
    instance::Instance,
    policy::profile,
    Policy,
};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Validate a policy file and report what it compiles to; changes nothing.
    Check { file: PathBuf },
    /// The policy in force: rules with their sources, options, peers and the profile's
    /// documented choices, from the running agent; with --profile, a built-in profile's.
    Show {
        #[arg(long)]
        json: bool,
        /// A built-in profile instead of the policy in force (needs no agent).
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
        /// The effective port matrix instead: protocol and ports, source and destination
        /// role, and the rules behind each line, in the shape of Microsoft's port tables.
        #[arg(long)]
        matrix: bool,
    },
    /// The built-in profiles and the pages they come from (needs no agent).
    Profiles {
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
        Command::Show {
            json,
            profile,
            matrix,
        } => {
            let view = match profile {
                Some(name) => {
                    let Some(profile) = profile::find(&name) else {
                        anyhow::bail!(
                            "no built-in profile {name:?}; the built-in profiles are {}",
                            profile::names()
                        );
                    };
                    PolicyView::new(&profile.policy(), Vec::new())
                }
                None => match super::call(instance, Request::PolicyShow)? {
                    Response::Policy(view) => view,
                    other => return Err(super::unexpected(other)),
                },
            };
            match (json, matrix) {
                (true, true) => println!("{}", serde_json::to_string_pretty(&view.matrix)?),
                (true, false) => println!("{}", serde_json::to_string_pretty(&view)?),
                (false, true) => print!("{}", render_matrix(&view)),
                (false, false) => print!("{}", render(&view)),
            }
            Ok(())
        }
        Command::Profiles { json } => {
            if json {
                let list: Vec<_> = profile::all()
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "name": p.name,
                            "product": p.product,
                            "title": p.title,
                            "page": p.page,
                            "roles": p.roles,
                            "rules": p.policy().rules.len(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            for p in profile::all() {
                println!(
                    "{:<34} {} rules, {}: {}
{:<34} {}",
                    p.name,
                    p.policy().rules.len(),
                    p.product,
                    p.title,
                    "",
                    p.page
                );
            }
            Ok(())
        }
    }
}

/// `policy show` as text: the rules, each with its source on the line below, the peers and
/// the documented choices.
fn render(view: &PolicyView) -> String {
    let mut out = format!("policy: {}\n", view.source);
    out += &format!(
        "{:<24} {:<18} {:<16} {:<6} PORTS\n",
        "ID", "FROM", "TO", "PROTO"
    );
    for r in &view.rules {
        out += &format!(
            "{:<24} {:<18} {:<16} {:<6} {}\n{:<24} from {}\n",
            r.id, r.from, r.to, r.proto, r.ports, "", r.origin
        );
    }
    out += &format!("\n{:<20} {:<44} SOURCE\n", "ROLE", "PEER");
    for p in &view.peers {
        out += &format!("{:<20} {:<44} {}\n", p.role, p.cidr, p.source);
    }
    for note in &view.notes {
        out += &format!("\n{note}\n");
    }
    out
}

/// `policy show --matrix` as text, each column as wide as its widest cell.
fn render_matrix(view: &PolicyView) -> String {
    let cells: Vec<[String; 4]> =
        std::iter::once(["PROTOCOL/PORTS", "SOURCE", "DESTINATION", "RULES"].map(String::from))
            .chain(view.matrix.iter().map(|line| {
                [
                    format!("{}/{}", line.proto, line.ports),
                    line.from.clone(),
                    line.to.clone(),
                    line.rules.join(", "),
                ]
            }))
            .collect();
    let width = |i: usize| {
        cells
            .iter()
            .map(|c| c[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths = [width(0), width(1), width(2)];
    let mut out = format!("policy: {}\n", view.source);
    for [ports, from, to, rules] in &cells {
        out += &format!(
            "{ports:<w0$} {from:<w1$} {to:<w2$} {rules}\n",
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    out
}
