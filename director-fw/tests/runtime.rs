//! The runtime control plane end to end, with the real agent in the network-namespace lab:
//! peers from the CLI, enforcement that outlives the agent (kill -9, SIGTERM, SIGHUP, an
//! upgrade), bad input that changes nothing, the socket's security, and commit-confirmed
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
use director_fw::{datapath::object_id, instance::Instance};
use director_fw_lab::{agent_pin_dir, tcp_exchange, Agent, Conversation, Lab, Role};
use serde_json::Value;

use Role::{Director, InternalClients, Outsider, ReverseProxy};

const PASS_TIMEOUT: Duration = Duration::from_secs(2);
const DROP_TIMEOUT: Duration = Duration::from_secs(1);

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

fn connects(lab: &Lab, from: Role, to: Role, port: u16, ipv6: bool) -> bool {
    let timeout = PASS_TIMEOUT.min(DROP_TIMEOUT);
    tcp_exchange(lab.host(from), lab.host(to), port, ipv6, timeout).unwrap_or(false)
}

fn status(run: &LabRun) -> Value {
    run.json(&["status", "--json"])
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
            !connects(&run.lab, InternalClients, Director, 443, ipv6),
            "a host in no role reached the Director (ipv6: {ipv6})"
        );
    }
    let said = run.ok(&["peers", "add", "internal-clients", &v4, &v6]);
    assert!(said.contains("added 2 peer(s)"), "{said}");
    // When the command has returned, the kernel enforces it: no wait here.
    for ipv6 in [false, true] {
        assert!(
            connects(&run.lab, InternalClients, Director, 443, ipv6),
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
    assert_eq!(status(&run)["runtime_peers"], 2);
    assert_eq!(status(&run)["start"], "adopted");
    for ipv6 in [false, true] {
        assert!(
            connects(&run.lab, InternalClients, Director, 443, ipv6),
            "the runtime peer was lost across a restart (ipv6: {ipv6})"
        );
    }
    run.ok(&["peers", "del", "internal-clients", &v4, &v6]);
    for ipv6 in [false, true] {
        assert!(
            !connects(&run.lab, InternalClients, Director, 443, ipv6),
            "a deleted peer still reached the Director (ipv6: {ipv6})"
        );
    }
}

/// The built-in object with its `TRACE` constant set: another build whose program differs
/// (it records every verdict), and so another object id.
fn second_build() -> Vec<u8> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let mut bytes = director_fw::datapath::OBJECT.to_vec();
    let file = object::File::parse(director_fw::datapath::OBJECT).expect("the object is ELF");
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok(director_fw_common::maps::TRACE_GLOBAL))
        .expect("the object has TRACE");
    let section = file
        .section_by_index(symbol.section_index().expect("TRACE has a section"))
        .unwrap();
    let (offset, _) = section.file_range().expect("TRACE's section has bytes");
    let at = (offset + symbol.address() - section.address()) as usize;
    assert_eq!(bytes[at], 0, "TRACE is 0 in the built-in object");
    bytes[at] = 1;
    bytes
}

/// Whether the program on the links writes `LAST_VERDICT`: it is cleared, a denied connection
/// is tried, and any CPU's slot that changed says the program records verdicts.
fn records_verdicts(run: &LabRun, pins: &Path) -> bool {
    use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
    let data = MapData::from_pin(pins.join("maps/LAST_VERDICT")).expect("the pinned LAST_VERDICT");
    let mut array: PerCpuArray<_, u32> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).expect("a per-CPU array");
    let cpus = aya::util::nr_cpus().expect("the CPU count");
    let cleared = PerCpuValues::try_from(vec![u32::MAX; cpus]).unwrap();
    array.set(0, cleared, 0).unwrap();
    assert!(!connects(&run.lab, Outsider, Director, 443, false));
    array
        .get(&0, 0)
        .unwrap()
        .iter()
        .any(|&slot| slot != u32::MAX)
}

