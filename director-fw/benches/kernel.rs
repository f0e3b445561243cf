//! Kernel cost per packet of the director-fw XDP program, by BPF_PROG_TEST_RUN (SPEC section 7).
//! Run it with `cargo xtask bench`, which builds the floor programs first; it needs root.
//!
//! Method:
//! - Each path is one fixed 64-byte IPv4 TCP frame run `repeat` times (default 1,000,000) in one
//!   BPF_PROG_TEST_RUN call. The figure is the kernel's own mean time per run, not wall-clock
//!   time around the syscall. Because the same frame runs back to back, this is the hot-cache
//!   cost: every map bucket the path touches stays in cache, whatever the map's size.
//! - Paths: a rule passes a new flow (director -> front-end:444 SYN), an established flow
//!   forward (director -> front-end ACK) and reply (front-end -> director ACK), no-rule drop
//!   (outsider -> director:22, a closed port on a protected host), unprotected pass (outsider ->
//!   an internal client, a role that no rule protects; as a SYN, and as an ACK, which may
//!   belong to a flow) and malformed (the IPv4 length cuts the
//!   TCP header to 10 bytes; the frame stays 64 bytes, the rest is Ethernet padding). One more
//!   path helps read the others: no-rule drop on an open port (outsider -> director:443, open
//!   to internal clients only) takes every lookup of the new-flow path but the flow insert.
//! - The new-flow path cannot be run with a repeat: the first run creates the flow, and the
//!   others would measure the established path. Instead, per round, `new_flow_frames` distinct
//!   SYNs (one source port each) run once each on an empty flow table, and the ACKs of those
//!   now-established flows run once each, alternating in chunks of 64. A single run's kernel
//!   time includes the timer's own overhead (one clock read, ~10 ns granularity here) and a
//!   colder cache, which both sequences share, so new flow = established forward (with repeat)
//!   + median(SYN once) - median(ACK once), per round.
//! - Every path is checked once before measuring: its XDP action and the verdict counter it
//!   moves must be the expected ones.
//! - Peers: 10, 10,000 and 1,000,000 IPv4 hosts (/32), spread round-robin over the five roles of
//!   the built-in profile; the lab's five role hosts (198.18.x.10) are among them, the outsider
//!   (198.18.6.10) is not. The other peers are numbered from 240.0.0.0 (reserved space): they
//!   are map keys only, never on an interface or in a packet, and 1,000,000 of them do not fit
//!   in the lab's 198.18.0.0/15.
//! - Floors, measured in the same run from their own object (`bench-floors-ebpf`): F0 parses
//!   Ethernet/IPv4/TCP and passes; F1 adds one hash lookup of the destination in a map of 10,000
//!   entries (a hit) and one per-CPU counter increment. They run on the established-forward
//!   frame.
//! - The bench pins itself to one CPU (the program runs on the calling CPU; per-CPU state such
//!   as the flow table's LRU free lists then stays in one place). The machine is noisy, so
//!   measurements are interleaved: each round visits every peer count
//!   (in a rotating order), and each visit measures F0 and F1, then every path, then F0 and F1
//!   again. Ratios are taken within the visit (against the mean of the two floor measurements),
//!   and the figures reported are medians over the rounds.
//! - Cache check: because of the hot cache, the repeated figures cannot show what a big host
//!   table costs when packets go to many hosts. So each visit also runs unprotected-pass SYNs
//!   once each to up to 50,000 distinct internal-client hosts (cycled over the role's hosts when
//!   it has fewer), alternating in chunks with the same number of runs of one frame to one host.
//! - Also reported: the time to compile and load each policy (`Datapath::load_for` XDP, as the
//!   agent does: create the maps, write one map entry per syscall, verify the XDP program), the maps' memory (the `memlock:` of each map fd in /proc/self/fdinfo), and
//!   the verifier's instruction count.
//!
//! Output: a table on stdout and `target/bench/kernel.json`.
//! Options: `--rounds N`, `--repeat N`, `--new-flow-frames N`, `--peers 10,10000`,
//! `--rules 1000,10000` (measured at the smallest peer count), `--quick`.

mod shared;

