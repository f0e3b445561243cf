//! The built-in profiles: Microsoft's firewall port summaries for Lync Server 2013 and Skype
//! for Business topologies, as data (`director-fw/profiles/*.toml`, compiled in). Every rule
//! names its source: rows of the page's table, or the words of the page's text. Where the
//! pages disagree or err, a profile follows a documented choice, which `policy show` prints
//! with the rule that overrides it.

use std::{fmt, sync::OnceLock};

use serde::Deserialize;

use super::{file::parse_ports, Options, Policy, Protocol, Rule, Source, ANY};

/// The profile of a policy file that names none, and of `Policy::builtin`.
pub const NAME: &str = "lync2013-single-director";

/// The profiles' files, compiled in. A variant follows the profile it extends.
const FILES: [(&str, &str); 10] = [
    (
        "lync2013-single-director.toml",
        include_str!("../../profiles/lync2013-single-director.toml"),
    ),
    (
        "lync2013-scaled-director-hlb.toml",
        include_str!("../../profiles/lync2013-scaled-director-hlb.toml"),
    ),
    (
        "lync2013-scaled-director-dns-hlb.toml",
        include_str!("../../profiles/lync2013-scaled-director-dns-hlb.toml"),
    ),
    (
        "lync2013-edge-single.toml",
        include_str!("../../profiles/lync2013-edge-single.toml"),
    ),
    (
        "lync2013-edge-scaled-dns.toml",
        include_str!("../../profiles/lync2013-edge-scaled-dns.toml"),
    ),
    (
        "lync2013-edge-scaled-hlb.toml",
        include_str!("../../profiles/lync2013-edge-scaled-hlb.toml"),
    ),
    (
        "sfb2015-edge.toml",
        include_str!("../../profiles/sfb2015-edge.toml"),
    ),
    (
        "sfb2015-edge-hlb.toml",
        include_str!("../../profiles/sfb2015-edge-hlb.toml"),
    ),
    (
        "sfb2019-edge.toml",
        include_str!("../../profiles/sfb2019-edge.toml"),
    ),
    (
        "sfb2019-edge-hlb.toml",
        include_str!("../../profiles/sfb2019-edge-hlb.toml"),
    ),
];

/// A built-in profile: its source pages, roles, rules and documented choices.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub product: String,
    /// The page's title.
    pub title: String,
    /// The page's path in Microsoft's documentation repository.
    pub page: String,
    /// The titles of the page's port tables that the rules cite; a citation `"T.R"` is row R
    /// of the T-th of them, and a bare number a row of the first.
    pub tables: Vec<String>,
    /// Pages that give the same rules in other words (the same topology with public addresses
    /// instead of NAT, say), with their own tables' titles; `also_rows` cite their rows where
    /// they are numbered otherwise.
    #[serde(default)]
    pub also: Vec<Page>,
    pub roles: Vec<String>,
    #[serde(default)]
    pub choices: Vec<Choice>,
    rules: Vec<RawRule>,
}

/// Another page a profile holds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    pub title: String,
    pub page: String,
    pub tables: Vec<String>,
}

/// A profile that is another one but for its product and the rules it leaves out (Skype for
/// Business Server 2019 is 2015 without XMPP).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Variant {
    name: String,
    product: String,
    extends: String,
    without: Vec<String>,
    /// The other's choices that concern only rules it leaves out.
    #[serde(default)]
    without_choices: Vec<String>,
}

/// A profile file: a whole profile, or a variant of another.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ProfileFile {
    Whole(Box<Profile>),
    Variant(Variant),
}

/// Where the profile departs from one of its pages' words, or chooses between pages, and the
/// rule that makes the other choice.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    pub id: String,
    pub text: String,
    #[serde(rename = "override")]
    pub override_rule: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    from: String,
    to: String,
    proto: Protocol,
    ports: Vec<toml::Value>,
    /// Rows of the page's tables.
    #[serde(default)]
    rows: Vec<Cite>,
    /// Rows of the `also` pages' tables, where they are not `rows`.
    also_rows: Option<Vec<Cite>>,
    /// The page's words, quoted, for a rule its tables omit.
    text: Option<String>,
}

/// A row of one of a profile's tables: `7` (the first table) or `"2.7"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "toml::Value")]
struct Cite {
    table: usize,
    row: u32,
}

impl TryFrom<toml::Value> for Cite {
    type Error = String;

