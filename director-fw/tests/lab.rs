//! End to end in the network-namespace lab (SPEC section 6): the real agent binary runs in the
//! lab's gateway namespace with the built-in profile and the lab's hosts as peers, and real
//! TCP/UDP connections between the hosts must pass or fail exactly as the policy says, over
//! IPv4 and IPv6, in XDP and in TC mode. Afterwards `stats --json` must show the traffic;
//! stopping the agent must leave the datapath enforcing, and `detach` must remove it.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{lab_run::LabRun, root_or_skip};
use director_fw_lab::{agent_pin_dir, tcp_exchange, udp_exchange, Agent, Lab, Role};
use serde_json::Value;

use Role::{Director, EdgeInternal, FrontEnd, InternalClients, Outsider, ReverseProxy};

/// Connections that should work finish in milliseconds; this only bounds a failure.
const PASS_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections that should fail: short, so that a dropped IPv6 SYN reads as "no connection"
/// rather than as a late "unreachable".
const DROP_TIMEOUT: Duration = Duration::from_secs(1);

/// Every (from, to, port) the profile's 12 rules open, with the rule that opens it. The
/// `any` rule is tried from every other host, the outsider (no role at all) included, on
/// each port.
const ALLOWED: &[(Role, Role, u16, &str)] = &[
    (ReverseProxy, Director, 8080, "rp-director-http"),
    (ReverseProxy, Director, 4443, "rp-director-https"),
    (Director, FrontEnd, 444, "director-fe-https"),
    (InternalClients, Director, 80, "clients-director-http"),
    (InternalClients, Director, 443, "clients-director-https"),
    (EdgeInternal, Director, 5061, "edge-director-sip"),
    (Outsider, EdgeInternal, 50001, "any-edge-cls"),
    (Outsider, EdgeInternal, 50002, "any-edge-cls"),
    (Outsider, EdgeInternal, 50003, "any-edge-cls"),
    (InternalClients, EdgeInternal, 50001, "any-edge-cls"),
    (InternalClients, EdgeInternal, 50002, "any-edge-cls"),
    (InternalClients, EdgeInternal, 50003, "any-edge-cls"),
    (ReverseProxy, EdgeInternal, 50001, "any-edge-cls"),
    (ReverseProxy, EdgeInternal, 50002, "any-edge-cls"),
    (ReverseProxy, EdgeInternal, 50003, "any-edge-cls"),
    (Director, EdgeInternal, 50001, "any-edge-cls"),
    (Director, EdgeInternal, 50002, "any-edge-cls"),
    (Director, EdgeInternal, 50003, "any-edge-cls"),
    (FrontEnd, EdgeInternal, 50001, "any-edge-cls"),
    (FrontEnd, EdgeInternal, 50002, "any-edge-cls"),
    (FrontEnd, EdgeInternal, 50003, "any-edge-cls"),
    (ReverseProxy, FrontEnd, 8080, "rp-fe-http"),
    (ReverseProxy, FrontEnd, 4443, "rp-fe-https"),
    (EdgeInternal, FrontEnd, 5061, "edge-fe-sip"),
    (Director, EdgeInternal, 5061, "director-edge-sip"),
    (FrontEnd, EdgeInternal, 5061, "fe-edge-sip"),
];

/// TCP connections to protected hosts that no rule opens. No two share a destination and
/// port, so they can run at the same time.
const DENIED_TCP: &[(Role, Role, u16)] = &[
    (Outsider, Director, 443),
    (InternalClients, Director, 8080),
    (ReverseProxy, FrontEnd, 444),
    (Director, FrontEnd, 443),
    (EdgeInternal, Director, 5062),
    (InternalClients, FrontEnd, 5061),
    (ReverseProxy, EdgeInternal, 5061),
    (Outsider, EdgeInternal, 50004),
    (FrontEnd, Director, 444),
];

/// UDP to protected hosts: every rule is TCP, so none is open.
const DENIED_UDP: &[(Role, Role, u16)] = &[
    (InternalClients, Director, 443),
    (Outsider, EdgeInternal, 50001),
];

