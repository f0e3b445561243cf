use std::net::IpAddr;

use anyhow::Result;
use director_fw::{
    control::{Request, Response},
    explain::Probe,
    instance::Instance,
};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    src: IpAddr,
    #[arg(long)]
    dst: IpAddr,
    #[arg(long, value_enum)]
    proto: Probe,
    #[arg(long, default_value_t = 49152)]
    sport: u16,
    /// Destination port (ICMP: the echo identifier, may be left out).
    #[arg(long, default_value_t = 0)]
    dport: u16,
    #[arg(long)]
    json: bool,
}

pub fn run(instance: &Instance, args: Args) -> Result<()> {
    if args.proto != Probe::Icmp && args.dport == 0 {
        anyhow::bail!("--dport is required for tcp and udp (1-65535)");
    }
    let request = Request::Explain {
        src: args.src,
        dst: args.dst,
        proto: args.proto,
        sport: args.sport,
        dport: args.dport,
    };
    let e = match super::call(instance, request)? {
        Response::Explain(e) => e,
        other => return Err(super::unexpected(other)),
    };
    if args.json {
        println!("{}", serde_json::to_string(&e)?);
        return Ok(());
    }
    let why = match (&e.rule, &e.reason, &e.kind) {
        (Some(rule), _, _) => format!("by rule {rule}"),
        (_, Some(reason), _) if e.audit => {
            format!("reason {reason} (audit mode: counted, not dropped)")
        }
        (_, Some(reason), _) => format!("reason {reason}"),
        (_, _, Some(kind)) => format!("as {kind}"),
        _ => String::new(),
    };
    println!("{} {}", e.verdict, why);
    for (side, addr, peers) in [
        ("source", args.src, &e.src_peers),
        ("destination", args.dst, &e.dst_peers),
    ] {
        if peers.is_empty() {
            println!("  {side} {addr}: in no role");
        }
        for p in peers {
            println!("  {side} {addr}: role {} by peer {}", p.role, p.cidr);
        }
    }
    Ok(())
}