    fn try_from(value: toml::Value) -> Result<Cite, String> {
        let parsed = match &value {
            toml::Value::Integer(row) => u32::try_from(*row).ok().map(|row| (1, row)),
            toml::Value::String(text) => text
                .split_once('.')
                .and_then(|(t, r)| Some((t.parse().ok()?, r.parse().ok()?))),
            _ => None,
        };
        match parsed {
            Some((table, row)) if table >= 1 && row >= 1 => Ok(Cite { table, row }),
            _ => Err(format!(
                "a row is a number or \"TABLE.ROW\", both from 1, not {value}"
            )),
        }
    }
}

/// A rule citing a row: the rule's id, the table's title and the row.
pub type Citation<'a> = (&'a str, &'a str, u32);

/// Rows of one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRows {
    pub table: String,
    pub rows: Vec<u32>,
}

/// Where a rule comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Rows of a profile's page's tables.
    Table { title: String, rows: Vec<TableRows> },
    /// A profile's page's text.
    Text { title: String, quote: String },
    /// A policy file's own rule.
    File(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Table { title, rows } => {
                let tables: Vec<String> = rows
                    .iter()
                    .map(|t| {
                        let rows: Vec<String> = t.rows.iter().map(u32::to_string).collect();
                        let noun = if rows.len() == 1 { "row" } else { "rows" };
                        format!("table {:?}, {noun} {}", t.table, rows.join(", "))
                    })
                    .collect();
                write!(f, "{title}, {}", tables.join("; "))
            }
            Origin::Text { title, quote } => write!(f, "{title}, text: {quote:?}"),
            Origin::File(file) => write!(f, "{file}"),
        }
    }
}

/// Cited rows, grouped by table in citation order.
fn group(cites: &[Cite], tables: &[String]) -> Vec<TableRows> {
    let mut grouped: Vec<TableRows> = Vec::new();
    for cite in cites {
        let table = &tables[cite.table - 1];
        match grouped.iter_mut().find(|t| &t.table == table) {
            Some(t) => t.rows.push(cite.row),
            None => grouped.push(TableRows {
                table: table.clone(),
                rows: vec![cite.row],
            }),
        }
    }
    grouped
}

/// Every built-in profile, in the order `policy profiles` lists them.
pub fn all() -> &'static [Profile] {
    static PROFILES: OnceLock<Vec<Profile>> = OnceLock::new();
    PROFILES.get_or_init(|| {
        let mut profiles: Vec<Profile> = Vec::new();
        for (file, text) in FILES {
            // The files are compiled in and a unit test reads every one: a bad one never
            // reaches a release.
            let parsed: ProfileFile =
                toml::from_str(text).unwrap_or_else(|err| panic!("profiles/{file}: {err}"));
            let profile = match parsed {
                ProfileFile::Whole(profile) => *profile,
                ProfileFile::Variant(variant) => {
                    let base = profiles
                        .iter()
                        .find(|p| p.name == variant.extends)
                        .unwrap_or_else(|| {
                            panic!("profiles/{file}: extends an unknown or later profile")
                        });
                    variant.apply(base)
                }
            };
            // Every citation names a table of its page (rows or also_rows for every also page).
            for rule in &profile.rules {
                let pages = std::iter::once((&profile.tables, &rule.rows)).chain(
                    profile
                        .also
                        .iter()
                        .map(|p| (&p.tables, rule.also_rows.as_ref().unwrap_or(&rule.rows))),
                );
                for (tables, cites) in pages {
                    if let Some(bad) = cites.iter().find(|c| c.table > tables.len()) {
                        panic!("profiles/{file}: {} cites table {}", rule.id, bad.table);
                    }
                }
            }
            profiles.push(profile);
        }
        profiles
    })
}

impl Variant {
    fn apply(self, base: &Profile) -> Profile {
        let rules: Vec<&String> = base.rules.iter().map(|r| &r.id).collect();
        let choices: Vec<&String> = base.choices.iter().map(|c| &c.id).collect();
        for (what, ids, known) in [
            ("rule", &self.without, rules),
            ("choice", &self.without_choices, choices),
        ] {
            if let Some(id) = ids.iter().find(|id| !known.contains(id)) {
                panic!("{}: {} has no {what} {id}", self.name, base.name);
            }
        }
        Profile {
            name: self.name,
            product: self.product,
            choices: base
                .choices
                .iter()
                .filter(|c| !self.without_choices.contains(&c.id))
                .cloned()
                .collect(),
            rules: base
                .rules
                .iter()
                .filter(|r| !self.without.contains(&r.id))
                .cloned()
                .collect(),
            ..base.clone()
        }
    }
}

pub fn find(name: &str) -> Option<&'static Profile> {
    all().iter().find(|p| p.name == name)
}

