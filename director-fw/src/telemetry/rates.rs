//! Rates between two snapshots of the counters, for `stats --watch`.

use serde::Serialize;

use super::stats::Stats;

/// One counter with its rates since the snapshot before.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
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

/// Every counter of `now` with its rates over the `secs` since `before`. A counter that went
/// down (a rule reloaded into a new slot) shows no rate rather than a negative one.
pub fn rows(before: Option<&Stats>, now: &Stats, secs: f64) -> Vec<Row> {
    let rate = |then: Option<u64>, now: u64| match then {
        Some(then) if secs > 0.0 && now >= then => (now - then) as f64 / secs,
        _ => 0.0,
    };
    let mut rows = Vec::new();
    let mut push = |section, name: &str, audit, packets, bytes, then: Option<(u64, u64)>| {
        rows.push(Row {
            section,
            name: name.to_string(),
            audit,
            packets,
            bytes,
            packets_per_sec: rate(then.map(|t| t.0), packets),
            bytes_per_sec: rate(then.map(|t| t.1), bytes),
        })
    };
    for r in &now.rules {
        let then = before
            .and_then(|b| b.rules.iter().find(|x| x.id == r.id))
            .map(|x| (x.packets, x.bytes));
        push("rule", &r.id, false, r.packets, r.bytes, then);
    }
    for p in &now.passes {
        let then = before
            .and_then(|b| b.passes.iter().find(|x| x.kind == p.kind))
            .map(|x| (x.packets, x.bytes));
        push("pass", &p.kind, false, p.packets, p.bytes, then);
    }
    for d in &now.drops {
        let then = before
            .and_then(|b| {
                b.drops
                    .iter()
                    .find(|x| x.reason == d.reason && x.audit == d.audit)
            })
            .map(|x| (x.packets, x.bytes));
        push("drop", &d.reason, d.audit, d.packets, d.bytes, then);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::stats::{DropStat, RuleStat};

    fn stats(rule: u64, drops: u64) -> Stats {
        Stats {
            rules: vec![RuleStat {
                id: "r".into(),
                packets: rule,
                bytes: rule * 100,
            }],
            drops: vec![DropStat {
                reason: "no-rule".into(),
                packets: drops,
                bytes: drops * 60,
                audit: false,
            }],
            passes: vec![],
            interfaces: vec![],
        }
    }

    #[test]
    fn rates_are_per_second_and_never_negative() {
        let first = rows(None, &stats(10, 5), 1.0);
        assert!(first.iter().all(|r| r.packets_per_sec == 0.0));
        let next = rows(Some(&stats(10, 5)), &stats(30, 5), 2.0);
        assert_eq!(
            (next[0].packets_per_sec, next[0].bytes_per_sec),
            (10.0, 1000.0)
        );
        assert_eq!(next[1].packets_per_sec, 0.0);
        let reset = rows(Some(&stats(30, 5)), &stats(3, 5), 1.0);
        assert_eq!(reset[0].packets_per_sec, 0.0);
    }
}
