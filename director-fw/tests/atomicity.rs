//! Atomicity hammer: while the real agent switches continuously between two policies, a
//! probe packet runs through the live, pinned program (BPF_PROG_TEST_RUN) on the other CPU.
//! The two policies are chosen so that any mix of them judges the probe differently from
//! both, so a single torn read would show. Then: after a sequence of runtime changes, the
//! kernel's maps hold exactly what the reference policy compiles to.

mod common;

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Instant,
};

use common::{lab_run::LabRun, root_or_skip};
use director_fw::{
    compile,
    control::{Client, Request, Response},
    datapath::{PinnedProgram, Snapshot},
    explain::{probe_frame, Probe},
    instance::Instance,
    policy::RuntimePeers,
    Model, Policy,
};
use director_fw_common::config::NS_PER_SEC;

const MIN_SWITCHES: u64 = 1_000;
const MIN_PROBES: u64 = 100_000;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn call(instance: &Instance, request: Request) {
    match Client::connect(instance).and_then(|c| c.call(request.clone())) {
        Ok(Response::Changed(_)) => {}
        other => panic!("{request:?}: {other:?}"),
    }
}

/// Switches with `switch(i)` until both minimums are met, while another thread runs `probe`
/// through the pinned program and checks every verdict is `expect`. Returns (switches, probes).
fn hammer(
    instance: &Instance,
    probe: Vec<u8>,
    expect: u32,
    mut switch: impl FnMut(u64),
) -> (u64, u64) {
    let program = PinnedProgram::open(&instance.pins()).expect("the pinned program");
    let done = Arc::new(AtomicBool::new(false));
    let probes = Arc::new(AtomicU64::new(0));
    let prober = {
        let (done, probes) = (Arc::clone(&done), Arc::clone(&probes));
        thread::spawn(move || -> Result<(), String> {
            while !done.load(Ordering::Relaxed) {
                let action = program.run(&probe).map_err(|e| e.to_string())?;
                let n = probes.fetch_add(1, Ordering::Relaxed) + 1;
                if action != expect {
                    return Err(format!("probe {n} got action {action}, expected {expect}"));
                }
            }
            Ok(())
        })
    };
    let mut switches = 0;
    while switches < MIN_SWITCHES || probes.load(Ordering::Relaxed) < MIN_PROBES {
        if prober.is_finished() {
            break;
        }
        switch(switches);
        switches += 1;
    }
    done.store(true, Ordering::Relaxed);
    if let Err(e) = prober.join().expect("the prober panicked") {
        panic!("after {switches} switches: {e}: a packet saw a mix of two policies");
    }
    (switches, probes.load(Ordering::Relaxed))
}

