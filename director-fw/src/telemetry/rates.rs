//! Rates between two snapshots of the counters, for `stats --watch`.

use serde::Serialize;

use super::stats::{DropStat, PassStat, Stats};

/// One counter with its rates since the snapshot before.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// The interface, or `None` for all of them together.
    pub interface: Option<String>,
    /// `rule`, `pass` or `drop`.
    pub section: &'static str,
    /// The rule id, pass kind or drop reason.
    pub name: String,
    /// A would-be drop counted in audit mode.
    pub audit: bool,
    pub packets: u64,
    pub bytes: u64,
    /// Per second since the snapshot before; 0 for the first one.
    pub packets_per_sec: f64,
    pub bytes_per_sec: f64,
}

impl Row {
    fn same_counter(&self, other: &Row) -> bool {
        (&self.interface, self.section, &self.name, self.audit)
            == (&other.interface, other.section, &other.name, other.audit)
    }
}

/// Every counter of `now`, in total then per interface, with its rates over the `secs` since
/// `before`. A counter that went down (a rule reloaded into a new slot) shows no rate rather
/// than a negative one.
pub fn rows(before: Option<&Stats>, now: &Stats, secs: f64) -> Vec<Row> {
    let then = before.map(counters).unwrap_or_default();
    let rate = |then: u64, now: u64| {
        if secs > 0.0 && now >= then {
            (now - then) as f64 / secs
        } else {
            0.0
        }
    };
    let mut rows = counters(now);
    for row in &mut rows {
        if let Some(t) = then.iter().find(|t| t.same_counter(row)) {
            row.packets_per_sec = rate(t.packets, row.packets);
            row.bytes_per_sec = rate(t.bytes, row.bytes);
        }
    }
    rows
}

/// The counters of one snapshot, without rates.
fn counters(stats: &Stats) -> Vec<Row> {
    let row = |interface: Option<&String>, section, name: &str, audit, packets, bytes| Row {
        interface: interface.cloned(),
        section,
        name: name.to_string(),
        audit,
        packets,
        bytes,
        packets_per_sec: 0.0,
        bytes_per_sec: 0.0,
    };
    let verdicts = |interface, passes: &[PassStat], drops: &[DropStat]| {
        let passes = passes
            .iter()
            .map(move |p| row(interface, "pass", &p.kind, false, p.packets, p.bytes));
        let drops = drops
            .iter()
            .map(move |d| row(interface, "drop", &d.reason, d.audit, d.packets, d.bytes));
        passes.chain(drops).collect::<Vec<_>>()
    };
    let mut rows: Vec<Row> = stats
        .rules
        .iter()
        .map(|r| row(None, "rule", &r.id, false, r.packets, r.bytes))
        .collect();
    rows.extend(verdicts(None, &stats.passes, &stats.drops));
    for i in &stats.by_interface {
        rows.extend(verdicts(Some(&i.interface), &i.passes, &i.drops));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::stats::{InterfaceStat, RuleStat};

    fn drop(packets: u64) -> DropStat {
        DropStat {
            reason: "no-rule".into(),
            packets,
            bytes: packets * 60,
            audit: false,
        }
    }

    fn stats(rule: u64, drops: u64) -> Stats {
        Stats {
            rules: vec![RuleStat {
                id: "r".into(),
                packets: rule,
                bytes: rule * 100,
            }],
            drops: vec![drop(drops)],
            passes: vec![],
            interfaces: vec![],
            by_interface: vec![],
        }
    }

    #[test]
    fn rates_are_per_second_and_never_negative() {
        let first = rows(None, &stats(10, 5), 1.0);
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|r| r.packets_per_sec == 0.0));
        let next = rows(Some(&stats(10, 5)), &stats(30, 5), 2.0);
        assert_eq!(
            (next[0].packets_per_sec, next[0].bytes_per_sec),
            (10.0, 1000.0)
        );
        assert_eq!(next[1].packets_per_sec, 0.0);
        let reset = rows(Some(&stats(30, 5)), &stats(3, 5), 1.0);
        assert_eq!(
            (reset[0].packets_per_sec, reset[0].bytes_per_sec),
            (0.0, 0.0)
        );
    }

    #[test]
    fn an_interface_has_rates_of_its_own() {
        let with = |eth1: u64, eth2: u64| Stats {
            by_interface: [("eth1", eth1), ("eth2", eth2)]
                .map(|(name, n)| InterfaceStat {
                    interface: name.into(),
                    passes: vec![],
                    drops: vec![drop(n)],
                })
                .into(),
            ..stats(0, eth1 + eth2)
        };
        let next = rows(Some(&with(10, 20)), &with(14, 20), 1.0);
        let rate = |interface: Option<&str>| {
            next.iter()
                .find(|r| r.section == "drop" && r.interface.as_deref() == interface)
                .map(|r| r.packets_per_sec)
        };
        assert_eq!(
            (rate(None), rate(Some("eth1")), rate(Some("eth2"))),
            (Some(4.0), Some(4.0), Some(0.0))
        );
    }
}
