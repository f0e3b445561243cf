//! The datapath outlives the agent, end to end in the lab and in XDP and TC mode: an open
//! connection lives through kill -9, SIGTERM, SIGHUP and an upgrade; an interface created
//! again, or a TC filter removed behind the agent's back, is filtered again; `detach` opens
//! the gate. These tests also run inside the kernel matrix (`cargo xtask test --kernel`),
//! where TC mode on a kernel without TCX is the instance's netlink filter.

mod common;

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use common::{lab_run::LabRun, root_or_skip};
use director_fw::datapath::object_id;
use director_fw_lab::{agent_pin_dir, Agent, Conversation, Lab, Role};

use Role::{Director, InternalClients, Outsider, ReverseProxy};

const PASS_TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn xdp_an_allowed_connection_lives_through_kill_sigterm_sighup_and_upgrade() {
    if root_or_skip("xdp_an_allowed_connection_lives_through_kill_sigterm_sighup_and_upgrade") {
        outlive("xdp");
    }
}

#[test]
fn tc_an_allowed_connection_lives_through_kill_sigterm_sighup_and_upgrade() {
    if root_or_skip("tc_an_allowed_connection_lives_through_kill_sigterm_sighup_and_upgrade") {
        outlive("tc");
    }
}

fn outlive(mode: &str) {
    let mut run = LabRun::start(&format!("at-outlive-{mode}"), mode, Lab::peers_toml, "");
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
            !run.connects(Outsider, Director, 443, false),
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
    assert_eq!(run.status()["start"], "adopted");
    check_hold(&run, "after the restart that adopted the datapath");
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

    let pid = run.status()["pid"].clone();
    run.agent.as_ref().unwrap().signal(libc::SIGHUP);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        run.status()["pid"],
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
    let before = run.status()["object"].as_str().unwrap().to_string();
    let object = std::env::temp_dir().join(format!("{}-second-build.o", run.name()));
    std::fs::write(&object, second_build()).unwrap();
    run.agent.take().unwrap().stop(Agent::STOP_TIMEOUT);
    run.start_agent(&[OsStr::new("--object"), object.as_os_str()]);
    let _ = std::fs::remove_file(&object);
    let after = run.status();
    assert_eq!(after["start"], "upgraded", "{after}");
    assert_ne!(after["object"].as_str().unwrap(), before);
    assert_eq!(
        after["object"].as_str().unwrap(),
        object_id(&second_build())
    );
    check(&run, &mut talk, "after the upgrade");
    check_hold(&run, "after the upgrade");
    assert!(
        records_verdicts(&run, &pins),
        "the links do not run the second build's program after the upgrade"
    );
    assert!(
        run.rule_packets(rule) >= counted,
        "the upgrade reset the counters"
    );
    eprintln!(
        "[{mode}] the connection exchanged {} rounds across it all",
        talk.rounds()
    );
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
    assert!(!run.connects(Outsider, Director, 443, false));
    array
        .get(&0, 0)
        .unwrap()
        .iter()
        .any(|&slot| slot != u32::MAX)
}

/// The instance's netlink filter marker on the outsider's interface, when TC mode holds the
/// interface with a netlink filter (a kernel without TCX) rather than a link.
fn filter_marker(run: &LabRun) -> Option<PathBuf> {
    let iface = &run.lab.host(Outsider).gw_iface;
    let marker = agent_pin_dir(run.name()).join(format!("links/{}:{iface}", run.mode));
    marker.is_dir().then_some(marker)
}

/// Every interface is held by what its mode and kernel call for: a pinned link, or in TC
/// mode without TCX the netlink filter's marker, which the agent's log then names.
fn check_hold(run: &LabRun, when: &str) {
    let links = agent_pin_dir(run.name()).join("links");
    let entries: Vec<_> = std::fs::read_dir(&links)
        .unwrap_or_else(|e| panic!("{when}: {}: {e}", links.display()))
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(
        entries.len(),
        run.lab.gateway_ifaces().len(),
        "{when}: one pin per interface"
    );
    let markers = entries.iter().filter(|e| e.path().is_dir()).count();
    match run.mode.as_str() {
        "tc" => assert!(
            markers == 0 || markers == entries.len(),
            "{when}: some interfaces have TCX links and others netlink filters"
        ),
        _ => assert_eq!(markers, 0, "{when}: XDP is held by links only"),
    }
    eprintln!(
        "[{}] {when}: {} interfaces held by {}",
        run.mode,
        entries.len(),
        if markers > 0 {
            "netlink filters"
        } else {
            "BPF links"
        }
    );
}

