//! The kernel program and the reference model must agree on every packet: verdict, rule and
//! reason. Packets are generated valid and malformed, across roles, ports, TCP flags, VLAN
//! tags, fragments, IPv4 options, IPv6 extension headers and ICMP errors, and fed in one long
//! sequence so that flows and fragments created by earlier packets matter to later ones.

mod common;

use std::net::IpAddr;

use common::{frames::*, root_or_skip, Kernel};
use director_fw::Policy;
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config as ProptestConfig, TestRunner},
};

/// At least this many packets per CI run on the host.
const PACKETS: u32 = 120_000;

/// The packet count: [`PACKETS`], unless `DIRECTOR_FW_DIFFERENTIAL_PACKETS` says otherwise.
/// The kernel matrix (`cargo xtask test --kernel`) lowers it: qemu emulates the CPU there,
/// and 120,000 packets take minutes per kernel.
fn packets() -> u32 {
    match std::env::var("DIRECTOR_FW_DIFFERENTIAL_PACKETS") {
        Ok(text) => text.parse().unwrap_or_else(|_| {
            panic!("DIRECTOR_FW_DIFFERENTIAL_PACKETS={text:?} is not a packet count")
        }),
        Err(_) => PACKETS,
    }
}

/// The Director family. Hosts and prefixes, overlapping on purpose: a Director inside the
/// client prefix, custom roles, a UDP rule and a port range, so every lookup path is exercised.
const DIRECTOR: &str = r#"profile = "lync2013-single-director"

[peers]
reverse-proxy    = ["198.18.1.10", "2001:db8:1::10"]
director         = ["198.18.2.10", "2001:db8:2::10", "198.18.16.7"]
front-end        = ["198.18.3.0/28", "2001:db8:3::/120"]
internal-clients = ["198.18.16.0/20", "2001:db8:40::/48"]
edge-internal    = ["198.18.5.10", "2001:db8:5::10"]
ops              = ["198.18.7.0/24", "2001:db8:7::7"]

[[rules]]
id    = "ops-admin"
from  = "ops"
to    = "director"
proto = "tcp"
ports = ["22", "8000-8010"]

[[rules]]
id    = "clients-fe-dns"
from  = "internal-clients"
to    = "front-end"
proto = "udp"
ports = [53]
"#;

/// The Lync Server 2013 Edge family, on the same addresses: UDP media ranges, the VIPs, and
/// `internet` holding every address, so that every destination is protected.
const LYNC_EDGE: &str = r#"profile = "lync2013-edge-scaled-hlb"

[peers]
edge-access        = ["198.18.1.10", "2001:db8:1::10"]
edge-webconf-vip   = ["198.18.16.7", "2001:db8:40::1"]
edge-av            = ["198.18.3.0/28", "2001:db8:3::/120"]
edge-internal      = ["198.18.5.10", "2001:db8:5::10"]
edge-access-vip    = ["198.18.2.10", "2001:db8:2::10"]
edge-av-vip        = ["198.18.16.200", "2001:db8:3::1:0"]
edge-internal-vip  = ["198.18.9.9", "2001:db8:a::1"]
federation-partner = ["198.19.0.0/16", "2001:db8:9::/48"]
internet           = ["0.0.0.0/0", "::/0"]
management         = ["198.18.7.9", "2001:db8:7::7"]

[[rules]]
id    = "ops-ssh"
from  = "any"
to    = "management"
proto = "tcp"
ports = ["22"]
"#;

/// The Skype for Business Edge family, on the same addresses, with `internet` a prefix, so
/// that addresses in no role stay unprotected.
const SFB_EDGE: &str = r#"profile = "sfb2015-edge"

[peers]
edge-access   = ["198.18.1.10", "2001:db8:1::10", "198.18.16.7"]
edge-webconf  = ["198.18.2.10", "2001:db8:2::10"]
edge-av       = ["198.18.3.0/28", "2001:db8:3::/120"]
edge-internal = ["198.18.5.10", "2001:db8:5::10"]
internet      = ["198.18.16.0/20", "2001:db8:40::/48", "198.19.0.0/16"]
"#;