/// The policy of several profiles at once, for a gateway that guards, say, a Director pool and
/// an Edge's internal side: roles of the same name are one role, and the rules are all of
/// theirs. A rule id in two of them, or one profile named twice, is refused: such profiles
/// describe the same servers in two topologies, and only one of them can be right.
pub fn combine(profiles: &[&Profile]) -> Result<Policy, String> {
    let mut policy = Policy {
        source: String::new(),
        profiles: Vec::new(),
        roles: Vec::new(),
        peers: Vec::new(),
        rules: Vec::new(),
        options: Options::default(),
    };
    let mut owner: Vec<&str> = Vec::new();
    for profile in profiles {
        if policy.profiles.contains(&profile.name) {
            return Err(format!("profile {:?} is named twice", profile.name));
        }
        let own = profile.policy();
        // Each of the profile's roles, where it is in the combined policy.
        let at: Vec<usize> = own
            .roles
            .iter()
            .map(|name| match policy.roles.iter().position(|r| r == name) {
                Some(at) => at,
                None => {
                    policy.roles.push(name.clone());
                    policy.roles.len() - 1
                }
            })
            .collect();
        for rule in own.rules {
            if let Some(i) = policy.rules.iter().position(|r| r.id == rule.id) {
                return Err(format!(
                    "profiles {:?} and {:?} both have a rule {:?}: they describe the same servers in two topologies; keep the one that is yours",
                    owner[i], profile.name, rule.id
                ));
            }
            let from = match rule.from {
                Source::Any => Source::Any,
                Source::Role(id) => Source::Role(at[id]),
            };
            let to = at[rule.to];
            policy.rules.push(Rule { from, to, ..rule });
            owner.push(&profile.name);
        }
        policy.profiles.push(profile.name.clone());
    }
    policy.source = format!("built-in profiles {}", policy.profiles.join(" + "));
    Ok(policy)
}

/// The names of the built-in profiles, for messages.
pub fn names() -> String {
    let names: Vec<String> = all().iter().map(|p| format!("{:?}", p.name)).collect();
    names.join(", ")
}

impl Profile {
    /// The profile's policy, with no peers: nothing is protected until roles get peers.
    pub fn policy(&self) -> Policy {
        let role = |name: &str| {
            self.roles
                .iter()
                .position(|r| r == name)
                .unwrap_or_else(|| panic!("profile {}: no role {name:?}", self.name))
        };
        let rules = self
            .rules
            .iter()
            .map(|raw| {
                let ports = raw
                    .ports
                    .iter()
                    .map(parse_ports)
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap_or_else(|err| panic!("profile {}, rule {}: {err}", self.name, raw.id));
                let origin = match &raw.text {
                    Some(quote) => Origin::Text {
                        title: self.title.clone(),
                        quote: quote.clone(),
                    },
                    None => Origin::Table {
                        title: self.title.clone(),
                        rows: group(&raw.rows, &self.tables),
                    },
                };
                Rule {
                    id: raw.id.clone(),
                    from: match raw.from.as_str() {
                        ANY => Source::Any,
                        name => Source::Role(role(name)),
                    },
                    to: role(&raw.to),
                    protocol: raw.proto,
                    ports,
                    origin,
                }
            })
            .collect();
        Policy {
            source: format!("built-in profile {}", self.name),
            profiles: vec![self.name.clone()],
            roles: self.roles.clone(),
            peers: Vec::new(),
            rules,
            options: Options::default(),
        }
    }

    /// Every page the profile holds (its path), with the rows its table rules cite there.
    pub fn citations(&self) -> Vec<(&str, Vec<Citation<'_>>)> {
        let mut pages = vec![(self.page.as_str(), self.cited(&self.tables, false))];
        pages.extend(
            self.also
                .iter()
                .map(|p| (p.page.as_str(), self.cited(&p.tables, true))),
        );
        pages
    }

    fn cited<'a>(&'a self, tables: &'a [String], also: bool) -> Vec<Citation<'a>> {
        let mut cited = Vec::new();
        for rule in self.rules.iter().filter(|r| r.text.is_none()) {
            let cites = match (&rule.also_rows, also) {
                (Some(rows), true) => rows,
                _ => &rule.rows,
            };
            for c in cites {
                cited.push((rule.id.as_str(), tables[c.table - 1].as_str(), c.row));
            }
        }
        cited
    }