#[path = "../tests/common/frames.rs"]
#[allow(dead_code)]
mod frames;

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{HashMap, MapInfo},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use director_fw::{compile, datapath::Programs, policy::Peer, Datapath, Policy};
use director_fw_common::{DropReason, PassKind, Verdict};
use director_fw_lab::{segment_v4, Role, V4_HOST_ID};
use frames::{Frame, TCP_ACK, TCP_SYN};
use serde_json::{json, Value};
use shared::{median, min_max};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// Bytes of every measured frame (Ethernet header to the end of the padding).
const FRAME_LEN: usize = 64;
/// Entries the F1 floor's hash map holds.
const FLOOR_ENTRIES: u32 = 10_000;
/// First address of the peers that are not lab role hosts.
const FILLER_BASE: Ipv4Addr = Ipv4Addr::new(240, 0, 0, 0);
/// Most distinct destinations the spread measurement sends to.
const SPREAD_HOSTS: usize = 50_000;
/// Sequences of single runs that are compared alternate in chunks of this many frames.
const CHUNK: usize = 64;
/// Source ports of the new-flow SYNs start here.
const NEW_FLOW_SPORT: u16 = 10_000;
/// Source port of the established flow.
const FLOW_SPORT: u16 = 50_123;
const FE_HTTPS: u16 = 444;
const CLOSED_PORT: u16 = 22;
/// Open on the director, but only to internal clients.
const OPEN_PORT: u16 = 443;
const NEW_FLOW_RULE: &str = "director-fe-https";

/// Kernel cost per packet of each path, at several peer and rule counts.
#[derive(clap::Parser)]
struct Args {
    /// Interleaved rounds; figures are medians over them.
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Test runs of each frame per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Distinct flows created per new-flow measurement.
    #[arg(long, default_value_t = 4_000)]
    new_flow_frames: u16,
    /// Peer counts.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 10_000, 1_000_000])]
    peers: Vec<usize>,
    /// Rule counts measured at the smallest peer count, beyond the profile's own rules.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000])]
    rules: Vec<usize>,
    /// Two rounds, 100,000 repeats, 1,000 new flows.
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
            args.rounds = 2;
            args.repeat = 100_000;
            args.new_flow_frames = 1_000;
        }
        ensure!(
            args.rounds > 0 && args.repeat > 0,
            "rounds and repeat must be positive"
        );
        ensure!(
            args.new_flow_frames > 0 && args.new_flow_frames <= u16::MAX - NEW_FLOW_SPORT,
            "--new-flow-frames must be 1..={}",
            u16::MAX - NEW_FLOW_SPORT
        );
        ensure!(
            args.peers.iter().all(|&n| (5..=1 << 24).contains(&n)),
            "peer counts must be at least 5 (the lab role hosts) and at most 2^24"
        );
        Ok(args)
    }
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the kernel bench loads eBPF programs and needs root; run `cargo xtask bench`");
    }
    let cpu = shared::last_cpu()?;
    // BPF_PROG_TEST_RUN runs the program on the calling CPU; pinned, per-CPU state (the flow
    // table's LRU free lists, counters) stays put.
    shared::pin_thread(cpu)?;
    let mut floors = Floors::load()?;
    let mut blocks = Vec::new();
    for &peers in &args.peers {
        blocks.push(Block::load(peers, PROFILE_RULES, args.new_flow_frames)?);
    }
    let fewest_peers = args.peers.iter().copied().min().unwrap_or(10);
    for &rules in args.rules.iter().filter(|&&n| n > PROFILE_RULES) {
        blocks.push(Block::load(fewest_peers, rules, args.new_flow_frames)?);
    }

    eprintln!(
        "bench: {} rounds, repeat {}, {} new-flow frames per round, on CPU {cpu}",
        args.rounds, args.repeat, args.new_flow_frames
    );
    let started = Instant::now();
    for round in 0..args.rounds {
        let count = blocks.len();
        for i in 0..count {
            let block = &mut blocks[(round + i) % count];
            block.visit(&mut floors, &args)?;
        }
        eprintln!(
            "bench: round {}/{} done ({:.1} s)",
            round + 1,
            args.rounds,
            started.elapsed().as_secs_f64()
        );
    }

    print_table(&args, &floors, &blocks);
    let report = report(&args, cpu, &floors, &blocks);
    let out = shared::out_path("kernel.json");
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("\nwritten: {}", out.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Frames and policies

fn v4(role: Role) -> IpAddr {
    IpAddr::V4(segment_v4(role.segment(), V4_HOST_ID))
}

/// A TCP frame padded to [`FRAME_LEN`] bytes.
fn tcp(from: Role, sport: u16, to: Role, dport: u16, flags: u8) -> Vec<u8> {
    let bytes = Frame::tcp(v4(from), sport, v4(to), dport, flags)
        .payload(FRAME_LEN - 54)
        .bytes();
    debug_assert_eq!(bytes.len(), FRAME_LEN);
    bytes
}

fn new_flow_syn(sport: u16) -> Vec<u8> {
    tcp(Role::Director, sport, Role::FrontEnd, FE_HTTPS, TCP_SYN)
}

fn forward_ack(sport: u16) -> Vec<u8> {
    tcp(Role::Director, sport, Role::FrontEnd, FE_HTTPS, TCP_ACK)
}

fn reply_ack(sport: u16) -> Vec<u8> {
    tcp(Role::FrontEnd, FE_HTTPS, Role::Director, sport, TCP_ACK)
}

/// A 64-byte frame whose IPv4 total length leaves only 10 bytes of TCP header.
fn truncated_tcp() -> Vec<u8> {
    let mut bytes = forward_ack(FLOW_SPORT);
    let total: u16 = 20 + 10;
    bytes[16..18].copy_from_slice(&total.to_be_bytes());
    bytes
}

/// The paths measured with a repeat, in table order after the new-flow path.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum PathId {
    NewFlow,
    EstablishedForward,
    EstablishedReply,
    NoRuleDrop,
    /// The same drop with an event sent for every packet (the others run beyond the events'
    /// budget, as drops at line rate do).
    NoRuleDropEvent,
    OpenPortNoRule,
    /// Outsider to an unprotected host, SYN.
    UnprotectedPass,
    /// The same with ACK: a packet that may belong to a flow.
    UnprotectedAck,
    Malformed,
}

