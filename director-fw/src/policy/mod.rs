//! The policy: roles, the peers in them, rules and options. A policy comes from the built-in
//! profile, optionally extended by a TOML file (SPEC section 5). It is validated whole before
//! anything reaches the kernel.

mod file;
pub mod matrix;
pub mod peers;
pub mod profile;

use std::{fmt, ops::RangeInclusive, path::Path};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use file::PolicyError;
pub use peers::{PeerEntry, PeerError, RuntimePeers};

/// A role: a named set of addresses. Its index is its bit in role masks.
pub type RoleId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => director_fw_common::proto::TCP,
            Protocol::Udp => director_fw_common::proto::UDP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Where a rule's traffic may come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Any,
    Role(RoleId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub from: Source,
    pub to: RoleId,
    pub protocol: Protocol,
    pub ports: Vec<RangeInclusive<u16>>,
    /// Where the rule comes from: a row of a profile's table, its text, or a file.
    pub origin: profile::Origin,
}

impl Rule {
    pub fn matches_port(&self, port: u16) -> bool {
        self.ports.iter().any(|range| range.contains(&port))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unprotected {
    Pass,
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IcmpEcho {
    Allow,
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    pub unprotected: Unprotected,
    pub icmp_echo: IcmpEcho,
    pub audit: bool,
    pub flow_table_size: u32,
    /// Idle timeout of established TCP flows, seconds.
    pub tcp_timeout: u64,
    /// Idle timeout of UDP flows, seconds.
    pub udp_timeout: u64,
}

/// Microsoft's load-balancer guidance for Lync uses an 1800 s TCP idle timeout; a firewall
/// that forgets a connection sooner cuts idle SIP connections.
pub const MIN_TCP_TIMEOUT: u64 = 1800;

impl Default for Options {
    fn default() -> Self {
        Options {
            unprotected: Unprotected::Pass,
            icmp_echo: IcmpEcho::Allow,
            audit: false,
            flow_table_size: director_fw_common::maps::DEFAULT_FLOWS,
            tcp_timeout: 3600,
            udp_timeout: 180,
        }
    }
}

/// A peer: an address or prefix in a role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub role: RoleId,
    pub net: IpNet,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Where the policy came from, for messages.
    pub source: String,
    /// The built-in profiles the policy starts from, in the order the file names them.
    pub profiles: Vec<String>,
    pub roles: Vec<String>,
    pub peers: Vec<Peer>,
    pub rules: Vec<Rule>,
    pub options: Options,
}

/// The role every source is in; it can only be a rule's `from`.
pub const ANY: &str = "any";
/// The role that must stay reachable when `unprotected = "drop"`.
pub const MANAGEMENT: &str = "management";

impl Policy {
    /// The built-in profile with no peers: nothing is protected.
    pub fn builtin() -> Policy {
        profile::find(profile::NAME)
            .expect("the default profile is built in")
            .policy()
    }

    /// Reads and validates a policy file. The error names the file, line and field.
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        let text =
            std::fs::read_to_string(path).map_err(|err| PolicyError::unreadable(path, &err))?;
        Policy::from_toml(&path.display().to_string(), &text)
    }

    /// Parses and validates policy text; `source` names it in errors.
    pub fn from_toml(source: &str, text: &str) -> Result<Policy, PolicyError> {
        file::parse(source, text)
    }

    pub fn role(&self, name: &str) -> Option<RoleId> {
        self.roles.iter().position(|role| role == name)
    }

    pub fn role_name(&self, role: RoleId) -> &str {
        &self.roles[role]
    }

    pub fn source_name(&self, source: Source) -> &str {
        match source {
            Source::Any => ANY,
            Source::Role(role) => self.role_name(role),
        }
    }

    /// Why `net` may not join `role`: a peer of length 0 in a rule's destination role makes
    /// every address protected, the gateway's own among them, so that only a rule to the
    /// `management` role keeps the operator in (as `unprotected = "drop"` asks).
    pub fn locks_out(&self, role: RoleId, net: &IpNet) -> Option<String> {
        let everything = net.prefix_len() == 0 && self.to_mask() & bit(role) != 0;
        let management = self.role(MANAGEMENT);
        let reachable = self.rules.iter().any(|r| Some(r.to) == management);
        (everything && !reachable).then(|| {
            format!(
                "{net} in role {:?} protects every address, the gateway's own too: add a rule whose `to` is the role \"management\" (the gateway's management addresses and port, e.g. ssh), so the gateway cannot lock its operator out",
                self.role_name(role)
            )
        })
    }

    /// Roles used as some rule's destination: addresses in them are protected.
    pub fn to_mask(&self) -> u32 {
        self.rules.iter().fold(0, |mask, rule| mask | bit(rule.to))
    }

    /// Roles used as some rule's source.
    pub fn from_mask(&self) -> u32 {
        self.rules.iter().fold(0, |mask, rule| match rule.from {
            Source::Any => mask,
            Source::Role(role) => mask | bit(role),
        })
    }
}

pub fn bit(role: RoleId) -> u32 {
    1 << role
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.id)
    }
}

/// `"80"`, `"50001-50003"`.
pub fn format_ports(ports: &[RangeInclusive<u16>]) -> String {
    ports
        .iter()
        .map(|range| {
            if range.start() == range.end() {
                range.start().to_string()
            } else {
                format!("{}-{}", range.start(), range.end())
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}
