//! Every built-in profile against the port table of its page, read from
//! `tests/data/port-tables.csv` (copied from Microsoft's pages, not from the profiles): each
//! row of the page is held by exactly one rule of the profile, which names that row as its
//! source, with the row's protocol, port and roles; and every rule is a row of the table or
//! the page's text, with nothing more.

use std::collections::BTreeSet;

use director_fw::{
    policy::{
        profile::{self, Origin},
        Source,
    },
    Policy,
};

/// One row of a page's table.
struct Row {
    page: String,
    row: u32,
    proto: String,
    port: u16,
    source: String,
    destination: String,
}

fn rows() -> Vec<Row> {
    include_str!("data/port-tables.csv")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 6, "{l}");
            Row {
                page: f[0].into(),
                row: f[1].parse().unwrap(),
                proto: f[2].into(),
                port: f[3].parse().unwrap(),
                source: f[4].into(),
                destination: f[5].into(),
            }
        })
        .collect()
}

/// The role a page's cell names. The pages word the same role in several ways.
fn role_of(cell: &str) -> &'static str {
    match cell {
        "Any" => "any",
        "Reverse proxy internal interface" => "reverse-proxy",
        "Director" | "Director web services" => "director",
        "Director Hardware Load Balancer VIP" => "director-vip",
        "Front End server or Front End pool"
        | "Front End Server or Front End pool"
        | "Front End pool or Front End Server" => "front-end",
        "Internal Clients" => "internal-clients",
        "Edge Server internal interface" => "edge-internal",
        other => panic!("no role for the cell {other:?}: add it here, from the page"),
    }
}

fn from_name(policy: &Policy, from: Source) -> &str {
    policy.source_name(from)
}

#[test]
fn every_profile_holds_exactly_the_rows_of_its_page() {
    let rows = rows();
    for profile in profile::all() {
        let page = profile.page.rsplit('/').next().unwrap();
        let expected: Vec<&Row> = rows.iter().filter(|r| r.page == page).collect();
        assert!(!expected.is_empty(), "{}: no rows of {page}", profile.name);
        let policy = profile.policy();

        for row in &expected {
            let holders: Vec<_> = policy
                .rules
                .iter()
                .filter(
                    |r| matches!(&r.origin, Origin::Table { rows, .. } if rows.contains(&row.row)),
                )
                .collect();
            assert_eq!(
                holders.len(),
                1,
                "{}: row {} held by {holders:?}",
                profile.name,
                row.row
            );
            let rule = holders[0];
            let context = format!("{}, row {} ({})", profile.name, row.row, rule.id);
            assert_eq!(rule.protocol.name(), row.proto, "{context}");
            assert!(rule.matches_port(row.port), "{context}: port {}", row.port);
            assert_eq!(
                from_name(&policy, rule.from),
                role_of(&row.source),
                "{context}"
            );
            assert_eq!(
                policy.role_name(rule.to),
                role_of(&row.destination),
                "{context}"
            );
        }

        // No rule opens more than its rows (or its quoted text) say.
        for rule in &policy.rules {
            let ports: BTreeSet<u16> = rule.ports.iter().flat_map(|r| r.clone()).collect();
            match &rule.origin {
                Origin::Table { rows: cited, .. } => {
                    assert!(
                        cited.iter().all(|c| expected.iter().any(|r| r.row == *c)),
                        "{}: {} cites a row the page does not have: {cited:?}",
                        profile.name,
                        rule.id
                    );
                    let from_rows: BTreeSet<u16> = expected
                        .iter()
                        .filter(|r| cited.contains(&r.row))
                        .map(|r| r.port)
                        .collect();
                    assert_eq!(
                        ports, from_rows,
                        "{}: {} opens more than its rows",
                        profile.name, rule.id
                    );
                }
                Origin::Text { quote, .. } => {
                    let named: BTreeSet<u16> = quote
                        .split(|c: char| !c.is_ascii_digit())
                        .filter_map(|n| n.parse().ok())
                        .collect();
                    for port in &ports {
                        assert!(
                            named.contains(port),
                            "{}: {} opens {port}, which its quote does not name",
                            profile.name,
                            rule.id
                        );
                    }
                }
                Origin::File(_) => panic!("{}: {} comes from a file", profile.name, rule.id),
            }
        }
    }
}

#[test]
fn a_policy_file_may_name_any_built_in_profile_and_an_unknown_one_is_refused() {
    for profile in profile::all() {
        let text = format!("profile = {:?}\n", profile.name);
        let policy = Policy::from_toml("test.toml", &text).unwrap();
        assert_eq!(policy.profiles, [profile.name.as_str()]);
        assert_eq!(policy.rules, profile.policy().rules);
    }
    let err = Policy::from_toml("test.toml", "profile = \"lync2013-no-such\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test.toml") && err.contains("lync2013-scaled-director-hlb"),
        "{err}"
    );
}

/// A gateway may guard several topologies: `profile` takes a list. Roles of one name are one
/// role; a rule id in two profiles is refused, with the line of `profile`.
#[test]
fn several_profiles_combine_and_a_shared_rule_id_is_refused() {
    let text =
        "# two\nprofile = [\"lync2013-scaled-director-hlb\", \"lync2013-single-director\"]\n";
    let err = Policy::from_toml("two.toml", text).unwrap_err();
    assert_eq!((err.line, err.field.as_str()), (Some(2), "profile"));
    assert!(err.message.contains("director-fe-https"), "{err}");
    let one =
        Policy::from_toml("one.toml", "profile = [\"lync2013-scaled-director-hlb\"]\n").unwrap();
    assert_eq!(
        one.rules,
        profile::find("lync2013-scaled-director-hlb")
            .unwrap()
            .policy()
            .rules
    );
    let unknown = Policy::from_toml(
        "u.toml",
        "profile = [\"lync2013-scaled-director-hlb\", \"edge\"]\n",
    )
    .unwrap_err();
    assert!(unknown.message.contains("\"edge\""), "{unknown}");
}