impl PathId {
    const ALL: [PathId; 9] = [
        PathId::NewFlow,
        PathId::EstablishedForward,
        PathId::EstablishedReply,
        PathId::NoRuleDrop,
        PathId::NoRuleDropEvent,
        PathId::OpenPortNoRule,
        PathId::UnprotectedPass,
        PathId::UnprotectedAck,
        PathId::Malformed,
    ];

    fn name(self) -> &'static str {
        match self {
            PathId::NewFlow => "rule pass, new flow",
            PathId::EstablishedForward => "established, forward",
            PathId::EstablishedReply => "established, reply",
            PathId::NoRuleDrop => "no-rule drop",
            PathId::NoRuleDropEvent => "no-rule drop, event sent",
            PathId::OpenPortNoRule => "no-rule drop, open port",
            PathId::UnprotectedPass => "unprotected pass",
            PathId::UnprotectedAck => "unprotected pass, ACK",
            PathId::Malformed => "malformed",
        }
    }

    fn key(self) -> &'static str {
        match self {
            PathId::NewFlow => "new_flow",
            PathId::EstablishedForward => "established_forward",
            PathId::EstablishedReply => "established_reply",
            PathId::NoRuleDrop => "no_rule_drop",
            PathId::NoRuleDropEvent => "no_rule_drop_event",
            PathId::OpenPortNoRule => "no_rule_drop_open_port",
            PathId::UnprotectedPass => "unprotected_pass",
            PathId::UnprotectedAck => "unprotected_pass_ack",
            PathId::Malformed => "malformed",
        }
    }

    /// The frame run with a repeat (the new-flow path's SYN is only run once per port).
    fn frame(self) -> Vec<u8> {
        match self {
            PathId::NewFlow => new_flow_syn(NEW_FLOW_SPORT),
            PathId::EstablishedForward => forward_ack(FLOW_SPORT),
            PathId::EstablishedReply => reply_ack(FLOW_SPORT),
            PathId::NoRuleDrop | PathId::NoRuleDropEvent => {
                tcp(Role::Outsider, 40_000, Role::Director, CLOSED_PORT, TCP_SYN)
            }
            PathId::OpenPortNoRule => {
                tcp(Role::Outsider, 40_000, Role::Director, OPEN_PORT, TCP_SYN)
            }
            PathId::UnprotectedPass => syn_from_outsider(v4(Role::InternalClients)),
            PathId::UnprotectedAck => tcp(
                Role::Outsider,
                40_000,
                Role::InternalClients,
                CLOSED_PORT,
                TCP_ACK,
            ),
            PathId::Malformed => truncated_tcp(),
        }
    }
}

/// Drops run with an event each: fewer than the ring buffer holds (256 KiB of 80-byte records).
const EVENT_REPEAT: u32 = 3_000;

/// Rules of the built-in profile.
const PROFILE_RULES: usize = 12;
/// First port of the rules added for the rule-count measurements: clear of every port the
/// measured paths use.
const EXTRA_RULE_PORT: usize = 20_000;