#[test]
fn reloads_and_peer_batches_are_atomic() {
    if !root_or_skip("reloads_and_peer_batches_are_atomic") {
        return;
    }
    // Addresses of no lab host: only test runs ever carry them.
    let (x, y) = ("198.18.200.1", "198.18.200.2");
    let mesh = "[[rules]]\nid = \"mesh\"\nfrom = \"green\"\nto = \"green\"\nproto = \"tcp\"\nports = [\"7000\"]\n";
    let head = "profile = \"lync2013-single-director\"\n";
    let a_body = format!("{mesh}[peers]\ndirector = [\"{x}\"]\nfront-end = [\"{x}\"]\n");
    let b_body = format!("{mesh}[peers]\nfront-end = [\"{x}\"]\ninternal-clients = [\"{y}\"]\n");
    let (a, b) = (format!("{head}{a_body}"), format!("{head}{b_body}"));
    let run = LabRun::start("rt-atomic", "xdp", |_| String::new(), &a_body);
    let instance = Instance::new(run.name()).unwrap();
    let dir = std::env::temp_dir();
    let (file_a, file_b) = (
        dir.join(format!("{}-a.toml", run.name())),
        dir.join(format!("{}-b.toml", run.name())),
    );
    std::fs::write(&file_a, &a).unwrap();
    std::fs::write(&file_b, &b).unwrap();

    // Reloads. Y -> X:443 is dropped by A (Y has no role) and by B (X is no Director), and
    // passed by a mix (X a Director as in A, Y an internal client as in B).
    let probe = probe_frame(ip(y), ip(x), Probe::Tcp, 40000, 443).unwrap();
    let started = Instant::now();
    let (switches, probes) = hammer(&instance, probe, XDP_DROP, |i| {
        let file = if i % 2 == 0 { &file_b } else { &file_a };
        call(
            &instance,
            Request::PolicyReload {
                file: Some(file.clone()),
                confirm_within: None,
            },
        );
    });
    eprintln!(
        "reloads: {switches} switches, {probes} probes, no mix seen, in {:.1?}",
        started.elapsed()
    );

    // Peer batches. Back on A, whose `green` role is empty: one command adds or removes two
    // hosts at once. Q -> P:7000 passes with neither in `green` (P is unprotected) and with
    // both (rule mesh), and is dropped with P alone (P protected, Q in no role).
    call(
        &instance,
        Request::PolicyReload {
            file: Some(file_a.clone()),
            confirm_within: None,
        },
    );
    let (p, q) = ("198.18.201.1", "198.18.201.2");
    let batch: Vec<String> = vec![q.into(), p.into()];
    let probe = probe_frame(ip(q), ip(p), Probe::Tcp, 40000, 7000).unwrap();
    let started = Instant::now();
    let (switches, probes) = hammer(&instance, probe, XDP_PASS, |i| {
        let (role, cidrs) = ("green".to_string(), batch.clone());
        let request = if i % 2 == 0 {
            Request::PeersAdd { role, cidrs }
        } else {
            Request::PeersDel { role, cidrs }
        };
        call(&instance, request);
    });
    eprintln!(
        "peer batches: {switches} switches, {probes} probes, no mix seen, in {:.1?}",
        started.elapsed()
    );

    // A sequence of changes, replayed on the reference policy: the kernel holds its compilation.
    let file = Policy::from_toml(&file_a.display().to_string(), &a).unwrap();
    let mut peers = RuntimePeers::default();
    let steps: [(&str, &[&str], bool); 4] = [
        ("green", &["198.18.202.0/24", "2001:db8:202::/48"], true),
        ("front-end", &["198.18.203.7", "2001:db8:203::7"], true),
        ("green", &["2001:db8:202::/48"], false),
        ("director", &["198.18.204.1"], true),
    ];
    // Whatever the hammer left: none if it ended on a removal.
    let listed = status_peers(&instance);
    for (role, cidrs) in listed {
        peers = peers.add(&file, &role, &[cidrs]).unwrap();
    }
    for (role, cidrs, add) in steps {
        let cidrs: Vec<String> = cidrs.iter().map(|s| s.to_string()).collect();
        let request = if add {
            peers = peers.add(&file, role, &cidrs).unwrap();
            Request::PeersAdd {
                role: role.into(),
                cidrs,
            }
        } else {
            peers = peers.del(&file, role, &cidrs).unwrap();
            Request::PeersDel {
                role: role.into(),
                cidrs,
            }
        };
        call(&instance, request);
        let expected = compile(&peers.apply(&file)).unwrap();
        let kernel = instance.pins().snapshot().unwrap();
        assert!(
            kernel.same_policy(&Snapshot::of(&expected)),
            "after {role} {add}: the kernel's maps differ from the reference policy's"
        );
    }

    // And the live program judges as the reference model of that policy does: the first
    // packet (a SYN) of every address pair the changes touched, on every port a rule opens
    // and on a closed one.
    let policy = peers.apply(&file);
    let mut model = Model::new(&policy, director_fw::compile::config(&policy));
    let program = PinnedProgram::open(&instance.pins()).unwrap();
    let addrs: Vec<IpAddr> = [
        "198.18.202.9",
        "198.18.203.7",
        "198.18.204.1",
        "198.18.200.1",
        "198.18.200.2",
        "198.18.9.9",
    ]
    .iter()
    .map(|a| ip(a))
    .collect();
    let v6: Vec<IpAddr> = ["2001:db8:203::7", "2001:db8:202::9", "2001:db8:9::9"]
        .iter()
        .map(|a| ip(a))
        .collect();
    let mut ports: Vec<u16> = policy
        .rules
        .iter()
        .flat_map(|r| r.ports.iter().map(|p| *p.start()))
        .collect();
    ports.push(22);
    let mut sport = 20_000;
    let mut judged = 0;
    for family in [&addrs, &v6] {
        for &src in family.iter() {
            for &dst in family.iter().filter(|&&d| d != src) {
                for &port in &ports {
                    sport += 1;
                    let frame = probe_frame(src, dst, Probe::Tcp, sport, port).unwrap();
                    let expect = model.judge(&frame, NS_PER_SEC).passes();
                    let action = program.run(&frame).unwrap();
                    assert_eq!(
                        action == XDP_PASS,
                        expect,
                        "{src} -> {dst}:{port}: the kernel and the model disagree after the runtime changes"
                    );
                    judged += 1;
                }
            }
        }
    }
    eprintln!("after the runtime changes: kernel and model agree on {judged} packets");
    let _ = std::fs::remove_file(&file_a);
    let _ = std::fs::remove_file(&file_b);
}

/// The runtime peers the agent holds, as (role, cidr).
fn status_peers(instance: &Instance) -> Vec<(String, String)> {
    match Client::connect(instance).and_then(|c| c.call(Request::PeersList { role: None })) {
        Ok(Response::Peers { peers }) => peers
            .into_iter()
            .filter(|p| p.source == "runtime")
            .map(|p| (p.role, p.cidr))
            .collect(),
        other => panic!("peers list: {other:?}"),
    }
}
