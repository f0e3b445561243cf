//! A compiled policy that follows peer changes one host at a time. Compiling a million peers
//! takes half a second; adding one host to the compiled form takes microseconds: its roles
//! come from its own entry and the prefixes covering it, its bucket of the host table gets a
//! new seed, and the rule entries are expanded again only when a new combination of roles
//! appears or the last of one goes. Prefixes change the roles of every address they cover,
//! so a change with a prefix, or one the host table has no room for, is compiled whole.

use std::collections::HashMap;

use director_fw_common::{HostV4, HostV6};
use ipnet::IpNet;

use super::{
    address_roles, compile_roles, direct_roles, expand_rules, host_table::Members, words,
    CompileError, Compiled,
};
use crate::policy::{bit, Policy, RoleId};

pub struct Incremental {
    compiled: Compiled,
    /// Role bits of each distinct peer entry as listed, before covering prefixes add theirs.
    direct: HashMap<IpNet, u32>,
    /// Prefix lengths in use, per family, shorter than a host's.
    prefix_lengths: [Vec<u8>; 2],
    /// How many entries have each role mask (with covering prefixes): the rule entries
    /// depend on which masks occur.
    masks: HashMap<u32, usize>,
    members_v4: Members<u32>,
    members_v6: Members<[u32; 4]>,
}

/// A peer change the incremental form cannot take; compile the policy whole.
#[derive(Debug)]
pub struct NeedsFull;

impl Incremental {
    /// Compiles `policy` whole, with rule `i` counted in `slots[i]`.
    pub fn new(policy: &Policy, slots: &[u32]) -> Result<Incremental, CompileError> {
        let direct = direct_roles(policy);
        let roles = address_roles(&direct);
        let compiled = compile_roles(policy, slots, &roles)?;
        let mut prefix_lengths = [Vec::new(), Vec::new()];
        for net in direct.keys() {
            let (family, host) = family(net);
            if net.prefix_len() < host && !prefix_lengths[family].contains(&net.prefix_len()) {
                prefix_lengths[family].push(net.prefix_len());
            }
        }
        let mut masks = HashMap::new();
        for (_, mask) in roles {
            *masks.entry(mask).or_default() += 1;
        }
        Ok(Incremental {
            members_v4: compiled.hosts_v4.members(),
            members_v6: compiled.hosts_v6.members(),
            compiled,
            direct,
            prefix_lengths,
            masks,
        })
    }

    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// Adds `role` to (or, with `add` false, takes it from) each of `nets`, which must be
    /// hosts. `policy` is the policy after the change, for the rule entries. On `NeedsFull`
    /// the compiled form may be half changed: build it anew.
    pub fn change(
        &mut self,
        policy: &Policy,
        slots: &[u32],
        role: RoleId,
        nets: &[IpNet],
        add: bool,
    ) -> Result<Result<(), NeedsFull>, CompileError> {
        if nets.iter().any(|n| n.prefix_len() < family(n).1) {
            return Ok(Err(NeedsFull));
        }
        let mut new_mask = false;
        for net in nets {
            let entry = self.direct.entry(*net).or_default();
            let before = *entry;
            *entry = if add {
                before | bit(role)
            } else {
                before & !bit(role)
            };
            let after = *entry;
            if after == 0 {
                self.direct.remove(net);
            }
            let covering = self.covering(net);
            let (old, new) = (
                if before == 0 { 0 } else { before | covering },
                if after == 0 { 0 } else { after | covering },
            );
            if old == new {
                continue;
            }
            if old != 0 {
                let count = self.masks.entry(old).or_default();
                *count -= 1;
                if *count == 0 {
                    self.masks.remove(&old);
                    new_mask = true;
                }
            }
            if new != 0 {
                let count = self.masks.entry(new).or_default();
                new_mask |= *count == 0;
                *count += 1;
            }
            let (addr, _) = words(net.addr());
            let placed = match net {
                IpNet::V4(_) => self
                    .compiled
                    .hosts_v4
                    .set(&mut self.members_v4, addr[0], new),
                IpNet::V6(_) => self.compiled.hosts_v6.set(&mut self.members_v6, addr, new),
            };
            if !placed {
                return Ok(Err(NeedsFull));
            }
        }
        if new_mask {
            let config = self.compiled.config;
            let (ports, rules) = expand_rules(policy, &config, self.masks.keys().copied(), slots)?;
            self.compiled.ports = ports;
            self.compiled.rules = rules;
        }
        Ok(Ok(()))
    }