/// The built-in profile with `peers` IPv4 hosts (the five lab role hosts, then numbered
/// addresses from [`FILLER_BASE`], round-robin over the roles) and `rules` rules: the
/// profile's, then rules from every role to the protected roles on ports of their own,
/// TCP and UDP, which the measured paths never match.
fn policy(peers: usize, rules: usize) -> Result<Policy> {
    let mut text = String::from("profile = \"lync2013-single-director\"\n[peers]\n");
    let roles = peer_roles();
    for role in &roles {
        text.push_str(&format!("{} = [\"{}\"]\n", role.name(), v4(*role)));
    }
    for i in 0..rules.saturating_sub(PROFILE_RULES) {
        let from = [
            "reverse-proxy",
            "director",
            "front-end",
            "internal-clients",
            "edge-internal",
            "any",
        ][i % 6];
        let to = ["director", "front-end", "edge-internal"][i % 3];
        let proto = if i % 2 == 0 { "tcp" } else { "udp" };
        let port = EXTRA_RULE_PORT + i % 40_000;
        text.push_str(&format!(
            "[[rules]]\nid = \"extra-{i}\"\nfrom = \"{from}\"\nto = \"{to}\"\nproto = \"{proto}\"\nports = [{port}]\n"
        ));
    }
    let mut policy = Policy::from_toml("bench-policy.toml", &text)?;
    // Appended directly: a million-line TOML file would time the parser, not the datapath.
    let role_ids: Vec<usize> = roles
        .iter()
        .map(|r| policy.role(r.name()).context("lab role in the profile"))
        .collect::<Result<_>>()?;
    let base = u32::from(FILLER_BASE);
    for i in 0..peers - roles.len() {
        let addr = Ipv4Addr::from(base + i as u32);
        policy.peers.push(Peer {
            role: role_ids[i % role_ids.len()],
            net: IpAddr::V4(addr).into(),
        });
    }
    Ok(policy)
}

/// The peer roles, in the order [`policy`] deals the numbered peers out.
fn peer_roles() -> Vec<Role> {
    Role::ALL.iter().copied().filter(|r| r.is_peer()).collect()
}

/// Up to `limit` hosts of `role` in the policy of `peers` peers: the lab host first, then the
/// numbered peers [`policy`] gave that role.
fn hosts_of(role: Role, peers: usize, limit: usize) -> Vec<IpAddr> {
    let roles = peer_roles();
    let index = roles.iter().position(|r| *r == role).expect("a peer role");
    let base = u32::from(FILLER_BASE);
    std::iter::once(v4(role))
        .chain(
            (index..peers - roles.len())
                .step_by(roles.len())
                .map(|i| IpAddr::V4(Ipv4Addr::from(base + i as u32))),
        )
        .take(limit)
        .collect()
}

/// Outsider -> `dst`:22 SYN, padded to [`FRAME_LEN`].
fn syn_from_outsider(dst: IpAddr) -> Vec<u8> {
    Frame::tcp(v4(Role::Outsider), 40_000, dst, CLOSED_PORT, TCP_SYN)
        .payload(FRAME_LEN - 54)
        .bytes()
}

// ---------------------------------------------------------------------------------------
// Measuring

fn options(frame: &[u8], repeat: u32) -> TestRunOptions<'_> {
    let mut options = TestRunOptions::new();
    options.data_in = Some(frame);
    options.repeat = repeat;
    options
}

fn ns(duration: Duration) -> f64 {
    duration.as_nanos() as f64
}

/// F0 and F1 from the bench-floors-ebpf object.
struct Floors {
    ebpf: Ebpf,
    frame: Vec<u8>,
    path: PathBuf,
    /// ns per packet of each visit.
    f0: Vec<f64>,
    f1: Vec<f64>,
    /// F0 run once per call, as the new-flow sequences are: the timer's own overhead.
    f0_once: Vec<f64>,
}

const F0: &str = "floor_parse";
const F1: &str = "floor_lookup";

