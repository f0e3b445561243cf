//! The Prometheus exposition of a snapshot (`run --metrics ADDR`, `GET /metrics`), through
//! prometheus-client. Labels name rules, reasons, kinds, roles and the attached interfaces,
//! never addresses, so their number stays bounded by the policy and the command line.

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use super::stats::Stats;

/// Everything one scrape shows.
pub struct Snapshot<'a> {
    pub stats: &'a Stats,
    /// Peer entries in force, per role.
    pub peers: Vec<(String, i64)>,
    pub flow_entries: i64,
    pub flow_capacity: i64,
    pub reloads: u64,
    pub reload_failures: u64,
    /// Seconds since the epoch of the last policy change.
    pub last_change: i64,
    pub version: &'static str,
    pub object: &'a str,
    /// Drop events sent, suppressed and lost, when the agent reads them.
    pub events: Option<(u64, u64, u64)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: String,
    audit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceDropLabels {
    interface: String,
    reason: String,
    audit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceKindLabels {
    interface: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    object: String,
}

/// A pair of counter families, packets and bytes, under one label set.
fn pair<L>(
    registry: &mut Registry,
    name: &str,
    what: &str,
) -> (Family<L, Counter>, Family<L, Counter>)
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let packets = Family::<L, Counter>::default();
    let bytes = Family::<L, Counter>::default();
    registry.register(
        format!("{name}_packets"),
        format!("Packets {what}"),
        packets.clone(),
    );
    registry.register(
        format!("{name}_bytes"),
        format!("Bytes {what}"),
        bytes.clone(),
    );
    (packets, bytes)
}

