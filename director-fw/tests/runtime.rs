//! The runtime control plane end to end, with the real agent in the network-namespace lab:
//! peers from the CLI, bad input that changes nothing, the socket's security, and commit-confirmed
//! reloads. Every test runs its own instance and lab, and detaches and deletes them at the
//! end, also when it fails.

mod common;

use std::{
    ffi::OsStr,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use common::{
    lab_run::{LabRun, AGENT},
    root_or_skip,
};
use director_fw::instance::Instance;
use director_fw_lab::{agent_pin_dir, Agent, Lab, Role};
use serde_json::Value;

use Role::{Director, InternalClients, Outsider, ReverseProxy};

/// The lab's peers, but for `left_out`, which then has no role.
fn peers_except(lab: &Lab, left_out: Role) -> String {
    let mut out = String::from("[peers]\n");
    for h in lab
        .hosts()
        .iter()
        .filter(|h| h.role.is_peer() && h.role != left_out)
    {
        out += &format!("{} = [\"{}\", \"{}\"]\n", h.role.name(), h.v4, h.v6);
    }
    out
}

#[test]
fn peers_added_at_runtime_take_effect_at_once_and_survive_a_restart() {
    if !root_or_skip("peers_added_at_runtime_take_effect_at_once_and_survive_a_restart") {
        return;
    }
    let mut run = LabRun::start(
        "rt-peers",
        "xdp",
        |lab| peers_except(lab, InternalClients),
        "",
    );
    let client = run.lab.host(InternalClients).clone();
    let (v4, v6) = (client.v4.to_string(), client.v6.to_string());
    for ipv6 in [false, true] {
        assert!(
            !run.connects(InternalClients, Director, 443, ipv6),
            "a host in no role reached the Director (ipv6: {ipv6})"
        );
    }
    let said = run.ok(&["peers", "add", "internal-clients", &v4, &v6]);
    assert!(said.contains("added 2 peer(s)"), "{said}");
    // When the command has returned, the kernel enforces it: no wait here.
    for ipv6 in [false, true] {
        assert!(
            run.connects(InternalClients, Director, 443, ipv6),
            "a runtime peer could not reach the Director right after `peers add` (ipv6: {ipv6})"
        );
    }
    let listed = run.json(&["peers", "list", "--role", "internal-clients", "--json"]);
    let runtime: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["source"] == "runtime")
        .filter_map(|p| p["cidr"].as_str())
        .collect();
    assert_eq!(runtime, [format!("{v4}/32"), format!("{v6}/128")]);

    // A restart restores them from the state file, on top of the policy file.
    run.agent.take().unwrap().stop(Agent::STOP_TIMEOUT);
    run.start_agent(&[]);
    assert_eq!(run.status()["runtime_peers"], 2);
    assert_eq!(run.status()["start"], "adopted");
    for ipv6 in [false, true] {
        assert!(
            run.connects(InternalClients, Director, 443, ipv6),
            "the runtime peer was lost across a restart (ipv6: {ipv6})"
        );
    }
    run.ok(&["peers", "del", "internal-clients", &v4, &v6]);
    for ipv6 in [false, true] {
        assert!(
            !run.connects(InternalClients, Director, 443, ipv6),
            "a deleted peer still reached the Director (ipv6: {ipv6})"
        );
    }
}