impl Floors {
    fn load() -> Result<Floors> {
        let path = PathBuf::from(std::env::var_os("DIRECTOR_FW_FLOORS_OBJ").context(
            "DIRECTOR_FW_FLOORS_OBJ is not set: it names the bench-floors-ebpf object, which \
             `cargo xtask bench` builds before running this bench",
        )?);
        let object = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut ebpf = EbpfLoader::new()
            .load(&object)
            .with_context(|| format!("loading {}", path.display()))?;
        for name in [F0, F1] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("{} has no program {name}", path.display()))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("verifying {name}"))?;
        }
        let frame = PathId::EstablishedForward.frame();
        {
            let mut dsts: HashMap<_, u32, u32> =
                HashMap::try_from(ebpf.map_mut("DSTS").context("floors map DSTS")?)?;
            // The frame's destination, and enough others to make the table 10,000 entries.
            let hit = match v4(Role::FrontEnd) {
                IpAddr::V4(a) => u32::from_ne_bytes(a.octets()),
                IpAddr::V6(_) => unreachable!(),
            };
            dsts.insert(hit, 1, 0)?;
            let base = u32::from(FILLER_BASE);
            for i in 1..FLOOR_ENTRIES {
                dsts.insert(u32::from_ne_bytes((base + i).to_be_bytes()), 1, 0)?;
            }
        }
        let floors = Floors {
            ebpf,
            frame,
            path,
            f0: Vec::new(),
            f1: Vec::new(),
            f0_once: Vec::new(),
        };
        for name in [F0, F1] {
            let (action, _) = floors.run(name, &floors.frame, 1)?;
            ensure!(action == XDP_PASS, "{name} returned {action}, not XDP_PASS");
        }
        let (action, _) = floors.run(F0, &truncated_tcp(), 1)?;
        ensure!(action == XDP_DROP, "{F0} passed a truncated TCP header");
        Ok(floors)
    }

    fn program(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }

    fn run(&self, name: &str, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
        let result = self.program(name)?.test_run(options(frame, repeat))?;
        Ok((result.return_value, ns(result.duration)))
    }

    /// One measurement of each floor: (F0, F1) ns per packet.
    fn measure(&self, repeat: u32) -> Result<(f64, f64)> {
        Ok((
            self.run(F0, &self.frame, repeat)?.1,
            self.run(F1, &self.frame, repeat)?.1,
        ))
    }

    fn instructions(&self, name: &str) -> Option<u32> {
        self.program(name)
            .ok()?
            .info()
            .ok()?
            .verified_instruction_count()
    }
}

/// One datapath loaded with one peer count, and what was measured on it.
struct Block {
    peers: usize,
    rules: usize,
    datapath: Datapath,
    compile_time: Duration,
    load_time: Duration,
    /// (map name, bytes), from the map fds' fdinfo.
    map_memory: Vec<(String, u64)>,
    instructions: Option<u32>,
    syns: Vec<Vec<u8>>,
    acks: Vec<Vec<u8>>,
    /// Per visit: ns per packet of each repeated path, and of the floors around them.
    bulk: BTreeMap<PathId, Vec<f64>>,
    x_f0: BTreeMap<PathId, Vec<f64>>,
    x_f1: BTreeMap<PathId, Vec<f64>>,
    /// Per visit: medians of the once-per-call SYN and ACK sequences.
    syn_once: Vec<f64>,
    ack_once: Vec<f64>,
    /// Unprotected-pass SYNs to up to [`SPREAD_HOSTS`] internal clients, cycled, each run
    /// once; and how many distinct hosts they reach.
    spread: Vec<Vec<u8>>,
    spread_hosts: usize,
    /// Per visit: medians of the spread frames run once, and of the one unprotected-pass
    /// frame run once as often.
    spread_once: Vec<f64>,
    same_once: Vec<f64>,
}

impl Block {
    fn load(peers: usize, rules: usize, new_flow_frames: u16) -> Result<Block> {
        eprintln!("bench: loading director-fw with {peers} peers and {rules} rules");
        let policy = policy(peers, rules)?;
        let started = Instant::now();
        let compiled = compile(&policy)?;
        let compile_time = started.elapsed();
        ensure!(
            compiled.hosts_v4.hosts == peers && compiled.nets_v4.is_empty(),
            "expected {peers} IPv4 hosts and no prefixes"
        );
        let before = map_fds();
        let started = Instant::now();
        // As the agent loads it for XDP: maps, policy, and only the XDP program verified.
        let mut datapath = Datapath::with_policy(
            &compiled,
            policy.options.flow_table_size,
            Programs::Xdp,
            false,
        )?;
        let load_time = started.elapsed();
        let map_memory = map_fds()
            .into_iter()
            .filter(|(id, _)| !before.contains_key(id))
            .map(|(id, memlock)| {
                let name = MapInfo::from_id(id)
                    .ok()
                    .and_then(|info| info.name_as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("map {id}"));
                (name, memlock)
            })
            .collect();
        let instructions = datapath.xdp_verified_instructions();
        check_paths(&mut datapath, &policy)?;
        let ports = NEW_FLOW_SPORT..NEW_FLOW_SPORT + new_flow_frames;
        let clients = hosts_of(Role::InternalClients, peers, SPREAD_HOSTS);
        let spread = clients
            .iter()
            .cycle()
            .take(SPREAD_HOSTS)
            .map(|dst| syn_from_outsider(*dst))
            .collect();
        Ok(Block {
            peers,
            rules,
            datapath,
            compile_time,
            load_time,
            map_memory,
            instructions,
            syns: ports.clone().map(new_flow_syn).collect(),
            acks: ports.map(forward_ack).collect(),
            bulk: BTreeMap::new(),
            x_f0: BTreeMap::new(),
            x_f1: BTreeMap::new(),
            syn_once: Vec::new(),
            ack_once: Vec::new(),
            spread,
            spread_hosts: clients.len(),
            spread_once: Vec::new(),
            same_once: Vec::new(),
        })
    }

