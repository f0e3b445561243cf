//! The built-in profile `lync2013-single-director`: the firewall port summary of a single
//! Director in Lync Server 2013 ("Port summary - Single Director"), exactly as the document
//! gives it. Table rows come from its table; text rows from its introduction, which also opens
//! the reverse proxy and Edge ports towards the Front End pool and SIP towards the Edge.

use super::{Options, Policy, Protocol, Rule, Source};

pub const NAME: &str = "lync2013-single-director";

/// Built-in roles, in bit order.
pub const ROLES: [&str; 5] = [
    "reverse-proxy",
    "director",
    "front-end",
    "internal-clients",
    "edge-internal",
];
const REVERSE_PROXY: usize = 0;
const DIRECTOR: usize = 1;
const FRONT_END: usize = 2;
const INTERNAL_CLIENTS: usize = 3;
const EDGE_INTERNAL: usize = 4;

/// The source document's probable copying error, shown by `policy show` and the README.
pub const ANOMALY_NOTE: &str = "\
Note on 50001-50003: the document opens TCP 50001-50003 (Centralized Logging Service, \
ClsController.exe / ClsAgent.exe) from any source to the Edge Server's internal interface. \
Both scaled-Director pages open the same ports as any -> Director, and the CLS agent listens \
on 50001-50003 on every Lync server, so this row is probably a copying error. The profile \
follows the document as written. To let the CLS controller collect logs from the Director, add:

    [[rules]]
    id    = \"any-director-cls\"
    from  = \"any\"
    to    = \"director\"
    proto = \"tcp\"
    ports = [\"50001-50003\"]";

/// (id, from (`None`: any), to, first port, last port, origin)
type RuleRow = (&'static str, Option<usize>, usize, u16, u16, &'static str);

const RULES: [RuleRow; 12] = [
    (
        "rp-director-http",
        Some(REVERSE_PROXY),
        DIRECTOR,
        8080,
        8080,
        "table",
    ),
    (
        "rp-director-https",
        Some(REVERSE_PROXY),
        DIRECTOR,
        4443,
        4443,
        "table",
    ),
    (
        "director-fe-https",
        Some(DIRECTOR),
        FRONT_END,
        444,
        444,
        "table",
    ),
    (
        "clients-director-http",
        Some(INTERNAL_CLIENTS),
        DIRECTOR,
        80,
        80,
        "table",
    ),
    (
        "clients-director-https",
        Some(INTERNAL_CLIENTS),
        DIRECTOR,
        443,
        443,
        "table",
    ),
    (
        "edge-director-sip",
        Some(EDGE_INTERNAL),
        DIRECTOR,
        5061,
        5061,
        "table",
    ),
    ("any-edge-cls", None, EDGE_INTERNAL, 50001, 50003, "table"),
    (
        "rp-fe-http",
        Some(REVERSE_PROXY),
        FRONT_END,
        8080,
        8080,
        "text",
    ),
    (
        "rp-fe-https",
        Some(REVERSE_PROXY),
        FRONT_END,
        4443,
        4443,
        "text",
    ),
    (
        "edge-fe-sip",
        Some(EDGE_INTERNAL),
        FRONT_END,
        5061,
        5061,
        "text",
    ),
    (
        "director-edge-sip",
        Some(DIRECTOR),
        EDGE_INTERNAL,
        5061,
        5061,
        "text",
    ),
    (
        "fe-edge-sip",
        Some(FRONT_END),
        EDGE_INTERNAL,
        5061,
        5061,
        "text",
    ),
];

pub fn lync2013_single_director() -> Policy {
    Policy {
        source: format!("built-in profile {NAME}"),
        profile: Some(NAME.to_string()),
        roles: ROLES.iter().map(|role| role.to_string()).collect(),
        peers: Vec::new(),
        rules: RULES
            .iter()
            .map(|&(id, from, to, first, last, origin)| Rule {
                id: id.to_string(),
                from: from.map_or(Source::Any, Source::Role),
                to,
                protocol: Protocol::Tcp,
                ports: vec![first..=last],
                origin: origin.to_string(),
            })
            .collect(),
        options: Options::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_the_twelve_rules_of_the_document() {
        let policy = lync2013_single_director();
        assert_eq!(policy.rules.len(), 12);
        assert_eq!(
            policy.rules.iter().filter(|r| r.origin == "table").count(),
            7
        );
        let cls = policy
            .rules
            .iter()
            .find(|r| r.id == "any-edge-cls")
            .unwrap();
        assert_eq!((cls.from, cls.to), (Source::Any, EDGE_INTERNAL));
        assert_eq!(cls.ports, vec![50001..=50003]);
        assert!(policy.rules.iter().all(|r| r.protocol == Protocol::Tcp));
    }
}
