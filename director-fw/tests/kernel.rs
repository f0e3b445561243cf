//! The real eBPF object judged packet by packet through BPF_PROG_TEST_RUN.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::{addr, frames::*, lab_policy, root_or_skip, Kernel};
use director_fw::{
    policy::{Protocol, Source},
    Policy,
};
use director_fw_common::{
    config::{FLAG_AUDIT, FLAG_ICMP_ECHO_DENY},
    interfaces::{ANY_RULE, INTERFACE_SLOTS},
    DropReason, PassKind, Verdict,
};
use director_fw_lab::Role;

const NO_RULE: Verdict = Verdict::Drop(DropReason::NoRule);
const MALFORMED: Verdict = Verdict::Drop(DropReason::Malformed);
const UNPROTECTED: Verdict = Verdict::Pass(PassKind::Unprotected);

fn role(name: &str) -> Role {
    *Role::ALL
        .iter()
        .find(|r| r.name() == name)
        .expect("lab role")
}

fn syn(from: Role, to: Role, dport: u16, v6: bool) -> Vec<u8> {
    Frame::tcp(addr(from, v6), 40000, addr(to, v6), dport, TCP_SYN).bytes()
}

macro_rules! kernel {
    ($name:literal) => {{
        if !root_or_skip($name) {
            return;
        }
        Kernel::load(lab_policy(""))
    }};
}

#[test]
fn every_rule_passes_its_port_and_only_its_port() {
    let mut k = kernel!("every_rule_passes_its_port_and_only_its_port");
    let rules = k.policy.rules.clone();
    for v6 in [false, true] {
        for rule in &rules {
            let to = role(k.policy.role_name(rule.to));
            let sources: Vec<Role> = match rule.from {
                Source::Any => Role::ALL.to_vec(),
                Source::Role(r) => vec![role(k.policy.role_name(r))],
            };
            let (first, last) = (*rule.ports[0].start(), *rule.ports[0].end());
            for &from in &sources {
                for port in first..=last {
                    k.datapath.clear_flows().unwrap();
                    assert_eq!(
                        k.judge(&syn(from, to, port, v6)),
                        k.rule(&rule.id),
                        "{} {from} v6={v6}",
                        rule.id
                    );
                }
                // Neighbouring ports are closed, unless another rule opens them there.
                for port in [first - 1, last + 1] {
                    let open = rules
                        .iter()
                        .any(|r| r.to == rule.to && r.matches_port(port));
                    if !open {
                        assert_eq!(
                            k.judge(&syn(from, to, port, v6)),
                            NO_RULE,
                            "{} port {port}",
                            rule.id
                        );
                    }
                }
                // The same port over UDP is not open.
                let udp = Frame::udp(addr(from, v6), 40000, addr(to, v6), first).bytes();
                assert_eq!(k.judge(&udp), NO_RULE, "{} over udp", rule.id);
            }
            // Other roles: only those some rule lets in on this port pass.
            for &from in Role::ALL.iter().filter(|r| !sources.contains(r)) {
                k.datapath.clear_flows().unwrap();
                let allowed = rules.iter().find(|r| {
                    r.to == rule.to
                        && r.matches_port(first)
                        && match r.from {
                            Source::Any => true,
                            Source::Role(s) => k.policy.role_name(s) == from.name(),
                        }
                });
                let expected = match allowed {
                    Some(r) => k.rule(&r.id),
                    None => NO_RULE,
                };
                assert_eq!(
                    k.judge(&syn(from, to, first, v6)),
                    expected,
                    "{} from {from}",
                    rule.id
                );
            }
        }
    }
}

#[test]
fn outsiders_reach_unprotected_hosts_only() {
    let mut k = kernel!("outsiders_reach_unprotected_hosts_only");
    for v6 in [false, true] {
        // The reverse proxy and the clients are never a rule's destination.
        for to in [Role::ReverseProxy, Role::InternalClients] {
            assert_eq!(k.judge(&syn(Role::Outsider, to, 22, v6)), UNPROTECTED);
        }
        assert_eq!(
            k.judge(&syn(Role::Outsider, Role::Director, 443, v6)),
            NO_RULE
        );
        assert_eq!(
            k.judge(&syn(Role::Outsider, Role::FrontEnd, 444, v6)),
            NO_RULE
        );
        let cls = k.rule("any-edge-cls");
        assert_eq!(
            k.judge(&syn(Role::Outsider, Role::EdgeInternal, 50001, v6)),
            cls
        );
    }
}