#[test]
fn an_allowed_connection_lives_through_kill_sigterm_sighup_and_upgrade() {
    if !root_or_skip("an_allowed_connection_lives_through_kill_sigterm_sighup_and_upgrade") {
        return;
    }
    let mut run = LabRun::start("rt-outlive", "xdp", Lab::peers_toml, "");
    let pins = agent_pin_dir(run.name());
    let mut talk = Conversation::open(
        run.lab.host(InternalClients),
        run.lab.host(Director),
        443,
        false,
        PASS_TIMEOUT,
    )
    .expect("an allowed connection");
    talk.exchange().expect("it talks");
    let rule = "clients-director-https";
    let counted = run.rule_packets(rule);
    assert!(
        counted > 0,
        "the connection's first packets count for {rule}"
    );
    let check = |run: &LabRun, talk: &mut Conversation, when: &str| {
        for _ in 0..3 {
            talk.exchange()
                .unwrap_or_else(|e| panic!("{when}: the open connection broke: {e:#}"));
        }
        assert!(
            !connects(&run.lab, Outsider, Director, 443, false),
            "{when}: a denied host got through"
        );
        assert!(
            pins.join("links").exists(),
            "{when}: the links' pins are gone"
        );
    };

    let mut agent = run.agent.take().unwrap();
    agent.kill();
    check(&run, &mut talk, "after kill -9");
    run.start_agent(&[]);
    assert_eq!(status(&run)["start"], "adopted");
    check(
        &run,
        &mut talk,
        "after the restart that adopted the datapath",
    );
    assert!(run.rule_packets(rule) >= counted, "the counters were reset");

    let status_code = run.agent.take().unwrap().stop(Agent::STOP_TIMEOUT);
    assert!(
        status_code.is_some_and(|s| s.success()),
        "SIGTERM: {status_code:?}"
    );
    check(&run, &mut talk, "after SIGTERM");
    run.start_agent(&[]);

    let pid = status(&run)["pid"].clone();
    run.agent.as_ref().unwrap().signal(libc::SIGHUP);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        status(&run)["pid"],
        pid,
        "SIGHUP must reload, not stop the agent"
    );
    check(&run, &mut talk, "after SIGHUP");

    // An upgrade: a new agent with another build of the object. The second build records
    // every verdict in LAST_VERDICT, which the first never writes: a packet after the
    // upgrade shows which program the links run.
    assert!(
        !records_verdicts(&run, &pins),
        "the first build already records verdicts"
    );
    let before = status(&run)["object"].as_str().unwrap().to_string();
    let object = std::env::temp_dir().join(format!("{}-second-build.o", run.name()));
    std::fs::write(&object, second_build()).unwrap();
    run.agent.take().unwrap().stop(Agent::STOP_TIMEOUT);
    run.start_agent(&[OsStr::new("--object"), object.as_os_str()]);
    let _ = std::fs::remove_file(&object);
    let after = status(&run);
    assert_eq!(after["start"], "upgraded", "{after}");
    assert_ne!(after["object"].as_str().unwrap(), before);
    assert_eq!(
        after["object"].as_str().unwrap(),
        object_id(&second_build())
    );
    check(&run, &mut talk, "after the upgrade");
    assert!(
        records_verdicts(&run, &pins),
        "the links do not run the second build's program after the upgrade"
    );
    assert!(
        run.rule_packets(rule) >= counted,
        "the upgrade reset the counters"
    );
    eprintln!(
        "the connection exchanged {} rounds across it all",
        talk.rounds()
    );
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
    let first = status(&run)["policy"]["source"].clone();
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
    let pending = status(&run);
    assert_eq!(pending["policy"]["source"], file);
    assert!(pending["pending_confirm"].is_object(), "{pending}");
    assert!(!connects(&run.lab, InternalClients, Director, 443, false));
    while status(&run)["pending_confirm"].is_object() {
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
    assert_eq!(status(&run)["policy"]["source"], first);
    let listed = run.ok(&["peers", "list"]);
    assert!(
        !listed.contains("198.18.3.77"),
        "the revert brought back a deleted peer: {listed}"
    );
    assert!(
        pins.snapshot().unwrap().same_policy(&original),
        "the revert is not the original"
    );
    assert!(connects(&run.lab, InternalClients, Director, 443, false));

    run.ok(&["policy", "reload", file, "--confirm-within", "1"]);
    run.ok(&["policy", "confirm"]);
    thread::sleep(Duration::from_millis(1500));
    let kept = status(&run);
    assert_eq!(
        kept["policy"]["source"], file,
        "a confirmed reload was reverted"
    );
    assert!(kept["pending_confirm"].is_null());
    let _ = std::fs::remove_file(&narrower);
}

/// An interface that is removed and created again under a pinned datapath is filtered by
/// nothing (its pinned link is dead). A running agent notices within seconds and attaches
/// again; an agent that starts afterwards finds it too.
#[test]
fn a_recreated_interface_is_filtered_again() {
    if !root_or_skip("a_recreated_interface_is_filtered_again") {
        return;
    }
    let mut run = LabRun::start("rt-relink", "xdp", Lab::peers_toml, "");
    recreate_outsider_segment(&run.lab);
    let started = Instant::now();
    while connects(&run.lab, Outsider, Director, 443, false) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the running agent did not attach to the recreated interface within 10 s"
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(connects(&run.lab, ReverseProxy, Director, 4443, false));
    let log = run.agent.as_ref().unwrap().log().join("\n");
    assert!(log.contains("attached again"), "{log}");

    run.agent.take().unwrap().stop(Agent::STOP_TIMEOUT);
    recreate_outsider_segment(&run.lab);
    assert!(
        connects(&run.lab, Outsider, Director, 443, false),
        "the recreated interface should be unfiltered while no agent runs (the test's premise)"
    );
    run.start_agent(&[]);
    assert!(
        !connects(&run.lab, Outsider, Director, 443, false),
        "the agent did not attach to the recreated interface at its start"
    );
    assert!(connects(&run.lab, ReverseProxy, Director, 4443, false));
    let log = run.agent.as_ref().unwrap().log().join("\n");
    assert!(log.contains("held no interface any more"), "{log}");
}

