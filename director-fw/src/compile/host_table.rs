//! Builds the host tables the kernel reads (see `director_fw_common::hosts`): each host
//! address gets a slot of its own, found through its bucket's seed, so the kernel finds a
//! host's roles with two array reads and no probing.

use std::cmp::Reverse;

use director_fw_common::{HostAddr, HostV4, HostV6, TableMasks};

/// A built table: how many hosts, the index masks, the seed of each bucket, and the slots.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostTable<T> {
    pub hosts: usize,
    pub masks: TableMasks,
    pub seeds: Vec<u32>,
    pub slots: Vec<T>,
}

/// Small tables get room to take hosts added at runtime without a rebuild.
const MIN_SLOTS: usize = 256;
const MIN_BUCKETS: usize = 64;
/// Seeds tried for one bucket before the table is made larger.
const SEED_TRIES: u32 = 1 << 16;
/// Times the slot count may double before giving up.
const GROWTHS: u32 = 4;

/// Builds a table of `(address, slot value)`; addresses must be distinct. None only if no
/// seed fits even at 2^GROWTHS times the usual size, which distinct addresses do not cause in
/// practice.
pub fn build<K: HostAddr, T: Copy + Default>(hosts: &[(K, T)]) -> Option<HostTable<T>> {
    // About four hosts per bucket and at most half the slots in use: each bucket then finds
    // a seed within a few tries, even the last ones.
    let buckets = (hosts.len() / 4).max(MIN_BUCKETS).next_power_of_two();
    let slots = (hosts.len() * 2).max(MIN_SLOTS).next_power_of_two();
    (0..=GROWTHS).find_map(|growth| try_build(hosts, buckets, slots << growth))
}

fn try_build<K: HostAddr, T: Copy + Default>(
    hosts: &[(K, T)],
    buckets: usize,
    slots: usize,
) -> Option<HostTable<T>> {
    let masks = TableMasks {
        buckets: u32::try_from(buckets - 1).ok()?,
        slots: u32::try_from(slots - 1).ok()?,
        ..TableMasks::default()
    };
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); buckets];
    for (i, (key, _)) in hosts.iter().enumerate() {
        members[key.bucket(&masks) as usize].push(i);
    }
    // The fullest buckets first, while most slots are still free.
    let mut order: Vec<usize> = (0..buckets).filter(|&b| !members[b].is_empty()).collect();
    order.sort_by_key(|&b| Reverse(members[b].len()));

    let mut taken = vec![false; slots];
    let mut table = HostTable {
        hosts: hosts.len(),
        masks,
        seeds: vec![0; buckets],
        slots: vec![T::default(); slots],
    };
    let mut chosen: Vec<usize> = Vec::new();
    for b in order {
        let keys = &members[b];
        let fits = |seed: u32, chosen: &mut Vec<usize>| {
            chosen.clear();
            keys.iter().all(|&i| {
                let s = hosts[i].0.slot(seed, &masks) as usize;
                let free = !taken[s] && !chosen.contains(&s);
                chosen.push(s);
                free
            })
        };
        let seed = (0..SEED_TRIES).find(|&seed| fits(seed, &mut chosen))?;
        for (&i, &s) in keys.iter().zip(&chosen) {
            taken[s] = true;
            table.slots[s] = hosts[i].1;
        }
        table.seeds[b] = seed;
    }
    Some(table)
}

/// A slot of a host table: an address and its roles; an empty slot has no roles.
pub trait HostSlot: Copy + Default + PartialEq {
    type Addr: HostAddr + Copy + PartialEq;
    fn new(addr: Self::Addr, roles: u32) -> Self;
    fn addr(&self) -> Self::Addr;
    fn roles(&self) -> u32;
}

impl HostSlot for HostV4 {
    type Addr = u32;
    fn new(addr: u32, roles: u32) -> Self {
        HostV4 { addr, roles }
    }
    fn addr(&self) -> u32 {
        self.addr
    }
    fn roles(&self) -> u32 {
        self.roles
    }
}

impl HostSlot for HostV6 {
    type Addr = [u32; 4];
    fn new(addr: [u32; 4], roles: u32) -> Self {
        HostV6 { addr, roles }
    }
    fn addr(&self) -> [u32; 4] {
        self.addr
    }
    fn roles(&self) -> u32 {
        self.roles
    }
}

/// The hosts of each bucket of a table, which changing one host needs.
#[derive(Clone, Debug)]
pub struct Members<K>(Vec<Vec<K>>);

impl<T: HostSlot> HostTable<T> {
    /// The hosts of each bucket, read from the table.
    pub fn members(&self) -> Members<T::Addr> {
        let mut members = vec![Vec::new(); self.seeds.len()];
        for slot in self.slots.iter().filter(|s| s.roles() != 0) {
            members[slot.addr().bucket(&self.masks) as usize].push(slot.addr());
        }
        Members(members)
    }

    /// The roles of `addr`, 0 when it is not in the table; found as the kernel finds it.
    pub fn get(&self, addr: T::Addr) -> u32 {
        let seed = self.seeds[addr.bucket(&self.masks) as usize];
        let slot = &self.slots[addr.slot(seed, &self.masks) as usize];
        if slot.roles() != 0 && slot.addr() == addr {
            slot.roles()
        } else {
            0
        }
    }

