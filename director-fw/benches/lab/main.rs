//! Lab throughput (SPEC section 7): packets per second through the lab's gateway, with no
//! filter, a trivial XDP_DROP program, director-fw (native XDP and TC), nftables, iptables and
//! xdp-filter, for the same policy and the same traffic. Run it with `cargo xtask bench`,
//! which builds the helper programs first (`DIRECTOR_FW_FLOORS_OBJ`); it needs root.
//!
//! Method (see shared/BENCH-NOTES.md for the facts it rests on):
//! - Topology: the `director-fw-lab` lab. The internal-clients host is the traffic source, the
//!   Director host the sink; the gateway forwards between them. The gateway's veth facing the
//!   source (its ingress) has GRO on, so frames sent into it get NAPI whatever filter is
//!   attached; every filter attaches there. The gateway has reverse-path filtering off and a
//!   permanent neighbour entry for the Director, and routes 198.18.16.0/20 to the
//!   internal-clients host and 198.18.96.0/20 to the outsider host.
//! - Source: `lab_gen` (bench-floors-ebpf) run by BPF_PROG_RUN in live-frames mode with the
//!   source veth as ingress device: it writes a whole 64-byte frame (Ethernet, IPv4, TCP, both
//!   checksums; 10 bytes of Ethernet padding) per run and returns XDP_TX, which sends it to
//!   the gateway. Two threads on one CPU, calls of about 0.25 s each (each call waits in
//!   synchronize_rcu twice, the other thread fills that time). The gateway and the sink then
//!   run on the same CPU in softirq, so a packet's whole cost (generate, filter, forward or
//!   drop) is paid on that CPU and pps = 1 / (cost per packet).
//! - Traffic: allowed packets come from 4,096 internal-client sources (198.18.16.0/20, a prefix
//!   peer added to the role) x 4 source ports to the Director, TCP/443, ACK (16,384 flows of
//!   an established connection, cycled, so every flow is seen again within a few ms); denied
//!   packets come from 4,096 outsider-range sources (198.18.96.0/20, no role) x 16 ports to
//!   the Director, TCP/22, SYN. Mixes: `deny` (all denied), `allow` (all allowed) and `mix`
//!   (half and half, alternating).
//! - Sink: `lab_sink` (native XDP on the Director's veth) counts frames by TCP port and drops
//!   them, so the Director's stack does not answer. ARP passes.
//! - Counted: received = the gateway ingress veth's rx packets (every frame its NAPI took,
//!   whatever the filter did); forwarded = frames at the sink; dropped = received - forwarded.
//!   Also kept: frames made by the source (so frames lost before the gateway show), allowed
//!   frames forwarded, and denied frames that leaked through (must be 0 for a filter that
//!   enforces the policy).
//! - Policy: the built-in profile with the lab's peers (`Lab::peers_toml`) plus the
//!   198.18.16.0/20 prefix in internal-clients. director-fw loads it with
//!   `Datapath::load_for` and attaches in the gateway namespace. nftables gets the same policy
//!   as an expert writes it: an inet prerouting filter chain (after conntrack), `ct state
//!   established,related accept`, `ct state invalid drop`, unprotected destinations pass
//!   (a set of protected addresses), then interval sets keyed `ip saddr . ip daddr . tcp
//!   dport` (and `ip daddr . tcp dport` for rules from `any`), else drop. iptables-legacy gets
//!   it as linear rules in the filter table (INPUT and FORWARD jump to one chain: conntrack
//!   established/related accept, invalid drop, one ACCEPT per rule x source x destination,
//!   then one DROP per protected address). xdp-filter (Debian's xdp-tools) is a port deny
//!   only: TCP destination port 22, native mode, TCP feature only.
//! - The traffic is one-way, so conntrack never sees a reply: for nftables and iptables the
//!   allowed packets stay `ct state new` and take the set lookup / the linear walk on every
//!   packet, like the first packet of a connection; director-fw takes its established-flow
//!   path for them (each flow's first packet picks the flow up by rule).
//! - iptables-legacy registers its table hooks in a namespace for good, so it runs in a second
//!   lab of its own; everything else shares the first lab. Deleting a namespace removes all of
//!   its nftables and iptables state.
//! - Rounds: each round visits every filter (in a rotating order); a visit installs the
//!   filter, measures every mix (warm-up, then a timed window), and removes the filter.
//!   Figures are medians over rounds with min-max; ratios to no filter and to nftables are
//!   taken within a round, then the median is reported.
//!
//! Then, with director-fw's XDP filter among those measured, the control socket under a flood
//! (see `flood.rs`): `status` and peer changes through the real agent, idle and while denied
//! packets arrive at full rate.
//!
//! Output: a table on stdout and `target/bench/lab.json`. Options: `--help`.