/// Every refused command changes nothing: not the kernel's maps, not `peers list`, not
/// `status`.
#[test]
fn refused_commands_change_nothing() {
    if !root_or_skip("refused_commands_change_nothing") {
        return;
    }
    let ops = "[[rules]]\nid = \"ops-ssh\"\nfrom = \"ops\"\nto = \"director\"\nproto = \"tcp\"\nports = [\"22\"]\n";
    let run = LabRun::start("rt-refuse", "xdp", Lab::peers_toml, ops);
    run.ok(&["peers", "add", "front-end", "198.18.3.99"]);
    run.ok(&["peers", "add", "ops", "198.18.6.10"]);
    let pins = Instance::new(run.name()).unwrap().pins();
    let maps = pins.snapshot().expect("reading the pinned maps");
    let peers = run.ok(&["peers", "list", "--json"]);
    let status = run.ok(&["status", "--json"]);

    let bad_file = std::env::temp_dir().join(format!("{}-bad.toml", run.name()));
    std::fs::write(
        &bad_file,
        "profile = \"lync2013-single-director\"\n[peers]\ndirector = [\"198.18.2.300\"]\n",
    )
    .unwrap();
    let lost_role = std::env::temp_dir().join(format!("{}-lost.toml", run.name()));
    std::fs::write(
        &lost_role,
        "[[rules]]\nid = \"x\"\nfrom = \"a\"\nto = \"b\"\nproto = \"tcp\"\nports = [\"1\"]\n",
    )
    .unwrap();
    let (bad, lost) = (bad_file.to_str().unwrap(), lost_role.to_str().unwrap());
    let cases: &[(&[&str], &str)] = &[
        (
            &["peers", "add", "nobody", "198.18.3.1"],
            "unknown role \"nobody\"",
        ),
        (&["peers", "add", "any", "198.18.3.1"], "`any`"),
        (
            &["peers", "add", "front-end", "198.18.3.256"],
            "198.18.3.256",
        ),
        (
            &["peers", "add", "front-end", "198.18.3.0/33"],
            "198.18.3.0/33",
        ),
        (
            &["peers", "add", "front-end", "198.18.3.1", "2001:db8::/129"],
            "2001:db8::/129",
        ),
        (&["peers", "add", "front-end"], "CIDR"),
        (&["peers", "del", "front-end", "198.18.3.98"], "198.18.3.98"),
        (
            &["peers", "del", "director", "198.18.2.10"],
            "edit the file",
        ),
        (
            &["peers", "add", "director", "198.18.2.10"],
            "already listed",
        ),
        (&["policy", "reload", bad], "198.18.2.300"),
        (&["policy", "reload", lost], "role \"ops\""),
        (&["policy", "confirm"], "no reload is waiting"),
        (&["audit", "maybe"], "maybe"),
    ];
    for (args, expect) in cases {
        let out = run.cli(args);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            said.contains(expect),
            "{args:?}: the message {said:?} does not name {expect:?}"
        );
        assert_eq!(
            pins.snapshot().unwrap(),
            maps,
            "{args:?} changed the kernel's maps"
        );
        assert_eq!(
            run.ok(&["peers", "list", "--json"]),
            peers,
            "{args:?} changed the peers"
        );
        assert_eq!(
            run.ok(&["status", "--json"]),
            status,
            "{args:?} changed the status"
        );
    }
    let _ = std::fs::remove_file(&bad_file);
    let _ = std::fs::remove_file(&lost_role);

    // Without an agent, a command says so and fails.
    let out =
        director_fw_lab::cli(Path::new(AGENT), "rt-nobody-runs-this", ["peers", "list"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no director-fw agent runs"));
}

#[test]
fn the_socket_is_root_only() {
    if !root_or_skip("the_socket_is_root_only") {
        return;
    }
    let run = LabRun::start("rt-socket", "xdp", Lab::peers_toml, "");
    let socket = Instance::new(run.name()).unwrap().socket();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "{} has mode {mode:o}",
        socket.display()
    );
    let as_nobody = || {
        let mut cmd = Command::new(AGENT);
        cmd.args(["--instance", run.name(), "peers", "list"])
            .uid(65534)
            .gid(65534);
        cmd.output().unwrap()
    };
    let out = as_nobody();
    assert!(!out.status.success(), "a caller without root was served");
    // Even through a socket file opened to all, the agent checks the caller itself.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a caller without root was served");
    assert!(
        said.contains("permission denied") && said.contains("CAP_NET_ADMIN"),
        "{said}"
    );
}

#[test]
fn an_unconfirmed_reload_reverts_and_a_confirmed_one_stays() {
    if !root_or_skip("an_unconfirmed_reload_reverts_and_a_confirmed_one_stays") {
        return;
    }
    let run = LabRun::start("rt-confirm", "xdp", Lab::peers_toml, "");
    let pins = Instance::new(run.name()).unwrap().pins();
    let original = pins.snapshot().unwrap();
    let first = run.status()["policy"]["source"].clone();
    // The same peers without the internal clients: their connections stop while it holds.
    let narrower = std::env::temp_dir().join(format!("{}-narrower.toml", run.name()));
    let text = format!(
        "profile = \"lync2013-single-director\"\n{}",
        peers_except(&run.lab, InternalClients)
    );
    std::fs::write(&narrower, text).unwrap();
    let file = narrower.to_str().unwrap();

    // A runtime peer deleted while the reload waits stays deleted after the revert.
    run.ok(&["peers", "add", "front-end", "198.18.3.77"]);
    let started = Instant::now();
    run.ok(&["policy", "reload", file, "--confirm-within", "2"]);
    run.ok(&["peers", "del", "front-end", "198.18.3.77"]);
    let pending = run.status();
    assert_eq!(pending["policy"]["source"], file);
    assert!(pending["pending_confirm"].is_object(), "{pending}");
    assert!(!run.connects(InternalClients, Director, 443, false));
    while run.status()["pending_confirm"].is_object() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no revert after 5 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "reverted before its deadline"
    );
    assert_eq!(run.status()["policy"]["source"], first);
    let listed = run.ok(&["peers", "list"]);
    assert!(
        !listed.contains("198.18.3.77"),
        "the revert brought back a deleted peer: {listed}"
    );
    assert!(
        pins.snapshot().unwrap().same_policy(&original),
        "the revert is not the original"
    );
    assert!(run.connects(InternalClients, Director, 443, false));

    run.ok(&["policy", "reload", file, "--confirm-within", "1"]);
    run.ok(&["policy", "confirm"]);
    thread::sleep(Duration::from_millis(1500));
    let kept = run.status();
    assert_eq!(
        kept["policy"]["source"], file,
        "a confirmed reload was reverted"
    );
    assert!(kept["pending_confirm"].is_null());
    let _ = std::fs::remove_file(&narrower);
}

