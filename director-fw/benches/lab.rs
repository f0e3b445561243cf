//! Lab throughput (SPEC section 7): packets per second through the lab's gateway, with no
//! filter, a trivial XDP_DROP program, director-fw (native XDP and TC), nftables, iptables and
//! xdp-filter, for the same policy and the same traffic. Run it with `cargo xtask bench`,
//! which builds the helper programs first (`DIRECTOR_FW_FLOORS_OBJ`); it needs root.
//!
//! Method (see shared/BENCH-NOTES.md for the facts it rests on):
//! - Topology: the `director-fw-lab` lab. The internal-clients host is the traffic source, the
//!   Director host the sink; the gateway forwards between them. The gateway's veth facing the
//!   source (its ingress) has GRO on, so frames sent into it get NAPI whatever filter is
//!   attached; every filter attaches there. The gateway has reverse-path filtering off and a
//!   permanent neighbour entry for the Director, and routes 198.18.16.0/20 to the
//!   internal-clients host and 198.18.96.0/20 to the outsider host.
//! - Source: `lab_gen` (bench-floors-ebpf) run by BPF_PROG_RUN in live-frames mode with the
//!   source veth as ingress device: it writes a whole 64-byte frame (Ethernet, IPv4, TCP, both
//!   checksums; 10 bytes of Ethernet padding) per run and returns XDP_TX, which sends it to
//!   the gateway. Two threads on one CPU, calls of about 0.25 s each (each call waits in
//!   synchronize_rcu twice, the other thread fills that time). The gateway and the sink then
//!   run on the same CPU in softirq, so a packet's whole cost (generate, filter, forward or
//!   drop) is paid on that CPU and pps = 1 / (cost per packet).
//! - Traffic: allowed packets come from 4,096 internal-client sources (198.18.16.0/20, a prefix
//!   peer added to the role) x 4 source ports to the Director, TCP/443, ACK (16,384 flows of
//!   an established connection, cycled, so every flow is seen again within a few ms); denied
//!   packets come from 4,096 outsider-range sources (198.18.96.0/20, no role) x 16 ports to
//!   the Director, TCP/22, SYN. Mixes: `deny` (all denied), `allow` (all allowed) and `mix`
//!   (half and half, alternating).
//! - Sink: `lab_sink` (native XDP on the Director's veth) counts frames by TCP port and drops
//!   them, so the Director's stack does not answer. ARP passes.
//! - Counted: received = the gateway ingress veth's rx packets (every frame its NAPI took,
//!   whatever the filter did); forwarded = frames at the sink; dropped = received - forwarded.
//!   Also kept: frames made by the source (so frames lost before the gateway show), allowed
//!   frames forwarded, and denied frames that leaked through (must be 0 for a filter that
//!   enforces the policy).
//! - Policy: the built-in profile with the lab's peers (`Lab::peers_toml`) plus the
//!   198.18.16.0/20 prefix in internal-clients. director-fw loads it with
//!   `Datapath::load_for` and attaches in the gateway namespace. nftables gets the same policy
//!   as an expert writes it: an inet prerouting filter chain (after conntrack), `ct state
//!   established,related accept`, `ct state invalid drop`, unprotected destinations pass
//!   (a set of protected addresses), then interval sets keyed `ip saddr . ip daddr . tcp
//!   dport` (and `ip daddr . tcp dport` for rules from `any`), else drop. iptables-legacy gets
//!   it as linear rules in the filter table (INPUT and FORWARD jump to one chain: conntrack
//!   established/related accept, invalid drop, one ACCEPT per rule x source x destination,
//!   then one DROP per protected address). xdp-filter (Debian's xdp-tools) is a port deny
//!   only: TCP destination port 22, native mode, TCP feature only.
//! - The traffic is one-way, so conntrack never sees a reply: for nftables and iptables the
//!   allowed packets stay `ct state new` and take the set lookup / the linear walk on every
//!   packet, like the first packet of a connection; director-fw takes its established-flow
//!   path for them (each flow's first packet picks the flow up by rule).
//! - iptables-legacy registers its table hooks in a namespace for good, so it runs in a second
//!   lab of its own; everything else shares the first lab. Deleting a namespace removes all of
//!   its nftables and iptables state.
//! - Rounds: each round visits every filter (in a rotating order); a visit installs the
//!   filter, measures every mix (warm-up, then a timed window), and removes the filter.
//!   Figures are medians over rounds with min-max; ratios to no filter and to nftables are
//!   taken within a round, then the median is reported.
//!
//! Output: a table on stdout and `target/bench/lab.json`. Options: `--help`.