    fn run(&self, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
        let (action, duration) = self.datapath.test_run_xdp(frame, repeat)?;
        Ok((action, ns(duration)))
    }

    /// One visit: floors, every path, floors again.
    fn visit(&mut self, floors: &mut Floors, args: &Args) -> Result<()> {
        let (f0_before, f1_before) = floors.measure(args.repeat)?;

        self.datapath.clear_flows()?;
        // The established flow the forward and reply frames belong to.
        let (action, _) = self.run(&new_flow_syn(FLOW_SPORT), 1)?;
        ensure!(action == XDP_PASS, "the flow's SYN was dropped");
        let mut visit = BTreeMap::new();
        for path in PathId::ALL[1..]
            .iter()
            .filter(|p| **p != PathId::NoRuleDropEvent)
        {
            let (_, per_packet) = self.run(&path.frame(), args.repeat)?;
            visit.insert(*path, per_packet);
        }
        // With a budget for every packet, as many as the ring buffer holds, drained first.
        self.datapath.drain_events()?;
        self.datapath.set_event_budget(EVENT_REPEAT)?;
        let (_, per_packet) = self.run(&PathId::NoRuleDropEvent.frame(), EVENT_REPEAT)?;
        self.datapath.set_event_budget(0)?;
        let sent = self.datapath.drain_events()?;
        ensure!(
            sent == EVENT_REPEAT as usize,
            "{sent} drop events for {EVENT_REPEAT} drops with a budget for each"
        );
        visit.insert(PathId::NoRuleDropEvent, per_packet);

        // New flows: each SYN once on an empty table, then each of their ACKs once. Chunk by
        // chunk, so that both sequences see the same moments of the machine's noise.
        self.datapath.clear_flows()?;
        let mut syn = Vec::with_capacity(self.syns.len());
        let mut ack = Vec::with_capacity(self.acks.len());
        for (syns, acks) in self.syns.chunks(CHUNK).zip(self.acks.chunks(CHUNK)) {
            for frame in syns {
                let (action, per_packet) = self.run(frame, 1)?;
                ensure!(action == XDP_PASS, "a new-flow SYN was dropped");
                syn.push(per_packet);
            }
            for frame in acks {
                let (action, per_packet) = self.run(frame, 1)?;
                ensure!(action == XDP_PASS, "an established ACK was dropped");
                ack.push(per_packet);
            }
        }
        self.datapath.clear_flows()?;
        let mut f0_once = Vec::with_capacity(self.syns.len());
        for _ in &self.syns {
            f0_once.push(floors.run(F0, &floors.frame, 1)?.1);
        }
        // Unprotected pass, each frame once: to many hosts, then to one host as often.
        let same_frame = PathId::UnprotectedPass.frame();
        let mut spread = Vec::with_capacity(self.spread.len());
        let mut same = Vec::with_capacity(self.spread.len());
        for frames in self.spread.chunks(CHUNK) {
            for frame in frames {
                let (action, per_packet) = self.run(frame, 1)?;
                ensure!(action == XDP_PASS, "an unprotected-pass SYN was dropped");
                spread.push(per_packet);
            }
            for _ in frames {
                same.push(self.run(&same_frame, 1)?.1);
            }
        }
        self.spread_once.push(median(&spread));
        self.same_once.push(median(&same));
        let (syn, ack) = (median(&syn), median(&ack));
        self.syn_once.push(syn);
        self.ack_once.push(ack);
        let established = visit[&PathId::EstablishedForward];
        visit.insert(PathId::NewFlow, established + syn - ack);

        let (f0_after, f1_after) = floors.measure(args.repeat)?;
        let f0 = (f0_before + f0_after) / 2.0;
        let f1 = (f1_before + f1_after) / 2.0;
        for (path, per_packet) in visit {
            self.bulk.entry(path).or_default().push(per_packet);
            self.x_f0.entry(path).or_default().push(per_packet / f0);
            self.x_f1.entry(path).or_default().push(per_packet / f1);
        }
        // Floors are kept per visit too, so their spread shows the machine's noise.
        floors.f0.extend([f0_before, f0_after]);
        floors.f1.extend([f1_before, f1_after]);
        floors.f0_once.push(median(&f0_once));
        Ok(())
    }

