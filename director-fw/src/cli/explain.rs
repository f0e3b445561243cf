use std::{net::IpAddr, path::PathBuf};

use anyhow::Result;
use director_fw::{explain, instance::Instance};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    src: IpAddr,
    #[arg(long)]
    dst: IpAddr,
    #[arg(long, value_enum)]
    proto: explain::Probe,
    #[arg(long, default_value_t = 49152)]
    sport: u16,
    /// Destination port (ICMP: the echo identifier, may be left out).
    #[arg(long, default_value_t = 0)]
    dport: u16,
    /// Policy file; default: the running agent's, else the built-in profile.
    #[arg(long)]
    policy: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn run(instance: &Instance, args: Args) -> Result<()> {
    if args.proto != explain::Probe::Icmp && args.dport == 0 {
        anyhow::bail!("--dport is required for tcp and udp (1-65535)");
    }
    let policy = super::load_policy(instance, args.policy.as_ref())?;
    let e = explain::explain(
        &policy, args.src, args.dst, args.proto, args.sport, args.dport,
    )
    .map_err(anyhow::Error::msg)?;
    if args.json {
        println!("{}", serde_json::to_string(&e)?);
        return Ok(());
    }
    let why = match (&e.rule, e.reason, e.kind) {
        (Some(rule), _, _) => format!("by rule {rule}"),
        (_, Some(reason), _) if e.audit => {
            format!("reason {reason} (audit mode: counted, not dropped)")
        }
        (_, Some(reason), _) => format!("reason {reason}"),
        (_, _, Some(kind)) => format!("as {kind}"),
        _ => String::new(),
    };
    println!("{} {}", e.verdict, why);
    Ok(())
}