mod shared;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::{self, File},
    io::Write as _,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use aya::{
    maps::{Array, HashMap, PerCpuArray},
    programs::{xdp::XdpLinkId, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf, EbpfLoader, Pod,
};
use director_fw::{
    compile,
    policy::{IcmpEcho, Source, Unprotected},
    AttachMode, Datapath, Policy,
};
use director_fw_lab::{in_netns, netns_command, netns_path, Lab, Role};
use ipnet::IpNet;
use serde_json::{json, Value};
use shared::{median, min_max};

/// Bytes per frame, Ethernet header to the end of the padding (64 on the wire with the FCS
/// a real NIC would add... and a veth does not).
const FRAME_LEN: usize = 64;
/// Frames per live-frames batch: within the veth ring (256), so a batch never overflows it.
const BATCH: u32 = 64;
/// Target length of one BPF_PROG_RUN call.
const CALL_TARGET: Duration = Duration::from_millis(250);

const ALLOW_NET: [u8; 4] = [198, 18, 16, 0];
const ALLOW_PREFIX: u8 = 20;
const DENY_NET: [u8; 4] = [198, 18, 96, 0];
const DENY_PREFIX: u8 = 20;
const ALLOW_PORT: u16 = 443;
const DENY_PORT: u16 = 22;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Set by SIGINT/SIGTERM: the bench stops at the next check and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> Result<()> {
    ensure!(
        !INTERRUPTED.load(Ordering::SeqCst),
        "interrupted; cleaning up"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The generator's configuration, byte for byte as in bench-floors-ebpf/src/lab.rs

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct GenKind {
    base: u32,
    hosts_log2: u32,
    ports_log2: u32,
    dport: u16,
    flags: u8,
    _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct GenConfig {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    deny_share: u32,
    dst: u32,
    allow: GenKind,
    deny: GenKind,
}

const _: () = assert!(std::mem::size_of::<GenConfig>() == 52);

// SAFETY: plain data with explicit padding fields, no implicit padding (size asserted).
unsafe impl Pod for GenConfig {}

// ---------------------------------------------------------------------------------------
// Arguments

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Filter {
    None,
    XdpDrop,
    /// F1 of the kernel bench as a passing filter: parse, one hash lookup, one counter.
    XdpLookupFloor,
    DfwXdp,
    DfwTc,
    Nft,
    Iptables,
    /// xdp-filter as it loads by default (every feature).
    XdpFilterAll,
    /// xdp-filter built for TCP only: its cheapest form.
    XdpFilterTcp,
}

impl Filter {
    const ALL: [Filter; 9] = [
        Filter::None,
        Filter::XdpDrop,
        Filter::XdpLookupFloor,
        Filter::DfwXdp,
        Filter::DfwTc,
        Filter::Nft,
        Filter::Iptables,
        Filter::XdpFilterAll,
        Filter::XdpFilterTcp,
    ];

    fn name(self) -> &'static str {
        match self {
            Filter::None => "none",
            Filter::XdpDrop => "xdp-drop",
            Filter::XdpLookupFloor => "xdp-lookup-floor",
            Filter::DfwXdp => "director-fw-xdp",
            Filter::DfwTc => "director-fw-tc",
            Filter::Nft => "nftables",
            Filter::Iptables => "iptables-legacy",
            Filter::XdpFilterAll => "xdp-filter",
            Filter::XdpFilterTcp => "xdp-filter-tcp",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Filter::None => "no filter: the gateway only forwards",
            Filter::XdpDrop => {
                "XDP program that returns XDP_DROP (native), the floor of any XDP filter"
            }
            Filter::XdpLookupFloor => {
                "XDP program that parses, looks the destination up in a hash and counts, then \
                 passes (the kernel bench's F1), the floor of any XDP filter that consults a table"
            }
            Filter::DfwXdp => "director-fw, native XDP",
            Filter::DfwTc => "director-fw, TC (TCX) ingress",
            Filter::Nft => {
                "nftables inet prerouting chain with conntrack and concatenated interval sets"
            }
            Filter::Iptables => {
                "iptables-legacy filter table, conntrack and linear rules (own lab)"
            }
            Filter::XdpFilterAll => {
                "xdp-filter (xdp-tools) denying TCP port 22 only, native, default features"
            }
            Filter::XdpFilterTcp => {
                "xdp-filter (xdp-tools) denying TCP port 22 only, native, tcp feature only"
            }
        }
    }

    /// The floors drop or pass everything, so each means something for one mix only.
    fn applies_to(self, mix: Mix) -> bool {
        match self {
            Filter::XdpDrop => mix == Mix::Deny,
            Filter::XdpLookupFloor => mix == Mix::Allow,
            _ => true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mix {
    Deny,
    Allow,
    Mixed,
}

impl Mix {
    const ALL: [Mix; 3] = [Mix::Deny, Mix::Allow, Mix::Mixed];

    fn name(self) -> &'static str {
        match self {
            Mix::Deny => "deny",
            Mix::Allow => "allow",
            Mix::Mixed => "mix",
        }
    }

    /// Denied packets per 256.
    fn deny_share(self) -> u32 {
        match self {
            Mix::Deny => 256,
            Mix::Allow => 0,
            Mix::Mixed => 128,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mix::Deny => "all denied: 198.18.96.0/20 (no role) x 16 ports -> director tcp/22 SYN",
            Mix::Allow => "all allowed: 198.18.16.0/20 (internal-clients) x 4 ports -> director tcp/443 ACK, 16,384 flows",
            Mix::Mixed => "half denied, half allowed, alternating",
        }
    }
}

/// Lab throughput: packets per second through the lab's gateway, filter by filter.
#[derive(clap::Parser)]
struct Args {
    /// Rounds; each visits every filter, and figures are medians over them.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds measured per filter and mix.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Seconds of traffic before each measurement.
    #[arg(long, default_value_t = 0.3)]
    warmup: f64,
    /// Filters to measure (default: all).
    #[arg(long, value_delimiter = ',')]
    filters: Vec<Filter>,
    /// Traffic mixes to measure (default: all).
    #[arg(long, value_delimiter = ',')]
    mixes: Vec<Mix>,
    /// One round of one second.
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
            args.rounds = 1;
            args.secs = 1.0;
        }
        if args.filters.is_empty() {
            args.filters = Filter::ALL.to_vec();
        }
        if args.mixes.is_empty() {
            args.mixes = Mix::ALL.to_vec();
        }
        ensure!(args.rounds > 0, "--rounds must be positive");
        ensure!(
            (0.1..=30.0).contains(&args.secs) && (0.0..=5.0).contains(&args.warmup),
            "--secs must be 0.1..=30 and --warmup 0..=5"
        );
        args.filters.sort();
        args.filters.dedup();
        args.mixes.sort();
        args.mixes.dedup();
        Ok(args)
    }
}

impl clap::ValueEnum for Filter {
    fn value_variants<'a>() -> &'a [Self] {
        &Filter::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()).help(self.describe()))
    }
}

impl clap::ValueEnum for Mix {
    fn value_variants<'a>() -> &'a [Self] {
        &Mix::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()).help(self.describe()))
    }
}

// ---------------------------------------------------------------------------------------
// Namespaces, commands, interfaces

/// Moves the calling thread (only) into network namespace `ns`, and checks it arrived.
fn enter_netns(ns: &str) -> Result<()> {
    let path = netns_path(ns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let target = file.metadata()?;
    // SAFETY: plain syscall on a valid, open fd; it changes only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns into {ns}"));
    }
    let now = fs::metadata("/proc/thread-self/ns/net")?;
    ensure!(
        (now.dev(), now.ino()) == (target.dev(), target.ino()),
        "thread did not end up in netns {ns}"
    );
    Ok(())
}

/// Runs `f` on a scoped thread inside `ns` (so `f` may borrow), and returns its result.
fn with_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_netns(ns)?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("thread in netns {ns} panicked"))?
    })
}

