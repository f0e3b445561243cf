//! Control-plane cost: how long it takes to load a policy from its file into the kernel, and
//! what that costs in memory, at 10, 10,000, 100,000 and 1,000,000 peers. Each phase is timed
//! on its own (read and validate, compile, create the maps and write every entry and verify
//! the XDP program, as `director-fw run` does), over several rounds; the median is reported.
//!
//! Each size runs in a fresh child process (this bench re-run with `--child PEERS`), so its
//! resident set is what an agent holding that policy takes, not what earlier sizes left in the
//! allocator. Map memory is the kernel's own `memlock` figure from the map file descriptors.
//!
//! Then the live agent, at 10, 100,000 and 1,000,000 peers: the real `director-fw run` in a
//! lab namespace, driven by the real CLI. Each figure is the wall time of a CLI command from
//! its start until it returns, which is when the kernel enforces the change:
//! - `peers add` / `peers del` of one host, alternating, 30 ms apart (median and maximum);
//! - `policy reload` of the whole file;
//! - the start of an agent on a fresh instance (load and verify), and the adoption by a new
//!   agent after `kill -9` of the old one (until `status` answers);
//! - the anchor: `nft add element` of one address to an nftables set holding the same peers.
//!
//! Writes `target/bench/control.json`.

mod shared;

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use director_fw::{compile, datapath::Programs, Datapath, Policy};
use director_fw_lab::{cli, run_in_netns, Agent, AgentOptions, InstanceGuard, Lab};
use serde_json::{json, Value};

const SIZES: [u32; 4] = [10, 10_000, 100_000, 1_000_000];
const LIVE_SIZES: [u32; 3] = [10, 100_000, 1_000_000];
const AGENT: &str = env!("CARGO_BIN_EXE_director-fw");
/// Peer changes timed per size, and the pause between two (a change waits for the grace
/// period of the one before only when it comes sooner).
const CHANGES: usize = 21;
const CHANGE_GAP: Duration = Duration::from_millis(30);
/// A host in no policy file of the bench: above the last of a million peers.
const CHANGED_HOST: &str = "198.19.200.1";
/// The size the issue sets a target for: under a second.
const TARGET_PEERS: u32 = 100_000;
const ROLES: [&str; 5] = [
    "reverse-proxy",
    "director",
    "front-end",
    "internal-clients",
    "edge-internal",
];

/// `peers` host peers spread over the five roles, all inside 198.18.0.0/15.
fn policy_text(peers: u32) -> String {
    let mut by_role: Vec<Vec<String>> = vec![Vec::new(); ROLES.len()];
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 1));
    for i in 0..peers {
        by_role[i as usize % ROLES.len()].push(format!("\"{}\"", Ipv4Addr::from(base + i)));
    }
    let mut text = String::from("profile = \"lync2013-single-director\"\n[peers]\n");
    for (role, addrs) in ROLES.iter().zip(&by_role) {
        let _ = writeln!(text, "{role} = [{}]", addrs.join(", "));
    }
    text
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

