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

/// The profiles' files, compiled in.
const FILES: [(&str, &str); 3] = [
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
];

/// A built-in profile: its source page, roles, rules and documented choices.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub product: String,
    /// The page's title.
    pub title: String,
    /// The page's path in Microsoft's documentation repository.
    pub page: String,
    /// The page's port table, which `rows` number into.
    pub table: String,
    pub roles: Vec<String>,
    #[serde(default)]
    pub choices: Vec<Choice>,
    rules: Vec<RawRule>,
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
    /// Rows of the page's table.
    #[serde(default)]
    rows: Vec<u32>,
    /// The page's words, quoted, for a rule its table omits.
    text: Option<String>,
}

/// Where a rule comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Rows of a profile's page's table.
    Table {
        title: String,
        table: String,
        rows: Vec<u32>,
    },
    /// A profile's page's text.
    Text { title: String, quote: String },
    /// A policy file's own rule.
    File(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Table { title, table, rows } => {
                let rows: Vec<String> = rows.iter().map(u32::to_string).collect();
                let noun = if rows.len() == 1 { "row" } else { "rows" };
                write!(f, "{title}, table {table:?}, {noun} {}", rows.join(", "))
            }
            Origin::Text { title, quote } => write!(f, "{title}, text: {quote:?}"),
            Origin::File(file) => write!(f, "{file}"),
        }
    }
}

/// Every built-in profile, in the order `policy profiles` lists them.
pub fn all() -> &'static [Profile] {
    static PROFILES: OnceLock<Vec<Profile>> = OnceLock::new();
    PROFILES.get_or_init(|| {
        FILES
            .iter()
            .map(|(file, text)| {
                // The files are compiled in and a unit test reads every one: a bad one never
                // reaches a release.
                toml::from_str(text).unwrap_or_else(|err| panic!("profiles/{file}: {err}"))
            })
            .collect()
    })
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
                        table: self.table.clone(),
                        rows: raw.rows.clone(),
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
        let head = "product = \"p\"\ntitle = \"t\"\npage = \"p.md\"\ntable = \"T\"\n";
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