const V4: [&str; 9] = [
    "198.18.1.10",
    "198.18.2.10",
    "198.18.16.7",
    "198.18.3.5",
    "198.18.16.200",
    "198.18.5.10",
    "198.18.7.9",
    "198.18.9.9",
    "198.19.0.1",
];
const V6: [&str; 9] = [
    "2001:db8:1::10",
    "2001:db8:2::10",
    "2001:db8:3::42",
    "2001:db8:40::1",
    "2001:db8:5::10",
    "2001:db8:7::7",
    "2001:db8:9::9",
    "2001:db8:3::1:0",
    "2001:db8:a::1",
];
const PORTS: [u16; 33] = [
    80, 443, 444, 445, 4443, 4444, 5060, 5061, 8080, 8079, 8000, 8010, 8011, 22, 53, 50001, 50003,
    50004, 40000, 40001, 1, 65535, 3478, 3479, 5062, 5269, 8057, 23456, 49999, 50000, 55555, 59999,
    60000,
];

fn address(v6: bool) -> impl Strategy<Value = IpAddr> {
    let pool: Vec<IpAddr> = if v6 {
        V6.iter().map(|a| a.parse().unwrap()).collect()
    } else {
        V4.iter().map(|a| a.parse().unwrap()).collect()
    };
    prop::sample::select(pool)
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![4 => prop::sample::select(PORTS.to_vec()), 1 => any::<u16>()]
}

fn tcp_flags() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(vec![
            TCP_SYN,
            TCP_SYN | TCP_ACK,
            TCP_ACK,
            TCP_ACK | TCP_PSH,
            TCP_FIN | TCP_ACK,
            TCP_RST,
            TCP_RST | TCP_ACK,
        ]),
        1 => any::<u8>(),
    ]
}

fn icmp_type(v6: bool) -> impl Strategy<Value = u8> {
    let common: Vec<u8> = if v6 {
        vec![1, 2, 3, 4, 128, 129, 133, 134, 135, 136, 137, 130]
    } else {
        vec![0, 3, 8, 11, 12, 5, 13]
    };
    prop_oneof![4 => prop::sample::select(common), 1 => any::<u8>()]
}

/// A frame description plus how to damage it.
#[derive(Clone, Debug)]
struct Case {
    frame: Frame,
    /// Cut the frame to this many bytes (at least 14, which BPF_PROG_TEST_RUN needs).
    truncate: Option<usize>,
    /// Overwrite one byte: (position, value).
    corrupt: Option<(usize, u8)>,
}