#[test]
fn replies_pass_only_after_the_forward_packet() {
    let mut k = kernel!("replies_pass_only_after_the_forward_packet");
    for v6 in [false, true] {
        let (dir, fe) = (addr(Role::Director, v6), addr(Role::FrontEnd, v6));
        let reply = Frame::tcp(fe, 444, dir, 50123, TCP_SYN | TCP_ACK).bytes();
        assert_eq!(k.judge(&reply), NO_RULE, "no flow yet");
        let forward = Frame::tcp(dir, 50123, fe, 444, TCP_SYN).bytes();
        assert_eq!(k.judge(&forward), k.rule("director-fe-https"));
        assert_eq!(k.judge(&reply), Verdict::Pass(PassKind::Flow));
        let ack = Frame::tcp(dir, 50123, fe, 444, TCP_ACK).bytes();
        assert_eq!(k.judge(&ack), Verdict::Pass(PassKind::Flow));
        // Another port of the same pair is not part of the flow.
        let other = Frame::tcp(fe, 444, dir, 50124, TCP_ACK).bytes();
        assert_eq!(k.judge(&other), NO_RULE);
    }
}

#[test]
fn mid_stream_packets_pick_the_flow_up() {
    let mut k = kernel!("mid_stream_packets_pick_the_flow_up");
    let (rp, dir) = (addr(Role::ReverseProxy, false), addr(Role::Director, false));
    let data = Frame::tcp(rp, 41000, dir, 4443, TCP_ACK | TCP_PSH)
        .payload(100)
        .bytes();
    assert_eq!(k.judge(&data), k.rule("rp-director-https"));
    assert_eq!(k.judge(&data), Verdict::Pass(PassKind::Flow));
}

#[test]
fn protected_hosts_get_replies_to_their_own_connections() {
    let mut k = kernel!("protected_hosts_get_replies_to_their_own_connections");
    let (dir, out) = (addr(Role::Director, false), addr(Role::Outsider, false));
    let reply = Frame::tcp(out, 443, dir, 51000, TCP_SYN | TCP_ACK).bytes();
    assert_eq!(k.judge(&reply), NO_RULE);
    assert_eq!(
        k.judge(&Frame::tcp(dir, 51000, out, 443, TCP_SYN).bytes()),
        UNPROTECTED
    );
    assert_eq!(k.judge(&reply), Verdict::Pass(PassKind::Flow));
}

