//! The TOML policy file. Every value is read with its span so that an error can name the
//! line and field; the file is validated whole, and a policy is only returned when all of it
//! is right.

use std::{collections::BTreeMap, fmt, net::IpAddr, ops::RangeInclusive, path::Path};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{
    profile, IcmpEcho, Options, Peer, Policy, Protocol, Rule, Source, Unprotected, ANY, MANAGEMENT,
    MIN_TCP_TIMEOUT,
};
use director_fw_common::{rules::MAX_ROLES, verdict::MAX_RULES};

/// What is wrong with a policy, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    pub file: String,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl PolicyError {
    pub fn unreadable(path: &Path, err: &std::io::Error) -> PolicyError {
        PolicyError {
            file: path.display().to_string(),
            line: None,
            field: String::new(),
            message: format!("cannot read the policy file: {err}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    profile: Option<Spanned<ProfileNames>>,
    #[serde(default)]
    peers: BTreeMap<Spanned<String>, Spanned<Vec<Spanned<String>>>>,
    options: Option<RawOptions>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
}

/// `profile = "NAME"` or `profile = ["NAME", ...]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ProfileNames {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptions {
    unprotected: Option<Spanned<String>>,
    icmp_echo: Option<Spanned<String>>,
    audit: Option<Spanned<bool>>,
    flow_table_size: Option<Spanned<i64>>,
    tcp_timeout: Option<Spanned<i64>>,
    udp_timeout: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    from: Spanned<String>,
    to: Spanned<String>,
    proto: Spanned<String>,
    ports: Spanned<Vec<Spanned<toml::Value>>>,
}

/// Builds errors that point into one text.
struct Locator<'a> {
    source: &'a str,
    text: &'a str,
}