/// Runs `program args` inside `ns` (nsenter, network namespace only), feeding `input` on
/// stdin; returns stdout. Failures carry the command and its stderr.
fn run_in(ns: &str, program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let line = format!("{program} {}", args.join(" "));
    let mut cmd = netns_command(ns, Path::new(program))?;
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running `{line}` in {ns}"))?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().context("no stdin")?;
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{line}` in {ns} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    let out = Command::new("ip")
        .args(&full)
        .stdin(Stdio::null())
        .output()
        .context("running ip")?;
    ensure!(
        out.status.success(),
        "`ip {}` failed: {}",
        full.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -j -s link show dev IFACE` inside `ns`.
fn link_json(ns: &str, iface: &str) -> Result<Value> {
    let out = ip_in(ns, &["-j", "-s", "link", "show", "dev", iface])?;
    let mut list: Vec<Value> = serde_json::from_str(&out).context("parsing ip -j output")?;
    ensure!(list.len() == 1, "no link {iface} in {ns}");
    Ok(list.remove(0))
}

fn mac_of(ns: &str, iface: &str) -> Result<[u8; 6]> {
    let link = link_json(ns, iface)?;
    let text = link["address"].as_str().context("no address")?;
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {text}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow!("MAC {text} is not 6 bytes"))
}

/// Received packets and receive drops of `iface` in `ns`.
fn rx_counters(ns: &str, iface: &str) -> Result<(u64, u64)> {
    let link = link_json(ns, iface)?;
    let rx = &link["stats64"]["rx"];
    Ok((
        rx["packets"].as_u64().context("no rx packets")?,
        rx["dropped"].as_u64().unwrap_or(0),
    ))
}

fn write_sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/net/{key}");
    let value = value.to_owned();
    with_netns(ns, || {
        fs::write(&path, &value).with_context(|| format!("writing {value} to {path}"))
    })
}

// ---------------------------------------------------------------------------------------
// The test bed: a lab prepared for one-way traffic from the clients host to the Director

struct Bed {
    lab: Lab,
    gw: String,
    /// The gateway's veth facing the source: every filter attaches here.
    gw_in: String,
    src_ns: String,
    src_iface: String,
    src_ifindex: u32,
    src_mac: [u8; 6],
    gw_in_mac: [u8; 6],
    sink_ns: String,
    sink_iface: String,
    director: std::net::Ipv4Addr,
    sink_link: Option<XdpLinkId>,
}

impl Bed {
    fn new() -> Result<Bed> {
        let lab = Lab::new()?;
        let src = lab.host(Role::InternalClients).clone();
        let sink = lab.host(Role::Director).clone();
        let outsider = lab.host(Role::Outsider).clone();
        let gw = lab.gateway_ns().to_owned();
        for key in [
            "ipv4/conf/all/rp_filter".to_owned(),
            "ipv4/conf/default/rp_filter".to_owned(),
            format!("ipv4/conf/{}/rp_filter", src.gw_iface),
        ] {
            write_sysctl(&gw, &key, "0")?;
        }
        let allow = format!("{}/{ALLOW_PREFIX}", std::net::Ipv4Addr::from(ALLOW_NET));
        let deny = format!("{}/{DENY_PREFIX}", std::net::Ipv4Addr::from(DENY_NET));
        ip_in(&gw, &["route", "add", &allow, "via", &src.v4.to_string()])?;
        ip_in(
            &gw,
            &["route", "add", &deny, "via", &outsider.v4.to_string()],
        )?;
        let sink_mac = mac_of(&sink.ns, &sink.iface)?;
        ip_in(
            &gw,
            &[
                "neigh",
                "replace",
                &sink.v4.to_string(),
                "lladdr",
                &fmt_mac(&sink_mac),
                "dev",
                &sink.gw_iface,
                "nud",
                "permanent",
            ],
        )?;
        // NAPI on the gateway's ingress veth: without it (no XDP program, GRO off) frames
        // sent to it by XDP are dropped.
        run_in(&gw, "ethtool", &["-K", &src.gw_iface, "gro", "on"], None)?;
        let src_ifindex = link_json(&src.ns, &src.iface)?["ifindex"]
            .as_u64()
            .context("no ifindex")? as u32;
        Ok(Bed {
            gw_in_mac: mac_of(&gw, &src.gw_iface)?,
            src_mac: mac_of(&src.ns, &src.iface)?,
            src_ifindex,
            gw,
            gw_in: src.gw_iface,
            src_ns: src.ns,
            src_iface: src.iface,
            sink_ns: sink.ns,
            sink_iface: sink.iface,
            director: sink.v4,
            sink_link: None,
            lab,
        })
    }

    /// The policy file text: the built-in profile, the lab's peers, and the allowed sources'
    /// prefix in internal-clients.
    fn policy_text(&self) -> String {
        let prefix = format!("\"{}/{ALLOW_PREFIX}\"", std::net::Ipv4Addr::from(ALLOW_NET));
        let mut text = String::from("profile = \"lync2013-single-director\"\n");
        for line in self.lab.peers_toml().lines() {
            if line.starts_with(Role::InternalClients.name()) {
                if let Some(head) = line.strip_suffix(']') {
                    let _ = writeln!(text, "{head}, {prefix}]");
                    continue;
                }
            }
            let _ = writeln!(text, "{line}");
        }
        text
    }

    fn gen_config(&self, mix: Mix) -> GenConfig {
        GenConfig {
            dst_mac: self.gw_in_mac,
            src_mac: self.src_mac,
            deny_share: mix.deny_share(),
            dst: u32::from(self.director),
            allow: GenKind {
                base: u32::from_be_bytes(ALLOW_NET),
                hosts_log2: u32::from(32 - ALLOW_PREFIX),
                ports_log2: 2,
                dport: ALLOW_PORT,
                flags: TCP_ACK,
                _pad: 0,
            },
            deny: GenKind {
                base: u32::from_be_bytes(DENY_NET),
                hosts_log2: u32::from(32 - DENY_PREFIX),
                ports_log2: 4,
                dport: DENY_PORT,
                flags: TCP_SYN,
                _pad: 0,
            },
        }
    }
}

fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------------------
// The helper programs (bench-floors-ebpf)