#[test]
fn fin_and_rst_close_the_flow() {
    if !root_or_skip("fin_and_rst_close_the_flow") {
        return;
    }
    let policy = lab_policy("");
    let mut config = common::test_config(&policy);
    config.tcp_closing_timeout_ns = 0;
    let mut k = Kernel::with_config(policy, config);
    let (dir, fe) = (addr(Role::Director, false), addr(Role::FrontEnd, false));
    let reply = Frame::tcp(fe, 444, dir, 50200, TCP_ACK).bytes();
    assert_eq!(
        k.judge(&Frame::tcp(dir, 50200, fe, 444, TCP_SYN).bytes()),
        k.rule("director-fe-https")
    );
    assert_eq!(k.judge(&reply), Verdict::Pass(PassKind::Flow));
    assert_eq!(
        k.judge(&Frame::tcp(fe, 444, dir, 50200, TCP_RST | TCP_ACK).bytes()),
        Verdict::Pass(PassKind::Flow)
    );
    // Closing timeout 0: the next packet of a reset flow finds nothing (coarse clock ticks).
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(k.judge(&reply), NO_RULE);

    assert_eq!(
        k.judge(&Frame::tcp(dir, 50201, fe, 444, TCP_SYN).bytes()),
        k.rule("director-fe-https")
    );
    assert_eq!(
        k.judge(&Frame::tcp(dir, 50201, fe, 444, TCP_FIN | TCP_ACK).bytes()),
        Verdict::Pass(PassKind::Flow)
    );
    let fin_back = Frame::tcp(fe, 444, dir, 50201, TCP_FIN | TCP_ACK).bytes();
    assert_eq!(
        k.judge(&fin_back),
        Verdict::Pass(PassKind::Flow),
        "one FIN leaves the flow open"
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(k.judge(&fin_back), NO_RULE, "both FINs close it");
}

#[test]
fn impossible_tcp_flags_are_dropped_to_protected_hosts() {
    let mut k = kernel!("impossible_tcp_flags_are_dropped_to_protected_hosts");
    let bad = Verdict::Drop(DropReason::BadTcpFlags);
    let (rp, dir) = (addr(Role::ReverseProxy, false), addr(Role::Director, false));
    for flags in [TCP_SYN | TCP_FIN, TCP_SYN | TCP_RST, 0, 0xc0] {
        k.datapath.clear_flows().unwrap();
        assert_eq!(
            k.judge(&Frame::tcp(rp, 1, dir, 4443, flags).bytes()),
            bad,
            "flags {flags:#x}"
        );
        assert_eq!(
            k.judge(&Frame::tcp(dir, 1, rp, 4443, flags).bytes()),
            UNPROTECTED
        );
    }
}

#[test]
fn fragments_follow_their_first_fragment() {
    let mut k = kernel!("fragments_follow_their_first_fragment");
    for v6 in [false, true] {
        let (cl, dir) = (addr(Role::InternalClients, v6), addr(Role::Director, v6));
        let first = Frame::tcp(cl, 42000, dir, 443, TCP_ACK)
            .fragment(7, 0, true)
            .payload(64)
            .bytes();
        let later = |id| {
            Frame::tcp(cl, 0, dir, 0, 0)
                .fragment(id, 11, false)
                .payload(64)
                .bytes()
        };
        assert_eq!(
            k.judge(&later(7)),
            Verdict::Drop(DropReason::Fragment),
            "before the first"
        );
        assert_eq!(k.judge(&first), k.rule("clients-director-https"));
        assert_eq!(k.judge(&later(7)), Verdict::Pass(PassKind::Fragment));
        assert_eq!(k.judge(&later(8)), Verdict::Drop(DropReason::Fragment));
        // A denied first fragment opens nothing.
        let denied = Frame::tcp(cl, 42000, dir, 22, TCP_ACK)
            .fragment(9, 0, true)
            .payload(64)
            .bytes();
        assert_eq!(k.judge(&denied), NO_RULE);
        assert_eq!(k.judge(&later(9)), Verdict::Drop(DropReason::Fragment));
        // Fragments to unprotected hosts pass.
        let free = Frame::tcp(dir, 0, cl, 0, 0)
            .fragment(10, 11, false)
            .payload(8)
            .bytes();
        assert_eq!(k.judge(&free), UNPROTECTED);
    }
}

#[test]
fn vlan_tags_options_and_extension_headers_are_parsed() {
    let mut k = kernel!("vlan_tags_options_and_extension_headers_are_parsed");
    let rule = k.rule("rp-director-http");
    for v6 in [false, true] {
        let (rp, dir) = (addr(Role::ReverseProxy, v6), addr(Role::Director, v6));
        for vlans in 0..=2 {
            k.datapath.clear_flows().unwrap();
            let f = Frame::tcp(rp, 43000, dir, 8080, TCP_SYN)
                .vlans(vlans)
                .bytes();
            assert_eq!(k.judge(&f), rule, "{vlans} tags");
        }
        assert_eq!(
            k.judge(&Frame::tcp(rp, 43000, dir, 8080, TCP_SYN).vlans(3).bytes()),
            MALFORMED
        );
    }
    let (rp, dir) = (addr(Role::ReverseProxy, false), addr(Role::Director, false));
    for words in [1, 5, 10] {
        k.datapath.clear_flows().unwrap();
        let mut f = Frame::tcp(rp, 43000, dir, 8080, TCP_SYN);
        f.ipv4_option_words = words;
        assert_eq!(k.judge(&f.bytes()), rule, "{words} option words");
    }
    let (rp, dir) = (addr(Role::ReverseProxy, true), addr(Role::Director, true));
    for ext in [vec![0], vec![0, 60], vec![0, 43, 60, 60, 60, 60]] {
        k.datapath.clear_flows().unwrap();
        let mut f = Frame::tcp(rp, 43000, dir, 8080, TCP_SYN);
        f.ipv6_ext = ext.clone();
        assert_eq!(k.judge(&f.bytes()), rule, "extension headers {ext:?}");
    }
    let mut f = Frame::tcp(rp, 43000, dir, 8080, TCP_SYN);
    f.ipv6_ext = vec![60; 7];
    assert_eq!(
        k.judge(&f.bytes()),
        MALFORMED,
        "more extension headers than the walk allows"
    );
}

#[test]
fn truncated_and_inconsistent_headers_are_malformed() {
    let mut k = kernel!("truncated_and_inconsistent_headers_are_malformed");
    let (rp, dir) = (addr(Role::ReverseProxy, false), addr(Role::Director, false));
    let good = Frame::tcp(rp, 43000, dir, 8080, TCP_SYN).bytes();
    // BPF_PROG_TEST_RUN refuses XDP frames shorter than an Ethernet header, so the shortest
    // case here is a bare Ethernet header claiming IPv4.
    for cut in [14, 14 + 19, 14 + 20 + 19] {
        assert_eq!(k.judge(&good[..cut]), MALFORMED, "cut at {cut}");
    }
    let mutate = |at: usize, value: u8| {
        let mut f = good.clone();
        f[at] = value;
        f
    };
    assert_eq!(k.judge(&mutate(14, 0x44)), MALFORMED, "IHL 4");
    assert_eq!(
        k.judge(&mutate(14, 0x65)),
        MALFORMED,
        "version 6 in an IPv4 frame"
    );
    assert_eq!(
        k.judge(&mutate(16, 0x10)),
        MALFORMED,
        "total length beyond the frame"
    );
    assert_eq!(
        k.judge(&mutate(17, 0x10)),
        MALFORMED,
        "total length shorter than the header"
    );
    assert_eq!(
        k.judge(&mutate(14 + 20 + 12, 0x40)),
        MALFORMED,
        "TCP data offset 4"
    );
    assert_eq!(
        k.judge(&mutate(14 + 20 + 12, 0xf0)),
        MALFORMED,
        "TCP data offset past the end"
    );
    let v6 = Frame::tcp(
        addr(Role::ReverseProxy, true),
        1,
        addr(Role::Director, true),
        8080,
        TCP_SYN,
    )
    .bytes();
    assert_eq!(k.judge(&v6[..14 + 39]), MALFORMED);
    let mut long = v6.clone();
    long[14 + 5] = 200;
    assert_eq!(k.judge(&long), MALFORMED, "payload length beyond the frame");
    // Padding after the IP packet is fine.
    let mut padded = good.clone();
    padded.extend([0; 20]);
    assert_eq!(k.judge(&padded), k.rule("rp-director-http"));
}

#[test]
fn non_ip_passes() {
    let mut k = kernel!("non_ip_passes");
    let mut arp = vec![0xff; 6];
    arp.extend([2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend([0; 28]);
    assert_eq!(k.judge(&arp), Verdict::Pass(PassKind::NonIp));
}

#[test]
fn icmp_echo_neighbour_discovery_and_errors() {
    let mut k = kernel!("icmp_echo_neighbour_discovery_and_errors");
    for v6 in [false, true] {
        let (echo, reply, unreach) = if v6 { (128, 129, 1) } else { (8, 0, 3) };
        let (out, dir, fe) = (
            addr(Role::Outsider, v6),
            addr(Role::Director, v6),
            addr(Role::FrontEnd, v6),
        );
        assert_eq!(
            k.judge(&Frame::icmp(out, dir, echo, 5).bytes()),
            Verdict::Pass(PassKind::IcmpEcho)
        );
        assert_eq!(
            k.judge(&Frame::icmp(out, dir, reply, 6).bytes()),
            NO_RULE,
            "an unsolicited reply"
        );
        assert_eq!(
            k.judge(&Frame::icmp(out, dir, 13, 6).bytes()),
            NO_RULE,
            "other ICMP types"
        );
        // An error about a tracked flow passes, about an unknown one it does not.
        let forward = Frame::tcp(dir, 50300, fe, 444, TCP_SYN);
        let error = icmp_error(out, dir, unreach, &forward).bytes();
        assert_eq!(k.judge(&error), NO_RULE);
        assert_eq!(k.judge(&forward.bytes()), k.rule("director-fe-https"));
        assert_eq!(k.judge(&error), Verdict::Pass(PassKind::Flow));
    }
    let (out, dir) = (addr(Role::Outsider, true), addr(Role::Director, true));
    for nd in 133..=137 {
        assert_eq!(
            k.judge(&Frame::icmp(out, dir, nd, 0).bytes()),
            Verdict::Pass(PassKind::NeighborDiscovery)
        );
    }
    let mut config = k.config;
    config.flags |= FLAG_ICMP_ECHO_DENY;
    k.set_config(config);
    assert_eq!(k.judge(&Frame::icmp(out, dir, 128, 9).bytes()), NO_RULE);
}

#[test]
fn audit_mode_counts_drops_and_drops_nothing() {
    let mut k = kernel!("audit_mode_counts_drops_and_drops_nothing");
    let mut config = k.config;
    config.flags |= FLAG_AUDIT;
    k.set_config(config);
    let (rp, dir) = (addr(Role::ReverseProxy, false), addr(Role::Director, false));
    assert_eq!(
        k.judge(&Frame::tcp(rp, 1, dir, 22, TCP_SYN).bytes()),
        Verdict::Audit(DropReason::NoRule)
    );
    let short = Frame::tcp(rp, 1, dir, 22, TCP_SYN).bytes();
    assert_eq!(k.judge(&short[..20]), Verdict::Audit(DropReason::Malformed));
    assert_eq!(
        k.judge(&Frame::tcp(rp, 1, dir, 8080, TCP_SYN).bytes()),
        k.rule("rp-director-http")
    );
}

#[test]
fn unprotected_drop_keeps_management_reachable() {
    if !root_or_skip("unprotected_drop_keeps_management_reachable") {
        return;
    }
    let mgmt = "\n[options]\nunprotected = \"drop\"\n[[rules]]\nid = \"ssh\"\nfrom = \"any\"\nto = \"management\"\nproto = \"tcp\"\nports = [22]\n[peers]\nmanagement = [\"198.18.6.1\"]\ndirector = [\"198.18.2.10\"]\n";
    let mut k = Kernel::load(lab_policy(mgmt));
    let out = addr(Role::Outsider, false);
    let gw: std::net::IpAddr = "198.18.6.1".parse().unwrap();
    assert_eq!(
        k.judge(&Frame::tcp(out, 1, gw, 22, TCP_SYN).bytes()),
        k.rule("ssh")
    );
    let elsewhere = addr(Role::ReverseProxy, false);
    assert_eq!(
        k.judge(&Frame::tcp(out, 1, elsewhere, 22, TCP_SYN).bytes()),
        Verdict::Drop(DropReason::Unprotected)
    );
}

#[test]
fn counters_count_packets_and_bytes() {
    let mut k = kernel!("counters_count_packets_and_bytes");
    let frame = syn(Role::EdgeInternal, Role::Director, 5061, false);
    let slot = k.rule("edge-director-sip").slot();
    let drop_slot = NO_RULE.slot();
    let before = k.counter(slot);
    let drops_before = k.counter(drop_slot);
    for _ in 0..3 {
        k.datapath.clear_flows().unwrap();
        k.judge(&frame);
    }
    k.judge(&syn(Role::EdgeInternal, Role::Director, 5060, false));
    let after = k.counter(slot);
    assert_eq!(after.packets - before.packets, 3);
    assert_eq!(after.bytes - before.bytes, 3 * frame.len() as u64);
    assert_eq!(k.counter(drop_slot).packets - drops_before.packets, 1);
}

#[test]
fn an_interface_with_a_row_counts_in_it_and_gives_it_back_to_row_0() {
    let mut k = kernel!("an_interface_with_a_row_counts_in_it_and_gives_it_back_to_row_0");
    let counters = &mut k.datapath.state.counters;
    assert!(counters.assign_rows([("lo", 5)]).unwrap().is_empty());
    let pass = syn(Role::EdgeInternal, Role::Director, 5061, false);
    let drop = syn(Role::EdgeInternal, Role::Director, 5060, false);
    k.judge(&pass);
    k.judge(&drop);
    let row = k.datapath.state.counters.row(5).unwrap();
    assert_eq!(row[ANY_RULE as usize].packets, 1);
    assert_eq!(row[NO_RULE.slot() as usize].packets, 1);
    assert_eq!(row[ANY_RULE as usize].bytes, pass.len() as u64);
    // TestRun packets come in on lo.
    let in_row_0 = |k: &Kernel| k.datapath.state.counters.row(0).unwrap()[NO_RULE.slot() as usize];
    assert_eq!(in_row_0(&k).packets, 0, "row 0 counted it too");

    // Taken from lo, the row folds into row 0, and the totals stay.
    let counters = &mut k.datapath.state.counters;
    counters.assign_rows([]).unwrap();
    counters.fold_rows_except(&[]).unwrap();
    assert_eq!(
        counters.row(5).unwrap(),
        [Default::default(); INTERFACE_SLOTS as usize]
    );
    assert_eq!(in_row_0(&k).packets, 1);
    assert_eq!(in_row_0(&k).bytes, drop.len() as u64);
    let any_rule = k.datapath.state.counters.row(0).unwrap()[ANY_RULE as usize];
    assert_eq!((any_rule.packets, any_rule.bytes), (1, pass.len() as u64));
    k.judge(&drop);
    assert_eq!(in_row_0(&k).packets, 2);
    assert_eq!(k.counter(NO_RULE.slot()).packets, 2);
}

#[test]
fn tc_program_judges_like_xdp() {
    let mut k = kernel!("tc_program_judges_like_xdp");
    let frames = [
        syn(Role::ReverseProxy, Role::Director, 8080, false),
        syn(Role::ReverseProxy, Role::Director, 8081, true),
        Frame::tcp(
            addr(Role::ReverseProxy, false),
            1,
            addr(Role::Director, false),
            8080,
            TCP_SYN,
        )
        .vlans(2)
        .bytes(),
        syn(Role::Outsider, Role::InternalClients, 22, true),
    ];
    for frame in &frames {
        k.datapath.clear_flows().unwrap();
        let xdp = k.judge(frame);
        k.datapath.clear_flows().unwrap();
        assert_eq!(k.judge_tc(frame), xdp);
    }
}

#[test]
fn every_host_of_a_large_policy_is_found_and_no_other_address() {
    if !root_or_skip("every_host_of_a_large_policy_is_found_and_no_other_address") {
        return;
    }
    // Enough hosts that the host tables have thousands of buckets and seeds, in both
    // families and in a protected and an unprotected role.
    const HOSTS: u32 = 4_000;
    let v4 = |base: [u8; 4], i: u32| IpAddr::V4(Ipv4Addr::from(u32::from_be_bytes(base) + i));
    let v6 = |group: u16, i: u32| {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            group,
            0,
            0,
            0,
            (i >> 16) as u16,
            i as u16,
        ))
    };
    let directors: Vec<IpAddr> = (0..HOSTS)
        .flat_map(|i| [v4([198, 18, 128, 0], i), v6(0x100, i)])
        .collect();
    let clients: Vec<IpAddr> = (0..HOSTS)
        .flat_map(|i| [v4([198, 18, 160, 0], i), v6(0x200, i)])
        .collect();
    let list = |hosts: &[IpAddr]| {
        hosts
            .iter()
            .map(|h| format!("\"{h}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "profile = \"lync2013-single-director\"\n[peers]\ndirector = [{}]\ninternal-clients = [{}]\n",
        list(&directors),
        list(&clients)
    );
    let policy = Policy::from_toml("large.toml", &text).expect("valid");
    let mut k = Kernel::load(policy);
    let https = k.rule("clients-director-https");
    let outsider = |v6: bool| -> IpAddr {
        if v6 {
            "2001:db8:ffff::1".parse().unwrap()
        } else {
            "198.19.250.1".parse().unwrap()
        }
    };
    let tcp_syn =
        |src: IpAddr, dst: IpAddr, dport: u16| Frame::tcp(src, 40000, dst, dport, TCP_SYN).bytes();
    for &d in &directors {
        // Protected: a closed port is dropped, where an unknown address would pass.
        assert_eq!(
            k.judge(&tcp_syn(outsider(d.is_ipv6()), d, 22)),
            NO_RULE,
            "{d}"
        );
    }
    for &c in &clients {
        // A client's SYN to a Director's HTTPS passes by its rule, which needs its role.
        let director = if c.is_ipv6() {
            directors[1]
        } else {
            directors[0]
        };
        assert_eq!(k.judge(&tcp_syn(c, director, 443)), https, "{c}");
    }
    // Addresses next to the hosts, in no role: unprotected, and no rule for them as sources.
    for i in 0..500 {
        for other in [v4([198, 18, 192, 0], i), v6(0x300, i), v6(0x100, HOSTS + i)] {
            assert_eq!(
                k.judge(&tcp_syn(outsider(other.is_ipv6()), other, 22)),
                UNPROTECTED,
                "{other}"
            );
            let director = if other.is_ipv6() {
                directors[1]
            } else {
                directors[0]
            };
            assert_eq!(k.judge(&tcp_syn(other, director, 443)), NO_RULE, "{other}");
        }
    }
}

/// Where the kernel lacks `bpf_ktime_get_coarse_ns` (before 5.11), the loader sets
/// `COARSE_CLOCK` to 0: both programs then verify with `bpf_ktime_get_ns` alone, the other
/// branch removed as dead code.
#[test]
fn the_programs_verify_with_the_fine_clock() {
    use aya::programs::{SchedClassifier, Xdp};
    use director_fw_common::maps;
    if !root_or_skip("the_programs_verify_with_the_fine_clock") {
        return;
    }
    let mut ebpf = aya::EbpfLoader::new()
        .override_global(maps::COARSE_CLOCK_GLOBAL, &0u8, true)
        .load(director_fw::datapath::OBJECT)
        .expect("the object loads");
    let xdp: &mut Xdp = ebpf
        .program_mut(maps::XDP_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    xdp.load()
        .expect("the XDP program verifies with the fine clock");
    let tc: &mut SchedClassifier = ebpf
        .program_mut(maps::TC_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    tc.load()
        .expect("the TC program verifies with the fine clock");
}

/// Every built-in profile, in the kernel: each rule's ports pass from its source role and open
/// a flow; the ports next to them and every other role (and an address in no role) are
/// dropped, unless another rule of the profile opens them. One host per role, IPv4 and IPv6.
#[test]
fn every_profile_passes_its_rules_and_nothing_next_to_them() {
    use director_fw::policy::profile;
    if !root_or_skip("every_profile_passes_its_rules_and_nothing_next_to_them") {
        return;
    }
    let host = |role: Option<usize>, v6: bool| -> IpAddr {
        let n = role.map_or(99, |r| 10 + r as u16);
        if v6 {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xf000 + n, 0, 0, 0, 0, 0x10))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 19, n as u8, 10))
        }
    };
    for profile in profile::all() {
        let mut text = format!("profile = {:?}\n[peers]\n", profile.name);
        for (i, role) in profile.roles.iter().enumerate() {
            text += &format!(
                "{role} = [\"{}\", \"{}\"]\n",
                host(Some(i), false),
                host(Some(i), true)
            );
        }
        let policy = Policy::from_toml(&profile.name, &text).unwrap();
        let mut k = Kernel::load(policy);
        let rules = k.policy.rules.clone();
        // Every role, and an address in none.
        let everyone: Vec<Option<usize>> =
            (0..profile.roles.len()).map(Some).chain([None]).collect();
        let allowed = |from: Option<usize>, to: usize, protocol: Protocol, port: u16| {
            rules.iter().position(|r| {
                r.to == to
                    && r.protocol == protocol
                    && r.matches_port(port)
                    && match r.from {
                        Source::Any => true,
                        Source::Role(s) => Some(s) == from,
                    }
            })
        };
        let packet = |protocol, src, sport, dst, dport, flags| match protocol {
            Protocol::Tcp => Frame::tcp(src, sport, dst, dport, flags).bytes(),
            Protocol::Udp => Frame::udp(src, sport, dst, dport).bytes(),
        };
        for v6 in [false, true] {
            for rule in &rules {
                let to = host(Some(rule.to), v6);
                for range in &rule.ports {
                    let (first, last) = (*range.start(), *range.end());
                    for &from in &everyone {
                        for port in [first - 1, first, last, last + 1] {
                            k.datapath.clear_flows().unwrap();
                            let src = host(from, v6);
                            let forward = packet(rule.protocol, src, 40000, to, port, TCP_SYN);
                            let expected = match allowed(from, rule.to, rule.protocol, port) {
                                Some(index) => Verdict::Rule(index as u32),
                                None => NO_RULE,
                            };
                            let context = format!(
                                "{}: {} from {from:?} to port {port}, v6={v6}",
                                profile.name, rule.id
                            );
                            assert_eq!(k.judge(&forward), expected, "{context}");
                            if expected != NO_RULE {
                                // The pass opened a flow: the reply comes back through it.
                                let reply =
                                    packet(rule.protocol, to, port, src, 40000, TCP_SYN | TCP_ACK);
                                assert_eq!(
                                    k.judge(&reply),
                                    Verdict::Pass(PassKind::Flow),
                                    "{context}: reply"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
