//! The effective port matrix of a policy: for each source role, destination role and protocol,
//! the ports some rule opens, in the shape of Microsoft's port tables (protocol and ports,
//! source, destination), so that an operator can hold it against a page line by line. Rules
//! that open the same pair are merged, and each line names the rules behind it.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use super::{format_ports, Policy, Protocol, Source};

/// One line of the matrix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixLine {
    pub proto: String,
    /// The ports, merged: `"80,443"`, `"50001-50003"`.
    pub ports: String,
    pub from: String,
    pub to: String,
    /// The rules that open them, in policy order.
    pub rules: Vec<String>,
}

/// A source, a destination role and a protocol: one line of the matrix.
type Pair = (Source, usize, Protocol);

/// The matrix, in the order the policy first opens each (source, destination, protocol).
pub fn matrix(policy: &Policy) -> Vec<MatrixLine> {
    let mut groups: Vec<(Pair, Vec<RangeInclusive<u16>>, Vec<String>)> = Vec::new();
    for rule in &policy.rules {
        let key = (rule.from, rule.to, rule.protocol);
        let at = match groups.iter().position(|(k, _, _)| *k == key) {
            Some(at) => at,
            None => {
                groups.push((key, Vec::new(), Vec::new()));
                groups.len() - 1
            }
        };
        groups[at].1.extend(rule.ports.iter().cloned());
        groups[at].2.push(rule.id.clone());
    }
    groups
        .into_iter()
        .map(|((from, to, proto), ports, rules)| MatrixLine {
            proto: proto.name().to_uppercase(),
            ports: format_ports(&merge(ports)),
            from: policy.source_name(from).to_string(),
            to: policy.role_name(to).to_string(),
            rules,
        })
        .collect()
}

/// Sorted, with overlapping and adjacent ranges joined.
fn merge(mut ranges: Vec<RangeInclusive<u16>>) -> Vec<RangeInclusive<u16>> {
    ranges.sort_by_key(|r| (*r.start(), *r.end()));
    let mut out: Vec<RangeInclusive<u16>> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if u32::from(*r.start()) <= u32::from(*last.end()) + 1 => {
                *last = *last.start()..=(*last.end()).max(*r.end());
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_of_one_pair_merge_and_name_themselves() {
        let text = r#"profile = "lync2013-single-director"
[[rules]]
id = "extra-director-https"
from = "internal-clients"
to = "director"
proto = "tcp"
ports = ["443", "444-445"]
"#;
        let policy = Policy::from_toml("t.toml", text).unwrap();
        let lines = matrix(&policy);
        let clients = lines
            .iter()
            .find(|l| l.from == "internal-clients" && l.to == "director")
            .unwrap();
        assert_eq!(clients.ports, "80,443-445");
        assert_eq!(
            clients.rules,
            [
                "clients-director-http",
                "clients-director-https",
                "extra-director-https"
            ]
        );
        assert_eq!(clients.proto, "TCP");
        let cls = lines.iter().find(|l| l.from == "any").unwrap();
        assert_eq!(
            (cls.to.as_str(), cls.ports.as_str()),
            ("edge-internal", "50001-50003")
        );
    }

    #[test]
    fn merging_joins_adjacent_and_overlapping_ranges_only() {
        assert_eq!(
            merge(vec![5..=6, 1..=2, 3..=3, 9..=9, 4..=4]),
            vec![1..=6, 9..=9]
        );
        assert_eq!(merge(vec![5..=6, 1..=3]), vec![1..=3, 5..=6]);
        assert_eq!(merge(vec![65535..=65535, 0..=65535]), vec![0..=65535]);
    }
}
