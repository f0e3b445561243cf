//! How a packet is judged (SPEC section 2). The order of lookups is chosen so that the common
//! paths pay the fewest: the destination's roles first, because most decisions hang on whether
//! it is protected; the flow table only where a flow can exist; the source's roles only when a
//! rule may need them.

use director_fw_common::{
    config::{FLAG_AUDIT, FLAG_ICMP_ECHO_DENY, FLAG_UNPROTECTED_DROP},
    proto, tcp_flags, Config, DropReason, PassKind, Verdict,
};

use crate::{
    classify, conntrack, events,
    ingress::Ingress,
    maps::{ACTIVE, CONFIG},
    parse::{self, Frame, Packet},
};

/// Judges one frame and counts the verdict. `ACTIVE` is read once, and everything after it
/// reads that generation only: a policy change is one word, so no packet sees half of it.
#[inline(always)]
pub fn judge(ingress: &impl Ingress) -> bool {
    let frame = &ingress.frame();
    let generation = ACTIVE.get(0).copied().unwrap_or(0);
    let verdict = match CONFIG.get(generation) {
        Some(cfg) => judge_with(frame, ingress, cfg),
        // The array always has its entry; pass rather than cut a gateway off if it had not.
        None => {
            crate::rare::log(crate::rare::Rare::NoConfig, 0);
            Verdict::Pass(PassKind::Unprotected)
        }
    };
    crate::counters::count(verdict, frame.len as u64, ingress);
    verdict.passes()
}

#[inline(always)]
fn judge_with(frame: &Frame, ingress: &impl Ingress, cfg: &Config) -> Verdict {
    let p = match parse::parse(frame) {
        Ok(p) if p.family == 0 => return Verdict::Pass(PassKind::NonIp),
        Ok(p) => p,
        Err(()) => return dropped(cfg, ingress, None, 0, DropReason::Malformed),
    };
    let dst_roles = classify::roles(cfg, p.family, &p.dst);
    let dst_protected = dst_roles & cfg.to_roles != 0;
    let verdict = decide(cfg, ingress, &p, dst_roles, dst_protected);
    if let Verdict::Drop(reason) = verdict {
        return dropped(cfg, ingress, Some(&p), dst_roles, reason);
    }
    if let Some(id) = p.fragment.first_id() {
        if dst_protected {
            conntrack::remember_first_fragment(&p, id);
        }
    }
    verdict
}

/// A drop (or, in audit mode, a would-be drop), reported as a drop event when the budget
/// allows.
#[inline(always)]
fn dropped(
    cfg: &Config,
    ingress: &impl Ingress,
    p: Option<&Packet>,
    dst_roles: u32,
    reason: DropReason,
) -> Verdict {
    let verdict = audited(cfg, reason);
    let audit = matches!(verdict, Verdict::Audit(_));
    events::report(cfg, ingress, p, dst_roles, reason, audit);
    verdict
}

#[inline(always)]
fn audited(cfg: &Config, reason: DropReason) -> Verdict {
    if cfg.flags & FLAG_AUDIT != 0 {
        Verdict::Audit(reason)
    } else {
        Verdict::Drop(reason)
    }
}

#[inline(always)]
fn unprotected(cfg: &Config) -> Verdict {
    if cfg.flags & FLAG_UNPROTECTED_DROP != 0 {
        Verdict::Drop(DropReason::Unprotected)
    } else {
        Verdict::Pass(PassKind::Unprotected)
    }
}

/// What the L4 header makes of a packet, for flow tracking and rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TCP or UDP: ports, rules, flows.
    Ported,
    EchoRequest,
    EchoReply,
    /// Destination unreachable, packet too big, time exceeded: related to a flow.
    IcmpError,
    NeighborDiscovery,
    Other,
}

#[inline(always)]
fn kind(p: &Packet) -> Kind {
    match (p.family, p.proto, p.icmp_type) {
        (_, proto::TCP | proto::UDP, _) => Kind::Ported,
        (4, proto::ICMP, 8) | (6, proto::ICMPV6, 128) => Kind::EchoRequest,
        (4, proto::ICMP, 0) | (6, proto::ICMPV6, 129) => Kind::EchoReply,
        (4, proto::ICMP, t) | (6, proto::ICMPV6, t) if parse::is_icmp_error(p.family, t) => {
            Kind::IcmpError
        }
        (6, proto::ICMPV6, 133..=137) => Kind::NeighborDiscovery,
        _ => Kind::Other,
    }
}

#[inline(always)]
fn bad_tcp_flags(flags: u8) -> bool {
    flags & (tcp_flags::SYN | tcp_flags::FIN) == tcp_flags::SYN | tcp_flags::FIN
        || flags & (tcp_flags::SYN | tcp_flags::RST) == tcp_flags::SYN | tcp_flags::RST
        || flags & 0x3f == 0
}

#[inline(always)]
fn decide(
    cfg: &Config,
    ingress: &impl Ingress,
    p: &Packet,
    dst_roles: u32,
    dst_protected: bool,
) -> Verdict {
    if let Some(id) = p.fragment.later_id() {
        if !dst_protected {
            return unprotected(cfg);
        }
        return if conntrack::first_fragment_passed(cfg, p, id) {
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

    if !dst_protected {
        // Flows only exist where one end is protected: traffic between two unprotected
        // addresses needs no flow lookup.
        let src_roles = classify::roles(cfg, p.family, &p.src);
        if src_roles & cfg.to_roles == 0 {
            return unprotected(cfg);
        }
        if tracked && conntrack::refresh(cfg, p) {
            return Verdict::Pass(PassKind::Flow);
        }
        let verdict = unprotected(cfg);
        if verdict.passes() && matches!(kind, Kind::Ported | Kind::EchoRequest) {
            conntrack::create(p);
        }
        return verdict;
    }

    if p.proto == proto::TCP && bad_tcp_flags(p.tcp_flags) {
        return Verdict::Drop(DropReason::BadTcpFlags);
    }
    // A SYN without ACK opens a connection and is never a reply: it always needs a rule,
    // and passing (re)creates its flow. So it skips the flow table, and one to a port that no
    // rule opens here costs only the port check: scans and SYN floods are cheapest to drop.
    let syn =
        p.proto == proto::TCP && p.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    if !syn && tracked && conntrack::refresh(cfg, p) {
        return Verdict::Pass(PassKind::Flow);
    }
    match kind {
        Kind::Ported => {
            if !classify::port_open(cfg, dst_roles, p.proto, p.dport) {
                return Verdict::Drop(DropReason::NoRule);
            }
            let src_roles = classify::roles(cfg, p.family, &p.src);
            match classify::rule(cfg, dst_roles, src_roles, p.proto, p.dport) {
                Some(index) => {
                    conntrack::create(p);
                    Verdict::Rule(index)
                }
                None => Verdict::Drop(DropReason::NoRule),
            }
        }
        Kind::EchoRequest if cfg.flags & FLAG_ICMP_ECHO_DENY == 0 => {
            conntrack::create(p);
            Verdict::Pass(PassKind::IcmpEcho)
        }
        Kind::IcmpError => match p.quoted(&ingress.frame()) {
            Some(key) if conntrack::is_live(cfg, &key) => Verdict::Pass(PassKind::Flow),
            _ => Verdict::Drop(DropReason::NoRule),
        },
        _ => Verdict::Drop(DropReason::NoRule),
    }
}