#[path = "../shared/mod.rs"]
mod shared;

mod bed;
mod filters;
mod flood;
mod report;
mod traffic;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use aya::{
    maps::{Array, HashMap, PerCpuArray},
    programs::{xdp::XdpLinkId, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf, EbpfLoader, Pod,
};
use director_fw::{
    compile,
    datapath::Attachment,
    policy::{IcmpEcho, Source, Unprotected},
    AttachMode, Datapath, Policy,
};
use director_fw_lab::{
    check_interrupted, in_netns, ip_ns, link_info, run_in_netns, write_sysctls, InterruptGuard,
    Lab, Role,
};
use ipnet::IpNet;
use serde_json::{json, Value};
use shared::{median, min_max};

use bed::*;
use filters::*;
use flood::*;
use report::*;
use traffic::*;

/// Bytes per frame, Ethernet header to the end of the padding (64 on the wire with the FCS
/// a real NIC would add... and a veth does not).
const FRAME_LEN: usize = 64;
/// Frames per live-frames batch: within the veth ring (256), so a batch never overflows it.
const BATCH: u32 = 64;
/// Target length of one BPF_PROG_RUN call.
const CALL_TARGET: Duration = Duration::from_millis(250);

const ALLOW_NET: [u8; 4] = [198, 18, 16, 0];
const ALLOW_PREFIX: u8 = 20;
const DENY_NET: [u8; 4] = [198, 18, 96, 0];
const DENY_PREFIX: u8 = 20;
const ALLOW_PORT: u16 = 443;
const DENY_PORT: u16 = 22;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Lab throughput: packets per second through the lab's gateway, filter by filter.
#[derive(clap::Parser)]
struct Args {
    /// Rounds; each visits every filter, and figures are medians over them.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds measured per filter and mix.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Seconds of traffic before each measurement.
    #[arg(long, default_value_t = 0.3)]
    warmup: f64,
    /// Filters to measure (default: all).
    #[arg(long, value_delimiter = ',')]
    filters: Vec<Filter>,
    /// Traffic mixes to measure (default: all).
    #[arg(long, value_delimiter = ',')]
    mixes: Vec<Mix>,
    /// One round of one second.
    #[arg(long)]
    quick: bool,
    /// Passed by `cargo bench` to benches without the standard harness.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = <Args as clap::Parser>::parse();
        if args.quick {
            args.rounds = 1;
            args.secs = 1.0;
        }
        if args.filters.is_empty() {
            args.filters = Filter::ALL.to_vec();
        }
        if args.mixes.is_empty() {
            args.mixes = Mix::ALL.to_vec();
        }
        ensure!(args.rounds > 0, "--rounds must be positive");
        ensure!(
            (0.1..=30.0).contains(&args.secs) && (0.0..=5.0).contains(&args.warmup),
            "--secs must be 0.1..=30 and --warmup 0..=5"
        );
        args.filters.sort();
        args.filters.dedup();
        args.mixes.sort();
        args.mixes.dedup();
        Ok(args)
    }
}

impl clap::ValueEnum for Filter {
    fn value_variants<'a>() -> &'a [Self] {
        &Filter::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()).help(self.describe()))
    }
}

