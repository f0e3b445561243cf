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

/// An Edge profile (Skype for Business Server 2015, single or DNS-balanced) with the lab's
/// hosts as its servers: the reverse proxy's host is the Access Edge, the Front End's the Web
/// Conferencing Edge, the Director's the A/V Edge, the Edge internal host the internal
/// interface, and the outsider the internet. Real UDP and TCP across the media range and
/// STUN, inside and just outside each range, over IPv4 and IPv6.
#[test]
fn lab_enforces_an_edge_profile_in_xdp_mode() {
    if root_or_skip("lab_enforces_an_edge_profile_in_xdp_mode") {
        enforce_an_edge_profile("xdp");
    }
}

#[test]
fn lab_enforces_an_edge_profile_in_tc_mode() {
    if root_or_skip("lab_enforces_an_edge_profile_in_tc_mode") {
        enforce_an_edge_profile("tc");
    }
}

fn enforce_an_edge_profile(mode: &str) {
    let started = Instant::now();
    let name = format!("labtest-edge-{mode}");
    let run = LabRun::start_profile(&name, mode, "sfb2015-edge", edge_peers, "");
    let (access, webconf, av, internal, internet, client) = (
        ReverseProxy,
        FrontEnd,
        Director,
        EdgeInternal,
        Outsider,
        InternalClients,
    );
    let pass = [
        Try::udp(av, internet, 50000, "media, first port"),
        Try::udp(av, internet, 55555, "media"),
        Try::udp(av, internet, 59999, "media, last port"),
        Try::tcp(av, internet, 50000, "media over TCP, first port"),
        Try::tcp(av, internet, 59999, "media over TCP, last port"),
        Try::udp(av, internet, 3478, "STUN out"),
        Try::tcp(av, internet, 443, "STUN over TCP out"),
        Try::udp(client, av, 3478, "STUN in"),
        Try::tcp(client, av, 443, "STUN over TCP in"),
        Try::tcp(internet, access, 443, "client SIP"),
        Try::tcp(internet, access, 5061, "federation SIP"),
        Try::tcp(internet, access, 5269, "XMPP in"),
        Try::tcp(access, internet, 80, "CRL"),
        Try::udp(access, internet, 53, "DNS"),
        Try::tcp(access, internet, 53, "DNS over TCP"),
        Try::tcp(internet, webconf, 443, "PSOM"),
        Try::udp(client, internal, 3478, "STUN to the internal interface"),
        Try::tcp(client, internal, 50001, "CLS, first port"),
        Try::tcp(client, internal, 50003, "CLS, last port"),
        Try::tcp(client, internal, 8057, "PSOM from the Front End"),
        Try::tcp(internal, internet, 5061, "SIP to the pool"),
    ];
    let drop = [
        Try::udp(av, internet, 49999, "below the media range"),
        Try::tcp(av, internet, 49999, "below the media range"),
        Try::udp(av, internet, 3477, "next to STUN"),
        Try::tcp(client, internal, 50000, "next to CLS"),
        Try::udp(av, internet, 60000, "above the media range"),
        Try::tcp(av, internet, 60000, "above the media range"),
        Try::udp(access, internet, 3478, "STUN from the Access Edge"),
        Try::udp(client, av, 50000, "media in: not on the SfB page"),
        Try::udp(client, internal, 3479, "next to STUN"),
        Try::tcp(client, internal, 50004, "next to CLS"),
        Try::tcp(internet, access, 80, "no rule"),
        Try::tcp(internet, webconf, 444, "no rule"),
        Try::udp(webconf, internet, 53, "DNS from the Web Conferencing Edge"),
    ];
    let mut failures = Vec::new();
    for ipv6 in [false, true] {
        failures.extend(expect_pass(&run.lab, &pass, ipv6));
        failures.extend(expect_drop(&run.lab, &drop, ipv6));
    }
    for rule in [
        "edge-av-internet-udp-50000-59999",
        "edge-av-internet-tcp-50000-59999",
        "any-edge-av-udp-3478",
    ] {
        if run.rule_packets(rule) == 0 {
            failures.push(format!("stats: rule {rule} counted no packets"));
        }
    }
    assert!(
        failures.is_empty(),
        "[edge, {mode}] {} check(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    eprintln!("[edge, {mode}] passed in {:.1?}", started.elapsed());
}

/// The Edge profile's roles on the lab's hosts (see the test above).
fn edge_peers(lab: &Lab) -> String {
    let mut out = String::from("[peers]\n");
    for (role, name) in [
        (ReverseProxy, "edge-access"),
        (FrontEnd, "edge-webconf"),
        (Director, "edge-av"),
        (EdgeInternal, "edge-internal"),
        (Outsider, "internet"),
    ] {
        let host = lab.host(role);
        out += &format!("{name} = [\"{}\", \"{}\"]\n", host.v4, host.v6);
    }
    out
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
            failures.extend(check_allowed(&run.lab, ipv6));
            failures.extend(check_open(&run.lab, ipv6));
            failures.extend(check_denied(&run.lab, ipv6));
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

/// A transport protocol to try.
#[derive(Clone, Copy, Debug)]
enum Proto {
    Tcp,
    Udp,
}

/// One exchange to try, and why it should pass or not.
struct Try {
    proto: Proto,
    from: Role,
    to: Role,
    port: u16,
    why: String,
}

impl Try {
    fn tcp(from: Role, to: Role, port: u16, why: impl Into<String>) -> Try {
        let why = why.into();
        Try {
            proto: Proto::Tcp,
            from,
            to,
            port,
            why,
        }
    }

    fn udp(from: Role, to: Role, port: u16, why: impl Into<String>) -> Try {
        let why = why.into();
        Try {
            proto: Proto::Udp,
            from,
            to,
            port,
            why,
        }
    }

    fn run(&self, lab: &Lab, ipv6: bool, timeout: Duration) -> anyhow::Result<bool> {
        let (from, to) = (lab.host(self.from), lab.host(self.to));
        match self.proto {
            Proto::Tcp => tcp_exchange(from, to, self.port, ipv6, timeout),
            Proto::Udp => udp_exchange(from, to, self.port, ipv6, timeout),
        }
    }

    fn what(&self, ipv6: bool) -> String {
        let ip = if ipv6 { "IPv6" } else { "IPv4" };
        format!(
            "{ip} {:?} {} -> {} port {} ({})",
            self.proto, self.from, self.to, self.port, self.why
        )
    }
}

/// Every exchange completes, with data both ways. One after another: several listen on the
/// same address and port.
fn expect_pass(lab: &Lab, tries: &[Try], ipv6: bool) -> Vec<String> {
    let mut failures = Vec::new();
    for t in tries {
        match t.run(lab, ipv6, PASS_TIMEOUT) {
            Ok(true) => {}
            Ok(false) => failures.push(format!("{}: should pass, but did not", t.what(ipv6))),
            Err(e) => failures.push(format!("{}: should pass, but failed: {e:#}", t.what(ipv6))),
        }
    }
    failures
}

/// No exchange gets through. They all wait for a timeout, so they run at the same time (no
/// two listen on the same address and port).
fn expect_drop(lab: &Lab, tries: &[Try], ipv6: bool) -> Vec<String> {
    thread::scope(|s| {
        let attempts: Vec<_> = tries
            .iter()
            .map(|t| (t, s.spawn(move || t.run(lab, ipv6, DROP_TIMEOUT))))
            .collect();
        let mut failures = Vec::new();
        for (t, handle) in attempts {
            let what = t.what(ipv6);
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

/// Every connection a rule opens completes, and data goes both ways.
fn check_allowed(lab: &Lab, ipv6: bool) -> Vec<String> {
    let tries: Vec<Try> = ALLOWED
        .iter()
        .map(|&(from, to, port, rule)| Try::tcp(from, to, port, format!("rule {rule}")))
        .collect();
    expect_pass(lab, &tries, ipv6)
}

/// Traffic to unprotected hosts, and protected hosts' own outbound connections, pass.
fn check_open(lab: &Lab, ipv6: bool) -> Vec<String> {
    let tcp = OPEN_TCP
        .iter()
        .map(|&(from, to, port)| Try::tcp(from, to, port, "no rule needed"));
    let udp = OPEN_UDP
        .iter()
        .map(|&(from, to, port)| Try::udp(from, to, port, "reply by flow"));
    expect_pass(lab, &tcp.chain(udp).collect::<Vec<_>>(), ipv6)
}

/// Connections no rule opens do not establish.
fn check_denied(lab: &Lab, ipv6: bool) -> Vec<String> {
    let tcp = DENIED_TCP
        .iter()
        .map(|&(from, to, port)| Try::tcp(from, to, port, "no rule"));
    let udp = DENIED_UDP
        .iter()
        .map(|&(from, to, port)| Try::udp(from, to, port, "no rule"));
    expect_drop(lab, &tcp.chain(udp).collect::<Vec<_>>(), ipv6)
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