impl Locator<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text[..offset].matches('\n').count() + 1
    }

    fn at<T>(&self, span: &Spanned<T>, field: &str, message: impl Into<String>) -> PolicyError {
        PolicyError {
            file: self.source.to_string(),
            line: Some(self.line_of(span.span().start)),
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn toml_error(&self, err: &toml::de::Error) -> PolicyError {
        let line = err.span().map(|span| self.line_of(span.start));
        // The key on the offending line, when there is one, is the best name for the field.
        let field = line
            .and_then(|line| self.text.lines().nth(line - 1))
            .and_then(|text| text.split_once('='))
            .map(|(key, _)| key.trim().to_string())
            .unwrap_or_default();
        PolicyError {
            file: self.source.to_string(),
            line,
            field,
            message: err.message().trim().to_string(),
        }
    }
}

pub(super) fn parse(source: &str, text: &str) -> Result<Policy, PolicyError> {
    let at = Locator { source, text };
    let raw: RawPolicy = toml::from_str(text).map_err(|err| at.toml_error(&err))?;

    let mut policy = match &raw.profile {
        Some(names) => {
            let list = match names.get_ref() {
                ProfileNames::One(name) => vec![name.clone()],
                ProfileNames::Many(list) => list.clone(),
            };
            let mut found = Vec::new();
            for name in &list {
                let Some(profile) = profile::find(name) else {
                    return Err(at.at(
                        names,
                        "profile",
                        format!(
                            "unknown profile {name:?}; the built-in profiles are {} (`director-fw policy profiles` lists them)",
                            profile::names()
                        ),
                    ));
                };
                found.push(profile);
            }
            if found.is_empty() {
                return Err(at.at(names, "profile", "names no profile; leave it out for none"));
            }
            let combined = profile::combine(&found).map_err(|msg| at.at(names, "profile", msg))?;
            if combined.roles.len() > MAX_ROLES {
                return Err(at.at(
                    names,
                    "profile",
                    format!(
                        "these profiles have {} roles together: at most {MAX_ROLES}",
                        combined.roles.len()
                    ),
                ));
            }
            combined
        }
        None => {
            let mut empty = Policy::builtin();
            empty.profiles.clear();
            empty.rules.clear();
            empty
        }
    };
    policy.source = source.to_string();

    for rule in &raw.rules {
        let rule = compile_rule(&at, &mut policy, rule)?;
        policy.rules.push(rule);
    }
    if policy.rules.len() > MAX_RULES as usize {
        return Err(PolicyError {
            file: source.to_string(),
            line: None,
            field: "rules".into(),
            message: format!(
                "{} rules; at most {MAX_RULES} are supported",
                policy.rules.len()
            ),
        });
    }

    for (role, addresses) in &raw.peers {
        let field = format!("peers.{}", role.get_ref());
        let role_id = match policy.role(role.get_ref()) {
            Some(id) => id,
            None if role.get_ref() == ANY => {
                return Err(at.at(role, &field, "`any` means every address; it takes no peers"))
            }
            None => {
                return Err(at.at(
                    role,
                    &field,
                    format!(
                        "unknown role {:?}; known roles: {} (a rule's from/to makes a new role)",
                        role.get_ref(),
                        policy.roles.join(", ")
                    ),
                ))
            }
        };
        for address in addresses.get_ref() {
            let net = parse_net(address.get_ref()).map_err(|msg| at.at(address, &field, msg))?;
            if let Some(why) = policy.locks_out(role_id, &net) {
                return Err(at.at(address, &field, why));
            }
            policy.peers.push(Peer { role: role_id, net });
        }
    }

    if let Some(options) = &raw.options {
        apply_options(&at, &mut policy.options, options)?;
        if policy.options.unprotected == Unprotected::Drop {
            let management = policy.role(MANAGEMENT);
            let reachable = policy.rules.iter().any(|r| Some(r.to) == management);
            if !reachable {
                let span = options.unprotected.as_ref().expect("set when Drop");
                return Err(at.at(
                    span,
                    "options.unprotected",
                    "\"drop\" needs a rule whose `to` is the role \"management\" (the gateway's management addresses and port, e.g. ssh), so the gateway cannot lock its operator out",
                ));
            }
        }
    }
    Ok(policy)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn role_for(
    at: &Locator<'_>,
    policy: &mut Policy,
    name: &Spanned<String>,
    field: &str,
) -> Result<usize, PolicyError> {
    if !valid_name(name.get_ref()) {
        return Err(at.at(
            name,
            field,
            "a role name is lower-case letters, digits, '-' and '_'",
        ));
    }
    if let Some(id) = policy.role(name.get_ref()) {
        return Ok(id);
    }
    if policy.roles.len() == MAX_ROLES {
        return Err(at.at(name, field, format!("too many roles: at most {MAX_ROLES}")));
    }
    policy.roles.push(name.get_ref().clone());
    Ok(policy.roles.len() - 1)
}

fn compile_rule(
    at: &Locator<'_>,
    policy: &mut Policy,
    spanned: &Spanned<RawRule>,
) -> Result<Rule, PolicyError> {
    let raw = spanned.get_ref();
    let id = raw.id.get_ref();
    if !valid_name(id) {
        return Err(at.at(
            &raw.id,
            "rules.id",
            "a rule id is lower-case letters, digits, '-' and '_'",
        ));
    }
    if policy.rules.iter().any(|rule| &rule.id == id) {
        return Err(at.at(&raw.id, "rules.id", format!("duplicate rule id {id:?}")));
    }
    let field = |name: &str| format!("rules[{id}].{name}");
    let from = if raw.from.get_ref() == ANY {
        Source::Any
    } else {
        Source::Role(role_for(at, policy, &raw.from, &field("from"))?)
    };
    if raw.to.get_ref() == ANY {
        return Err(at.at(
            &raw.to,
            &field("to"),
            "`any` can only be a source; name the destination role",
        ));
    }
    let to = role_for(at, policy, &raw.to, &field("to"))?;
    let protocol = match raw.proto.get_ref().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => {
            return Err(at.at(
                &raw.proto,
                &field("proto"),
                format!("unknown protocol {other:?}; use \"tcp\" or \"udp\""),
            ))
        }
    };
    if raw.ports.get_ref().is_empty() {
        return Err(at.at(&raw.ports, &field("ports"), "no ports given"));
    }
    let mut ports = Vec::new();
    for port in raw.ports.get_ref() {
        let range = parse_ports(port.get_ref()).map_err(|msg| at.at(port, &field("ports"), msg))?;
        ports.push(range);
    }
    Ok(Rule {
        id: id.clone(),
        from,
        to,
        protocol,
        ports,
        origin: profile::Origin::File(at.source.to_string()),
    })
}

/// `"443"`, `443` or `"50001-50003"`.
pub fn parse_ports(value: &toml::Value) -> Result<RangeInclusive<u16>, String> {
    let text = match value {
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::String(s) => s.trim().to_string(),
        other => return Err(format!("a port is a number or \"first-last\", not {other}")),
    };
    let port = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u32>() {
            Ok(n @ 1..=65535) => Ok(n as u16),
            Ok(n) => Err(format!("port {n} is out of range 1-65535")),
            Err(_) => Err(format!("{s:?} is not a port number")),
        }
    };
    match text.split_once('-') {
        Some((first, last)) => {
            let (first, last) = (port(first)?, port(last)?);
            if first > last {
                return Err(format!("port range {first}-{last} runs backwards"));
            }
            Ok(first..=last)
        }
        None => {
            let n = port(&text)?;
            Ok(n..=n)
        }
    }
}

