//! Every built-in profile against the port tables of its pages, read from
//! `tests/data/port-tables.csv` (copied from Microsoft's pages, not from the profiles): each
//! row of a page is held by exactly one rule of the profile, which cites that row as its
//! source, with the row's protocol, ports and roles; and every rule is rows of the tables or
//! the page's text, with nothing more. Where a profile departs from a cell, the departure is
//! listed in `ERRATA` with the documented choice that the profile must carry.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

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
    table: String,
    row: u32,
    proto: String,
    ports: RangeInclusive<u16>,
    source: String,
    destination: String,
    /// A row that Skype for Business Server 2019 does not support.
    only_2015: bool,
}

fn rows() -> Vec<Row> {
    include_str!("data/port-tables.csv")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 8, "{l}");
            let (first, last) = f[4].split_once('-').unwrap_or((f[4], f[4]));
            Row {
                page: f[0].into(),
                table: f[1].into(),
                row: f[2].parse().unwrap(),
                proto: f[3].into(),
                ports: first.parse().unwrap()..=last.parse().unwrap(),
                source: f[5].into(),
                destination: f[6].into(),
                only_2015: f[7] == "2015",
            }
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Source,
    Destination,
}

/// The role a page's cell names. The pages word the same role in many ways. A cell that
/// begins with "Any" is every address: `any` as a source, and the role `internet` as a
/// destination (only a role can be a destination).
fn role_of(cell: &str, side: Side) -> &'static str {
    if cell.starts_with("Any") || (side == Side::Source && cell == "Clients") {
        return match side {
            Side::Source => "any",
            Side::Destination => "internet",
        };
    }
    let nat_or_public = |service: &str| {
        format!("**Private IP using NAT:** Edge Server {service} ; **Public IP:** Edge Server {service} public IP address")
    };
    match cell {
        "Reverse proxy internal interface" => "reverse-proxy",
        "Director" | "Director web services" => "director",
        "Director Hardware Load Balancer VIP" => "director-vip",
        "Front End server or Front End pool"
        | "Front End Server or Front End pool"
        | "Front End pool or Front End Server" => "front-end",
        "Internal Clients" => "internal-clients",
        "Edge Server internal interface"
        | "Edge Server Internal interface"
        | "Edge Server internal interface IP address"
        | "Each internal Edge Server Interface IP"
        | "Each internal Edge Server interface IP"
        | "Edge Server IP, or pool that holds the internal interface" => "edge-internal",
        "Edge Server Internal VIP interface" | "Edge Server internal VIP interface" => {
            "edge-internal-vip"
        }
        "Edge Server Access Edge service"
        | "Edge Server Access Edge service public IP address"
        | "Edge Server Access Edge service interface IP address"
        | "Access Edge service public IP address"
        | "XMPP Proxy service (shares IP address with Access Edge service)"
        | "XMPP Proxy service (shares an IP address with the Access Edge service)"
        | "XMPP Proxy service (shares an IP address with the Access Edge service" => "edge-access",
        "Access Edge service public VIP address" => "edge-access-vip",
        "Edge Server Web Conferencing Edge service"
        | "Edge Server Web Conferencing Edge service public IP address" => "edge-webconf",
        "Edge Server Web Conferencing Edge service public VIP address" => "edge-webconf-vip",
        "Edge Server A/V Edge service"
        | "Edge Server A/V Edge service public IP address"
        | "Edge Server A/V Edge service IP address" => "edge-av",
        "Edge Server A/V Edge service public VIP address" => "edge-av-vip",
        "Federated partner" => "federation-partner",
        "Public IM connectivity partners" => "pic-partner",
        "Live Messenger clients" => "wlm-clients",
        other if other == nat_or_public("Access Edge service") => "edge-access",
        other if other == nat_or_public("Web Conferencing Edge service") => "edge-webconf",
        other if other == nat_or_public("A/V Edge service") => "edge-av",
        other => panic!("no role for the cell {other:?}: add it here, from the page"),
    }
}

const PUBLIC_SINGLE: &str =
    "lync-server-2013-port-summary-single-consolidated-edge-with-public-ip-addresses.md";
const LYNC_HLB: &str =
    "lync-server-2013-port-summary-scaled-consolidated-edge-with-hardware-load-balancers.md";
const SFB: &str = "edge-environmental-requirements.md";
const LYNC_EXT_VIP: &str = "External Port Settings Required for Scaled Consolidated Edge, Hardware Load Balanced: External Interface Virtual IPs";
const SFB_EXT_VIP: &str = "HLB — External interface Virtual IPs";

