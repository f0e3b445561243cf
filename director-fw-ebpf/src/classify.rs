//! Roles and rules: which roles an address has, and which rule (if any) passes a packet.
//! Host addresses sit in a host table (see `director_fw_common::hosts`): two array reads.
//! Prefixes sit in an LPM trie that is only consulted when the policy has prefixes of that
//! family, so a policy of hosts pays no hash or trie lookup for roles.

use aya_ebpf::maps::lpm_trie::Key;
use director_fw_common::{
    config::{FLAG_NETS_V4, FLAG_NETS_V6},
    port_slot, Config, HostAddr, RuleKey,
};

use crate::maps::{
    HOSTS_V4, HOSTS_V6, HOST_SEEDS_V4, HOST_SEEDS_V6, NETS_V4, NETS_V6, PORTS, RULES,
};

/// Role bits of a host address in the IPv4 host table, if it is there.
#[inline(always)]
fn host_v4(cfg: &Config, addr: u32) -> Option<u32> {
    let t = &cfg.hosts_v4;
    let seed = HOST_SEEDS_V4.get(t.seed_base + addr.bucket(t))?;
    let host = HOSTS_V4.get(t.slot_base + addr.slot(*seed, t))?;
    (host.addr == addr && host.roles != 0).then_some(host.roles)
}

/// The same for IPv6.
#[inline(always)]
fn host_v6(cfg: &Config, addr: &[u32; 4]) -> Option<u32> {
    let t = &cfg.hosts_v6;
    let seed = HOST_SEEDS_V6.get(t.seed_base + addr.bucket(t))?;
    let host = HOSTS_V6.get(t.slot_base + addr.slot(*seed, t))?;
    (host.addr == *addr && host.roles != 0).then_some(host.roles)
}

/// Role bits of an address; 0 for an address in no role.
#[inline(always)]
pub fn roles(cfg: &Config, family: u8, addr: &[u32; 4]) -> u32 {
    if family == 4 {
        if let Some(roles) = host_v4(cfg, addr[0]) {
            return roles;
        }
        if cfg.flags & FLAG_NETS_V4 != 0 {
            let key = Key::new(64, [cfg.generation, addr[0]]);
            if let Some(roles) = NETS_V4.get(key) {
                return *roles;
            }
        }
    } else {
        if let Some(roles) = host_v6(cfg, addr) {
            return roles;
        }
        if cfg.flags & FLAG_NETS_V6 != 0 {
            let key = Key::new(160, [cfg.generation, addr[0], addr[1], addr[2], addr[3]]);
            if let Some(roles) = NETS_V6.get(key) {
                return *roles;
            }
        }
    }
    0
}

/// Whether any rule opens this TCP or UDP `port` on these destination roles, whatever the
/// source. This check comes before the source lookup, and is an array read, so that traffic
/// to closed ports costs no more lookups.
#[inline(always)]
pub fn port_open(cfg: &Config, dst_roles: u32, proto: u8, port: u16) -> bool {
    match PORTS.get(port_slot(cfg.generation, proto, port)) {
        Some(open) => open & dst_roles & cfg.to_roles != 0,
        None => false,
    }
}

/// Counter slot of the first rule that passes this source to this destination and port.
#[inline(always)]
pub fn rule(cfg: &Config, dst_roles: u32, src_roles: u32, proto: u8, port: u16) -> Option<u32> {
    let key = RuleKey {
        dst_roles: dst_roles & cfg.to_roles,
        src_roles: src_roles & cfg.from_roles,
        port,
        proto,
        generation: cfg.generation as u8,
    };
    RULES.get_ptr(key).map(|index| unsafe { *index })
}
