//! Compiles a policy into the entries of the kernel's maps. Each address gets the role bits
//! of every peer entry that covers it, so one lookup (the host table, or the LPM trie for
//! prefixes) answers "which roles"; rules become exact-match keys over the role combinations
//! that actually occur, so the kernel never loops over rules or peers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use director_fw_common::{
    config::{
        FLAG_AUDIT, FLAG_ICMP_ECHO_DENY, FLAG_NETS_V4, FLAG_NETS_V6, FLAG_UNPROTECTED_DROP,
        FRAGMENT_TIMEOUT_SECS, ICMP_TIMEOUT_SECS, NS_PER_SEC, TCP_CLOSING_TIMEOUT_SECS,
    },
    port_slot, Config, HostV4, HostV6, RuleKey,
};
use ipnet::IpNet;

mod host_table;
mod incremental;

pub use host_table::HostTable;
pub use incremental::{Incremental, NeedsFull};

use crate::policy::{bit, IcmpEcho, Policy, Source, Unprotected};

/// Above this many rule entries a policy is refused: its port ranges times its role
/// combinations would take more kernel memory than any sane policy needs.
pub const MAX_RULE_ENTRIES: usize = 4 << 20;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub config: Config,
    /// Host addresses and their roles, as the kernel's host tables.
    pub hosts_v4: HostTable<HostV4>,
    pub hosts_v6: HostTable<HostV6>,
    /// (prefix length, network, roles)
    pub nets_v4: Vec<(u32, u32, u32)>,
    pub nets_v6: Vec<(u32, [u32; 4], u32)>,
    /// (`port_slot`, role bits of the destinations a rule opens that port on), for open
    /// ports only.
    pub ports: Vec<(u32, u32)>,
    pub rules: Vec<(RuleKey, u32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{file}: the policy expands to {entries} rule entries (ports x role combinations); at most {MAX_RULE_ENTRIES} are supported. Use fewer or narrower port ranges.")]
    TooLarge { file: String, entries: usize },
    #[error("{file}: no host table fits its {hosts} IPv{family} host addresses")]
    HostTable {
        file: String,
        family: u8,
        hosts: usize,
    },
}

/// An address as the kernel reads it: four words as they lie in the packet.
pub fn words(addr: std::net::IpAddr) -> ([u32; 4], u8) {
    match addr {
        std::net::IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], 4),
        std::net::IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], 6)
        }
    }
}

/// The options and role masks of a policy. The host tables' sizes are left 0: only
/// [`compile`], which builds the tables, knows them, so the kernel gets its `Config` from there.
pub fn config(policy: &Policy) -> Config {
    let options = &policy.options;
    let mut flags = 0;
    if options.unprotected == Unprotected::Drop {
        flags |= FLAG_UNPROTECTED_DROP;
    }
    if options.icmp_echo == IcmpEcho::Deny {
        flags |= FLAG_ICMP_ECHO_DENY;
    }
    if options.audit {
        flags |= FLAG_AUDIT;
    }
    Config {
        to_roles: policy.to_mask(),
        from_roles: policy.from_mask(),
        flags,
        generation: 0,
        tcp_timeout_ns: options.tcp_timeout * NS_PER_SEC,
        tcp_closing_timeout_ns: TCP_CLOSING_TIMEOUT_SECS * NS_PER_SEC,
        udp_timeout_ns: options.udp_timeout * NS_PER_SEC,
        icmp_timeout_ns: ICMP_TIMEOUT_SECS * NS_PER_SEC,
        fragment_timeout_ns: FRAGMENT_TIMEOUT_SECS * NS_PER_SEC,
        // Set with the host tables.
        hosts_v4: Default::default(),
        hosts_v6: Default::default(),
    }
}

/// The role bits of each distinct peer entry as listed.
fn direct_roles(policy: &Policy) -> HashMap<IpNet, u32> {
    let mut direct: HashMap<IpNet, u32> = HashMap::with_capacity(policy.peers.len());
    for peer in &policy.peers {
        *direct.entry(peer.net).or_default() |= bit(peer.role);
    }
    direct
}