    /// The documented choices, as `policy show` prints them.
    pub fn notes(&self) -> Vec<String> {
        self.choices
            .iter()
            .map(|c| {
                format!(
                    "Choice {} ({}): {}\n\n{}",
                    c.id,
                    self.name,
                    c.text.trim(),
                    indent(c.override_rule.trim())
                )
            })
            .collect()
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_reads_and_builds_a_valid_policy() {
        assert_eq!(all().len(), FILES.len());
        for profile in all() {
            let policy = profile.policy();
            assert!(!policy.rules.is_empty(), "{}", profile.name);
            let mut ids: Vec<&str> = policy.rules.iter().map(|r| r.id.as_str()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(
                ids.len(),
                policy.rules.len(),
                "{}: a rule id twice",
                profile.name
            );
            for rule in &policy.rules {
                match &rule.origin {
                    Origin::Table { rows, .. } => assert!(!rows.is_empty(), "{}", rule.id),
                    Origin::Text { quote, .. } => assert!(!quote.is_empty(), "{}", rule.id),
                    Origin::File(_) => panic!("{}: a profile rule from a file", rule.id),
                }
            }
            // Each choice's override is a rule a policy file can add to the profile.
            for choice in &profile.choices {
                let text = format!("profile = {:?}\n{}", profile.name, choice.override_rule);
                let with = Policy::from_toml("override", &text)
                    .unwrap_or_else(|err| panic!("{}: {err}", choice.id));
                assert_eq!(with.rules.len(), policy.rules.len() + 1, "{}", choice.id);
            }
        }
    }

    #[test]
    fn the_single_director_profile_has_the_twelve_rules_of_its_page() {
        let policy = find(NAME).unwrap().policy();
        assert_eq!(policy.rules.len(), 12);
        let from_table = |r: &&Rule| matches!(r.origin, Origin::Table { .. });
        assert_eq!(policy.rules.iter().filter(from_table).count(), 7);
        let cls = policy
            .rules
            .iter()
            .find(|r| r.id == "any-edge-cls")
            .unwrap();
        assert_eq!(
            (cls.from, policy.role_name(cls.to)),
            (Source::Any, "edge-internal")
        );
        assert_eq!(cls.ports, vec![50001..=50003]);
        assert!(
            cls.origin.to_string().ends_with("rows 7, 8, 9"),
            "{}",
            cls.origin
        );
        assert!(policy.rules.iter().all(|r| r.protocol == Protocol::Tcp));
    }

    #[test]
    fn profiles_combine_by_role_name_and_refuse_a_rule_id_twice() {
        let single = find(NAME).unwrap();
        let hlb = find("lync2013-scaled-director-hlb").unwrap();
        let err = combine(&[single, hlb]).unwrap_err();
        assert!(
            err.contains("director-fe-https") && err.contains(NAME),
            "{err}"
        );
        assert!(combine(&[single, single])
            .unwrap_err()
            .contains("named twice"));
        let alone = combine(&[hlb]).unwrap();
        assert_eq!(alone.rules, hlb.policy().rules);
        assert_eq!(alone.roles, hlb.roles);
    }

    #[test]
    fn combining_maps_each_profile_s_roles_by_name() {
        let profile = |text: &str| -> Profile { toml::from_str(text).unwrap() };
        let head = "product = \"p\"\ntitle = \"t\"\npage = \"p.md\"\ntables = [\"T\"]\n";
        let a = profile(&format!(
            "name = \"a\"\n{head}roles = [\"x\", \"y\"]\n[[rules]]\nid = \"a1\"\nfrom = \"x\"\nto = \"y\"\nproto = \"tcp\"\nports = [\"1\"]\nrows = [1]\n"
        ));
        let b = profile(&format!(
            "name = \"b\"\n{head}roles = [\"y\", \"z\", \"x\"]\n[[rules]]\nid = \"b1\"\nfrom = \"z\"\nto = \"x\"\nproto = \"udp\"\nports = [\"2\"]\nrows = [1]\n[[rules]]\nid = \"b2\"\nfrom = \"any\"\nto = \"y\"\nproto = \"tcp\"\nports = [\"3\"]\nrows = [2]\n"
        ));
        let both = combine(&[&a, &b]).unwrap();
        assert_eq!(both.roles, ["x", "y", "z"]);
        let ends: Vec<(&str, &str, &str)> = both
            .rules
            .iter()
            .map(|r| {
                (
                    r.id.as_str(),
                    both.source_name(r.from),
                    both.role_name(r.to),
                )
            })
            .collect();
        assert_eq!(ends, [("a1", "x", "y"), ("b1", "z", "x"), ("b2", ANY, "y")]);
        assert_eq!(both.profiles, ["a", "b"]);
    }
}
