//! Reading the live counters of a running instance from its pinned `COUNTERS` map.

use director_fw_common::{maps, Counter, DropReason, PassKind, Verdict};
use serde::Serialize;

use crate::{
    instance::{AgentInfo, Instance},
    loader::{pinned_counters, sum, LoadError},
};

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RuleStat {
    pub id: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct DropStat {
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
    /// Counted in audit mode: would have been dropped, passed.
    pub audit: bool,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PassStat {
    pub kind: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// `stats --json`, as SPEC section 4 documents it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Stats {
    pub rules: Vec<RuleStat>,
    pub drops: Vec<DropStat>,
    pub passes: Vec<PassStat>,
    pub interfaces: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(transparent)]
    Instance(#[from] crate::instance::InstanceError),
    #[error("reading the counters of instance {instance:?}: {source}")]
    Read {
        instance: String,
        source: Box<LoadError>,
    },
}

pub fn read(instance: &Instance) -> Result<Stats, StatsError> {
    let agent = instance.agent()?;
    collect(&agent, |slot| {
        let counters = pinned_counters(&instance.map_pin(maps::COUNTERS))?;
        Ok(sum(&counters.get(&slot, 0)?))
    })
    .map_err(|source| StatsError::Read {
        instance: instance.name.clone(),
        source: Box::new(source),
    })
}

/// Builds the stats from any counter source (a pinned map, or a loaded datapath in tests).
pub fn collect(
    agent: &AgentInfo,
    mut counter: impl FnMut(u32) -> Result<Counter, LoadError>,
) -> Result<Stats, LoadError> {
    let mut stats = Stats {
        rules: Vec::new(),
        drops: Vec::new(),
        passes: Vec::new(),
        interfaces: agent.interfaces.clone(),
    };
    for (index, id) in agent.rules.iter().enumerate() {
        let c = counter(Verdict::Rule(index as u32).slot())?;
        stats.rules.push(RuleStat {
            id: id.clone(),
            packets: c.packets,
            bytes: c.bytes,
        });
    }
    for kind in PassKind::ALL {
        let c = counter(Verdict::Pass(kind).slot())?;
        stats.passes.push(PassStat {
            kind: kind.name(),
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
                reason: reason.name(),
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
            d.reason.to_string()
        };
        out += &format!("{:<28} {:>14} {:>16}\n", name, d.packets, d.bytes);
    }
    out
}