impl clap::ValueEnum for Mix {
    fn value_variants<'a>() -> &'a [Self] {
        &Mix::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()).help(self.describe()))
    }
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab bench builds network namespaces and loads eBPF programs: it needs root; run `cargo xtask bench`");
    }
    // SIGINT, SIGTERM and SIGHUP only set a flag from here on: the bench stops at its next
    // check and unwinds, removing filters, labs and pins. Declared first, dropped last.
    let _interrupts = InterruptGuard::install()?;
    let started = Instant::now();
    let object = floors_object()?;
    let cpu = shared::last_cpu()?;
    let mut skipped: Vec<(Filter, String)> = Vec::new();
    let mut filters_run: Vec<Filter> = Vec::new();
    for &filter in &args.filters {
        match unavailable(filter) {
            Some(why) => {
                eprintln!("lab bench: skipping {}: {why}", filter.name());
                skipped.push((filter, why));
            }
            None => filters_run.push(filter),
        }
    }

    let mut traffic = Traffic::load(&object)?;
    let mut main_bed = Bed::new().context("building the lab")?;
    // iptables-legacy's hooks stay in a namespace once used: it gets a lab of its own.
    let mut ipt_bed = if filters_run.contains(&Filter::Iptables) {
        Some(Bed::new().context("building the iptables lab")?)
    } else {
        None
    };
    let policy_text = main_bed.policy_text();
    let mut filters = Filters::new(&object, &policy_text)?;
    let outcome = (|| -> Result<(Results, Option<Flood>)> {
        traffic.attach_sink(&mut main_bed)?;
        if let Some(bed) = ipt_bed.as_mut() {
            traffic.attach_sink(bed)?;
        }
        let (warmup, window) = (
            Duration::from_secs_f64(args.warmup),
            Duration::from_secs_f64(args.secs),
        );
        let planned = args.rounds as f64
            * filters_run.len() as f64
            * args.mixes.len() as f64
            * (args.secs + args.warmup + 0.5);
        let limit = Duration::from_secs_f64(planned * 2.0 + 120.0);
        eprintln!(
            "lab bench: {} round(s) x {} filter(s) x {} mix(es), {:.1} s each (+{:.1} s warm-up), generator on CPU {cpu}; about {:.0} s",
            args.rounds,
            filters_run.len(),
            args.mixes.len(),
            args.secs,
            args.warmup,
            planned
        );
        let mut results = Results::new();
        for round in 0..args.rounds {
            let n = filters_run.len();
            for i in 0..n {
                ensure!(
                    started.elapsed() < limit,
                    "the bench took longer than {limit:?}; stopping"
                );
                let filter = filters_run[(round + i) % n];
                let bed = if filter == Filter::Iptables {
                    ipt_bed.as_ref().context("no iptables lab")?
                } else {
                    &main_bed
                };
                let installed = filters
                    .install(filter, bed)
                    .with_context(|| format!("installing {}", filter.name()))?;
                let m = args.mixes.len();
                for j in 0..m {
                    let mix = args.mixes[(round + j) % m];
                    if !filter.applies_to(mix) {
                        continue;
                    }
                    let sample = measure(&mut traffic, bed, mix, cpu, warmup, window)
                        .with_context(|| format!("measuring {} / {}", filter.name(), mix.name()))?;
                    ensure!(
                        !filter.enforces() || sample.fwd_denied <= sample.received * 1e-3,
                        "{} let denied traffic through ({:.0} pps of {:.0} received, mix {}): \
                         its figures would be those of a filter that does nothing",
                        filter.name(),
                        sample.fwd_denied,
                        sample.received,
                        mix.name()
                    );
                    eprintln!(
                        "lab bench: round {} {:<16} {:<5} handled {:>6} Mpps, dropped {:>6}, forwarded {:>6} (made {:>6})",
                        round + 1,
                        filter.name(),
                        mix.name(),
                        mpps(sample.received),
                        mpps(sample.dropped()),
                        mpps(sample.forwarded),
                        mpps(sample.sent)
                    );
                    results
                        .entry((mix, filter))
                        .or_default()
                        .push((round, sample));
                }
                drop(installed);
            }
        }
        let flood = if filters_run.contains(&Filter::DfwXdp) {
            eprintln!("lab bench: the control socket, idle and under a flood of denied packets");
            Some(
                control_under_flood(&mut traffic, &main_bed, cpu, &policy_text)
                    .context("the control socket under a flood")?,
            )
        } else {
            None
        };
        Ok((results, flood))
    })();
    traffic.detach_sink(&mut main_bed);
    if let Some(bed) = ipt_bed.as_mut() {
        traffic.detach_sink(bed);
    }
    let (nft, iptables) = (filters.nft.clone(), filters.iptables.clone());
    drop(filters);
    drop(ipt_bed);
    drop(main_bed);
    let (results, flood) = outcome?;

    print_table(&args, &results);
    let flood = flood.as_ref().map(flood_report);
    if let Some((text, _)) = &flood {
        print!("{text}");
    }
    for (filter, why) in &skipped {
        println!("skipped {}: {why}", filter.name());
    }
    let mut report = report(
        &args,
        cpu,
        &results,
        &skipped,
        &Rulesets {
            policy: &policy_text,
            nft: &nft,
            iptables: &iptables,
        },
        started.elapsed(),
    );
    if let Some((_, part)) = flood {
        report["control_under_flood"] = part;
    }
    let out = shared::out_path("lab.json");
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("\nwritten: {}", out.display());
    Ok(())
}