fn floors_object() -> Result<Vec<u8>> {
    let path = PathBuf::from(std::env::var_os("DIRECTOR_FW_FLOORS_OBJ").context(
        "DIRECTOR_FW_FLOORS_OBJ is not set: it names the bench-floors-ebpf object, which \
         `cargo xtask bench` builds and passes",
    )?);
    fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// The source and the sink share one object instance (the sink reads the ports from the
/// source's configuration).
struct Traffic {
    ebpf: Ebpf,
}

impl Traffic {
    fn load(object: &[u8]) -> Result<Traffic> {
        let mut ebpf = EbpfLoader::new().load(object)?;
        for name in ["lab_gen", "lab_sink"] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("the floors object has no program {name}"))?
                .try_into()?;
            program.load()?;
        }
        Ok(Traffic { ebpf })
    }

    fn program(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }

    fn attach_sink(&mut self, bed: &mut Bed) -> Result<()> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut("lab_sink")
            .context("no program lab_sink")?
            .try_into()?;
        let iface = bed.sink_iface.clone();
        let link = with_netns(&bed.sink_ns, || {
            program
                .attach(&iface, XdpMode::Driver)
                .with_context(|| format!("attaching the sink to {iface}"))
        })?;
        bed.sink_link = Some(link);
        Ok(())
    }

    fn detach_sink(&mut self, bed: &mut Bed) {
        if let Some(link) = bed.sink_link.take() {
            if let Some(Ok(program)) = self.ebpf.program_mut("lab_sink").map(<&mut Xdp>::try_from) {
                let _ = program.detach(link);
            }
        }
    }

    fn configure(&mut self, config: GenConfig) -> Result<()> {
        let mut array: Array<_, GenConfig> =
            Array::try_from(self.ebpf.map_mut("GEN_CONFIG").context("no GEN_CONFIG")?)?;
        array.set(0, config, 0)?;
        Ok(())
    }

    fn per_cpu_sum(&self, map: &str, slot: u32) -> Result<u64> {
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(map).with_context(|| format!("no {map}"))?)?;
        Ok(array.get(&slot, 0)?.iter().sum())
    }
}

// ---------------------------------------------------------------------------------------
// Filters

/// What an installed filter leaves behind; dropping it removes the filter. The fields are
/// held only for their Drop.
#[allow(dead_code)]
enum Installed<'a> {
    Nothing,
    Drop(XdpDropGuard<'a>),
    Dfw(Datapath),
    Nft(NftGuard),
    Iptables(IptablesGuard),
    XdpFilter(XdpFilterGuard),
}

struct XdpDropGuard<'a> {
    program: &'a mut Xdp,
    link: Option<XdpLinkId>,
}

impl Drop for XdpDropGuard<'_> {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            let _ = self.program.detach(link);
        }
    }
}

struct NftGuard {
    ns: String,
}

const NFT_TABLE: &str = "dfw_bench";

impl Drop for NftGuard {
    fn drop(&mut self) {
        if let Err(e) = run_in(
            &self.ns,
            "nft",
            &["delete", "table", "inet", NFT_TABLE],
            None,
        ) {
            eprintln!("lab bench: removing the nftables table: {e:#}");
        }
    }
}

struct IptablesGuard {
    ns: String,
}

impl Drop for IptablesGuard {
    fn drop(&mut self) {
        let empty =
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        if let Err(e) = run_in(&self.ns, "iptables-legacy-restore", &[], Some(empty)) {
            eprintln!("lab bench: emptying the iptables rules: {e:#}");
        }
    }
}

const XDP_FILTER_PINS: &str = "/sys/fs/bpf/xdp-filter";
const LIBXDP_PINS: &str = "/sys/fs/bpf/xdp";

struct XdpFilterGuard {
    ns: String,
    iface: String,
    /// libxdp's pin directory did not exist before: remove it if it is left empty.
    remove_libxdp_dir: bool,
}

impl Drop for XdpFilterGuard {
    fn drop(&mut self) {
        if let Err(e) = run_in(&self.ns, "xdp-filter", &["unload", &self.iface], None) {
            eprintln!("lab bench: unloading xdp-filter: {e:#}");
        }
        if self.remove_libxdp_dir {
            // Fails harmlessly when someone else put something there meanwhile.
            let _ = fs::remove_dir(LIBXDP_PINS);
        }
    }
}

/// Why a filter cannot run here, if it cannot.
fn unavailable(filter: Filter) -> Option<String> {
    let has = |program: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    match filter {
        Filter::Nft if !has("nft") => Some("nft is not installed (Debian nftables)".into()),
        Filter::Iptables if !has("iptables-legacy-restore") => {
            Some("iptables-legacy-restore is not installed (Debian iptables)".into())
        }
        Filter::XdpFilterAll | Filter::XdpFilterTcp if !has("xdp-filter") => Some(
            "xdp-filter is not installed (Debian xdp-tools; `cargo xtask` bootstrap installs it)"
                .into(),
        ),
        Filter::XdpFilterAll | Filter::XdpFilterTcp if Path::new(XDP_FILTER_PINS).exists() => {
            Some(format!(
                "{XDP_FILTER_PINS} exists: another xdp-filter is loaded on this machine, and \
             xdp-filter shares its maps machine-wide"
            ))
        }
        _ => None,
    }
}

fn ip_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.trunc().to_string()
    }
}

fn port_text(range: &std::ops::RangeInclusive<u16>, sep: char) -> String {
    if range.start() == range.end() {
        range.start().to_string()
    } else {
        format!("{}{sep}{}", range.start(), range.end())
    }
}

fn nets_of(policy: &Policy, role: usize, v4: bool) -> Vec<IpNet> {
    policy
        .peers
        .iter()
        .filter(|p| p.role == role && matches!(p.net, IpNet::V4(_)) == v4)
        .map(|p| p.net)
        .collect()
}

fn protected_nets(policy: &Policy, v4: bool) -> Vec<IpNet> {
    let mask = policy.to_mask();
    let mut nets: Vec<IpNet> = policy
        .peers
        .iter()
        .filter(|p| mask & director_fw::policy::bit(p.role) != 0)
        .filter(|p| matches!(p.net, IpNet::V4(_)) == v4)
        .map(|p| p.net)
        .collect();
    nets.sort();
    nets.dedup();
    nets
}

fn check_default_options(policy: &Policy) -> Result<()> {
    ensure!(
        policy.options.unprotected == Unprotected::Pass
            && policy.options.icmp_echo == IcmpEcho::Allow
            && !policy.options.audit,
        "the nftables/iptables translations assume the default options"
    );
    Ok(())
}