/// Deletes the gateway's interface towards the outsider and creates it again, addresses and
/// route included.
fn recreate_outsider_segment(lab: &Lab) {
    let (gw, host) = (lab.gateway_ns(), lab.host(Outsider));
    let ip = |ns: &str, args: &[&str]| {
        director_fw_lab::ip_ns(ns, args).unwrap_or_else(|e| panic!("ip {args:?}: {e:#}"));
    };
    let (gw_v4, gw_v6) = (format!("{}/24", host.gw_v4), format!("{}/64", host.gw_v6));
    let v4 = format!("{}/24", host.v4);
    let via = host.gw_v4.to_string();
    ip(gw, &["link", "del", &host.gw_iface]);
    let peer = ["peer", "name", &host.iface, "netns", &host.ns];
    ip(
        gw,
        &[&["link", "add", &host.gw_iface, "type", "veth"][..], &peer].concat(),
    );
    ip(gw, &["addr", "add", &gw_v4, "dev", &host.gw_iface]);
    ip(
        gw,
        &["-6", "addr", "add", &gw_v6, "dev", &host.gw_iface, "nodad"],
    );
    ip(&host.ns, &["addr", "add", &v4, "dev", &host.iface]);
    ip(gw, &["link", "set", &host.gw_iface, "up"]);
    ip(&host.ns, &["link", "set", &host.iface, "up"]);
    ip(&host.ns, &["route", "add", "default", "via", &via]);
    thread::sleep(Duration::from_millis(200));
}

/// `detach` through a running agent: the agent removes the links and pins and stops, and the
/// interfaces pass everything (the explicit fail-open).
#[test]
fn detach_through_a_running_agent_opens_the_gate_and_stops_it() {
    if !root_or_skip("detach_through_a_running_agent_opens_the_gate_and_stops_it") {
        return;
    }
    let mut run = LabRun::start("rt-detach", "tc", Lab::peers_toml, "");
    assert!(!connects(&run.lab, Outsider, Director, 443, false));
    let said = run.ok(&["detach", "--yes"]);
    assert!(said.contains("detached from"), "{said}");
    let stopped = run.agent.take().unwrap().stop(Agent::STOP_TIMEOUT);
    assert!(
        stopped.is_some_and(|s| s.success()),
        "the agent did not exit by itself: {stopped:?}"
    );
    assert!(
        !agent_pin_dir(run.name()).exists(),
        "pins left after detach"
    );
    assert!(
        connects(&run.lab, Outsider, Director, 443, false),
        "still filtered after detach"
    );
    // Without an agent, a detach of nothing says so and succeeds.
    assert!(run
        .ok(&["detach", "--yes"])
        .contains("nothing was attached"));
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
    assert!(connects(&run.lab, ReverseProxy, Director, 4443, false));
    assert!(!connects(&run.lab, Outsider, Director, 443, false));

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
        assert!(connects(&run.lab, ReverseProxy, Director, 4443, false));
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
        assert!(connects(&run.lab, ReverseProxy, Director, 4443, false));
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
    assert!(!connects(&run.lab, Outsider, Director, 443, false));
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
    assert!(!connects(&run.lab, InternalClients, Director, 443, false));
    run.agent.take().unwrap().kill();
    run.start_agent(&[]);
    let resumed = status(&run);
    assert!(
        resumed["pending_confirm"].is_object(),
        "the restarted agent forgot the window: {resumed}"
    );
    while status(&run)["pending_confirm"].is_object() {
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
    assert!(connects(&run.lab, InternalClients, Director, 443, false));

    // Past the deadline while no agent runs: the next start reverts at once.
    run.ok(&["policy", "reload", "--confirm-within", "1"]);
    run.agent.take().unwrap().kill();
    thread::sleep(Duration::from_millis(1500));
    run.start_agent(&[]);
    assert!(status(&run)["pending_confirm"].is_null());
    assert!(pins.snapshot().unwrap().same_policy(&original));
    assert!(connects(&run.lab, InternalClients, Director, 443, false));
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
    assert!(!connects(&run.lab, Outsider, Director, 443, false));
    active.set(0, 7, 0).unwrap();
    let broken = Instant::now();
    let mut passed = 0;
    for _ in 0..20 {
        passed += usize::from(connects(&run.lab, Outsider, Director, 443, false));
    }
    active.set(0, in_force, 0).unwrap();
    let seconds = broken.elapsed().as_secs() as usize + 1;
    assert_eq!(passed, 20, "without a configuration the kernel passes");
    assert!(!connects(&run.lab, Outsider, Director, 443, false));

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
