//! The reference model: SPEC section 2 in plain Rust, over the policy itself rather than
//! its compiled map entries. The kernel program must reach the same verdict on every packet;
//! the differential tests hold it to that, so this file is the readable definition of how a
//! packet is judged. It is written for clarity, not speed: roles come from a scan of the
//! peers and rules are tried in order.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use director_fw_common::{
    config::{FLAG_AUDIT, FLAG_ICMP_ECHO_DENY, FLAG_UNPROTECTED_DROP},
    flow::{FLOW_BOTH_FIN, FLOW_FIN_HI, FLOW_FIN_LO, FLOW_RST, REFRESH_GRANULARITY_NS},
    proto, tcp_flags, Config, DropReason, FlowKey, PassKind, Verdict,
};

use crate::{
    compile::words,
    policy::{bit, Policy, Source},
};

const MAX_VLAN_TAGS: usize = 2;
const MAX_EXT_HEADERS: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragment {
    None,
    First(u32),
    Later(u32),
}

#[derive(Clone, Debug)]
struct Packet {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    fragment: Fragment,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    icmp_type: u8,
    l4: usize,
    ip_end: usize,
}

impl Packet {
    fn family(&self) -> u8 {
        if self.src.is_ipv4() {
            4
        } else {
            6
        }
    }
}

enum Parsed {
    NonIp,
    Ip(Packet),
}

/// Reads big-endian fields; `None` past the end of the frame.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&self, at: usize) -> Option<u8> {
        self.0.get(at).copied()
    }
    fn u16(&self, at: usize) -> Option<u16> {
        Some(u16::from_be_bytes(self.0.get(at..at + 2)?.try_into().ok()?))
    }
    fn u32(&self, at: usize) -> Option<u32> {
        Some(u32::from_be_bytes(self.0.get(at..at + 4)?.try_into().ok()?))
    }
    fn v4(&self, at: usize) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::from(self.u32(at)?)))
    }
    fn v6(&self, at: usize) -> Option<IpAddr> {
        let octets: [u8; 16] = self.0.get(at..at + 16)?.try_into().ok()?;
        Some(IpAddr::V6(Ipv6Addr::from(octets)))
    }
}

fn is_vlan(ethertype: u16) -> bool {
    ethertype == 0x8100 || ethertype == 0x88a8
}

fn is_extension_header(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60)
}

/// `None`: malformed.
fn parse(frame: &[u8]) -> Option<Parsed> {
    let b = Bytes(frame);
    if frame.len() < 14 {
        return None;
    }
    let mut ethertype = b.u16(12)?;
    let mut off = 14;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        ethertype = b.u16(off + 2)?;
        off += 4;
    }
    let mut packet = match ethertype {
        0x0800 => ipv4(&b, off)?,
        0x86dd => ipv6(&b, off)?,
        t if is_vlan(t) => return None,
        _ => return Some(Parsed::NonIp),
    };
    l4(&b, &mut packet)?;
    Some(Parsed::Ip(packet))
}

fn ipv4(b: &Bytes<'_>, off: usize) -> Option<Packet> {
    if b.0.len() < off + 20 || b.u8(off)? >> 4 != 4 {
        return None;
    }
    let hlen = usize::from(b.u8(off)? & 0x0f) * 4;
    let total = usize::from(b.u16(off + 2)?);
    if hlen < 20 || total < hlen || off + total > b.0.len() {
        return None;
    }
    let id = u32::from(b.u16(off + 4)?);
    let frag = b.u16(off + 6)?;
    let fragment = match (frag & 0x1fff, frag & 0x2000) {
        (0, 0) => Fragment::None,
        (0, _) => Fragment::First(id),
        _ => Fragment::Later(id),
    };
    Some(Packet {
        src: b.v4(off + 12)?,
        dst: b.v4(off + 16)?,
        proto: b.u8(off + 9)?,
        fragment,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        l4: off + hlen,
        ip_end: off + total,
    })
}