/// `run --metrics`: a real HTTP client gets Prometheus text whose counters are those of
/// `stats --json` at the same moment, with no address in any label.
#[test]
fn metrics_agree_with_stats_and_hold_no_addresses() {
    if !root_or_skip("metrics_agree_with_stats_and_hold_no_addresses") {
        return;
    }
    let mut run = LabRun::start("rt-metrics", "xdp", Lab::peers_toml, "");
    run.agent.take().unwrap().stop(Agent::STOP_TIMEOUT);
    let addr = "127.0.0.1:9810";
    run.start_agent(&[OsStr::new("--metrics"), OsStr::new(addr)]);
    assert!(run.connects(ReverseProxy, Director, 4443, false));
    assert!(!run.connects(Outsider, Director, 443, false));

    let url = format!("http://{addr}/metrics");
    let out = director_fw_lab::run_in_netns(run.lab.gateway_ns(), "curl", &["-sf", &url], None)
        .expect("curl GET /metrics in the gateway namespace");
    let stats = run.json(&["stats", "--json"]);
    let value = |name: &str| -> u64 {
        let line = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in:\n{out}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let from_stats = |section: &str, key: &str, name: &str| -> u64 {
        stats[section]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e[key] == name && e["audit"].as_bool() != Some(true))
            .and_then(|e| e["packets"].as_u64())
            .unwrap()
    };
    let rule = value("director_fw_rule_packets_total{rule=\"rp-director-https\"}");
    assert!(rule > 0);
    assert_eq!(rule, from_stats("rules", "id", "rp-director-https"));
    let drops = value("director_fw_drop_packets_total{reason=\"no-rule\",audit=\"false\"}");
    assert!(drops > 0);
    assert_eq!(drops, from_stats("drops", "reason", "no-rule"));
    // Per interface: every attached interface has its own figures, and they add up.
    let attached = stats["interfaces"].as_array().unwrap();
    let by_interface = stats["by_interface"].as_array().unwrap();
    assert_eq!(
        attached.as_slice(),
        by_interface
            .iter()
            .map(|i| i["interface"].clone())
            .collect::<Vec<_>>(),
        "{stats}"
    );
    let mut sum = 0;
    for i in by_interface {
        let name = i["interface"].as_str().unwrap();
        let here = value(&format!(
            "director_fw_interface_drop_packets_total{{interface=\"{name}\",reason=\"no-rule\",audit=\"false\"}}"
        ));
        let in_stats = i["drops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["reason"] == "no-rule" && d["audit"] == false)
            .and_then(|d| d["packets"].as_u64());
        assert_eq!(Some(here), in_stats, "{name}");
        sum += here;
    }
    assert_eq!(sum, drops);
    assert_eq!(value("director_fw_peers{role=\"director\"}"), 2);
    assert!(out.contains("director_fw_build_info{"), "{out}");
    for label in out
        .lines()
        .filter_map(|l| l.split_once('{'))
        .flat_map(|(_, rest)| {
            rest.split(['"', ',', '}'])
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
    {
        assert!(
            label.parse::<std::net::IpAddr>().is_err(),
            "an address in a label: {label}"
        );
    }
}

/// `stats --watch` on a terminal (a pseudo-terminal from `script`): it draws the counters
/// with their rates, refreshes, and quits on q with status 0. Into a pipe with --json, it
/// prints one JSON object per interval.
#[test]
fn stats_watch_on_a_terminal_and_into_a_pipe() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;
    if !root_or_skip("stats_watch_on_a_terminal_and_into_a_pipe") {
        return;
    }
    let run = LabRun::start("rt-watch", "xdp", Lab::peers_toml, "");
    let shell = format!(
        "stty cols 80 rows 40; exec {AGENT} --instance {} stats --watch --interval 0.3",
        run.name()
    );
    let mut watch = Command::new("script")
        .args(["-qec", &shell, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs the watch in a pseudo-terminal");
    let mut screen = watch.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut all = Vec::new();
        let _ = screen.read_to_end(&mut all);
        String::from_utf8_lossy(&all).into_owned()
    });
    for _ in 0..4 {
        assert!(run.connects(ReverseProxy, Director, 4443, false));
        thread::sleep(Duration::from_millis(300));
    }
    // Tab shows the first interface alone.
    watch.stdin.as_mut().unwrap().write_all(b"\t").unwrap();
    thread::sleep(Duration::from_millis(700));
    watch.stdin.as_mut().unwrap().write_all(b"q").unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "q did not quit the watch"
        );
        thread::sleep(Duration::from_millis(50));
    };
    let screen = reader.join().unwrap();
    assert!(status.success(), "the watch exited with {status}: {screen}");
    // The one-interface view names its passes by any rule.
    for text in [
        "RULES",
        "PKT/S",
        "rp-director-https",
        "no-rule",
        "b/s",
        "INTERFACES",
        "(\"rule\":",
    ] {
        assert!(screen.contains(text), "no {text:?} on the screen: {screen}");
    }

    let mut piped = Command::new(AGENT)
        .args([
            "--instance",
            run.name(),
            "stats",
            "--watch",
            "--json",
            "--interval",
            "0.2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let first = run.json(&["stats", "--json"])["interfaces"][0]
        .as_str()
        .unwrap()
        .to_string();
    // With connections between snapshots, a rule's rate moves.
    let mut lines = BufReader::new(piped.stdout.take().unwrap()).lines();
    let mut moved = false;
    for _ in 0..10 {
        assert!(run.connects(ReverseProxy, Director, 4443, false));
        let line = lines.next().expect("a snapshot per interval").unwrap();
        let snapshot: Value = serde_json::from_str(&line).expect("one JSON object per line");
        let counters = snapshot["counters"].as_array().expect("counters");
        moved |= counters
            .iter()
            .any(|c| c["name"] == "rp-director-https" && c["packets_per_sec"].as_f64() > Some(0.0));
        assert!(
            counters.iter().any(|c| c["interface"] == first.as_str()),
            "no counter of {first}: {line}"
        );
        if moved {
            break;
        }
    }
    assert!(moved, "no snapshot showed a rate for rp-director-https");
    let _ = piped.kill();
    let _ = piped.wait();
}

/// Drop events: denied traffic shows up in `drops --follow --json` with its addresses, ports,
/// reason and roles; with a rate limit, a burst is partly suppressed, and events sent plus
/// suppressed (plus lost) equal the drops counted.
#[test]
fn drop_events_name_the_packet_and_account_for_every_drop() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    if !root_or_skip("drop_events_name_the_packet_and_account_for_every_drop") {
        return;
    }
    let run = LabRun::start("rt-events", "xdp", Lab::peers_toml, "");
    let mut follow = Command::new(AGENT)
        .args(["--instance", run.name(), "drops", "--follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let reader = thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .map(|l| serde_json::from_str::<Value>(&l).expect("a JSON object per line"))
            .find(|e| e["dport"] == 443)
    });
    thread::sleep(Duration::from_millis(300));
    assert!(!run.connects(Outsider, Director, 443, false));
    let started = Instant::now();
    while !reader.is_finished() && started.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(50));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let event = reader
        .join()
        .unwrap()
        .expect("an event for the denied connection");
    let (outsider, director) = (run.lab.host(Outsider), run.lab.host(Director));
    assert_eq!(event["src"], outsider.v4.to_string(), "{event}");
    assert_eq!(event["dst"], director.v4.to_string(), "{event}");
    assert_eq!(event["proto"], "tcp");
    assert_eq!(event["reason"], "no-rule");
    assert_eq!(event["audit"], false);
    assert_eq!(event["iface"], outsider.gw_iface, "{event}");
    assert_eq!(event["dst_roles"], serde_json::json!(["director"]));
    assert_eq!(event["src_roles"], serde_json::json!([]));

    // A burst above a rate of 2 a second: most are suppressed, and every drop is accounted.
    run.ok(&["drops", "--rate", "2"]);
    thread::sleep(Duration::from_millis(1100));
    let sock = director_fw_lab::in_netns(&outsider.ns, {
        let src = std::net::SocketAddr::new(outsider.v4.into(), 0);
        move || Ok(std::net::UdpSocket::bind(src)?)
    })
    .unwrap();
    for i in 0..200u16 {
        let _ = sock.send_to(b"x", (director.v4, 9000 + i));
    }
    thread::sleep(Duration::from_millis(300));
    let drops = run.json(&["drops", "--json"]);
    let stats = run.json(&["stats", "--json"]);
    let dropped: u64 = stats["drops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["packets"].as_u64().unwrap())
        .sum();
    let accounted = ["sent", "suppressed", "lost"]
        .iter()
        .map(|k| drops[*k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(accounted, dropped, "events {drops} against drops {stats}");
    assert!(drops["suppressed"].as_u64().unwrap() >= 190, "{drops}");
}

/// A reload waiting for `policy confirm` outlives the agent: killed inside the window and
/// started again on the same (edited) file, the agent still reverts at the deadline, to the
/// policy from before, which no file holds any more.
#[test]
fn an_unconfirmed_reload_reverts_even_across_an_agent_restart() {
    if !root_or_skip("an_unconfirmed_reload_reverts_even_across_an_agent_restart") {
        return;
    }
    let mut run = LabRun::start("rt-confirm-restart", "xdp", Lab::peers_toml, "");
    let pins = Instance::new(run.name()).unwrap().pins();
    let original = pins.snapshot().unwrap();
    // The operator edits the file in place: the internal clients go.
    let narrower = format!(
        "profile = \"lync2013-single-director\"\n{}",
        peers_except(&run.lab, InternalClients)
    );
    std::fs::write(&run.policy_file, narrower).unwrap();
    let started = Instant::now();
    run.ok(&["policy", "reload", "--confirm-within", "4"]);
    assert!(!run.connects(InternalClients, Director, 443, false));
    run.agent.take().unwrap().kill();
    run.start_agent(&[]);
    let resumed = run.status();
    assert!(
        resumed["pending_confirm"].is_object(),
        "the restarted agent forgot the window: {resumed}"
    );
    while run.status()["pending_confirm"].is_object() {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "no revert after 8 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(3900),
        "reverted after {:?}, before the 4 s deadline",
        started.elapsed()
    );
    assert!(
        pins.snapshot().unwrap().same_policy(&original),
        "the revert is not the policy from before the reload"
    );
    assert!(run.connects(InternalClients, Director, 443, false));

    // Past the deadline while no agent runs: the next start reverts at once.
    run.ok(&["policy", "reload", "--confirm-within", "1"]);
    run.agent.take().unwrap().kill();
    thread::sleep(Duration::from_millis(1500));
    run.start_agent(&[]);
    assert!(run.status()["pending_confirm"].is_null());
    assert!(pins.snapshot().unwrap().same_policy(&original));
    assert!(run.connects(InternalClients, Director, 443, false));
}

/// The kernel program's rare events reach the agent's log through aya-log, and at most once a
/// second per CPU. Planted: the generation in force pointed past the configurations, which
/// the kernel answers by passing everything and saying so.
#[test]
fn a_rare_kernel_event_reaches_the_agent_log_and_does_not_flood_it() {
    use aya::maps::{Array, Map, MapData};
    if !root_or_skip("a_rare_kernel_event_reaches_the_agent_log_and_does_not_flood_it") {
        return;
    }
    const SAYS: &str = "kernel: the policy generation in force has no configuration";
    let run = LabRun::start("rt-klog", "xdp", Lab::peers_toml, "");
    let pin = agent_pin_dir(run.name()).join("maps/ACTIVE");
    let mut active: Array<MapData, u32> =
        Array::try_from(Map::Array(MapData::from_pin(&pin).unwrap())).unwrap();
    let in_force = active.get(&0, 0).unwrap();
    assert!(!run.connects(Outsider, Director, 443, false));
    active.set(0, 7, 0).unwrap();
    let broken = Instant::now();
    let mut passed = 0;
    for _ in 0..20 {
        passed += usize::from(run.connects(Outsider, Director, 443, false));
    }
    active.set(0, in_force, 0).unwrap();
    let seconds = broken.elapsed().as_secs() as usize + 1;
    assert_eq!(passed, 20, "without a configuration the kernel passes");
    assert!(!run.connects(Outsider, Director, 443, false));

    let agent = run.agent.as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let said = || agent.log().iter().filter(|l| l.contains(SAYS)).count();
    while said() == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    // Every line the kernel wrote has reached the log by now.
    thread::sleep(Duration::from_millis(1500));
    let said = said();
    // Over a hundred packets (each connection tries several) in `seconds`: at most one line per
    // CPU and started second.
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(
        (1..=cpus * (seconds + 1)).contains(&said),
        "{said} lines saying {SAYS:?}: {:?}",
        agent.log()
    );
}
