use std::net::IpAddr;

use anyhow::Result;
use director_fw::{
    control::{protocol::DropEventView, Client, Request, Response},
    instance::Instance,
};
use director_fw_common::DropReason;

#[derive(clap::Args)]
pub struct Args {
    /// Keep printing new events as they come (Ctrl-C stops).
    #[arg(long)]
    follow: bool,
    /// JSON: with --follow, an object per event and line; without, one object with the
    /// recent events and the counts of events sent, suppressed and lost.
    #[arg(long)]
    json: bool,
    /// Only events with this reason (no-rule, malformed, fragment, bad-tcp-flags, unprotected).
    #[arg(long)]
    reason: Option<String>,
    /// Only events from this address.
    #[arg(long)]
    src: Option<IpAddr>,
    /// Only events to this address.
    #[arg(long)]
    dst: Option<IpAddr>,
    /// Set how many events per second the kernel may send, across all CPUs (0: none).
    #[arg(long, value_name = "PER_SEC", conflicts_with = "follow")]
    rate: Option<u32>,
}

impl Args {
    fn wants(&self, e: &DropEventView) -> bool {
        self.reason.as_ref().is_none_or(|r| &e.reason == r)
            && self.src.is_none_or(|a| e.src == Some(a))
            && self.dst.is_none_or(|a| e.dst == Some(a))
    }

    fn print(&self, e: &DropEventView) {
        if self.json {
            println!("{}", serde_json::to_string(e).expect("events serialize"));
            return;
        }
        let end = |addr: Option<IpAddr>, port: u16| match (addr, port) {
            (None, _) => "?".to_string(),
            (Some(a), p) if p != 0 => std::net::SocketAddr::new(a, p).to_string(),
            (Some(a), _) => a.to_string(),
        };
        let roles = |r: &[String]| {
            if r.is_empty() {
                "-".into()
            } else {
                r.join(",")
            }
        };
        println!(
            "{} {} {} {} {} -> {} ({} -> {}){}{}",
            e.time,
            e.iface,
            if e.audit { "WOULD-DROP" } else { "DROP" },
            e.reason,
            end(e.src, e.sport),
            end(e.dst, e.dport),
            roles(&e.src_roles),
            roles(&e.dst_roles),
            if e.proto.is_empty() {
                String::new()
            } else {
                format!(" {}", e.proto)
            },
            if e.vlan != 0 {
                format!(" vlan {}", e.vlan)
            } else {
                String::new()
            },
        );
    }
}

pub fn run(instance: &Instance, args: Args) -> Result<()> {
    if let Some(reason) = &args.reason {
        let known: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        if !known.contains(&reason.as_str()) {
            anyhow::bail!("--reason {reason:?}: use one of {}", known.join(", "));
        }
    }
    if let Some(per_sec) = args.rate {
        return super::print_change(super::call(instance, Request::DropRate { per_sec })?);
    }
    if args.follow {
        Client::connect(instance)?.follow(Request::Drops { follow: true }, |response| {
            if let Response::DropEvent(e) = response {
                if args.wants(&e) {
                    args.print(&e);
                }
            }
            true
        })?;
        anyhow::bail!("the agent stopped: no more drop events to follow");
    }
    let drops = match super::call(instance, Request::Drops { follow: false })? {
        Response::Drops(drops) => drops,
        other => return Err(super::unexpected(other)),
    };
    if args.json {
        // One object: the events and the counts, which a line per event could not carry.
        let events: Vec<_> = drops.events.iter().filter(|e| args.wants(e)).collect();
        let all = serde_json::json!({
            "events": events,
            "rate": drops.rate,
            "sent": drops.sent,
            "suppressed": drops.suppressed,
            "lost": drops.lost,
        });
        println!("{all}");
        return Ok(());
    }
    for e in drops.events.iter().filter(|e| args.wants(e)) {
        args.print(e);
    }
    {
        println!(
            "events: {} sent, {} suppressed by the rate limit ({} a second), {} lost",
            drops.sent, drops.suppressed, drops.rate, drops.lost
        );
    }
    Ok(())
}