fn ipv6(b: &Bytes<'_>, off: usize) -> Option<Packet> {
    if b.0.len() < off + 40 || b.u8(off)? >> 4 != 6 {
        return None;
    }
    let ip_end = off + 40 + usize::from(b.u16(off + 4)?);
    if ip_end > b.0.len() {
        return None;
    }
    let mut next = b.u8(off + 6)?;
    let mut cur = off + 40;
    let mut fragment = Fragment::None;
    for _ in 0..MAX_EXT_HEADERS {
        let len = match next {
            0 | 43 | 60 => (usize::from(b.u8(cur + 1)?) + 1) * 8,
            51 => (usize::from(b.u8(cur + 1)?) + 2) * 4,
            44 => 8,
            _ => break,
        };
        if cur + len > ip_end {
            return None;
        }
        let header = next;
        next = b.u8(cur)?;
        if header == 44 {
            let field = b.u16(cur + 2)?;
            let id = b.u32(cur + 4)?;
            cur += len;
            if field >> 3 != 0 {
                fragment = Fragment::Later(id);
                break;
            }
            if field & 1 != 0 {
                fragment = Fragment::First(id);
            }
        } else {
            cur += len;
        }
    }
    if !matches!(fragment, Fragment::Later(_)) && is_extension_header(next) {
        return None;
    }
    Some(Packet {
        src: b.v6(off + 8)?,
        dst: b.v6(off + 24)?,
        proto: next,
        fragment,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        l4: cur,
        ip_end,
    })
}

fn l4(b: &Bytes<'_>, p: &mut Packet) -> Option<()> {
    if matches!(p.fragment, Fragment::Later(_)) {
        return Some(());
    }
    let at = p.l4;
    match (p.proto, p.family()) {
        (proto::TCP, _) => {
            let doff = usize::from(*b.0.get(at + 12)? >> 4);
            if at + 20 > p.ip_end || doff < 5 || at + doff * 4 > p.ip_end {
                return None;
            }
            p.sport = b.u16(at)?;
            p.dport = b.u16(at + 2)?;
            p.tcp_flags = b.u8(at + 13)?;
        }
        (proto::UDP, _) => {
            if at + 8 > p.ip_end {
                return None;
            }
            p.sport = b.u16(at)?;
            p.dport = b.u16(at + 2)?;
        }
        (proto::ICMP, 4) | (proto::ICMPV6, 6) => {
            if at + 8 > p.ip_end {
                return None;
            }
            p.icmp_type = b.u8(at)?;
            p.sport = b.u16(at + 4)?;
            p.dport = p.sport;
        }
        _ => {}
    }
    Some(())
}

/// The TCP/UDP 5-tuple quoted in an ICMP error of the same family.
fn quoted_flow(b: &Bytes<'_>, p: &Packet) -> Option<(IpAddr, u16, IpAddr, u16, u8)> {
    let inner = p.l4 + 8;
    let version = b.u8(inner)? >> 4;
    let (src, dst, proto, l4) = if p.family() == 4 {
        let hlen = usize::from(b.u8(inner)? & 0x0f) * 4;
        if version != 4 || inner + 20 > p.ip_end || hlen < 20 {
            return None;
        }
        (
            b.v4(inner + 12)?,
            b.v4(inner + 16)?,
            b.u8(inner + 9)?,
            inner + hlen,
        )
    } else {
        if version != 6 || inner + 40 > p.ip_end {
            return None;
        }
        (
            b.v6(inner + 8)?,
            b.v6(inner + 24)?,
            b.u8(inner + 6)?,
            inner + 40,
        )
    };
    if !(proto == proto::TCP || proto == proto::UDP) || l4 + 4 > p.ip_end {
        return None;
    }
    Some((src, b.u16(l4)?, dst, b.u16(l4 + 2)?, proto))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ported,
    EchoRequest,
    EchoReply,
    IcmpError,
    NeighborDiscovery,
    Other,
}

fn kind(p: &Packet) -> Kind {
    let icmp = if p.family() == 4 {
        proto::ICMP
    } else {
        proto::ICMPV6
    };
    if p.proto == proto::TCP || p.proto == proto::UDP {
        return Kind::Ported;
    }
    if p.proto != icmp {
        return Kind::Other;
    }
    match (p.family(), p.icmp_type) {
        (4, 8) | (6, 128) => Kind::EchoRequest,
        (4, 0) | (6, 129) => Kind::EchoReply,
        (4, 3) | (4, 11) | (6, 1) | (6, 2) | (6, 3) => Kind::IcmpError,
        (6, 133..=137) => Kind::NeighborDiscovery,
        _ => Kind::Other,
    }
}