    /// Gives `addr` these roles; 0 takes it out. A new host needs its bucket re-seeded so
    /// that every host of the bucket still has a free slot of its own: false when no seed
    /// does, or when the table would be more than half full. The table is then unchanged,
    /// and only a [`build`] of a larger one can take the host.
    pub fn set(&mut self, members: &mut Members<T::Addr>, addr: T::Addr, roles: u32) -> bool {
        let bucket = addr.bucket(&self.masks) as usize;
        let at = addr.slot(self.seeds[bucket], &self.masks) as usize;
        if self.slots[at].roles() != 0 && self.slots[at].addr() == addr {
            if roles == 0 {
                self.slots[at] = T::default();
                members.0[bucket].retain(|a| *a != addr);
                self.hosts -= 1;
            } else {
                self.slots[at] = T::new(addr, roles);
            }
            return true;
        }
        if roles == 0 {
            return true;
        }
        if (self.hosts + 1) * 2 > self.slots.len() {
            return false;
        }
        let mut keys = members.0[bucket].clone();
        keys.push(addr);
        let old: Vec<usize> = keys[..keys.len() - 1]
            .iter()
            .map(|a| a.slot(self.seeds[bucket], &self.masks) as usize)
            .collect();
        let masks = self.masks;
        let mut chosen = Vec::with_capacity(keys.len());
        let free = |s: usize, slots: &[T]| slots[s].roles() == 0 || old.contains(&s);
        let Some(seed) = (0..SEED_TRIES).find(|&seed| {
            chosen.clear();
            keys.iter().all(|k| {
                let s = k.slot(seed, &masks) as usize;
                let ok = free(s, &self.slots) && !chosen.contains(&s);
                chosen.push(s);
                ok
            })
        }) else {
            return false;
        };
        let values: Vec<T> = old.iter().map(|&s| self.slots[s]).collect();
        for &s in &old {
            self.slots[s] = T::default();
        }
        for (i, &s) in chosen.iter().enumerate() {
            self.slots[s] = values.get(i).copied().unwrap_or(T::new(addr, roles));
        }
        self.seeds[bucket] = seed;
        members.0[bucket].push(addr);
        self.hosts += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel does: bucket, seed, slot.
    fn find<K: HostAddr, T: Copy>(table: &HostTable<T>, addr: &K) -> T {
        let seed = table.seeds[addr.bucket(&table.masks) as usize];
        table.slots[addr.slot(seed, &table.masks) as usize]
    }

    #[test]
    fn every_host_has_its_own_slot() {
        for n in [0usize, 1, 2, 5, 100, 10_000, 200_000] {
            let hosts: Vec<(u32, u32)> = (0..n as u32)
                .map(|i| (0xc612_0000u32.wrapping_add(i * 7), i + 1))
                .collect();
            let table = build(&hosts).expect("builds");
            assert!(table.slots.len() <= (n * 4).max(MIN_SLOTS), "{n} hosts");
            for (addr, value) in &hosts {
                assert_eq!(find(&table, addr), *value, "{n} hosts");
            }
        }
    }

    fn v6(text: &str) -> [u32; 4] {
        crate::compile::words(text.parse().unwrap()).0
    }

    #[test]
    fn hosts_come_and_go_without_a_rebuild() {
        let hosts: Vec<(u32, HostV4)> = (0..1000u32)
            .map(|i| (i * 13, HostV4::new(i * 13, 1)))
            .collect();
        let mut table = build(&hosts).unwrap();
        let mut members = table.members();
        // Up to half full, new hosts find room in their bucket.
        let room = table.slots.len() / 2 - hosts.len();
        for i in 0..room as u32 {
            assert!(table.set(&mut members, 1_000_000 + i, 2), "host {i}");
        }
        assert!(!table.set(&mut members, 7, 2), "over half full");
        assert_eq!(table.get(7), 0);
        for (addr, _) in &hosts {
            assert_eq!(table.get(*addr), 1);
        }
        for i in 0..room as u32 {
            assert_eq!(table.get(1_000_000 + i), 2);
        }
        // Removing and changing roles, as a rebuild would have them.
        assert!(table.set(&mut members, 13, 0));
        assert!(table.set(&mut members, 26, 5));
        assert_eq!((table.get(13), table.get(26)), (0, 5));
        assert_eq!(table.hosts, hosts.len() + room - 1);
        assert!(table.set(&mut members, 7, 2));
        assert_eq!(table.get(7), 2);
    }

    #[test]
    fn ipv6_hosts_get_slots_too() {
        let mut hosts: Vec<([u32; 4], u32)> = (0..50_000u32)
            .map(|i| {
                (
                    v6(&format!("2001:db8:1:{:x}::{:x}", i >> 8, i & 0xff)),
                    i + 1,
                )
            })
            .collect();
        // These two fold to the same 64 bits, mixing the low half into the high one; the
        // slot must still tell them apart.
        hosts.push((v6("2001:db8::1"), 1_000_001));
        hosts.push((v6("26eb:a7d0:6ea:aadd::2"), 1_000_002));
        let table = build(&hosts).expect("builds");
        for (addr, value) in &hosts {
            assert_eq!(find(&table, addr), *value);
        }
    }
}