/// Sum of `memlock:` over this process's BPF map file descriptors.
fn map_memory() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc/self/fdinfo") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|info| info.contains("map_type:"))
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// One size, in this (child) process: prints one JSON line.
fn measure(peers: u32) -> Result<()> {
    let rounds = if peers >= 1_000_000 { 3 } else { 5 };
    let file = std::env::temp_dir().join(format!("director-fw-bench-{}.toml", std::process::id()));
    std::fs::write(&file, policy_text(peers))
        .with_context(|| format!("writing {}", file.display()))?;
    let (mut parse, mut build, mut load) = (Vec::new(), Vec::new(), Vec::new());
    let (mut maps_bytes, mut rss_kib) = (0, 0);
    let result = (|| -> Result<()> {
        for _ in 0..rounds {
            let t = Instant::now();
            let policy = Policy::from_file(&file)?;
            parse.push(t.elapsed());
            let t = Instant::now();
            let compiled = compile(&policy)?;
            build.push(t.elapsed());
            let t = Instant::now();
            // What `director-fw run` does in its default (XDP) mode.
            let datapath = Datapath::with_policy(
                &compiled,
                policy.options.flow_table_size,
                Programs::Xdp,
                false,
            )?;
            load.push(t.elapsed());
            // Measured while the agent's state is held: policy, compiled entries, datapath.
            maps_bytes = map_memory();
            rss_kib = shared::resident_kib();
            drop(datapath);
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&file);
    result?;
    let (parse, build, load) = (median_ms(parse), median_ms(build), median_ms(load));
    println!(
        "{}",
        json!({
            "peers": peers,
            "rounds": rounds,
            "parse_ms": parse,
            "compile_ms": build,
            "load_ms": load,
            "total_ms": parse + build + load,
            "map_memory_bytes": maps_bytes,
            "agent_rss_kib": rss_kib,
        })
    );
    Ok(())
}

/// Runs one size in a child process and returns its figures.
fn child(peers: u32) -> Result<Value> {
    eprintln!("control bench: {peers} peers");
    let exe = std::env::current_exe().context("finding this bench's executable")?;
    let output = Command::new(exe)
        .args(["--child", &peers.to_string()])
        .output()
        .context("running the bench for one size")?;
    ensure!(
        output.status.success(),
        "the {peers}-peer run failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    serde_json::from_slice(&output.stdout).context("reading the child's figures")
}

/// Wall time of `f`.
fn timed(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

/// The CLI on `instance`, which must succeed.
fn run_cli(instance: &str, args: &[&str]) -> Result<()> {
    let out = cli(std::path::Path::new(AGENT), instance, args)?;
    ensure!(
        out.status.success(),
        "director-fw {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The live agent at one size (see the module's comment).
fn live(peers: u32) -> Result<Value> {
    eprintln!("control bench: the live agent at {peers} peers");
    let lab = Lab::new()?;
    let name = format!("bench-ctl-{}", std::process::id());
    let instance = InstanceGuard::new(std::path::Path::new(AGENT), &name);
    let file = std::env::temp_dir().join(format!("{name}.toml"));
    let text = policy_text(peers);
    std::fs::write(&file, &text)?;
    let result = (|| -> Result<Value> {
        let mut args = vec!["--policy".to_string(), file.display().to_string()];
        for iface in lab.gateway_ifaces() {
            args.extend(["--iface".into(), iface]);
        }
        let start = |what: &str| -> Result<(Agent, Duration)> {
            let t = Instant::now();
            let mut agent = Agent::start(
                lab.gateway_ns(),
                std::path::Path::new(AGENT),
                instance.name(),
                &args,
                AgentOptions::default(),
            )?;
            agent
                .wait_ready(Duration::from_secs(120))
                .with_context(|| format!("{what} at {peers} peers"))?;
            Ok((agent, t.elapsed()))
        };
        let (mut agent, loaded) = start("loading")?;
        let rss_kib = shared::resident_kib_of(agent.pid());

        let mut changes = Vec::new();
        for i in 0..CHANGES {
            std::thread::sleep(CHANGE_GAP);
            let verb = if i % 2 == 0 { "add" } else { "del" };
            changes.push(timed(|| {
                run_cli(instance.name(), &["peers", verb, "front-end", CHANGED_HOST])
            })?);
        }
        let mut reloads = Vec::new();
        for _ in 0..3 {
            reloads.push(timed(|| run_cli(instance.name(), &["policy", "reload"]))?);
        }
        let mut adoptions = Vec::new();
        for _ in 0..3 {
            agent.kill();
            let (next, took) = start("adopting")?;
            agent = next;
            adoptions.push(took);
        }
        drop(agent);
        let nft = nft_add_element(lab.gateway_ns(), &text)?;
        let max = changes.iter().max().copied().unwrap_or_default();
        Ok(json!({
            "peers": peers,
            "start_ms": loaded.as_secs_f64() * 1e3,
            "agent_rss_kib": rss_kib,
            "peer_change_ms": median_ms(changes),
            "peer_change_max_ms": max.as_secs_f64() * 1e3,
            "reload_ms": median_ms(reloads),
            "adopt_ms": median_ms(adoptions),
            "nft_add_element_ms": nft,
        }))
    })();
    let _ = std::fs::remove_file(&file);
    drop(instance);
    drop(lab);
    result
}

/// Median time of `nft add element` of one address to a set that holds the policy's peers,
/// in the gateway namespace (the anchor for a peer change).
fn nft_add_element(ns: &str, policy: &str) -> Result<f64> {
    let addrs: Vec<&str> = policy
        .lines()
        .filter_map(|l| l.split_once(" = ["))
        .flat_map(|(_, list)| list.trim_end_matches(']').split(", "))
        .map(|a| a.trim_matches('"'))
        .filter(|a| !a.is_empty())
        .collect();
    let mut script =
        String::from("add table inet dfwbench\nadd set inet dfwbench peers { type ipv4_addr; }\n");
    for chunk in addrs.chunks(10_000) {
        let _ = writeln!(
            script,
            "add element inet dfwbench peers {{ {} }}",
            chunk.join(", ")
        );
    }
    run_in_netns(ns, "nft", &["-f", "-"], Some(&script)).context("loading the nftables set")?;
    let mut times = Vec::new();
    for i in 0..CHANGES {
        let verb = if i % 2 == 0 { "add" } else { "delete" };
        let element = format!("{{ {CHANGED_HOST} }}");
        times.push(timed(|| {
            run_in_netns(
                ns,
                "nft",
                &[verb, "element", "inet", "dfwbench", "peers", &element],
                None,
            )
            .map(drop)
        })?);
    }
    let _ = run_in_netns(ns, "nft", &["delete", "table", "inet", "dfwbench"], None);
    Ok(median_ms(times))
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the control bench loads eBPF programs: it needs root; run `cargo xtask bench`");
    }
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--child" {
            let peers = args.next().context("--child needs a peer count")?.parse()?;
            return measure(peers);
        }
    }

    let results: Vec<Value> = SIZES.iter().map(|&n| child(n)).collect::<Result<_>>()?;
    println!(
        "control plane: policy file into the kernel, medians; agent state held while measured"
    );
    println!(
        "{:>9} {:>10} {:>11} {:>9} {:>9} {:>10} {:>11}",
        "peers", "parse ms", "compile ms", "load ms", "total ms", "maps MiB", "agent MiB"
    );
    let mib = |v: &Value| v.as_f64().unwrap_or(f64::NAN) / 1048576.0;
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    for r in &results {
        println!(
            "{:>9} {:>10.1} {:>11.1} {:>9.1} {:>9.1} {:>10.1} {:>11.1}",
            r["peers"].as_u64().unwrap_or(0),
            num(&r["parse_ms"]),
            num(&r["compile_ms"]),
            num(&r["load_ms"]),
            num(&r["total_ms"]),
            mib(&r["map_memory_bytes"]),
            num(&r["agent_rss_kib"]) / 1024.0,
        );
    }
    if let Some(r) = results.iter().find(|r| r["peers"] == TARGET_PEERS) {
        println!(
            "{TARGET_PEERS} peers load in {:.0} ms (target: under 1000 ms)",
            num(&r["total_ms"])
        );
    }

    let live: Vec<Value> = LIVE_SIZES.iter().map(|&n| live(n)).collect::<Result<_>>()?;
    println!("\nthe live agent, through the CLI: ms from a command's start until it returns (the kernel enforces)");
    println!(
        "{:>9} {:>9} {:>14} {:>12} {:>10} {:>9} {:>17} {:>10}",
        "peers", "start", "peer change", "(max)", "reload", "adopt", "nft add element", "agent MiB"
    );
    for r in &live {
        println!(
            "{:>9} {:>9.0} {:>14.1} {:>12.1} {:>10.0} {:>9.0} {:>17.1} {:>10.1}",
            r["peers"].as_u64().unwrap_or(0),
            num(&r["start_ms"]),
            num(&r["peer_change_ms"]),
            num(&r["peer_change_max_ms"]),
            num(&r["reload_ms"]),
            num(&r["adopt_ms"]),
            num(&r["nft_add_element_ms"]),
            num(&r["agent_rss_kib"]) / 1024.0,
        );
    }
    println!("targets: peer change <= 20 ms at 100,000 and <= 100 ms at 1,000,000; reload of 100,000 <= 1,500 ms; adoption <= 1,000 ms");

    let out = shared::out_path("control.json");
    std::fs::create_dir_all(out.parent().context("a report path has a folder")?)?;
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&json!({ "sizes": results, "live": live }))?,
    )
    .with_context(|| format!("writing {}", out.display()))?;
    println!("written: {}", out.display());
    Ok(())
}