    fn total_memory(&self) -> u64 {
        self.map_memory.iter().map(|(_, bytes)| bytes).sum()
    }
}

/// Runs each path once and checks its action and the verdict counter it moves.
fn check_paths(datapath: &mut Datapath, policy: &Policy) -> Result<()> {
    let rule = policy
        .rules
        .iter()
        .position(|r| r.id == NEW_FLOW_RULE)
        .context("the profile has the director-fe-https rule")? as u32;
    datapath.clear_flows()?;
    let checks = [
        (PathId::NewFlow, Verdict::Rule(rule)),
        (PathId::EstablishedForward, Verdict::Pass(PassKind::Flow)),
        (PathId::EstablishedReply, Verdict::Pass(PassKind::Flow)),
        (PathId::NoRuleDrop, Verdict::Drop(DropReason::NoRule)),
        (PathId::OpenPortNoRule, Verdict::Drop(DropReason::NoRule)),
        (
            PathId::UnprotectedPass,
            Verdict::Pass(PassKind::Unprotected),
        ),
        (PathId::UnprotectedAck, Verdict::Pass(PassKind::Unprotected)),
        (PathId::Malformed, Verdict::Drop(DropReason::Malformed)),
    ];
    for (path, verdict) in checks {
        let frame = match path {
            // The new-flow check creates the flow the established paths then find.
            PathId::NewFlow => new_flow_syn(FLOW_SPORT),
            _ => path.frame(),
        };
        let before = datapath.state.counters.total(verdict.slot())?.packets;
        let (action, _) = datapath.test_run_xdp(&frame, 1)?;
        let after = datapath.state.counters.total(verdict.slot())?.packets;
        let expected = if verdict.passes() { XDP_PASS } else { XDP_DROP };
        ensure!(
            action == expected && after == before + 1,
            "{}: expected {verdict:?} (action {expected}), got action {action} and {} packets \
             in its counter",
            path.name(),
            after - before
        );
    }
    datapath.clear_flows()?;
    Ok(())
}

/// `map_id -> memlock` of every BPF map fd this process holds.
fn map_fds() -> BTreeMap<u32, u64> {
    let mut maps = BTreeMap::new();
    let Ok(entries) = fs::read_dir("/proc/self/fdinfo") else {
        return maps;
    };
    for entry in entries.flatten() {
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
            maps.insert(id as u32, memlock);
        }
    }
    maps
}

// ---------------------------------------------------------------------------------------
// Reporting

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn print_table(args: &Args, floors: &Floors, blocks: &[Block]) {
    let (f0, f1) = (median(&floors.f0), median(&floors.f1));
    let spread = |v: &[f64]| {
        let (lo, hi) = min_max(v);
        format!("{lo:.0}-{hi:.0}")
    };
    println!();
    println!(
        "kernel cost per packet (BPF_PROG_TEST_RUN, repeat {}, median of {} rounds)",
        args.repeat, args.rounds
    );
    println!(
        "floors: F0 parse+pass {f0:.1} ns (range {}), F1 +hash lookup+per-CPU count {f1:.1} ns \
         (range {})",
        spread(&floors.f0),
        spread(&floors.f1)
    );
    println!();
    println!(
        "{:<22} {:>9} {:>6} {:>8} {:>9} {:>6} {:>6}",
        "path", "peers", "rules", "ns/pkt", "range", "xF0", "xF1"
    );
    for path in PathId::ALL {
        for block in blocks {
            let v = &block.bulk[&path];
            println!(
                "{:<22} {:>9} {:>6} {:>8.1} {:>9} {:>6.2} {:>6.2}",
                path.name(),
                block.peers,
                block.rules,
                median(v),
                spread(v),
                median(&block.x_f0[&path]),
                median(&block.x_f1[&path]),
            );
        }
    }
    println!();
    println!(
        "new flow, run once per call (medians): SYN {}, ACK of the same flows {}, F0 {} ns",
        blocks
            .iter()
            .map(|b| format!("{:.0}", median(&b.syn_once)))
            .collect::<Vec<_>>()
            .join(" / "),
        blocks
            .iter()
            .map(|b| format!("{:.0}", median(&b.ack_once)))
            .collect::<Vec<_>>()
            .join(" / "),
        format_args!("{:.0}", median(&floors.f0_once)),
    );
    println!(
        "cache check, unprotected pass run once per call (medians, ns): one host vs {SPREAD_HOSTS} \
         frames over the role's hosts"
    );
    for block in blocks {
        println!(
            "{:>9} peers, {:>5} rules: one host {:.0}, {} distinct hosts {:.0}",
            block.peers,
            block.rules,
            median(&block.same_once),
            block.spread_hosts,
            median(&block.spread_once),
        );
    }
    println!();
    println!(
        "{:>9} {:>6} {:>12} {:>10} {:>12} {:>12} {:>10}",
        "peers", "rules", "compile ms", "load ms", "maps MiB", "HOSTS_V4 MiB", "XDP insns"
    );
    for block in blocks {
        let hosts = block
            .map_memory
            .iter()
            .find(|(name, _)| name == "HOSTS_V4")
            .map_or(0, |(_, bytes)| *bytes);
        println!(
            "{:>9} {:>6} {:>12.0} {:>10.0} {:>12.1} {:>12.1} {:>10}",
            block.peers,
            block.rules,
            block.compile_time.as_secs_f64() * 1e3,
            block.load_time.as_secs_f64() * 1e3,
            mib(block.total_memory()),
            mib(hosts),
            block
                .instructions
                .map_or_else(|| "-".to_string(), |n| n.to_string()),
        );
    }
}