/// Cells the profiles depart from (shared/sources/PORTS.md, "Disagreements"): page, table
/// (a prefix of its title), row, side, the role the profile takes instead, and the
/// documented choice that says why.
#[rustfmt::skip]
const ERRATA: &[(&str, &str, u32, Side, &str, &str)] = &[
    // Disagreement 8: the Access Edge as the source of A/V RTP.
    (PUBLIC_SINGLE, "Firewall Summary for Single Consolidated Edge with Public IP Addresses: External", 9, Side::Source, "edge-av", "av-rtp-source"),
    // XMPP in the tables of virtual IPs goes to and from the Access Edge VIP.
    (LYNC_HLB, LYNC_EXT_VIP, 1, Side::Destination, "edge-access-vip", "vip-xmpp"),
    (LYNC_HLB, LYNC_EXT_VIP, 2, Side::Source, "edge-access-vip", "vip-xmpp"),
    (SFB, SFB_EXT_VIP, 1, Side::Destination, "edge-access-vip", "vip-xmpp"),
    (SFB, SFB_EXT_VIP, 2, Side::Source, "edge-access-vip", "vip-xmpp"),
    // Disagreement 17: the SfB external VIP table in the servers' own words. (Its internal VIP
    // table, disagreement 16, is followed as written.)
    (SFB, SFB_EXT_VIP, 3, Side::Destination, "edge-access-vip", "sfb-vip-tables"),
    (SFB, SFB_EXT_VIP, 4, Side::Destination, "edge-access-vip", "sfb-vip-tables"),
    (SFB, SFB_EXT_VIP, 5, Side::Source, "edge-access-vip", "sfb-vip-tables"),
    (SFB, SFB_EXT_VIP, 6, Side::Destination, "edge-webconf-vip", "sfb-vip-tables"),
    (SFB, SFB_EXT_VIP, 7, Side::Destination, "edge-av-vip", "sfb-vip-tables"),
    (SFB, SFB_EXT_VIP, 8, Side::Destination, "edge-av-vip", "sfb-vip-tables"),
];

/// The role a profile must give a row's cell: the cell's, or an erratum's with its choice
/// (whose index is marked in `used`).
fn expected_role(row: &Row, side: Side, used: &mut [bool]) -> (&'static str, Option<&'static str>) {
    let erratum = ERRATA.iter().position(|e| {
        e.0 == row.page && row.table.starts_with(e.1) && e.2 == row.row && e.3 == side
    });
    match erratum {
        Some(i) => {
            used[i] = true;
            (ERRATA[i].4, Some(ERRATA[i].5))
        }
        None => {
            let cell = match side {
                Side::Source => &row.source,
                Side::Destination => &row.destination,
            };
            (role_of(cell, side), None)
        }
    }
}