/// Role bits of every distinct peer entry, including those of the entries covering it, in
/// address order (so that the host tables come out the same for the same policy).
fn address_roles(direct: &HashMap<IpNet, u32>) -> Vec<(IpNet, u32)> {
    // Only prefixes can cover other entries; walk each entry's shorter lengths in use.
    let mut lengths_v4 = BTreeSet::new();
    let mut lengths_v6 = BTreeSet::new();
    for net in direct.keys() {
        match net {
            IpNet::V4(n) if n.prefix_len() < 32 => lengths_v4.insert(n.prefix_len()),
            IpNet::V6(n) if n.prefix_len() < 128 => lengths_v6.insert(n.prefix_len()),
            _ => false,
        };
    }
    let mut roles: Vec<(IpNet, u32)> = direct
        .iter()
        .map(|(net, roles)| {
            let lengths = if matches!(net, IpNet::V4(_)) {
                &lengths_v4
            } else {
                &lengths_v6
            };
            let covering = lengths
                .range(..net.prefix_len())
                .filter_map(|&len| {
                    let cover = IpNet::new(net.addr(), len).ok()?.trunc();
                    direct.get(&cover)
                })
                .fold(0, |acc, r| acc | r);
            (*net, roles | covering)
        })
        .collect();
    roles.sort_unstable_by_key(|&(net, _)| net);
    roles
}

/// Compiles `policy` with its rules counted in slots 0, 1, ... in policy order.
pub fn compile(policy: &Policy) -> Result<Compiled, CompileError> {
    let in_order: Vec<u32> = (0..policy.rules.len() as u32).collect();
    compile_with_slots(policy, &in_order)
}

/// Compiles `policy` with rule `i` counted in counter slot `slots[i]`, so that a rule keeps
/// its counters when others come and go (the agent keeps the slots of rule ids).
pub fn compile_with_slots(policy: &Policy, slots: &[u32]) -> Result<Compiled, CompileError> {
    compile_roles(policy, slots, &address_roles(&direct_roles(policy)))
}

/// [`compile_with_slots`] with the address roles already worked out.
fn compile_roles(
    policy: &Policy,
    slots: &[u32],
    roles: &[(IpNet, u32)],
) -> Result<Compiled, CompileError> {
    assert_eq!(slots.len(), policy.rules.len(), "one counter slot per rule");
    let config = config(policy);
    let mut compiled = Compiled {
        config,
        ..Compiled::default()
    };
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for &(net, mask) in roles {
        let (addr, family) = words(net.addr());
        let len = u32::from(net.prefix_len());
        match (family, len) {
            (4, 32) => v4.push((
                addr[0],
                HostV4 {
                    addr: addr[0],
                    roles: mask,
                },
            )),
            (4, _) => compiled.nets_v4.push((len, addr[0], mask)),
            (_, 128) => v6.push((addr, HostV6 { addr, roles: mask })),
            _ => compiled.nets_v6.push((len, addr, mask)),
        }
    }
    let no_table = |family, hosts| CompileError::HostTable {
        file: policy.source.clone(),
        family,
        hosts,
    };
    compiled.hosts_v4 = host_table::build(&v4).ok_or(no_table(4, v4.len()))?;
    compiled.config.hosts_v4 = compiled.hosts_v4.masks;
    compiled.hosts_v6 = host_table::build(&v6).ok_or(no_table(6, v6.len()))?;
    compiled.config.hosts_v6 = compiled.hosts_v6.masks;
    if !compiled.nets_v4.is_empty() {
        compiled.config.flags |= FLAG_NETS_V4;
    }
    if !compiled.nets_v6.is_empty() {
        compiled.config.flags |= FLAG_NETS_V6;
    }

    let (ports, rules) = expand_rules(policy, &config, roles.iter().map(|&(_, m)| m), slots)?;
    compiled.ports = ports;
    compiled.rules = rules;
    Ok(compiled)
}

/// `PORTS` entries (`port_slot`, destination roles) and `RULES` entries (key, counter slot).
type RuleEntries = (Vec<(u32, u32)>, Vec<(RuleKey, u32)>);