fn report(args: &Args, cpu: usize, floors: &Floors, blocks: &[Block]) -> Value {
    let stats = |v: &[f64]| {
        let (lo, hi) = min_max(v);
        json!({ "median": median(v), "min": lo, "max": hi, "values": v })
    };
    let peers: Vec<Value> = blocks
        .iter()
        .map(|block| {
            let paths: serde_json::Map<String, Value> = PathId::ALL
                .iter()
                .map(|path| {
                    (
                        path.key().to_string(),
                        json!({
                            "ns_per_packet": stats(&block.bulk[path]),
                            "x_f0": stats(&block.x_f0[path]),
                            "x_f1": stats(&block.x_f1[path]),
                        }),
                    )
                })
                .collect();
            let memory: serde_json::Map<String, Value> = block
                .map_memory
                .iter()
                .map(|(name, bytes)| (name.clone(), json!(bytes)))
                .collect();
            json!({
                "peers": block.peers,
                "rules": block.rules,
                "compile_seconds": block.compile_time.as_secs_f64(),
                "load_seconds": block.load_time.as_secs_f64(),
                "map_memlock_bytes": memory,
                "map_memlock_total_bytes": block.total_memory(),
                "xdp_verified_instructions": block.instructions,
                "paths": paths,
                "new_flow_run_once": {
                    "syn_ns": stats(&block.syn_once),
                    "ack_ns": stats(&block.ack_once),
                },
                "unprotected_pass_run_once": {
                    "frames": SPREAD_HOSTS,
                    "one_host_ns": stats(&block.same_once),
                    "distinct_hosts": block.spread_hosts,
                    "distinct_hosts_ns": stats(&block.spread_once),
                },
            })
        })
        .collect();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let unix_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let paths: Vec<Value> = PathId::ALL
        .iter()
        .map(|p| json!({ "key": p.key(), "name": p.name() }))
        .collect();
    json!({
        "bench": "kernel",
        "method": "BPF_PROG_TEST_RUN of the XDP program on one 64-byte IPv4 TCP frame per path, \
                   repeated; kernel-reported mean ns per run; median over interleaved rounds. \
                   new_flow = established_forward + median(SYN run once) - median(ACK run once). \
                   x_f0/x_f1: ratio to the floors measured around the same visit.",
        "unix_time": unix_time,
        "kernel": kernel,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "pinned_cpu": cpu,
        "rounds": args.rounds,
        "repeat": args.repeat,
        "new_flow_frames": args.new_flow_frames,
        "frame_bytes": FRAME_LEN,
        "paths": paths,
        "floors": {
            "object": floors.path.display().to_string(),
            "f0": {
                "program": F0,
                "what": "parse Ethernet/IPv4/TCP, XDP_PASS",
                "ns_per_packet": stats(&floors.f0),
                "verified_instructions": floors.instructions(F0),
                "run_once_ns": stats(&floors.f0_once),
            },
            "f1": {
                "program": F1,
                "what": "F0 + one hash lookup (HashMap<u32, u32>, 10,000 entries, hit) + one per-CPU counter increment",
                "ns_per_packet": stats(&floors.f1),
                "verified_instructions": floors.instructions(F1),
            },
        },
        "results": peers,
    })
}