#[test]
fn every_profile_holds_exactly_the_rows_of_its_pages() {
    let rows = rows();
    let mut checked = 0;
    let mut used = vec![false; ERRATA.len()];
    for profile in profile::all() {
        let policy = profile.policy();
        let sfb2019 = profile.product.contains("2019");
        let choices: Vec<&str> = profile.choices.iter().map(|c| c.id.as_str()).collect();
        for (page, cited) in profile.citations() {
            let tables: &[String] = if page == profile.page {
                &profile.tables
            } else {
                &profile.also.iter().find(|p| p.page == page).unwrap().tables
            };
            let file = page.rsplit('/').next().unwrap();
            let on_page: Vec<&Row> = rows
                .iter()
                .filter(|r| r.page == file && tables.contains(&r.table))
                .collect();
            assert!(!on_page.is_empty(), "{}: no rows of {file}", profile.name);
            // Every citation names a row of the page.
            for (id, table, row) in &cited {
                assert!(
                    on_page.iter().any(|r| &r.table == table && r.row == *row),
                    "{}: {id} cites row {row} of {table:?}, which {file} does not have",
                    profile.name
                );
            }
            for row in &on_page {
                let holders: Vec<&str> = cited
                    .iter()
                    .filter(|(_, table, r)| *table == row.table && *r == row.row)
                    .map(|(id, _, _)| *id)
                    .collect();
                let context = format!("{}: {file}, {:?} row {}", profile.name, row.table, row.row);
                if sfb2019 && row.only_2015 {
                    assert!(
                        holders.is_empty(),
                        "{context}: not in 2019, held by {holders:?}"
                    );
                    continue;
                }
                assert_eq!(holders.len(), 1, "{context}: held by {holders:?}");
                let rule = policy.rules.iter().find(|r| r.id == holders[0]).unwrap();
                let context = format!("{context} ({})", rule.id);
                assert_eq!(rule.protocol.name(), row.proto, "{context}");
                for port in [*row.ports.start(), *row.ports.end()] {
                    assert!(rule.matches_port(port), "{context}: port {port}");
                }
                for (side, actual) in [
                    (Side::Source, policy.source_name(rule.from)),
                    (Side::Destination, policy.role_name(rule.to)),
                ] {
                    let (role, choice) = expected_role(row, side, &mut used);
                    assert_eq!(actual, role, "{context}: {side:?}");
                    if let Some(choice) = choice {
                        assert!(choices.contains(&choice), "{context}: no choice {choice}");
                    }
                }
                checked += 1;
            }

            // No table rule opens more than its rows on this page.
            for rule in &policy.rules {
                let mine: Vec<&&Row> = on_page
                    .iter()
                    .filter(|r| {
                        cited
                            .iter()
                            .any(|(id, t, n)| *id == rule.id && *t == r.table && *n == r.row)
                    })
                    .collect();
                if matches!(rule.origin, Origin::Table { .. }) {
                    let ports: BTreeSet<u16> = rule.ports.iter().flat_map(|r| r.clone()).collect();
                    let from_rows: BTreeSet<u16> =
                        mine.iter().flat_map(|r| r.ports.clone()).collect();
                    assert_eq!(
                        ports, from_rows,
                        "{}: {} opens other ports than its rows on {file}",
                        profile.name, rule.id
                    );
                }
            }
        }

        // A text rule opens only ports its quote names.
        for rule in &policy.rules {
            match &rule.origin {
                Origin::Table { .. } => {}
                Origin::Text { quote, .. } => {
                    let named: BTreeSet<u16> = quote
                        .split(|c: char| !c.is_ascii_digit())
                        .filter_map(|n| n.parse().ok())
                        .collect();
                    for port in rule.ports.iter().flat_map(|r| r.clone()) {
                        assert!(
                            named.contains(&port),
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
    // Every row of the pages: the Director pages' 27, the Lync Edge pages' 182 (NAT and public
    // under one profile each), and the Skype for Business page's 55 twice, once for 2015 and
    // once for 2019 without its five XMPP rows.
    assert_eq!(checked, 27 + 182 + 55 + 50);
    // An erratum no row needs is stale.
    for (erratum, used) in ERRATA.iter().zip(used) {
        assert!(used, "no row of any profile needs the erratum {erratum:?}");
    }
}

/// Every profile's roles are the roles its rules use, so that none is left without meaning.
#[test]
fn every_profile_role_is_used_by_a_rule() {
    for profile in profile::all() {
        let policy = profile.policy();
        for (i, role) in policy.roles.iter().enumerate() {
            let used = policy
                .rules
                .iter()
                .any(|r| r.to == i || r.from == Source::Role(i));
            assert!(used, "{}: role {role} is in no rule", profile.name);
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

/// A gateway in front of a Director pool and an Edge's internal side names one profile of
/// each; two profiles of one kind describe the same servers twice and are refused by their
/// shared rule ids.
#[test]
fn a_director_profile_combines_with_an_edge_profile_and_alternatives_do_not() {
    let is_edge = |name: &str| name.contains("edge");
    for a in profile::all() {
        for b in profile::all().iter().filter(|b| b.name != a.name) {
            let text = format!("profile = [{:?}, {:?}]\n", a.name, b.name);
            let combined = Policy::from_toml("two.toml", &text);
            if is_edge(&a.name) == is_edge(&b.name) {
                let err = combined.expect_err(&text);
                assert!(err.message.contains("both have a rule"), "{text}: {err}");
            } else {
                let policy = combined.unwrap_or_else(|err| panic!("{text}: {err}"));
                let alone = a.policy().rules.len() + b.policy().rules.len();
                assert_eq!(policy.rules.len(), alone, "{text}");
                // Shared role names, such as edge-internal, are one role.
                let mut names = policy.roles.clone();
                names.sort();
                names.dedup();
                assert_eq!(names.len(), policy.roles.len(), "{text}");
            }
        }
    }
}