/// The policy as an expert writes it for nftables.
fn nft_ruleset(policy: &Policy) -> Result<String> {
    check_default_options(policy)?;
    let mut sets = String::new();
    let mut rules = String::new();
    for (v4, fam, ty) in [(true, "ip", "ipv4_addr"), (false, "ip6", "ipv6_addr")] {
        let suffix = if v4 { "4" } else { "6" };
        let protected: Vec<String> = protected_nets(policy, v4).iter().map(ip_text).collect();
        let _ = writeln!(
            sets,
            "\tset protected{suffix} {{ type {ty}; flags interval;{} }}",
            elements(&protected)
        );
        for proto in ["tcp", "udp"] {
            let mut pairs = Vec::new();
            let mut anys = Vec::new();
            for rule in policy.rules.iter().filter(|r| r.protocol.name() == proto) {
                for dst in nets_of(policy, rule.to, v4) {
                    for ports in &rule.ports {
                        let (d, p) = (ip_text(&dst), port_text(ports, '-'));
                        match rule.from {
                            Source::Any => anys.push(format!("{d} . {p}")),
                            Source::Role(from) => {
                                for src in nets_of(policy, from, v4) {
                                    pairs.push(format!("{} . {d} . {p}", ip_text(&src)));
                                }
                            }
                        }
                    }
                }
            }
            if !pairs.is_empty() {
                let _ = writeln!(
                    sets,
                    "\tset allow{suffix}_{proto} {{ type {ty} . {ty} . inet_service; flags interval;{} }}",
                    elements(&pairs)
                );
                let _ = writeln!(
                    rules,
                    "\t\t{fam} saddr . {fam} daddr . {proto} dport @allow{suffix}_{proto} accept"
                );
            }
            if !anys.is_empty() {
                let _ = writeln!(
                    sets,
                    "\tset any{suffix}_{proto} {{ type {ty} . inet_service; flags interval;{} }}",
                    elements(&anys)
                );
                let _ = writeln!(
                    rules,
                    "\t\t{fam} daddr . {proto} dport @any{suffix}_{proto} accept"
                );
            }
        }
    }
    Ok(format!(
        "table inet {NFT_TABLE} {{\n{sets}\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority filter; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n\
         \t\tip daddr != @protected4 accept\n\
         \t\tip6 daddr != @protected6 accept\n\
         \t\ticmpv6 type {{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect }} accept\n\
         \t\ticmp type echo-request accept\n\
         \t\ticmpv6 type echo-request accept\n\
         {rules}\
         \t\tdrop\n\
         \t}}\n}}\n"
    ))
}

fn elements(items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", items.join(", "))
    }
}

/// The policy as linear iptables rules (IPv4: the bench's traffic is IPv4).
fn iptables_ruleset(policy: &Policy) -> Result<String> {
    check_default_options(policy)?;
    let mut text = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:dfw - [0:0]\n\
         -A INPUT -j dfw\n-A FORWARD -j dfw\n\
         -A dfw -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A dfw -m conntrack --ctstate INVALID -j DROP\n\
         -A dfw -p icmp -m icmp --icmp-type echo-request -j ACCEPT\n",
    );
    for rule in &policy.rules {
        let proto = rule.protocol.name();
        for dst in nets_of(policy, rule.to, true) {
            for ports in &rule.ports {
                let tail = format!(
                    "-d {} -p {proto} -m {proto} --dport {} -j ACCEPT",
                    ip_text(&dst),
                    port_text(ports, ':')
                );
                match rule.from {
                    Source::Any => {
                        let _ = writeln!(text, "-A dfw {tail}");
                    }
                    Source::Role(from) => {
                        for src in nets_of(policy, from, true) {
                            let _ = writeln!(text, "-A dfw -s {} {tail}", ip_text(&src));
                        }
                    }
                }
            }
        }
    }
    for net in protected_nets(policy, true) {
        let _ = writeln!(text, "-A dfw -d {} -j DROP", ip_text(&net));
    }
    text.push_str("COMMIT\n");
    Ok(text)
}

const DROP_PROGRAM: &str = "lab_drop";
const LOOKUP_PROGRAM: &str = "floor_lookup";

struct Filters {
    policy: Policy,
    compiled: director_fw::Compiled,
    /// The floors object: `lab_drop` and `floor_lookup`.
    floors: Ebpf,
    nft: String,
    iptables: String,
}

impl Filters {
    fn new(object: &[u8], policy_text: &str) -> Result<Filters> {
        let policy =
            Policy::from_toml("lab-bench-policy.toml", policy_text).map_err(|e| anyhow!("{e}"))?;
        let compiled = compile(&policy).map_err(|e| anyhow!("{e}"))?;
        let mut floors = EbpfLoader::new().load(object)?;
        for name in [DROP_PROGRAM, LOOKUP_PROGRAM] {
            let program: &mut Xdp = floors
                .program_mut(name)
                .with_context(|| format!("the floors object has no program {name}"))?
                .try_into()?;
            program.load()?;
        }
        Ok(Filters {
            nft: nft_ruleset(&policy)?,
            iptables: iptables_ruleset(&policy)?,
            policy,
            compiled,
            floors,
        })
    }

