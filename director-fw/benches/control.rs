//! Control-plane cost: how long it takes to load a policy of 100,000 peers from its file into
//! the kernel, and what that costs in memory. Each phase is timed on its own (read and
//! validate, compile, create the maps and write every entry, verify the XDP program, as
//! `director-fw run` does), over several rounds; the
//! median is reported. Map memory is the kernel's own `memlock` figure from the map file
//! descriptors; agent memory is this process's resident set. Writes
//! `target/bench/control.json`.

// Each bench uses its own part of the shared module.
#[allow(dead_code)]
mod shared;

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use director_fw::{compile, AttachMode, Datapath, Policy};

const PEERS: u32 = 100_000;
const ROUNDS: usize = 5;
const ROLES: [&str; 5] = [
    "reverse-proxy",
    "director",
    "front-end",
    "internal-clients",
    "edge-internal",
];

/// 100,000 host peers spread over the five roles, all inside 198.18.0.0/15.
fn policy_text() -> String {
    let mut by_role: Vec<Vec<String>> = vec![Vec::new(); ROLES.len()];
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 1));
    for i in 0..PEERS {
        by_role[i as usize % ROLES.len()].push(format!("\"{}\"", Ipv4Addr::from(base + i)));
    }
    let mut text = String::from("profile = \"lync2013-single-director\"\n[peers]\n");
    for (role, addrs) in ROLES.iter().zip(&by_role) {
        let _ = writeln!(text, "{role} = [{}]", addrs.join(", "));
    }
    text
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
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

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("control bench: needs root (BPF)");
        std::process::exit(1);
    }
    let text = policy_text();
    let file = std::env::temp_dir().join(format!("director-fw-bench-{}.toml", std::process::id()));
    std::fs::write(&file, &text).expect("write the policy file");

    let (mut parse, mut build, mut load) = (Vec::new(), Vec::new(), Vec::new());
    let (mut maps_bytes, mut rss_kib) = (0, 0);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let policy = Policy::from_file(&file).expect("valid policy");
        parse.push(t.elapsed());
        let t = Instant::now();
        let compiled = compile(&policy).expect("compiles");
        build.push(t.elapsed());
        let t = Instant::now();
        // What `director-fw run` does in its default (XDP) mode.
        let datapath = Datapath::load_for(&policy, &compiled, AttachMode::Xdp).expect("loads");
        load.push(t.elapsed());
        maps_bytes = map_memory();
        rss_kib = resident_kib();
        drop(datapath);
    }
    let _ = std::fs::remove_file(&file);

    let (parse, build, load) = (median(parse), median(build), median(load));
    let total = parse + build + load;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "control plane: {PEERS} peers from a policy file into the kernel (median of {ROUNDS})"
    );
    println!("  read + validate   {:>8.1} ms", ms(parse));
    println!("  compile           {:>8.1} ms", ms(build));
    println!("  load + write maps {:>8.1} ms", ms(load));
    println!(
        "  total             {:>8.1} ms   (target: under 1000 ms)",
        ms(total)
    );
    println!(
        "  map memory        {:>8.1} MiB (kernel memlock of all maps)",
        maps_bytes as f64 / 1048576.0
    );
    println!("  agent resident    {:>8.1} MiB", rss_kib as f64 / 1024.0);

    let json = serde_json::json!({
        "peers": PEERS,
        "rounds": ROUNDS,
        "parse_ms": ms(parse),
        "compile_ms": ms(build),
        "load_ms": ms(load),
        "total_ms": ms(total),
        "map_memory_bytes": maps_bytes,
        "agent_rss_kib": rss_kib,
    });
    let out = shared::out_path("control.json");
    std::fs::create_dir_all(out.parent().expect("a report path has a folder"))
        .expect("create target/bench");
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).expect("write control.json");
}
