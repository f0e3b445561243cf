use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Result;
use director_fw::{
    control::{Request, Response},
    instance::Instance,
    telemetry::{rates, stats},
};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
    /// Keep watching: a live view on a terminal (q or Ctrl-C quits), one snapshot per interval
    /// otherwise (one JSON object per line with --json).
    #[arg(long)]
    watch: bool,
    /// Seconds between two refreshes of --watch.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    interval: f64,
}

/// One snapshot from the agent.
pub(super) fn fetch(instance: &Instance) -> Result<stats::Stats> {
    match super::call(instance, Request::Stats)? {
        Response::Stats(stats) => Ok(stats),
        other => Err(super::unexpected(other)),
    }
}

pub fn run(instance: &Instance, args: Args) -> Result<()> {
    if !args.watch {
        let stats = fetch(instance)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&stats)?);
        } else {
            print!("{}", stats::render(&stats));
        }
        return Ok(());
    }
    if !(0.1..=3600.0).contains(&args.interval) {
        anyhow::bail!("--interval {}: use 0.1 to 3600 seconds", args.interval);
    }
    let interval = Duration::from_secs_f64(args.interval);
    if std::io::stdout().is_terminal() && !args.json {
        return super::watch::run(instance, interval);
    }
    lines(instance, interval, args.json)
}

/// `--watch` into a pipe: a snapshot of every counter per interval, a line each (with
/// --json, one object per snapshot), until the reader goes away or the agent does.
fn lines(instance: &Instance, interval: Duration, json: bool) -> Result<()> {
    let mut before: Option<(stats::Stats, Instant)> = None;
    loop {
        let now = fetch(instance)?;
        let at = Instant::now();
        let secs = before
            .as_ref()
            .map_or(0.0, |(_, t)| (at - *t).as_secs_f64());
        let rows = rates::rows(before.as_ref().map(|(s, _)| s), &now, secs);
        let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let mut out = std::io::stdout().lock();
        if json {
            let line = serde_json::json!({
                "time": time.to_string(),
                "interfaces": now.interfaces,
                "counters": rows,
            });
            writeln!(out, "{line}")?;
        } else {
            for r in &rows {
                writeln!(
                    out,
                    "{time} {}{} {}{} packets={} bytes={} pps={:.1} bps={:.1}",
                    r.interface
                        .as_ref()
                        .map_or(String::new(), |i| format!("interface={i} ")),
                    r.section,
                    r.name,
                    if r.audit { " (audit)" } else { "" },
                    r.packets,
                    r.bytes,
                    r.packets_per_sec,
                    r.bytes_per_sec * 8.0
                )?;
            }
        }
        out.flush()?;
        drop(out);
        before = Some((now, at));
        std::thread::sleep(interval);
    }
}