    fn install(&mut self, filter: Filter, bed: &Bed) -> Result<Installed<'_>> {
        let (gw, iface) = (bed.gw.clone(), bed.gw_in.clone());
        Ok(match filter {
            Filter::None => Installed::Nothing,
            Filter::XdpDrop | Filter::XdpLookupFloor => {
                let name = if filter == Filter::XdpDrop {
                    DROP_PROGRAM
                } else {
                    // The lookup hits, as director-fw's lookup of a protected host does.
                    let mut dsts: HashMap<_, u32, u32> = HashMap::try_from(
                        self.floors
                            .map_mut("DSTS")
                            .context("the floors have no DSTS")?,
                    )?;
                    dsts.insert(u32::from_ne_bytes(bed.director.octets()), 1, 0)?;
                    LOOKUP_PROGRAM
                };
                let program: &mut Xdp = self
                    .floors
                    .program_mut(name)
                    .with_context(|| format!("no {name}"))?
                    .try_into()?;
                let mut guard = XdpDropGuard {
                    program,
                    link: None,
                };
                let link = with_netns(&gw, || {
                    guard
                        .program
                        .attach(&iface, XdpMode::Driver)
                        .with_context(|| format!("attaching {name} to {iface}"))
                })?;
                guard.link = Some(link);
                Installed::Drop(guard)
            }
            Filter::DfwXdp | Filter::DfwTc => {
                let mode = if filter == Filter::DfwXdp {
                    AttachMode::Xdp
                } else {
                    AttachMode::Tc
                };
                let (policy, compiled) = (self.policy.clone(), self.compiled.clone());
                let datapath = in_netns(&gw, move || {
                    let mut datapath = Datapath::load_for(&policy, &compiled, mode)?;
                    if let Some(message) = datapath.attach(&iface, mode)? {
                        bail!("director-fw did not attach as asked: {message}");
                    }
                    Ok(datapath)
                })?;
                Installed::Dfw(datapath)
            }
            Filter::Nft => {
                let guard = NftGuard { ns: gw.clone() };
                run_in(&gw, "nft", &["-f", "-"], Some(&self.nft))
                    .context("loading the nftables ruleset")?;
                Installed::Nft(guard)
            }
            Filter::Iptables => {
                let guard = IptablesGuard { ns: gw.clone() };
                run_in(&gw, "iptables-legacy-restore", &[], Some(&self.iptables))
                    .context("loading the iptables rules")?;
                Installed::Iptables(guard)
            }
            Filter::XdpFilterAll | Filter::XdpFilterTcp => {
                let guard = XdpFilterGuard {
                    ns: gw.clone(),
                    iface: iface.clone(),
                    remove_libxdp_dir: !Path::new(LIBXDP_PINS).exists(),
                };
                run_in(
                    &gw,
                    "xdp-filter",
                    &[
                        "load",
                        "--mode",
                        "native",
                        "--policy",
                        "allow",
                        "--features",
                        if filter == Filter::XdpFilterTcp {
                            "tcp"
                        } else {
                            "all"
                        },
                        &iface,
                    ],
                    None,
                )?;
                let port = DENY_PORT.to_string();
                run_in(
                    &gw,
                    "xdp-filter",
                    &["port", "--mode", "dst", "--proto", "tcp", &port],
                    None,
                )?;
                Installed::XdpFilter(guard)
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// Measuring

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    secs: f64,
    /// Frames the source made, per second.
    sent: f64,
    /// Frames the gateway's ingress veth received.
    received: f64,
    /// Frames lost at the gateway's ingress veth (its ring full).
    rx_dropped: f64,
    /// Frames at the sink: all, to the allowed port, to the denied port.
    forwarded: f64,
    fwd_allowed: f64,
    fwd_denied: f64,
}

impl Sample {
    fn dropped(&self) -> f64 {
        (self.received - self.forwarded).max(0.0)
    }
}

#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    made: u64,
    rx: u64,
    rx_dropped: u64,
    sink: [u64; 3],
}

fn snapshot(traffic: &Traffic, bed: &Bed) -> Result<Snapshot> {
    let before = Instant::now();
    let (rx, rx_dropped) = rx_counters(&bed.gw, &bed.gw_in)?;
    let after = Instant::now();
    Ok(Snapshot {
        at: before + (after - before) / 2,
        made: traffic.per_cpu_sum("GEN_COUNT", 1)? + traffic.per_cpu_sum("GEN_COUNT", 2)?,
        rx,
        rx_dropped,
        sink: [
            traffic.per_cpu_sum("SINK_COUNT", 0)?,
            traffic.per_cpu_sum("SINK_COUNT", 1)?,
            traffic.per_cpu_sum("SINK_COUNT", 2)?,
        ],
    })
}

/// One generator thread: live-frames runs of `lab_gen` on the source veth until `stop`.
fn generate(program: &Xdp, bed: &Bed, cpu: usize, stop: &AtomicBool, end: Instant) -> Result<()> {
    enter_netns(&bed.src_ns)?;
    shared::pin_thread(cpu)?;
    let frame = [0u8; FRAME_LEN];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex.
    let md: Vec<u8> = [0, FRAME_LEN as u32, 0, bed.src_ifindex, 0, 0]
        .iter()
        .flat_map(|w: &u32| w.to_ne_bytes())
        .collect();
    let mut repeat: u32 = 20_000;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        let mut options = TestRunOptions::new();
        options.data_in = Some(&frame);
        options.ctx_in = Some(&md);
        options.repeat = repeat;
        options.attrs = TestRunAttrs::new().xdp_live_frames(BATCH);
        let started = Instant::now();
        // Live frames report no return value; the sample checks that frames arrived.
        program
            .test_run(options)
            .with_context(|| format!("BPF_PROG_RUN (live frames) on {}", bed.src_iface))?;
        let took = started.elapsed().as_secs_f64().max(1e-4);
        let next = f64::from(repeat) * CALL_TARGET.as_secs_f64() / took;
        repeat = next.clamp(10_000.0, 20_000_000.0) as u32;
    }
    Ok(())
}

fn measure(
    traffic: &mut Traffic,
    bed: &Bed,
    mix: Mix,
    cpu: usize,
    warmup: Duration,
    window: Duration,
) -> Result<Sample> {
    check_interrupted()?;
    traffic.configure(bed.gen_config(mix))?;
    let traffic = &*traffic;
    let program = traffic.program("lab_gen")?;
    let stop = AtomicBool::new(false);
    // Bounds the generator even if this thread never gets to set `stop`.
    let end = Instant::now() + warmup + window + Duration::from_secs(5);
    thread::scope(|scope| -> Result<Sample> {
        let threads: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| generate(program, bed, cpu, &stop, end)))
            .collect();
        let result = (|| -> Result<Sample> {
            thread::sleep(warmup);
            let a = snapshot(traffic, bed)?;
            let deadline = a.at + window;
            while Instant::now() < deadline {
                check_interrupted()?;
                ensure!(
                    !threads.iter().any(|t| t.is_finished()),
                    "a generator thread stopped early"
                );
                thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
            }
            let b = snapshot(traffic, bed)?;
            ensure!(
                b.made > a.made && b.rx > a.rx,
                "no traffic: the source made {} frames and the gateway received {}",
                b.made - a.made,
                b.rx.saturating_sub(a.rx)
            );
            let secs = (b.at - a.at).as_secs_f64();
            let rate = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
            let sink_all = |s: &Snapshot| s.sink.iter().sum::<u64>();
            Ok(Sample {
                secs,
                sent: rate(a.made, b.made),
                received: rate(a.rx, b.rx),
                rx_dropped: rate(a.rx_dropped, b.rx_dropped),
                forwarded: rate(sink_all(&a), sink_all(&b)),
                fwd_allowed: rate(a.sink[0], b.sink[0]),
                fwd_denied: rate(a.sink[1], b.sink[1]),
            })
        })();
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join()
                .map_err(|_| anyhow!("a generator thread panicked"))??;
        }
        result
    })
}