    /// Role bits of the prefixes that cover the host `net`.
    fn covering(&self, net: &IpNet) -> u32 {
        let (family, _) = family(net);
        self.prefix_lengths[family]
            .iter()
            .filter_map(|&len| {
                let cover = IpNet::new(net.addr(), len).ok()?.trunc();
                self.direct.get(&cover)
            })
            .fold(0, |acc, r| acc | r)
    }
}

/// 0 for IPv4, 1 for IPv6, and the family's host prefix length.
fn family(net: &IpNet) -> (usize, u8) {
    match net {
        IpNet::V4(_) => (0, 32),
        IpNet::V6(_) => (1, 128),
    }
}

// The host tables of a policy are always of these slot kinds.
const _: fn(&Compiled) -> (&super::HostTable<HostV4>, &super::HostTable<HostV6>) =
    |c| (&c.hosts_v4, &c.hosts_v6);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile::compile, policy::RuntimePeers};

    /// Every change, applied incrementally, gives what a whole compilation gives.
    #[test]
    fn changes_compile_as_a_whole_policy_does() {
        let file = Policy::from_toml(
            "t",
            "profile = \"lync2013-single-director\"\n[peers]\ndirector = [\"198.18.2.10\"]\ninternal-clients = [\"198.18.16.0/20\", \"2001:db8:16::/48\"]\n",
        )
        .unwrap();
        let slots: Vec<u32> = (0..file.rules.len() as u32).collect();
        let mut peers = RuntimePeers::default();
        let mut live = Incremental::new(&file, &slots).unwrap();
        let steps: [(&str, &[&str], bool); 7] = [
            ("front-end", &["198.18.3.10", "2001:db8:3::10"], true),
            // Inside a client prefix: the host gets the clients' role too.
            ("director", &["198.18.16.7", "2001:db8:16::7"], true),
            ("edge-internal", &["198.18.2.10"], true),
            ("front-end", &["198.18.3.10"], false),
            ("director", &["198.18.16.7"], false),
            (
                "reverse-proxy",
                &["198.18.1.10", "198.18.1.11", "198.18.1.12"],
                true,
            ),
            ("edge-internal", &["198.18.2.10"], false),
        ];
        for (role, cidrs, add) in steps {
            let cidrs: Vec<String> = cidrs.iter().map(|s| s.to_string()).collect();
            peers = if add {
                peers.add(&file, role, &cidrs).unwrap()
            } else {
                peers.del(&file, role, &cidrs).unwrap()
            };
            let policy = peers.apply(&file);
            let nets: Vec<IpNet> = cidrs
                .iter()
                .map(|c| c.parse::<std::net::IpAddr>().unwrap().into())
                .collect();
            let role_id = policy.role(role).unwrap();
            live.change(&policy, &slots, role_id, &nets, add)
                .unwrap()
                .expect("hosts change incrementally");
            let whole = compile(&policy).unwrap();
            let ours = live.compiled();
            // The tables place hosts differently; what they answer must not differ.
            for (net, _) in address_roles(&direct_roles(&policy)) {
                let (addr, _) = words(net.addr());
                let (a, b) = match net {
                    IpNet::V4(n) if n.prefix_len() == 32 => {
                        (ours.hosts_v4.get(addr[0]), whole.hosts_v4.get(addr[0]))
                    }
                    IpNet::V6(n) if n.prefix_len() == 128 => {
                        (ours.hosts_v6.get(addr), whole.hosts_v6.get(addr))
                    }
                    _ => continue,
                };
                assert_eq!(a, b, "{role} {add}: roles of {net}");
            }
            assert_eq!(ours.hosts_v4.hosts, whole.hosts_v4.hosts);
            assert_eq!(ours.hosts_v6.hosts, whole.hosts_v6.hosts);
            assert_eq!(ours.rules, whole.rules, "{role} {add}: rule entries");
            assert_eq!(ours.ports, whole.ports);
            assert_eq!(ours.nets_v4, whole.nets_v4);
        }
        let prefix: Vec<IpNet> = vec!["198.18.9.0/24".parse().unwrap()];
        assert!(live
            .change(&file, &slots, 1, &prefix, true)
            .unwrap()
            .is_err());
    }
}