/// The text exposition of `snapshot`.
pub fn render(snapshot: &Snapshot<'_>) -> String {
    let mut registry = Registry::with_prefix("director_fw");
    let (packets, bytes) = pair::<RuleLabel>(&mut registry, "rule", "passed by each rule");
    for r in &snapshot.stats.rules {
        let label = RuleLabel { rule: r.id.clone() };
        packets.get_or_create(&label).inc_by(r.packets);
        bytes.get_or_create(&label).inc_by(r.bytes);
    }
    let (packets, bytes) = pair::<DropLabels>(
        &mut registry,
        "drop",
        "dropped by reason (audit=\"true\": would have been dropped, passed in audit mode)",
    );
    for d in &snapshot.stats.drops {
        let label = DropLabels {
            reason: d.reason.clone(),
            audit: d.audit.to_string(),
        };
        packets.get_or_create(&label).inc_by(d.packets);
        bytes.get_or_create(&label).inc_by(d.bytes);
    }
    let (packets, bytes) =
        pair::<KindLabel>(&mut registry, "pass", "passed without a rule, by kind");
    for p in &snapshot.stats.passes {
        let label = KindLabel {
            kind: p.kind.clone(),
        };
        packets.get_or_create(&label).inc_by(p.packets);
        bytes.get_or_create(&label).inc_by(p.bytes);
    }
    // Per interface in families of their own, so that a sum over a family never counts a
    // packet twice.
    let (drop_packets, drop_bytes) = pair::<InterfaceDropLabels>(
        &mut registry,
        "interface_drop",
        "dropped by interface and reason (audit as above)",
    );
    let (pass_packets, pass_bytes) = pair::<InterfaceKindLabels>(
        &mut registry,
        "interface_pass",
        "passed by interface and kind (kind=\"rule\": by any rule)",
    );
    for i in &snapshot.stats.by_interface {
        for d in &i.drops {
            let label = InterfaceDropLabels {
                interface: i.interface.clone(),
                reason: d.reason.clone(),
                audit: d.audit.to_string(),
            };
            drop_packets.get_or_create(&label).inc_by(d.packets);
            drop_bytes.get_or_create(&label).inc_by(d.bytes);
        }
        for p in &i.passes {
            let label = InterfaceKindLabels {
                interface: i.interface.clone(),
                kind: p.kind.clone(),
            };
            pass_packets.get_or_create(&label).inc_by(p.packets);
            pass_bytes.get_or_create(&label).inc_by(p.bytes);
        }
    }

    for (name, help, value) in [
        (
            "flow_table_entries",
            "Flows tracked now",
            snapshot.flow_entries,
        ),
        (
            "flow_table_capacity",
            "Flows the flow table holds at most",
            snapshot.flow_capacity,
        ),
        (
            "last_change_timestamp_seconds",
            "Time of the last policy change (start, peers, reload, audit), seconds since the epoch",
            snapshot.last_change,
        ),
    ] {
        let gauge = Gauge::<i64>::default();
        gauge.set(value);
        registry.register(name, help, gauge);
    }
    let peers = Family::<RoleLabel, Gauge>::default();
    registry.register("peers", "Peer entries in force, per role", peers.clone());
    for (role, n) in &snapshot.peers {
        peers
            .get_or_create(&RoleLabel { role: role.clone() })
            .set(*n);
    }
    for (name, help, value) in [
        (
            "policy_reloads",
            "Policy reloads applied since the agent started",
            snapshot.reloads,
        ),
        (
            "policy_reload_failures",
            "Policy reloads refused since the agent started",
            snapshot.reload_failures,
        ),
    ] {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    }
    if let Some((sent, suppressed, lost)) = snapshot.events {
        let events = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "drop_events",
            "Drop events: sent, suppressed by the rate limit, lost to a full ring buffer",
            events.clone(),
        );
        for (outcome, n) in [("sent", sent), ("suppressed", suppressed), ("lost", lost)] {
            events
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.into(),
                })
                .inc_by(n);
        }
    }
    registry.register(
        "build",
        "The agent's version and kernel object",
        Info::new(BuildLabels {
            version: snapshot.version.to_string(),
            object: snapshot.object.to_string(),
        }),
    );

    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::stats::{DropStat, InterfaceStat, PassStat, RuleStat};

    #[test]
    fn renders_counters_gauges_and_build_info_without_addresses() {
        let stats = Stats {
            rules: vec![RuleStat {
                id: "rp-director-https".into(),
                packets: 7,
                bytes: 700,
            }],
            drops: vec![DropStat {
                reason: "no-rule".into(),
                packets: 3,
                bytes: 180,
                audit: false,
            }],
            passes: vec![PassStat {
                kind: "flow".into(),
                packets: 9,
                bytes: 900,
            }],
            interfaces: vec!["eth1".into()],
            by_interface: vec![InterfaceStat {
                interface: "eth1".into(),
                passes: vec![PassStat {
                    kind: "rule".into(),
                    packets: 7,
                    bytes: 700,
                }],
                drops: vec![DropStat {
                    reason: "no-rule".into(),
                    packets: 3,
                    bytes: 180,
                    audit: false,
                }],
            }],
        };
        let text = render(&Snapshot {
            stats: &stats,
            peers: vec![("director".into(), 2)],
            flow_entries: 5,
            flow_capacity: 262_144,
            reloads: 1,
            reload_failures: 0,
            last_change: 1_700_000_000,
            version: "0.1.0",
            object: "abcd",
            events: Some((4, 6, 0)),
        });
        for line in [
            "director_fw_rule_packets_total{rule=\"rp-director-https\"} 7",
            "director_fw_rule_bytes_total{rule=\"rp-director-https\"} 700",
            "director_fw_drop_packets_total{reason=\"no-rule\",audit=\"false\"} 3",
            "director_fw_pass_packets_total{kind=\"flow\"} 9",
            "director_fw_interface_pass_packets_total{interface=\"eth1\",kind=\"rule\"} 7",
            "director_fw_interface_drop_bytes_total{interface=\"eth1\",reason=\"no-rule\",audit=\"false\"} 180",
            "director_fw_flow_table_entries 5",
            "director_fw_flow_table_capacity 262144",
            "director_fw_peers{role=\"director\"} 2",
            "director_fw_policy_reloads_total 1",
            "director_fw_build_info{version=\"0.1.0\",object=\"abcd\"} 1",
            "director_fw_drop_events_total{outcome=\"sent\"} 4",
            "director_fw_drop_events_total{outcome=\"suppressed\"} 6",
            "director_fw_drop_events_total{outcome=\"lost\"} 0",
            "director_fw_policy_reload_failures_total 0",
            "director_fw_last_change_timestamp_seconds 1700000000",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        // The Grafana dashboard only graphs metrics that exist.
        let dashboard = include_str!("../../../contrib/grafana/director-fw.json");
        let graphed: Vec<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("director_fw_"))
            .collect();
        assert!(graphed.len() >= 10, "the dashboard graphs {graphed:?}");
        for name in graphed {
            assert!(
                text.contains(&format!("{name}{{")) || text.contains(&format!("{name} ")),
                "the dashboard graphs {name}, which the agent does not export"
            );
        }
    }
}