// ---------------------------------------------------------------------------------------
// Statistics and report

fn stat(values: &[f64]) -> Value {
    let (lo, hi) = min_max(values);
    let num = |x: f64| {
        if x.is_finite() {
            json!((x * 1000.0).round() / 1000.0)
        } else {
            Value::Null
        }
    };
    json!({"median": num(median(values)), "min": num(lo), "max": num(hi), "rounds": values.iter().map(|&x| num(x)).collect::<Vec<_>>()})
}

type Results = BTreeMap<(Mix, Filter), Vec<(usize, Sample)>>;

/// Per round, `f(filter's sample) / f(reference's sample)` for the rounds both have.
fn ratios(
    results: &Results,
    mix: Mix,
    filter: Filter,
    reference: Filter,
    f: impl Fn(&Sample) -> f64,
) -> Vec<f64> {
    let (Some(ours), Some(theirs)) = (results.get(&(mix, filter)), results.get(&(mix, reference)))
    else {
        return Vec::new();
    };
    ours.iter()
        .filter_map(|(round, s)| {
            let r = theirs.iter().find(|(r, _)| r == round)?.1;
            let d = f(&r);
            (d > 0.0).then(|| f(s) / d)
        })
        .collect()
}

/// Per round, the extra nanoseconds per received packet over the reference.
fn extra_ns(results: &Results, mix: Mix, filter: Filter, reference: Filter) -> Vec<f64> {
    let (Some(ours), Some(theirs)) = (results.get(&(mix, filter)), results.get(&(mix, reference)))
    else {
        return Vec::new();
    };
    ours.iter()
        .filter_map(|(round, s)| {
            let r = theirs.iter().find(|(r, _)| r == round)?.1;
            (s.received > 0.0 && r.received > 0.0).then(|| 1e9 / s.received - 1e9 / r.received)
        })
        .collect()
}

fn mpps(x: f64) -> String {
    if x.is_finite() {
        format!("{:.2}", x / 1e6)
    } else {
        "-".into()
    }
}

fn ratio_text(values: &[f64]) -> String {
    let m = median(values);
    if m.is_finite() {
        format!("{m:.2}")
    } else {
        "-".into()
    }
}

fn print_table(args: &Args, results: &Results) {
    println!();
    println!(
        "Lab throughput at the gateway, 64-byte frames, median of {} round(s) of {:.1} s [min-max]; \
         ratios are per round vs. no filter (x none) and vs. nftables (x nft)",
        args.rounds, args.secs
    );
    for &mix in &args.mixes {
        println!("\nmix {}: {}", mix.name(), mix.describe());
        println!(
            "{:<16} {:>17} {:>17} {:>17} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9}",
            "filter",
            "handled Mpps",
            "dropped Mpps",
            "fwd Mpps",
            "hdl/no",
            "hdl/nft",
            "drp/nft",
            "fwd/no",
            "fwd/nft",
            "ns/pkt",
            "+ns vs no"
        );
        for &filter in &args.filters {
            let Some(samples) = results.get(&(mix, filter)) else {
                continue;
            };
            let col = |f: &dyn Fn(&Sample) -> f64| {
                let v: Vec<f64> = samples.iter().map(|(_, s)| f(s)).collect();
                let (lo, hi) = min_max(&v);
                format!("{} [{}-{}]", mpps(median(&v)), mpps(lo), mpps(hi))
            };
            let ns: Vec<f64> = samples.iter().map(|(_, s)| 1e9 / s.received).collect();
            let extra = extra_ns(results, mix, filter, Filter::None);
            println!(
                "{:<16} {:>17} {:>17} {:>17} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8.0} {:>9}",
                filter.name(),
                col(&|s| s.received),
                col(&|s| s.dropped()),
                col(&|s| s.forwarded),
                ratio_text(&ratios(results, mix, filter, Filter::None, |s| s.received)),
                ratio_text(&ratios(results, mix, filter, Filter::Nft, |s| s.received)),
                ratio_text(&ratios(results, mix, filter, Filter::Nft, Sample::dropped)),
                ratio_text(&ratios(results, mix, filter, Filter::None, |s| s.forwarded)),
                ratio_text(&ratios(results, mix, filter, Filter::Nft, |s| s.forwarded)),
                median(&ns),
                if filter == Filter::None {
                    "-".to_string()
                } else {
                    format!("{:+.0}", median(&extra))
                }
            );
        }
    }
}

/// The same policy in each filter's own language, recorded with the figures.
struct Rulesets<'a> {
    policy: &'a str,
    nft: &'a str,
    iptables: &'a str,
}