/// An address (a host) or a CIDR whose host bits are zero.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let net: IpNet = text
        .parse()
        .map_err(|_| format!("{text:?} is not an IPv4/IPv6 address or CIDR"))?;
    if net.trunc() != net {
        return Err(format!(
            "{text} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn apply_options(
    at: &Locator<'_>,
    options: &mut Options,
    raw: &RawOptions,
) -> Result<(), PolicyError> {
    if let Some(value) = &raw.unprotected {
        options.unprotected = match value.get_ref().as_str() {
            "pass" => Unprotected::Pass,
            "drop" => Unprotected::Drop,
            other => {
                return Err(at.at(
                    value,
                    "options.unprotected",
                    format!("{other:?}: use \"pass\" or \"drop\""),
                ))
            }
        };
    }
    if let Some(value) = &raw.icmp_echo {
        options.icmp_echo = match value.get_ref().as_str() {
            "allow" => IcmpEcho::Allow,
            "deny" => IcmpEcho::Deny,
            other => {
                return Err(at.at(
                    value,
                    "options.icmp_echo",
                    format!("{other:?}: use \"allow\" or \"deny\""),
                ))
            }
        };
    }
    if let Some(value) = &raw.audit {
        options.audit = *value.get_ref();
    }
    let ranged = |value: &Spanned<i64>, field: &str, min: i64, max: i64| {
        let n = *value.get_ref();
        if (min..=max).contains(&n) {
            Ok(n)
        } else {
            Err(at.at(value, field, format!("{n} is out of range {min}-{max}")))
        }
    };
    if let Some(value) = &raw.flow_table_size {
        options.flow_table_size = ranged(value, "options.flow_table_size", 1024, 1 << 26)? as u32;
    }
    if let Some(value) = &raw.tcp_timeout {
        options.tcp_timeout = ranged(
            value,
            "options.tcp_timeout",
            MIN_TCP_TIMEOUT as i64,
            7 * 86400,
        )? as u64;
    }
    if let Some(value) = &raw.udp_timeout {
        options.udp_timeout = ranged(value, "options.udp_timeout", 1, 86400)? as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"profile = "lync2013-single-director"

[peers]
reverse-proxy    = ["198.18.1.10"]
director         = ["198.18.2.10", "2001:db8:2::10"]
front-end        = ["198.18.3.0/28"]
internal-clients = ["198.18.16.0/20"]
edge-internal    = ["198.18.4.10"]

[options]
unprotected = "pass"
icmp_echo   = "allow"
audit       = false
flow_table_size = 262144

[[rules]]
id    = "ops-ssh"
from  = "ops"
to    = "director"
proto = "tcp"
ports = ["22", "8000-8010"]
"#;

    fn error(text: &str) -> PolicyError {
        Policy::from_toml("test.toml", text).unwrap_err()
    }

    #[test]
    fn the_spec_example_parses() {
        let policy = Policy::from_toml("spec.toml", SPEC_EXAMPLE).unwrap();
        assert_eq!(policy.rules.len(), 13);
        assert_eq!(policy.peers.len(), 6);
        let ops = policy.role("ops").unwrap();
        let rule = policy.rules.last().unwrap();
        assert_eq!(rule.from, Source::Role(ops));
        assert_eq!(rule.ports, vec![22..=22, 8000..=8010]);
        assert_eq!(policy.options.flow_table_size, 262144);
    }

    #[test]
    fn no_profile_means_only_the_file_rules() {
        let policy = Policy::from_toml(
            "t",
            "[[rules]]\nid='a'\nfrom='any'\nto='x'\nproto='udp'\nports=[53]\n",
        )
        .unwrap();
        assert_eq!(policy.rules.len(), 1);
        assert_eq!(policy.rules[0].protocol, Protocol::Udp);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let text = SPEC_EXAMPLE.replace("198.18.3.0/28", "198.18.3.300/28");
        let err = error(&text);
        assert_eq!((err.line, err.field.as_str()), (Some(6), "peers.front-end"));
        assert!(
            err.to_string().starts_with("test.toml:6: peers.front-end:"),
            "{err}"
        );
    }

    #[test]
    fn host_bits_in_a_cidr_are_refused() {
        let err = error("[peers]\ndirector = [\"198.18.2.10/24\"]\n");
        assert!(err.message.contains("198.18.2.0/24"), "{err}");
    }

    #[test]
    fn unknown_role_is_refused() {
        let err = error("[peers]\ndirectr = [\"198.18.2.10\"]\n");
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("unknown role \"directr\""), "{err}");
    }

    #[test]
    fn bad_ports_are_refused() {
        for (ports, needle) in [
            ("[\"0\"]", "out of range"),
            ("[70000]", "out of range"),
            ("[\"9-3\"]", "backwards"),
            ("[\"http\"]", "not a port"),
            ("[]", "no ports"),
        ] {
            let text =
                format!("[[rules]]\nid='r'\nfrom='any'\nto='x'\nproto='tcp'\nports={ports}\n");
            let err = error(&text);
            assert_eq!((err.line, err.field.as_str()), (Some(6), "rules[r].ports"));
            assert!(err.message.contains(needle), "{ports}: {err}");
        }
    }

    #[test]
    fn unknown_fields_and_values_are_refused() {
        let err = error("[options]\nunprotect = \"drop\"\n");
        assert_eq!((err.line, err.field.as_str()), (Some(2), "unprotect"));
        let err = error("[options]\nicmp_echo = \"maybe\"\n");
        assert_eq!(err.field, "options.icmp_echo");
        let err = error("[options]\ntcp_timeout = 60\n");
        assert!(err.message.contains("1800"), "{err}");
        let err = error("profile = \"lync2010\"\n");
        assert_eq!(err.field, "profile");
        let err = error("[[rules]]\nid='r'\nfrom='any'\nto='any'\nproto='tcp'\nports=[1]\n");
        assert_eq!(err.field, "rules[r].to");
        let err = error("[[rules]]\nid='r'\nfrom='any'\nto='x'\nproto='icmp'\nports=[1]\n");
        assert_eq!(err.field, "rules[r].proto");
        let err = error("profile = \"lync2013-single-director\"\n[[rules]]\nid='rp-fe-http'\nfrom='any'\nto='x'\nproto='tcp'\nports=[1]\n");
        assert!(err.message.contains("duplicate"), "{err}");
    }

    #[test]
    fn missing_rule_field_names_the_line() {
        let err = error("[[rules]]\nid='r'\nfrom='any'\nproto='tcp'\nports=[1]\n");
        assert!(err.message.contains("missing field `to`"), "{err}");
        assert!(err.line.is_some());
    }

    #[test]
    fn drop_needs_a_management_rule() {
        let err = error("[options]\nunprotected = \"drop\"\n");
        assert_eq!(
            (err.line, err.field.as_str()),
            (Some(2), "options.unprotected")
        );
        let ok = "[options]\nunprotected = \"drop\"\n[[rules]]\nid='ssh'\nfrom='any'\nto='management'\nproto='tcp'\nports=[22]\n";
        assert_eq!(
            Policy::from_toml("t", ok).unwrap().options.unprotected,
            Unprotected::Drop
        );
    }

    #[test]
    fn a_destination_role_of_everything_needs_a_management_rule() {
        let edge = "profile = \"sfb2015-edge\"\n[peers]\ninternet = [\"0.0.0.0/0\", \"::/0\"]\n";
        let err = error(edge);
        assert_eq!((err.line, err.field.as_str()), (Some(3), "peers.internet"));
        assert!(err.message.contains("management"), "{err}");
        let ssh = "[[rules]]\nid='ssh'\nfrom='any'\nto='management'\nproto='tcp'\nports=[22]\n";
        let ok = Policy::from_toml("t", &format!("{edge}{ssh}")).unwrap();
        assert_eq!(ok.peers.len(), 2);
        // A role that is only a source may hold everything: it protects nothing.
        let source = "[peers]\nreverse-proxy = [\"::/0\"]\n";
        assert_eq!(Policy::from_toml("t", source).unwrap().peers.len(), 1);
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let err = error("[peers]\ndirector = [\"198.18.2.10\"\n");
        assert!(err.line.is_some(), "{err}");
    }
}
