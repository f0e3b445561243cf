//! Verdicts and the counter slots they are counted in. Every packet gets exactly one verdict
//! and moves exactly one counter slot, so the slot alone says what happened to it.
//!
//! Slot layout of the `COUNTERS` map:
//! `[pass kinds][drop reasons][audit drop reasons][rules ...]`.

/// Why a packet passed without a rule.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PassKind {
    /// Belongs to a tracked flow (either direction), or is an ICMP error about one.
    Flow = 0,
    /// To an address no rule protects.
    Unprotected = 1,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NonIp = 2,
    /// A later fragment whose first fragment passed.
    Fragment = 3,
    /// ICMPv6 neighbour discovery.
    NeighborDiscovery = 4,
    /// ICMP echo to a protected address, with `icmp_echo = "allow"`.
    IcmpEcho = 5,
}

impl PassKind {
    pub const ALL: [PassKind; 6] = [
        PassKind::Flow,
        PassKind::Unprotected,
        PassKind::NonIp,
        PassKind::Fragment,
        PassKind::NeighborDiscovery,
        PassKind::IcmpEcho,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            PassKind::Flow => "flow",
            PassKind::Unprotected => "unprotected",
            PassKind::NonIp => "non-ip",
            PassKind::Fragment => "fragment",
            PassKind::NeighborDiscovery => "neighbor-discovery",
            PassKind::IcmpEcho => "icmp-echo",
        }
    }
}

/// Why a packet was dropped (or, in audit mode, would have been).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Too short for the headers it claims, or inconsistent lengths.
    Malformed = 0,
    /// To a protected address, and neither a rule nor a flow lets it through.
    NoRule = 1,
    /// A later fragment whose first fragment did not pass.
    Fragment = 2,
    /// TCP with an impossible flag set to a protected address.
    BadTcpFlags = 3,
    /// To an unprotected address with `unprotected = "drop"`.
    Unprotected = 4,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::Malformed,
        DropReason::NoRule,
        DropReason::Fragment,
        DropReason::BadTcpFlags,
        DropReason::Unprotected,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoRule => "no-rule",
            DropReason::Fragment => "fragment",
            DropReason::BadTcpFlags => "bad-tcp-flags",
            DropReason::Unprotected => "unprotected",
        }
    }
}

pub const PASS_BASE: u32 = 0;
pub const DROP_BASE: u32 = PASS_BASE + PassKind::ALL.len() as u32;
pub const AUDIT_BASE: u32 = DROP_BASE + DropReason::ALL.len() as u32;
pub const RULE_BASE: u32 = AUDIT_BASE + DropReason::ALL.len() as u32;
/// Most rules a policy may have (after the profile's rules are added).
pub const MAX_RULES: u32 = 16_384;
pub const COUNTER_SLOTS: u32 = RULE_BASE + MAX_RULES;

/// What happened to a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Pass(PassKind),
    /// Passed by the rule with this counter slot. The agent gives each rule id a slot of its
    /// own and keeps it across reloads and restarts; a fresh policy numbers its rules
    /// 0, 1, ... in order.
    Rule(u32),
    Drop(DropReason),
    /// Would have been dropped; passed because of audit mode.
    Audit(DropReason),
}

impl Verdict {
    /// Whether the packet goes on.
    pub const fn passes(self) -> bool {
        !matches!(self, Verdict::Drop(_))
    }

    pub const fn slot(self) -> u32 {
        match self {
            Verdict::Pass(kind) => PASS_BASE + kind as u32,
            Verdict::Drop(reason) => DROP_BASE + reason as u32,
            Verdict::Audit(reason) => AUDIT_BASE + reason as u32,
            Verdict::Rule(index) => RULE_BASE + index,
        }
    }

    pub fn from_slot(slot: u32) -> Option<Verdict> {
        let verdict = if slot < DROP_BASE {
            Verdict::Pass(PassKind::ALL[(slot - PASS_BASE) as usize])
        } else if slot < AUDIT_BASE {
            Verdict::Drop(DropReason::ALL[(slot - DROP_BASE) as usize])
        } else if slot < RULE_BASE {
            Verdict::Audit(DropReason::ALL[(slot - AUDIT_BASE) as usize])
        } else if slot < COUNTER_SLOTS {
            Verdict::Rule(slot - RULE_BASE)
        } else {
            return None;
        };
        Some(verdict)
    }
}

/// Packets and bytes of one counter slot on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl core::ops::Add for Counter {
    type Output = Counter;

    fn add(self, other: Counter) -> Counter {
        Counter {
            packets: self.packets + other.packets,
            bytes: self.bytes + other.bytes,
        }
    }
}

impl core::iter::Sum for Counter {
    fn sum<I: Iterator<Item = Counter>>(counters: I) -> Counter {
        counters.fold(Counter::default(), |sum, c| sum + c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        let mut all = [Verdict::Rule(0); 20];
        let mut n = 0;
        for k in PassKind::ALL {
            all[n] = Verdict::Pass(k);
            n += 1;
        }
        for r in DropReason::ALL {
            all[n] = Verdict::Drop(r);
            all[n + 1] = Verdict::Audit(r);
            n += 2;
        }
        all[n] = Verdict::Rule(MAX_RULES - 1);
        for v in &all[..=n] {
            assert_eq!(Verdict::from_slot(v.slot()), Some(*v));
        }
        assert_eq!(Verdict::from_slot(COUNTER_SLOTS), None);
    }
}
