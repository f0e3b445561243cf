//! Builds the host tables the kernel reads (see `director_fw_common::hosts`): each host
//! address gets a slot of its own, found through its bucket's seed, so the kernel finds a
//! host's roles with two array reads and no probing.

use std::cmp::Reverse;

use director_fw_common::{HostAddr, TableMasks};

/// A built table: how many hosts, the index masks, the seed of each bucket, and the slots.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostTable<T> {
    pub hosts: usize,
    pub masks: TableMasks,
    pub seeds: Vec<u32>,
    pub slots: Vec<T>,
}

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
    let buckets = (hosts.len() / 4).max(1).next_power_of_two();
    let slots = (hosts.len() * 2).max(1).next_power_of_two();
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
            assert!(table.slots.len() <= (n * 4).max(2), "{n} hosts");
            for (addr, value) in &hosts {
                assert_eq!(find(&table, addr), *value, "{n} hosts");
            }
        }
    }

    fn v6(text: &str) -> [u32; 4] {
        crate::compile::words(text.parse().unwrap()).0
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