/// SYN with FIN, SYN with RST, or none of FIN/SYN/RST/PSH/ACK/URG.
pub fn impossible_tcp_flags(flags: u8) -> bool {
    let syn = flags & tcp_flags::SYN != 0;
    (syn && flags & (tcp_flags::FIN | tcp_flags::RST) != 0) || flags & 0x3f == 0
}

#[derive(Clone, Copy, Debug)]
struct Flow {
    last_seen: u64,
    flags: u32,
}

/// The model with its own flow and fragment tables.
pub struct Model<'p> {
    policy: &'p Policy,
    config: Config,
    flows: HashMap<FlowKey, Flow>,
    first_fragments: HashMap<(IpAddr, IpAddr, u8, u32), u64>,
}

impl<'p> Model<'p> {
    /// `config` supplies the options and timeouts, as the kernel reads them from `CONFIG`;
    /// roles and rules come from `policy`.
    pub fn new(policy: &'p Policy, config: Config) -> Model<'p> {
        Model {
            policy,
            config,
            flows: HashMap::new(),
            first_fragments: HashMap::new(),
        }
    }

    /// Role bits of an address: every role with a peer entry containing it.
    fn roles(&self, addr: IpAddr) -> u32 {
        self.policy
            .peers
            .iter()
            .filter(|peer| peer.net.contains(&addr))
            .fold(0, |acc, peer| acc | bit(peer.role))
    }

    fn is_protected(&self, roles: u32) -> bool {
        roles & self.policy.to_mask() != 0
    }

    /// The first rule, in policy order, that passes this packet.
    fn rule(&self, p: &Packet, src_roles: u32, dst_roles: u32) -> Option<u32> {
        self.policy
            .rules
            .iter()
            .position(|rule| {
                let from = match rule.from {
                    Source::Any => true,
                    Source::Role(role) => src_roles & bit(role) != 0,
                };
                from && dst_roles & bit(rule.to) != 0
                    && rule.protocol.number() == p.proto
                    && rule.matches_port(p.dport)
            })
            .map(|index| index as u32)
    }

    fn flow_key(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> (FlowKey, bool) {
        let (src, family) = words(src);
        let (dst, _) = words(dst);
        FlowKey::new(src, sport, dst, dport, proto, family)
    }

    fn idle_timeout(&self, proto: u8, flags: u32) -> u64 {
        let c = &self.config;
        match proto {
            proto::TCP if flags & FLOW_RST != 0 || flags & FLOW_BOTH_FIN == FLOW_BOTH_FIN => {
                c.tcp_closing_timeout_ns
            }
            proto::TCP => c.tcp_timeout_ns,
            proto::UDP => c.udp_timeout_ns,
            _ => c.icmp_timeout_ns,
        }
    }

    fn is_live(&self, key: &FlowKey, now: u64) -> bool {
        self.flows.get(key).is_some_and(|flow| {
            now.wrapping_sub(flow.last_seen) <= self.idle_timeout(key.proto, flow.flags)
        })
    }

    fn tcp_state(mut flags: u32, tcp: u8, from_lo: bool) -> u32 {
        let closed = flags & FLOW_RST != 0 || flags & FLOW_BOTH_FIN == FLOW_BOTH_FIN;
        if tcp & tcp_flags::SYN != 0 && tcp & tcp_flags::ACK == 0 && closed {
            flags = 0;
        }
        if tcp & tcp_flags::RST != 0 {
            flags |= FLOW_RST;
        }
        if tcp & tcp_flags::FIN != 0 {
            flags |= if from_lo { FLOW_FIN_LO } else { FLOW_FIN_HI };
        }
        flags
    }

    /// A live flow passes the packet and is refreshed.
    fn refresh(&mut self, p: &Packet, now: u64) -> bool {
        let (key, from_lo) = Self::flow_key(p.src, p.sport, p.dst, p.dport, p.proto);
        if !self.is_live(&key, now) {
            return false;
        }
        let flow = self.flows.get_mut(&key).expect("live");
        if p.proto == proto::TCP {
            flow.flags = Self::tcp_state(flow.flags, p.tcp_flags, from_lo);
        }
        if now.wrapping_sub(flow.last_seen) >= REFRESH_GRANULARITY_NS {
            flow.last_seen = now;
        }
        true
    }

    fn create(&mut self, p: &Packet, now: u64) {
        let (key, from_lo) = Self::flow_key(p.src, p.sport, p.dst, p.dport, p.proto);
        let flags = if p.proto == proto::TCP {
            Self::tcp_state(0, p.tcp_flags, from_lo)
        } else {
            0
        };
        self.flows.insert(
            key,
            Flow {
                last_seen: now,
                flags,
            },
        );
    }

    fn fragment_key(p: &Packet, id: u32) -> (IpAddr, IpAddr, u8, u32) {
        let proto = if p.family() == 4 { p.proto } else { 0 };
        (p.src, p.dst, proto, id)
    }

    fn unprotected(&self) -> Verdict {
        if self.config.flags & FLAG_UNPROTECTED_DROP != 0 {
            Verdict::Drop(DropReason::Unprotected)
        } else {
            Verdict::Pass(PassKind::Unprotected)
        }
    }

    /// Judges one Ethernet frame at time `now` (nanoseconds, the kernel's monotonic clock),
    /// updating the model's flows as the kernel would.
    pub fn judge(&mut self, frame: &[u8], now: u64) -> Verdict {
        let p = match parse(frame) {
            None => return self.audited(DropReason::Malformed),
            Some(Parsed::NonIp) => return Verdict::Pass(PassKind::NonIp),
            Some(Parsed::Ip(p)) => p,
        };
        let dst_roles = self.roles(p.dst);
        let dst_protected = self.is_protected(dst_roles);
        let verdict = self.decide(frame, &p, dst_roles, dst_protected, now);
        if let Verdict::Drop(reason) = verdict {
            return self.audited(reason);
        }
        if let (Fragment::First(id), true) = (p.fragment, dst_protected) {
            self.first_fragments.insert(Self::fragment_key(&p, id), now);
        }
        verdict
    }

    fn audited(&self, reason: DropReason) -> Verdict {
        if self.config.flags & FLAG_AUDIT != 0 {
            Verdict::Audit(reason)
        } else {
            Verdict::Drop(reason)
        }
    }

    fn decide(
        &mut self,
        frame: &[u8],
        p: &Packet,
        dst_roles: u32,
        dst_protected: bool,
        now: u64,
    ) -> Verdict {
        if let Fragment::Later(id) = p.fragment {
            if !dst_protected {
                return self.unprotected();
            }
            let first = self.first_fragments.get(&Self::fragment_key(p, id));
            let fresh =
                first.is_some_and(|&t| now.wrapping_sub(t) <= self.config.fragment_timeout_ns);
            return if fresh {
                Verdict::Pass(PassKind::Fragment)
            } else {
                Verdict::Drop(DropReason::Fragment)
            };
        }
        let kind = kind(p);
        if kind == Kind::NeighborDiscovery {
            return Verdict::Pass(PassKind::NeighborDiscovery);
        }
        let tracked = matches!(kind, Kind::Ported | Kind::EchoRequest | Kind::EchoReply);
        let src_roles = self.roles(p.src);

        if !dst_protected {
            // Only a protected source can have a flow to an unprotected destination: its
            // own outbound connections, or replies it sends.
            if !self.is_protected(src_roles) {
                return self.unprotected();
            }
            if tracked && self.refresh(p, now) {
                return Verdict::Pass(PassKind::Flow);
            }
            let verdict = self.unprotected();
            if verdict.passes() && matches!(kind, Kind::Ported | Kind::EchoRequest) {
                self.create(p, now);
            }
            return verdict;
        }

        if p.proto == proto::TCP && impossible_tcp_flags(p.tcp_flags) {
            return Verdict::Drop(DropReason::BadTcpFlags);
        }
        // A SYN without ACK starts a connection: it always needs a rule, and passing
        // (re)creates its flow, whatever flow there was.
        let syn = p.proto == proto::TCP
            && p.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
        if !syn && tracked && self.refresh(p, now) {
            return Verdict::Pass(PassKind::Flow);
        }
        match kind {
            Kind::Ported => match self.rule(p, src_roles, dst_roles) {
                Some(index) => {
                    self.create(p, now);
                    Verdict::Rule(index)
                }
                None => Verdict::Drop(DropReason::NoRule),
            },
            Kind::EchoRequest if self.config.flags & FLAG_ICMP_ECHO_DENY == 0 => {
                self.create(p, now);
                Verdict::Pass(PassKind::IcmpEcho)
            }
            Kind::IcmpError => {
                let related = quoted_flow(&Bytes(frame), p).is_some_and(|(s, sp, d, dp, l4)| {
                    self.is_live(&Self::flow_key(s, sp, d, dp, l4).0, now)
                });
                if related {
                    Verdict::Pass(PassKind::Flow)
                } else {
                    Verdict::Drop(DropReason::NoRule)
                }
            }
            _ => Verdict::Drop(DropReason::NoRule),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile;
    use director_fw_common::config::NS_PER_SEC;
    use etherparse::PacketBuilder;

    fn policy() -> Policy {
        Policy::from_toml(
            "t",
            "profile = \"lync2013-single-director\"\n[peers]\ndirector = [\"198.18.2.10\"]\nfront-end = [\"198.18.3.10\"]\n",
        )
        .unwrap()
    }

    fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, dst, 64)
            .tcp(sport, dport, 1, 1000);
        let b = match flags {
            f if f == tcp_flags::SYN => b.syn(),
            f if f == tcp_flags::ACK => b.ack(1),
            f if f == tcp_flags::RST | tcp_flags::ACK => b.rst().ack(1),
            _ => unreachable!(),
        };
        let mut frame = Vec::new();
        b.write(&mut frame, &[]).unwrap();
        frame
    }

    const DIR: [u8; 4] = [198, 18, 2, 10];
    const FE: [u8; 4] = [198, 18, 3, 10];
    const S: u64 = NS_PER_SEC;

    #[test]
    fn idle_flows_expire_and_the_timeout_counts_from_the_last_refresh() {
        let policy = policy();
        let config = compile::config(&policy);
        let mut model = Model::new(&policy, config);
        let reply = tcp(FE, 444, DIR, 50000, tcp_flags::ACK);
        assert!(matches!(
            model.judge(&tcp(DIR, 50000, FE, 444, tcp_flags::SYN), 0),
            Verdict::Rule(_)
        ));
        let idle = config.tcp_timeout_ns;
        assert_eq!(model.judge(&reply, idle), Verdict::Pass(PassKind::Flow));
        // Refreshed at `idle`: alive until `2 * idle`, gone after.
        assert_eq!(model.judge(&reply, 2 * idle), Verdict::Pass(PassKind::Flow));
        assert_eq!(
            model.judge(&reply, 3 * idle + S),
            Verdict::Drop(DropReason::NoRule)
        );
    }

    #[test]
    fn refreshes_within_a_second_do_not_move_the_timeout() {
        let policy = policy();
        let config = compile::config(&policy);
        let mut model = Model::new(&policy, config);
        let reply = tcp(FE, 444, DIR, 50001, tcp_flags::ACK);
        model.judge(&tcp(DIR, 50001, FE, 444, tcp_flags::SYN), 10 * S);
        model.judge(&reply, 10 * S + S / 2);
        let idle = config.tcp_timeout_ns;
        assert_eq!(
            model.judge(&reply, 10 * S + idle + 1),
            Verdict::Drop(DropReason::NoRule)
        );
    }

    #[test]
    fn a_reset_flow_lingers_for_the_closing_timeout_only() {
        let policy = policy();
        let config = compile::config(&policy);
        let mut model = Model::new(&policy, config);
        let reply = tcp(FE, 444, DIR, 50002, tcp_flags::ACK);
        model.judge(&tcp(DIR, 50002, FE, 444, tcp_flags::SYN), 0);
        let rst = tcp(FE, 444, DIR, 50002, tcp_flags::RST | tcp_flags::ACK);
        assert_eq!(model.judge(&rst, S), Verdict::Pass(PassKind::Flow));
        let closing = config.tcp_closing_timeout_ns;
        assert_eq!(
            model.judge(&reply, S + closing),
            Verdict::Pass(PassKind::Flow)
        );
        assert_eq!(
            model.judge(&reply, 2 * S + 2 * closing),
            Verdict::Drop(DropReason::NoRule)
        );
    }

    #[test]
    fn established_tcp_outlives_the_load_balancer_timeout() {
        let config = compile::config(&policy());
        assert!(config.tcp_timeout_ns >= crate::policy::MIN_TCP_TIMEOUT * S);
    }
}