fn report(
    args: &Args,
    cpu: usize,
    results: &Results,
    skipped: &[(Filter, String)],
    rulesets: &Rulesets,
    elapsed: Duration,
) -> Value {
    let mut rows = Vec::new();
    for &mix in &args.mixes {
        for &filter in &args.filters {
            let Some(samples) = results.get(&(mix, filter)) else {
                continue;
            };
            let of = |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> {
                samples.iter().map(|(_, s)| f(s)).collect()
            };
            let allowed_share = 1.0 - f64::from(mix.deny_share()) / 256.0;
            rows.push(json!({
                "mix": mix.name(),
                "filter": filter.name(),
                "received_pps": stat(&of(&|s| s.received)),
                "dropped_pps": stat(&of(&Sample::dropped)),
                "forwarded_pps": stat(&of(&|s| s.forwarded)),
                "sent_pps": stat(&of(&|s| s.sent)),
                "rx_ring_dropped_pps": stat(&of(&|s| s.rx_dropped)),
                "ns_per_packet": stat(&of(&|s| 1e9 / s.received)),
                "extra_ns_vs_none": stat(&extra_ns(results, mix, filter, Filter::None)),
                "extra_ns_vs_xdp_drop": stat(&extra_ns(results, mix, filter, Filter::XdpDrop)),
                "ratios": {
                    "received_vs_none": stat(&ratios(results, mix, filter, Filter::None, |s| s.received)),
                    "received_vs_nft": stat(&ratios(results, mix, filter, Filter::Nft, |s| s.received)),
                    "dropped_vs_nft": stat(&ratios(results, mix, filter, Filter::Nft, Sample::dropped)),
                    "forwarded_vs_none": stat(&ratios(results, mix, filter, Filter::None, |s| s.forwarded)),
                    "forwarded_vs_nft": stat(&ratios(results, mix, filter, Filter::Nft, |s| s.forwarded)),
                },
                "checks": {
                    "denied_forwarded_pps": stat(&of(&|s| s.fwd_denied)),
                    "allowed_forwarded_pps": stat(&of(&|s| s.fwd_allowed)),
                    "allowed_delivered_fraction": stat(&of(&|s| if allowed_share > 0.0 && s.received > 0.0 {
                        s.fwd_allowed / (s.received * allowed_share)
                    } else { f64::NAN })),
                },
                "secs": stat(&of(&|s| s.secs)),
            }));
        }
    }
    json!({
        "bench": "lab",
        "unit": "packets per second at the gateway; ratios per round, then median",
        "config": {
            "rounds": args.rounds,
            "secs": args.secs,
            "warmup_secs": args.warmup,
            "frame_bytes": FRAME_LEN,
            "generator": format!("lab_gen, BPF_PROG_RUN live frames (batch {BATCH}), XDP_TX from the internal-clients host's veth, 2 threads on CPU {cpu}"),
            "cpu": cpu,
            "sink": "lab_sink (native XDP, counts and drops) on the director host's veth",
            "mixes": args.mixes.iter().map(|m| json!({"name": m.name(), "denied_per_256": m.deny_share(), "what": m.describe()})).collect::<Vec<_>>(),
            "filters": args.filters.iter().map(|f| json!({"name": f.name(), "what": f.describe()})).collect::<Vec<_>>(),
            "policy_toml": rulesets.policy,
            "nftables_ruleset": rulesets.nft,
            "iptables_rules": rulesets.iptables,
        },
        "results": rows,
        "skipped": skipped.iter().map(|(f, why)| json!({"filter": f.name(), "reason": why})).collect::<Vec<_>>(),
        "elapsed_secs": elapsed.as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------------

fn main() -> Result<()> {
    let args = Args::parse()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab bench builds network namespaces and loads eBPF programs: it needs root; run `cargo xtask bench`");
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let started = Instant::now();
    let object = floors_object()?;
    let cpu = shared::last_cpu()?;
    let mut skipped: Vec<(Filter, String)> = Vec::new();
    let mut filters_run: Vec<Filter> = Vec::new();
    for &filter in &args.filters {
        match unavailable(filter) {
            Some(why) => {
                eprintln!("lab bench: skipping {}: {why}", filter.name());
                skipped.push((filter, why));
            }
            None => filters_run.push(filter),
        }
    }

    let mut traffic = Traffic::load(&object)?;
    let mut main_bed = Bed::new().context("building the lab")?;
    // iptables-legacy's hooks stay in a namespace once used: it gets a lab of its own.
    let mut ipt_bed = if filters_run.contains(&Filter::Iptables) {
        Some(Bed::new().context("building the iptables lab")?)
    } else {
        None
    };
    let policy_text = main_bed.policy_text();
    let mut filters = Filters::new(&object, &policy_text)?;
    let outcome = (|| -> Result<Results> {
        traffic.attach_sink(&mut main_bed)?;
        if let Some(bed) = ipt_bed.as_mut() {
            traffic.attach_sink(bed)?;
        }
        let (warmup, window) = (
            Duration::from_secs_f64(args.warmup),
            Duration::from_secs_f64(args.secs),
        );
        let planned = args.rounds as f64
            * filters_run.len() as f64
            * args.mixes.len() as f64
            * (args.secs + args.warmup + 0.5);
        let limit = Duration::from_secs_f64(planned * 2.0 + 120.0);
        eprintln!(
            "lab bench: {} round(s) x {} filter(s) x {} mix(es), {:.1} s each (+{:.1} s warm-up), generator on CPU {cpu}; about {:.0} s",
            args.rounds,
            filters_run.len(),
            args.mixes.len(),
            args.secs,
            args.warmup,
            planned
        );
        let mut results = Results::new();
        for round in 0..args.rounds {
            let n = filters_run.len();
            for i in 0..n {
                ensure!(
                    started.elapsed() < limit,
                    "the bench took longer than {limit:?}; stopping"
                );
                let filter = filters_run[(round + i) % n];
                let bed = if filter == Filter::Iptables {
                    ipt_bed.as_ref().context("no iptables lab")?
                } else {
                    &main_bed
                };
                let installed = filters
                    .install(filter, bed)
                    .with_context(|| format!("installing {}", filter.name()))?;
                let m = args.mixes.len();
                for j in 0..m {
                    let mix = args.mixes[(round + j) % m];
                    if !filter.applies_to(mix) {
                        continue;
                    }
                    let sample = measure(&mut traffic, bed, mix, cpu, warmup, window)
                        .with_context(|| format!("measuring {} / {}", filter.name(), mix.name()))?;
                    eprintln!(
                        "lab bench: round {} {:<16} {:<5} handled {:>6} Mpps, dropped {:>6}, forwarded {:>6} (made {:>6})",
                        round + 1,
                        filter.name(),
                        mix.name(),
                        mpps(sample.received),
                        mpps(sample.dropped()),
                        mpps(sample.forwarded),
                        mpps(sample.sent)
                    );
                    results
                        .entry((mix, filter))
                        .or_default()
                        .push((round, sample));
                }
                drop(installed);
            }
        }
        Ok(results)
    })();
    traffic.detach_sink(&mut main_bed);
    if let Some(bed) = ipt_bed.as_mut() {
        traffic.detach_sink(bed);
    }
    let (nft, iptables) = (filters.nft.clone(), filters.iptables.clone());
    drop(filters);
    drop(ipt_bed);
    drop(main_bed);
    let results = outcome?;

    print_table(&args, &results);
    for (filter, why) in &skipped {
        println!("skipped {}: {why}", filter.name());
    }
    let report = report(
        &args,
        cpu,
        &results,
        &skipped,
        &Rulesets {
            policy: &policy_text,
            nft: &nft,
            iptables: &iptables,
        },
        started.elapsed(),
    );
    let out = shared::out_path("lab.json");
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("\nwritten: {}", out.display());
    Ok(())
}