fn l4(v6: bool) -> impl Strategy<Value = L4> {
    prop_oneof![
        6 => (port(), port(), tcp_flags()).prop_map(|(sport, dport, flags)| L4::Tcp { sport, dport, flags }),
        2 => (port(), port()).prop_map(|(sport, dport)| L4::Udp { sport, dport }),
        2 => (icmp_type(v6), any::<u8>(), 0u16..4).prop_map(|(ty, code, id)| {
            let id = id.to_be_bytes();
            L4::Icmp { ty, code, rest: [id[0], id[1], 0, 1], quoted: Vec::new() }
        }),
        1 => prop::sample::select(vec![0u8, 2, 47, 50, 51, 89, 132, 1, 58, 255]).prop_map(|proto| L4::Raw { proto }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    any::<bool>().prop_flat_map(|v6| {
        (
            address(v6),
            address(v6),
            l4(v6),
            prop_oneof![8 => Just(0u8), 1 => 1u8..=2, 1 => Just(3u8)],
            prop_oneof![6 => Just(0u8), 1 => 1u8..=10],
            prop::collection::vec(prop::sample::select(vec![0u8, 43, 60, 51]), 0..=7),
            prop_oneof![
                6 => Just(None),
                1 => (0u32..4, prop::sample::select(vec![0u16, 1, 185]), any::<bool>())
                    .prop_map(Some),
            ],
            0usize..48,
            // An ICMP error quoting a TCP or UDP packet between two pool addresses.
            prop_oneof![
                6 => Just(None),
                1 => (address(v6), address(v6), port(), port(), any::<bool>()).prop_map(Some),
            ],
        )
            .prop_map(
                move |(src, dst, l4, vlans, words, ext, fragment, payload, quoted)| {
                    let mut f = Frame::new(src, dst, l4);
                    f.vlans = vlans;
                    f.payload = payload;
                    f.fragment = fragment;
                    if v6 {
                        f.ipv6_ext = if ext.len() > 2 && payload % 3 != 0 {
                            ext[..1].to_vec()
                        } else {
                            ext
                        };
                    } else {
                        f.ipv4_option_words = words;
                    }
                    if let (Some((isrc, idst, sport, dport, udp)), L4::Icmp { .. }) =
                        (quoted, &f.l4)
                    {
                        let inner = if udp {
                            Frame::udp(isrc, sport, idst, dport)
                        } else {
                            Frame::tcp(isrc, sport, idst, dport, TCP_SYN)
                        };
                        let ty = if v6 { 1 } else { 3 };
                        let error = icmp_error(src, dst, ty, &inner);
                        f.l4 = error.l4;
                    }
                    f
                },
            )
    })
}

fn case() -> impl Strategy<Value = Case> {
    (
        frame(),
        prop_oneof![9 => Just(None), 1 => (14usize..120).prop_map(Some)],
        prop_oneof![9 => Just(None), 1 => (0usize..120, any::<u8>()).prop_map(Some)],
    )
        .prop_map(|(frame, truncate, corrupt)| Case {
            frame,
            truncate,
            corrupt,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn kernel_and_model_agree_on_every_packet() {
    if root_or_skip("kernel_and_model_agree_on_every_packet") {
        agree("director", DIRECTOR);
    }
}

#[test]
fn kernel_and_model_agree_on_every_packet_lync_edge() {
    if root_or_skip("kernel_and_model_agree_on_every_packet_lync_edge") {
        agree("lync-edge", LYNC_EDGE);
    }
}

#[test]
fn kernel_and_model_agree_on_every_packet_sfb_edge() {
    if root_or_skip("kernel_and_model_agree_on_every_packet_sfb_edge") {
        agree("sfb-edge", SFB_EDGE);
    }
}

/// Judges [`packets`] generated packets with the kernel and the model under `text`.
fn agree(family: &str, text: &str) {
    let policy = Policy::from_toml(family, text).unwrap();
    let mut kernel = Kernel::load(policy.clone());
    let mut model = director_fw::Model::new(&policy, kernel.config);
    let mut verdicts = std::collections::BTreeMap::new();
    // Values are drawn one at a time rather than through `TestRunner::run`: the sequence is
    // stateful (flows, fragments), so shrinking would replay a different history; the first
    // disagreement is the one to report.
    let mut runner = TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = case();
    let packets = packets();
    for judged in 0..packets {
        let case = strategy.new_tree(&mut runner).expect("generates").current();
        let mut bytes = case.frame.bytes();
        if let Some(len) = case.truncate {
            bytes.truncate(len.max(14));
        }
        if let Some((at, value)) = case.corrupt {
            if at < bytes.len() {
                bytes[at] = value;
            }
        }
        let from_kernel = kernel.judge(&bytes);
        let from_model = model.judge(&bytes, 0);
        assert_eq!(
            from_kernel,
            from_model,
            "{family}: kernel and model disagree on packet {judged}: frame {} from {case:?}",
            hex(&bytes)
        );
        *verdicts.entry(format!("{from_model:?}")).or_insert(0u32) += 1;
    }
    eprintln!(
        "differential ({family}): {packets} packets judged by kernel and model, 0 mismatches"
    );
    for (verdict, n) in &verdicts {
        eprintln!("  {n:>7}  {verdict}");
    }
    // The generator must reach the interesting verdicts, or agreement proves little. Where a
    // role holds every address, nothing is unprotected.
    let everything = policy.peers.iter().any(|p| p.net.prefix_len() == 0);
    for needle in [
        "Rule(",
        "Pass(Flow)",
        "Drop(NoRule)",
        "Drop(Malformed)",
        "Drop(Fragment)",
        "Pass(Fragment)",
        "BadTcpFlags",
        "Unprotected",
        "NeighborDiscovery",
        "IcmpEcho",
        "NonIp",
    ]
    .into_iter()
    .filter(|n| !(everything && *n == "Unprotected"))
    {
        assert!(
            verdicts.keys().any(|v| v.contains(needle)),
            "no packet reached {needle}: {verdicts:?}"
        );
    }
}