/// The `PORTS` and `RULES` entries of `policy`'s rules, given the role masks its addresses
/// have (`masks`, one per distinct peer entry; repeats are fine).
fn expand_rules(
    policy: &Policy,
    config: &Config,
    masks: impl Iterator<Item = u32>,
    slots: &[u32],
) -> Result<RuleEntries, CompileError> {
    // The role combinations a lookup can return, masked as the kernel masks them.
    let mut dst_sets = BTreeSet::new();
    let mut src_sets = BTreeSet::from([0]);
    for mask in masks {
        if mask & config.to_roles != 0 {
            dst_sets.insert(mask & config.to_roles);
        }
        src_sets.insert(mask & config.from_roles);
    }

    let entries: usize = policy
        .rules
        .iter()
        .map(|rule| {
            let ports: usize = rule.ports.iter().map(|r| r.len()).sum();
            ports * dst_sets.len() * src_sets.len()
        })
        .sum();
    if entries > MAX_RULE_ENTRIES {
        return Err(CompileError::TooLarge {
            file: policy.source.clone(),
            entries,
        });
    }

    let mut ports = BTreeMap::new();
    let mut rules = BTreeMap::new();
    for (index, rule) in policy.rules.iter().enumerate() {
        let proto = rule.protocol.number();
        let to = bit(rule.to);
        for port in rule.ports.iter().cloned().flatten() {
            *ports.entry(port_slot(0, proto, port)).or_insert(0) |= to & config.to_roles;
        }
        for &dst in dst_sets.iter().filter(|&&d| d & to != 0) {
            for port in rule.ports.iter().cloned().flatten() {
                for &src in src_sets.iter().filter(|&&s| match rule.from {
                    Source::Any => true,
                    Source::Role(role) => s & bit(role) != 0,
                }) {
                    let key = RuleKey {
                        dst_roles: dst,
                        src_roles: src,
                        port,
                        proto,
                        generation: 0,
                    };
                    // Policy order: the first rule that matches is the one counted.
                    rules.entry(key).or_insert(slots[index]);
                }
            }
        }
    }
    Ok((ports.into_iter().collect(), rules.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab_policy() -> Policy {
        Policy::from_toml(
            "t",
            r#"profile = "lync2013-single-director"
[peers]
reverse-proxy = ["198.18.1.10"]
director = ["198.18.2.10", "2001:db8:2::10"]
front-end = ["198.18.3.0/28"]
internal-clients = ["198.18.16.0/20"]
edge-internal = ["198.18.4.10"]
"#,
        )
        .unwrap()
    }

    #[test]
    fn hosts_and_prefixes_go_to_their_maps() {
        let c = compile(&lab_policy()).unwrap();
        assert_eq!(c.hosts_v4.hosts, 3);
        assert_eq!(c.hosts_v6.hosts, 1);
        assert_eq!(c.nets_v4.len(), 2);
        assert!(c.config.flags & FLAG_NETS_V4 != 0);
        assert!(c.config.flags & FLAG_NETS_V6 == 0);
    }

    #[test]
    fn masks_follow_the_rules() {
        let c = compile(&lab_policy()).unwrap();
        // Destinations: director, front-end, edge-internal. Sources: all but `any`.
        assert_eq!(c.config.to_roles, 0b10110);
        assert_eq!(c.config.from_roles, 0b11111);
    }

    #[test]
    fn every_rule_port_is_open_and_resolves_to_its_rule() {
        let policy = lab_policy();
        let c = compile(&policy).unwrap();
        // 8080: rp->director and rp->fe; 50001-50003 to edge from every source set.
        let edge = bit(4);
        let cls: Vec<_> = c
            .rules
            .iter()
            .filter(|(k, _)| k.dst_roles == edge && (50001..=50003).contains(&k.port))
            .collect();
        // Source sets: {} plus the five single-role sets.
        assert_eq!(cls.len(), 3 * 6);
        assert!(cls
            .iter()
            .all(|(_, i)| policy.rules[*i as usize].id == "any-edge-cls"));
        let open = |port| {
            c.ports
                .iter()
                .find(|(slot, _)| *slot == port_slot(0, director_fw_common::proto::TCP, port))
                .map_or(0, |&(_, roles)| roles)
        };
        assert_eq!(open(444), bit(2));
        assert_eq!(open(8080), bit(1) | bit(2));
        assert_eq!(open(22), 0);
    }

    #[test]
    fn covering_prefixes_add_their_roles() {
        let policy = Policy::from_toml(
            "t",
            "profile = \"lync2013-single-director\"\n[peers]\ninternal-clients = [\"198.18.16.0/20\"]\ndirector = [\"198.18.16.5\"]\n",
        )
        .unwrap();
        let c = compile(&policy).unwrap();
        let host = c.hosts_v4.slots.iter().find(|h| h.roles != 0).unwrap();
        assert_eq!(host.roles, bit(1) | bit(3));
    }

    #[test]
    fn huge_expansions_are_refused() {
        let mut text = String::from("[peers]\nx = [\"198.18.0.1\"]\n");
        for i in 0..8 {
            text.push_str(&format!("s{i} = [\"198.18.1.{i}\"]\n"));
        }
        for i in 0..8 {
            text.push_str(&format!(
                "[[rules]]\nid='r{i}'\nfrom='s{i}'\nto='x'\nproto='tcp'\nports=['1-65535']\n"
            ));
        }
        let policy = Policy::from_toml("big.toml", &text).unwrap();
        let err = compile(&policy).unwrap_err();
        assert!(
            matches!(err, CompileError::TooLarge { entries, .. } if entries == 8 * 65535 * 9),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("big.toml:"), "{err}");
    }
}
