//! Control-plane cost: how long it takes to load a policy from its file into the kernel, and
//! what that costs in memory, at 10, 10,000, 100,000 and 1,000,000 peers. Each phase is timed
//! on its own (read and validate, compile, create the maps and write every entry and verify
//! the XDP program, as `director-fw run` does), over several rounds; the median is reported.
//!
//! Each size runs in a fresh child process (this bench re-run with `--child PEERS`), so its
//! resident set is what an agent holding that policy takes, not what earlier sizes left in the
//! allocator. Map memory is the kernel's own `memlock` figure from the map file descriptors.
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
use serde_json::{json, Value};

const SIZES: [u32; 4] = [10, 10_000, 100_000, 1_000_000];
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

    let out = shared::out_path("control.json");
    std::fs::create_dir_all(out.parent().context("a report path has a folder")?)?;
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&json!({ "sizes": results }))?,
    )
    .with_context(|| format!("writing {}", out.display()))?;
    println!("written: {}", out.display());
    Ok(())
}
