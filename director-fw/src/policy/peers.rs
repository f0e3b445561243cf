//! Peers added and removed at runtime (`peers add|del`). They are kept apart from the policy
//! file's, so that a reload of the file keeps them and a restart restores them, and so that a
//! peer the file lists can only be removed by editing the file. Pure: the agent persists and
//! installs what these functions return.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{file::parse_net, Peer, Policy, ANY};

/// Runtime peers by role name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RuntimePeers(BTreeMap<String, BTreeSet<IpNet>>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("unknown role {role:?}; the policy's roles are: {known}")]
    UnknownRole { role: String, known: String },
    #[error("`any` means every address; it takes no peers")]
    Any,
    #[error("{0}")]
    BadAddress(String),
    #[error("{0}")]
    LocksOut(String),
    #[error("no address given: name at least one address or CIDR")]
    NoAddresses,
    #[error("{cidr} is not a runtime peer of role {role:?}; nothing was removed")]
    NotThere { role: String, cidr: IpNet },
    #[error("{cidr} is listed for role {role:?} in the policy file ({file}); edit the file to remove it")]
    InFile {
        role: String,
        cidr: IpNet,
        file: String,
    },
    #[error(
        "{cidr} is already listed for role {role:?} in the policy file ({file}); nothing was added"
    )]
    AlreadyInFile {
        role: String,
        cidr: IpNet,
        file: String,
    },
    #[error("the runtime peer {cidr} has role {role:?}, which {file} does not have; remove it with `director-fw peers del {role} {cidr}` first, or keep the role in the file")]
    RoleGone {
        role: String,
        cidr: IpNet,
        file: String,
    },
}

/// One peer as `peers list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub role: String,
    pub cidr: String,
    /// `file` or `runtime`.
    pub source: String,
}

