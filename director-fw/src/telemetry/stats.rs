//! Counters as `stats` shows them: per rule (by id), per pass kind and per drop reason, in
//! total and per interface.

use director_fw_common::{
    interfaces::{InterfaceRow, ANY_RULE},
    Counter, DropReason, PassKind, Verdict,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleStat {
    pub id: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DropStat {
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
    /// Counted in audit mode: would have been dropped, passed.
    pub audit: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PassStat {
    pub kind: String,
    pub packets: u64,
    pub bytes: u64,
}

/// The verdicts of one interface. Rules count for all interfaces together, so here they are
/// one pass kind, `rule`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InterfaceStat {
    /// The interface, or [`OTHER`].
    pub interface: String,
    pub passes: Vec<PassStat>,
    pub drops: Vec<DropStat>,
}

impl InterfaceStat {
    /// What the interface let through: passes of every kind, and drops that audit mode passed.
    pub fn passed(&self) -> Counter {
        let passes = self.passes.iter().map(|p| (p.packets, p.bytes));
        let audited = self.drops.iter().filter(|d| d.audit);
        passes
            .chain(audited.map(|d| (d.packets, d.bytes)))
            .map(counter)
            .sum()
    }

    /// What the interface dropped.
    pub fn dropped(&self) -> Counter {
        self.drops
            .iter()
            .filter(|d| !d.audit)
            .map(|d| counter((d.packets, d.bytes)))
            .sum()
    }
}

fn counter((packets, bytes): (u64, u64)) -> Counter {
    Counter { packets, bytes }
}

/// The name under which interfaces without a counter row of their own are counted: ones the
/// agent no longer attaches, and attached ones beyond the rows there are or with an ifindex
/// too large for one.
pub const OTHER: &str = "(other)";
/// The pass kind of an interface's passes by any rule.
pub const RULE_KIND: &str = "rule";

/// `stats --json`, as SPEC section 4 documents it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub rules: Vec<RuleStat>,
    pub drops: Vec<DropStat>,
    pub passes: Vec<PassStat>,
    pub interfaces: Vec<String>,
    /// The same per interface; `drops` and `passes` above are their sums.
    #[serde(default)]
    pub by_interface: Vec<InterfaceStat>,
}

/// Builds the stats from the counters: `rules` are the rule ids in policy order with their
/// counter slots, `rule` reads one, and `rows` are the interfaces' counter rows (see
/// `director_fw_common::interfaces`), [`OTHER`] included.
pub fn collect<E>(
    rules: &[(String, u32)],
    interfaces: &[String],
    rows: &[(String, InterfaceRow)],
    mut rule: impl FnMut(u32) -> Result<Counter, E>,
) -> Result<Stats, E> {
    let mut stats = Stats {
        rules: Vec::new(),
        drops: Vec::new(),
        passes: Vec::new(),
        interfaces: interfaces.to_vec(),
        by_interface: Vec::new(),
    };
    for (id, slot) in rules {
        let c = rule(Verdict::Rule(*slot).slot())?;
        stats.rules.push(RuleStat {
            id: id.clone(),
            packets: c.packets,
            bytes: c.bytes,
        });
    }
    let mut total = [Counter::default(); ANY_RULE as usize + 1];
    for (_, row) in rows {
        for (sum, c) in total.iter_mut().zip(row) {
            *sum = *sum + *c;
        }
    }
    (stats.passes, stats.drops) = verdicts(&total, false);
    for (interface, row) in rows {
        // The row of interfaces no longer attached matters only once it counted something.
        if interface == OTHER && row.iter().all(|c| c.packets == 0) {
            continue;
        }
        let (passes, drops) = verdicts(row, true);
        stats.by_interface.push(InterfaceStat {
            interface: interface.clone(),
            passes,
            drops,
        });
    }
    Ok(stats)
}

/// The passes without a rule (and with `any_rule`, by any rule) and the drops of one row.
fn verdicts(row: &InterfaceRow, any_rule: bool) -> (Vec<PassStat>, Vec<DropStat>) {
    let mut passes: Vec<PassStat> = PassKind::ALL
        .iter()
        .map(|&kind| (kind.name(), row[Verdict::Pass(kind).slot() as usize]))
        .chain(any_rule.then_some((RULE_KIND, row[ANY_RULE as usize])))
        .map(|(kind, c)| PassStat {
            kind: kind.into(),
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    passes.sort_by_key(|p| p.kind != RULE_KIND);
    let mut drops = Vec::new();
    for (audit, make) in [(false, Verdict::Drop as fn(_) -> _), (true, Verdict::Audit)] {
        for reason in DropReason::ALL {
            let c = row[make(reason).slot() as usize];
            // Audit entries only matter where audit mode counted something.
            if audit && c.packets == 0 {
                continue;
            }
            drops.push(DropStat {
                reason: reason.name().into(),
                packets: c.packets,
                bytes: c.bytes,
                audit,
            });
        }
    }
    (passes, drops)
}

/// The human-readable table.
pub fn render(stats: &Stats) -> String {
    let mut out = format!("interfaces: {}\n\n", stats.interfaces.join(", "));
    out += &format!("{:<28} {:>14} {:>16}\n", "RULE", "PACKETS", "BYTES");
    for r in &stats.rules {
        out += &format!("{:<28} {:>14} {:>16}\n", r.id, r.packets, r.bytes);
    }
    out += &format!(
        "\n{:<28} {:>14} {:>16}\n",
        "PASS (no rule)", "PACKETS", "BYTES"
    );
    for p in &stats.passes {
        out += &format!("{:<28} {:>14} {:>16}\n", p.kind, p.packets, p.bytes);
    }
    out += &format!(
        "\n{:<28} {:>14} {:>16}\n",
        "DROP REASON", "PACKETS", "BYTES"
    );
    for d in &stats.drops {
        let name = if d.audit {
            format!("{} (audit, passed)", d.reason)
        } else {
            d.reason.clone()
        };
        out += &format!("{:<28} {:>14} {:>16}\n", name, d.packets, d.bytes);
    }
    out += &format!("\n{:<28} {:>14} {:>16}\n", "INTERFACE", "PASSED", "DROPPED");
    for i in &stats.by_interface {
        let (passed, dropped) = (i.passed(), i.dropped());
        out += &format!(
            "{:<28} {:>14} {:>16}\n",
            i.interface, passed.packets, dropped.packets
        );
    }
    out
}