/// TCP that passes without a rule: to unprotected hosts, and from protected hosts outwards,
/// whose replies come back as a tracked flow.
const OPEN_TCP: &[(Role, Role, u16)] = &[
    (Outsider, ReverseProxy, 22),
    (Outsider, InternalClients, 9000),
    (Director, Outsider, 9000),
    (FrontEnd, InternalClients, 9001),
    (EdgeInternal, ReverseProxy, 9002),
];

/// UDP from a protected host outwards: the reply comes back as a tracked flow.
const OPEN_UDP: &[(Role, Role, u16)] = &[(Director, Outsider, 5353)];

#[test]
fn lab_enforces_the_profile_in_xdp_mode() {
    if !root_or_skip("lab_enforces_the_profile_in_xdp_mode") {
        return;
    }
    enforce_the_profile("xdp");
}

#[test]
fn lab_enforces_the_profile_in_tc_mode() {
    if !root_or_skip("lab_enforces_the_profile_in_tc_mode") {
        return;
    }
    enforce_the_profile("tc");
}

fn enforce_the_profile(mode: &str) {
    let started = Instant::now();
    let pin_dir;
    {
        let mut run = LabRun::start(&format!("labtest-{mode}"), mode, Lab::peers_toml, "");
        pin_dir = agent_pin_dir(run.name());
        eprintln!(
            "[{mode}] lab {} up, agent enforcing after {:.1?}",
            run.lab.prefix(),
            started.elapsed()
        );
        let mut failures = Vec::new();
        for ipv6 in [false, true] {
            let ip = if ipv6 { "IPv6" } else { "IPv4" };
            failures.extend(check_allowed(&run.lab, ipv6, ip));
            failures.extend(check_open(&run.lab, ipv6, ip));
            failures.extend(check_denied(&run.lab, ipv6, ip));
        }
        failures.extend(check_stats(&run));

        let status = run
            .agent
            .take()
            .and_then(|mut a| a.stop(Agent::STOP_TIMEOUT));
        match status {
            Some(status) if status.success() => {}
            other => failures.push(format!(
                "the agent did not exit cleanly on SIGTERM: {other:?}"
            )),
        }
        // The agent is gone; the datapath is not.
        if !pin_dir.join("links").exists() {
            failures.push(format!("{} went with the agent", pin_dir.display()));
        }
        let (rp, dir) = (run.lab.host(ReverseProxy), run.lab.host(Director));
        if !matches!(tcp_exchange(rp, dir, 4443, false, PASS_TIMEOUT), Ok(true)) {
            failures.push("after SIGTERM: an allowed connection failed".into());
        }
        if !matches!(tcp_exchange(rp, dir, 22, false, DROP_TIMEOUT), Ok(false)) {
            failures.push("after SIGTERM: a denied connection got through".into());
        }
        assert!(
            failures.is_empty(),
            "[{mode}] {} check(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
        // `run` drops here: `detach`, then the policy file and the lab go.
    }
    assert!(
        !pin_dir.exists(),
        "{} is still there after detach",
        pin_dir.display()
    );
    eprintln!("[{mode}] passed in {:.1?}", started.elapsed());
}

/// Every connection a rule opens completes, and data goes both ways.
fn check_allowed(lab: &Lab, ipv6: bool, ip: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for &(from, to, port, rule) in ALLOWED {
        let what = format!("{ip} tcp {from} -> {to} port {port} (rule {rule})");
        match tcp_exchange(lab.host(from), lab.host(to), port, ipv6, PASS_TIMEOUT) {
            Ok(true) => {}
            Ok(false) => failures.push(format!("{what}: should connect, but did not")),
            Err(e) => failures.push(format!("{what}: should connect, but failed: {e:#}")),
        }
    }
    failures
}

/// Traffic to unprotected hosts, and protected hosts' own outbound connections, pass.
fn check_open(lab: &Lab, ipv6: bool, ip: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for &(from, to, port) in OPEN_TCP {
        let what = format!("{ip} tcp {from} -> {to} port {port} (no rule needed)");
        match tcp_exchange(lab.host(from), lab.host(to), port, ipv6, PASS_TIMEOUT) {
            Ok(true) => {}
            Ok(false) => failures.push(format!("{what}: should connect, but did not")),
            Err(e) => failures.push(format!("{what}: should connect, but failed: {e:#}")),
        }
    }
    for &(from, to, port) in OPEN_UDP {
        let what = format!("{ip} udp {from} -> {to} port {port} (reply by flow)");
        match udp_exchange(lab.host(from), lab.host(to), port, ipv6, PASS_TIMEOUT) {
            Ok(true) => {}
            Ok(false) => failures.push(format!("{what}: no reply came back")),
            Err(e) => failures.push(format!("{what}: failed: {e:#}")),
        }
    }
    failures
}

/// Connections no rule opens do not establish. They all wait for a timeout, so they run at
/// the same time (no two bind the same address and port).
fn check_denied(lab: &Lab, ipv6: bool, ip: &str) -> Vec<String> {
    thread::scope(|s| {
        let mut attempts = Vec::new();
        for &(from, to, port) in DENIED_TCP {
            let what = format!("{ip} tcp {from} -> {to} port {port} (no rule)");
            let (a, b) = (lab.host(from), lab.host(to));
            attempts.push((
                what,
                s.spawn(move || tcp_exchange(a, b, port, ipv6, DROP_TIMEOUT)),
            ));
        }
        for &(from, to, port) in DENIED_UDP {
            let what = format!("{ip} udp {from} -> {to} port {port} (no rule)");
            let (a, b) = (lab.host(from), lab.host(to));
            attempts.push((
                what,
                s.spawn(move || udp_exchange(a, b, port, ipv6, DROP_TIMEOUT)),
            ));
        }
        let mut failures = Vec::new();
        for (what, handle) in attempts {
            match handle.join() {
                Ok(Ok(false)) => {}
                Ok(Ok(true)) => {
                    failures.push(format!("{what}: should be blocked, but got through"))
                }
                Ok(Err(e)) => failures.push(format!(
                    "{what}: should time out silently, but failed: {e:#}"
                )),
                Err(_) => failures.push(format!("{what}: the exchange thread panicked")),
            }
        }
        failures
    })
}

/// `stats --json` shows packets for every rule (all were exercised), for the flow and
/// unprotected passes, and for `no-rule` drops.
fn check_stats(run: &LabRun) -> Vec<String> {
    let stats: Value = run.json(&["stats", "--json"]);
    let packets = |section: &str, key: &str, name: &str, audit: Option<bool>| -> Option<u64> {
        stats[section]
            .as_array()?
            .iter()
            .find(|e| e[key] == name && audit.is_none_or(|a| e["audit"].as_bool() == Some(a)))?
            ["packets"]
            .as_u64()
    };

    let mut failures = Vec::new();
    let mut rules: Vec<&str> = ALLOWED.iter().map(|a| a.3).collect();
    rules.dedup();
    let listed = stats["rules"].as_array().map_or(0, Vec::len);
    if listed != 12 {
        failures.push(format!("stats lists {listed} rules, the profile has 12"));
    }
    for rule in rules {
        match packets("rules", "id", rule, None) {
            Some(n) if n > 0 => {}
            other => failures.push(format!("stats: rule {rule} counted {other:?} packets")),
        }
    }
    for kind in ["flow", "unprotected"] {
        match packets("passes", "kind", kind, None) {
            Some(n) if n > 0 => {}
            other => failures.push(format!("stats: pass {kind} counted {other:?} packets")),
        }
    }
    match packets("drops", "reason", "no-rule", Some(false)) {
        Some(n) if n > 0 => {}
        other => failures.push(format!("stats: drop no-rule counted {other:?} packets")),
    }
    if !failures.is_empty() {
        failures.push(format!("stats were: {stats}"));
    }
    failures
}
