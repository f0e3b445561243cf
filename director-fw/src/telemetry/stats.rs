//! Counters as `stats` shows them: per rule (by id), per pass kind and per drop reason.

use director_fw_common::{Counter, DropReason, PassKind, Verdict};
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

/// `stats --json`, as SPEC section 4 documents it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub rules: Vec<RuleStat>,
    pub drops: Vec<DropStat>,
    pub passes: Vec<PassStat>,
    pub interfaces: Vec<String>,
}

/// Builds the stats from any counter source: `rules` are the rule ids in policy order with
/// their counter slots.
pub fn collect<E>(
    rules: &[(String, u32)],
    interfaces: &[String],
    mut counter: impl FnMut(u32) -> Result<Counter, E>,
) -> Result<Stats, E> {
    let mut stats = Stats {
        rules: Vec::new(),
        drops: Vec::new(),
        passes: Vec::new(),
        interfaces: interfaces.to_vec(),
    };
    for (id, slot) in rules {
        let c = counter(Verdict::Rule(*slot).slot())?;
        stats.rules.push(RuleStat {
            id: id.clone(),
            packets: c.packets,
            bytes: c.bytes,
        });
    }
    for kind in PassKind::ALL {
        let c = counter(Verdict::Pass(kind).slot())?;
        stats.passes.push(PassStat {
            kind: kind.name().into(),
            packets: c.packets,
            bytes: c.bytes,
        });
    }
    for (audit, make) in [(false, Verdict::Drop as fn(_) -> _), (true, Verdict::Audit)] {
        for reason in DropReason::ALL {
            let c = counter(make(reason).slot())?;
            // Audit entries only matter where audit mode counted something.
            if audit && c.packets == 0 {
                continue;
            }
            stats.drops.push(DropStat {
                reason: reason.name().into(),
                packets: c.packets,
                bytes: c.bytes,
                audit,
            });
        }
    }
    Ok(stats)
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
    out
}