/// The instance's netlink filter, removed with its qdisc by someone else, is put back by the
/// running agent within seconds; one whose marker is lost is taken over in place.
fn filter_removed_behind_the_agent(run: &LabRun) {
    let iface = &run.lab.host(Outsider).gw_iface;
    director_fw_lab::run_in_netns(
        run.lab.gateway_ns(),
        "tc",
        &["qdisc", "del", "dev", iface, "clsact"],
        None,
    )
    .unwrap_or_else(|e| panic!("tc qdisc del dev {iface} clsact: {e:#}"));
    assert!(
        run.connects(Outsider, Director, 443, false),
        "the filter removed with its qdisc still filtered (the test's premise)"
    );
    let started = Instant::now();
    while run.connects(Outsider, Director, 443, false) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the running agent did not put the removed filter back within 10 s"
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(run.connects(ReverseProxy, Director, 4443, false));
    check_hold(run, "after the filter was put back");

    // A filter whose marker is lost (an agent killed between attaching and marking) is the
    // instance's filter still: the agent takes it over in place, and the gate never opens.
    let marker = filter_marker(run).expect("the marker is back");
    std::fs::remove_dir(&marker).unwrap();
    let started = Instant::now();
    while !marker.is_dir() {
        assert!(
            !run.connects(Outsider, Director, 443, false),
            "the filter without its marker stopped filtering"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the running agent did not mark its filter again within 10 s"
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(!run.connects(Outsider, Director, 443, false));
    assert!(run.connects(ReverseProxy, Director, 4443, false));
    check_hold(run, "after the filter was marked again");
}

#[test]
fn xdp_a_recreated_interface_is_filtered_again() {
    if root_or_skip("xdp_a_recreated_interface_is_filtered_again") {
        relink("xdp");
    }
}

#[test]
fn tc_a_recreated_interface_is_filtered_again() {
    if root_or_skip("tc_a_recreated_interface_is_filtered_again") {
        relink("tc");
    }
}

/// An interface that is removed and created again under a pinned datapath is filtered by
/// nothing (its pinned link is dead). A running agent notices within seconds and attaches
/// again; an agent that starts afterwards finds it too.
fn relink(mode: &str) {
    let mut run = LabRun::start(&format!("at-relink-{mode}"), mode, Lab::peers_toml, "");
    recreate_outsider_segment(&run.lab);
    let started = Instant::now();
    while run.connects(Outsider, Director, 443, false) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the running agent did not attach to the recreated interface within 10 s"
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(run.connects(ReverseProxy, Director, 4443, false));
    let log = run.agent.as_ref().unwrap().log().join("\n");
    assert!(log.contains("attached again"), "{log}");

    run.agent.take().unwrap().stop(Agent::STOP_TIMEOUT);
    recreate_outsider_segment(&run.lab);
    assert!(
        run.connects(Outsider, Director, 443, false),
        "the recreated interface should be unfiltered while no agent runs (the test's premise)"
    );
    run.start_agent(&[]);
    assert!(
        !run.connects(Outsider, Director, 443, false),
        "the agent did not attach to the recreated interface at its start"
    );
    assert!(run.connects(ReverseProxy, Director, 4443, false));
    let log = run.agent.as_ref().unwrap().log().join("\n");
    assert!(log.contains("held no interface any more"), "{log}");
    check_hold(&run, "after the interface came back");
    if run.mode == "tc" && filter_marker(&run).is_some() {
        filter_removed_behind_the_agent(&run);
    }
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
    let mut run = LabRun::start("at-detach", "tc", Lab::peers_toml, "");
    assert!(!run.connects(Outsider, Director, 443, false));
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
        run.connects(Outsider, Director, 443, false),
        "still filtered after detach"
    );
    // Without an agent, a detach of nothing says so and succeeds.
    assert!(run
        .ok(&["detach", "--yes"])
        .contains("nothing was attached"));
}