impl RuntimePeers {
    pub fn len(&self) -> usize {
        self.0.values().map(BTreeSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The runtime peers of one role.
    pub fn nets(&self, role: &str) -> BTreeSet<IpNet> {
        self.0.get(role).cloned().unwrap_or_default()
    }

    /// The addresses of one command: each parsed, duplicates folded, at least one.
    fn parse(role: &str, file: &Policy, cidrs: &[String]) -> Result<BTreeSet<IpNet>, PeerError> {
        if role == ANY {
            return Err(PeerError::Any);
        }
        if file.role(role).is_none() {
            return Err(PeerError::UnknownRole {
                role: role.to_string(),
                known: file.roles.join(", "),
            });
        }
        if cidrs.is_empty() {
            return Err(PeerError::NoAddresses);
        }
        cidrs
            .iter()
            .map(|text| parse_net(text).map_err(PeerError::BadAddress))
            .collect()
    }

    /// Why adding `nets` to `role` would lock the gateway out (see [`Policy::locks_out`]).
    fn lockout(file: &Policy, role: &str, nets: &BTreeSet<IpNet>) -> Option<String> {
        let id = file.role(role)?;
        nets.iter().find_map(|net| file.locks_out(id, net))
    }

    fn in_file(file: &Policy, role: &str, net: &IpNet) -> bool {
        let id = file.role(role);
        file.peers
            .iter()
            .any(|p| Some(p.role) == id && p.net == *net)
    }

    /// These peers with `cidrs` added to `role`, all or none. Adding a runtime peer again
    /// changes nothing; a peer the file lists is refused.
    pub fn add(
        &self,
        file: &Policy,
        role: &str,
        cidrs: &[String],
    ) -> Result<RuntimePeers, PeerError> {
        let nets = RuntimePeers::parse(role, file, cidrs)?;
        if let Some(net) = nets.iter().find(|n| RuntimePeers::in_file(file, role, n)) {
            return Err(PeerError::AlreadyInFile {
                role: role.to_string(),
                cidr: *net,
                file: file.source.clone(),
            });
        }
        if let Some(why) = RuntimePeers::lockout(file, role, &nets) {
            return Err(PeerError::LocksOut(why));
        }
        let mut next = self.clone();
        next.0.entry(role.to_string()).or_default().extend(nets);
        Ok(next)
    }

    /// These peers with `cidrs` removed from `role`, all or none: each must be a runtime peer.
    pub fn del(
        &self,
        file: &Policy,
        role: &str,
        cidrs: &[String],
    ) -> Result<RuntimePeers, PeerError> {
        let nets = RuntimePeers::parse(role, file, cidrs)?;
        let mut next = self.clone();
        let set = next.0.entry(role.to_string()).or_default();
        for net in &nets {
            if !set.remove(net) {
                if RuntimePeers::in_file(file, role, net) {
                    return Err(PeerError::InFile {
                        role: role.to_string(),
                        cidr: *net,
                        file: file.source.clone(),
                    });
                }
                return Err(PeerError::NotThere {
                    role: role.to_string(),
                    cidr: *net,
                });
            }
        }
        next.0.retain(|_, set| !set.is_empty());
        Ok(next)
    }

    /// The runtime peers to keep with a (new) policy file: those the file now lists itself
    /// are dropped, since the file owns them. A role the file no longer has is an error.
    pub fn rebase(&self, file: &Policy) -> Result<RuntimePeers, PeerError> {
        let mut next = RuntimePeers::default();
        for (role, nets) in &self.0 {
            for net in nets {
                if file.role(role).is_none() {
                    return Err(PeerError::RoleGone {
                        role: role.clone(),
                        cidr: *net,
                        file: file.source.clone(),
                    });
                }
                if !RuntimePeers::in_file(file, role, net) {
                    next.0.entry(role.clone()).or_default().insert(*net);
                }
            }
            // A file without the management rule may not make a runtime peer lock the
            // gateway out.
            if let Some(why) = RuntimePeers::lockout(file, role, nets) {
                return Err(PeerError::LocksOut(format!(
                    "the runtime peers of {role:?} and {}: {why}. Or remove the runtime peer: `director-fw peers del {role} CIDR` while an agent runs, or from the state file",
                    file.source
                )));
            }
        }
        Ok(next)
    }

    /// These peers and `other`'s.
    pub fn union(&self, other: &RuntimePeers) -> RuntimePeers {
        let mut all = self.clone();
        for (role, nets) in &other.0 {
            all.0.entry(role.clone()).or_default().extend(nets);
        }
        all
    }

    /// The ones of these peers that `file` lists itself.
    pub fn listed_in(&self, file: &Policy) -> RuntimePeers {
        let mut listed = RuntimePeers::default();
        for (role, nets) in &self.0 {
            for net in nets.iter().filter(|n| RuntimePeers::in_file(file, role, n)) {
                listed.0.entry(role.clone()).or_default().insert(*net);
            }
        }
        listed
    }

    /// These peers less those whose role `file` does not have, which are returned apart.
    pub fn keep_roles_of(&self, file: &Policy) -> (RuntimePeers, Vec<(String, IpNet)>) {
        let mut kept = RuntimePeers::default();
        let mut dropped = Vec::new();
        for (role, nets) in &self.0 {
            if file.role(role).is_some() {
                kept.0.insert(role.clone(), nets.clone());
            } else {
                dropped.extend(nets.iter().map(|net| (role.clone(), *net)));
            }
        }
        (kept, dropped)
    }

    /// The policy in force: the file's peers and these. Call [`RuntimePeers::rebase`] first;
    /// roles the file does not have are skipped here.
    pub fn apply(&self, file: &Policy) -> Policy {
        let mut policy = file.clone();
        for (role, nets) in &self.0 {
            if let Some(id) = file.role(role) {
                policy
                    .peers
                    .extend(nets.iter().map(|&net| Peer { role: id, net }));
            }
        }
        policy
    }

    /// Every peer of the policy in force, the file's and these, optionally of one role.
    pub fn list(&self, file: &Policy, role: Option<&str>) -> Vec<PeerEntry> {
        let from_file = file.peers.iter().map(|p| PeerEntry {
            role: file.role_name(p.role).to_string(),
            cidr: p.net.to_string(),
            source: "file".into(),
        });
        let runtime = self.0.iter().flat_map(|(role, nets)| {
            nets.iter().map(move |net| PeerEntry {
                role: role.clone(),
                cidr: net.to_string(),
                source: "runtime".into(),
            })
        });
        from_file
            .chain(runtime)
            .filter(|p| role.is_none_or(|r| p.role == r))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Policy {
        Policy::from_toml(
            "p.toml",
            "profile = \"lync2013-single-director\"\n[peers]\ndirector = [\"198.18.2.10\"]\n",
        )
        .unwrap()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn add_and_del_are_all_or_nothing() {
        let file = file();
        let none = RuntimePeers::default();
        let two = none
            .add(
                &file,
                "front-end",
                &strings(&["198.18.3.10", "2001:db8:3::/64"]),
            )
            .unwrap();
        assert_eq!(two.len(), 2);
        let err = two
            .add(
                &file,
                "front-end",
                &strings(&["198.18.3.11", "198.18.3.300"]),
            )
            .unwrap_err();
        assert!(err.to_string().contains("198.18.3.300"), "{err}");
        let err = two
            .del(
                &file,
                "front-end",
                &strings(&["198.18.3.10", "198.18.3.12"]),
            )
            .unwrap_err();
        assert_eq!(
            err,
            PeerError::NotThere {
                role: "front-end".into(),
                cidr: "198.18.3.12/32".parse().unwrap()
            }
        );
        let one = two
            .del(&file, "front-end", &strings(&["198.18.3.10"]))
            .unwrap();
        assert_eq!(one.len(), 1);
        let policy = one.apply(&file);
        assert_eq!(policy.peers.len(), 2);
    }

    #[test]
    fn a_runtime_peer_of_everything_needs_the_management_rule_in_every_file() {
        let profile = "profile = \"lync2013-single-director\"\n";
        let ssh = "[[rules]]\nid='ssh'\nfrom='any'\nto='management'\nproto='tcp'\nports=[22]\n";
        let with = Policy::from_toml("with.toml", &format!("{profile}{ssh}")).unwrap();
        let everything = strings(&["::/0"]);
        let peers = RuntimePeers::default()
            .add(&with, "director", &everything)
            .unwrap();
        let without = Policy::from_toml("without.toml", profile).unwrap();
        let err = peers.rebase(&without).unwrap_err().to_string();
        assert!(
            err.contains("management") && err.contains("without.toml"),
            "{err}"
        );
        assert!(peers.rebase(&with).is_ok());
        // Taking it away is always allowed.
        assert!(peers
            .del(&with, "director", &everything)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn bad_input_is_named() {
        let file = file();
        let none = RuntimePeers::default();
        let cases: [(&str, &[&str], &str); 7] = [
            ("director", &["0.0.0.0/0"], "management"),
            ("nobody", &["198.18.3.1"], "unknown role \"nobody\""),
            ("any", &["198.18.3.1"], "`any`"),
            ("director", &[], "no address"),
            ("director", &["198.18.3.1/33"], "198.18.3.1/33"),
            ("director", &["198.18.3.1/24"], "host bits"),
            ("director", &["198.18.2.10"], "already listed"),
        ];
        for (role, cidrs, expect) in cases {
            let err = none
                .add(&file, role, &strings(cidrs))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{role} {cidrs:?}: {err}");
        }
        let err = none
            .del(&file, "director", &strings(&["198.18.2.10"]))
            .unwrap_err();
        assert!(err.to_string().contains("edit the file"), "{err}");
    }

    #[test]
    fn rebase_drops_what_the_file_now_lists_and_refuses_lost_roles() {
        let file = Policy::from_toml(
            "p.toml",
            "profile = \"lync2013-single-director\"\n[[rules]]\nid = \"ops-ssh\"\nfrom = \"ops\"\nto = \"director\"\nproto = \"tcp\"\nports = [\"22\"]\n",
        )
        .unwrap();
        let peers = RuntimePeers::default()
            .add(&file, "front-end", &strings(&["198.18.3.10"]))
            .unwrap()
            .add(&file, "ops", &strings(&["198.18.6.10"]))
            .unwrap();
        let listed = Policy::from_toml(
            "q.toml",
            "profile = \"lync2013-single-director\"\n[peers]\nfront-end = [\"198.18.3.10\"]\n",
        )
        .unwrap();
        let err = peers.rebase(&listed).unwrap_err().to_string();
        assert!(err.contains("q.toml") && err.contains("\"ops\""), "{err}");
        let listed_too = Policy::from_toml(
            "q.toml",
            "profile = \"lync2013-single-director\"\n[[rules]]\nid = \"ops-ssh\"\nfrom = \"ops\"\nto = \"director\"\nproto = \"tcp\"\nports = [\"22\"]\n[peers]\nfront-end = [\"198.18.3.10\"]\n",
        )
        .unwrap();
        assert_eq!(peers.rebase(&listed_too).unwrap().len(), 1);
        let bare = Policy::from_toml("r.toml", "profile = \"lync2013-single-director\"\n").unwrap();
        let err = peers.rebase(&bare).unwrap_err().to_string();
        assert!(err.contains("r.toml") && err.contains("peers del"), "{err}");
    }
}
