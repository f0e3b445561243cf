//! The one seam through which a live policy changes: a generation switch.
//!
//! Every policy map holds two generations. `CONFIG` has an entry per generation, the host
//! tables and `PORTS` a half each, and the keys of `NETS_*` and `RULES` carry the generation.
//! The kernel reads `ACTIVE` once per packet and then only that generation. [`PolicyMaps::install`]
//! writes the whole policy into the other generation, then flips `ACTIVE` with one word: each
//! packet sees the old policy or the new one, never a mix. Before a generation is written again,
//! a grace period (`membarrier(MEMBARRIER_CMD_GLOBAL)`, which waits for an RCU grace period)
//! lets every packet that may still be reading it finish. The grace period starts on a thread
//! of its own right after the flip, so a change waits for it only when it comes within a
//! grace period of the one before.
//!
//! A `PolicyMaps` only comes from [`super::Datapath::load`] (new, empty maps) or from
//! [`super::Pins::adopt`] (the live ones); either way the only write it offers is `install`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use aya::maps::{lpm_trie::Key, Array, HashMap as BpfHashMap, LpmTrie, Map};
use director_fw_common::{config::GENERATIONS, maps, Config, HostV4, HostV6, RuleKey, TableMasks};
use serde::Serialize;

use super::{load::Capacity, mmap::Mapped, pins::Pins, DatapathError};
use crate::compile::Compiled;

use director_fw_common::rules::PORTS_PER_GENERATION;

type NetsV4 = HashMap<(u32, u32), u32>;
type NetsV6 = HashMap<(u32, [u32; 4]), u32>;

/// What one generation holds in the hash-keyed maps, so that writing it again only touches the
/// entries that change. Rule keys are kept with generation 0.
#[derive(Default)]
struct Held {
    nets_v4: NetsV4,
    nets_v6: NetsV6,
    rules: HashMap<RuleKey, u32>,
}

/// What an install did.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Installed {
    /// The generation now in force.
    pub generation: u32,
    /// Waiting for the grace period before the generation could be written.
    pub grace: Duration,
    /// Writing it and flipping `ACTIVE`.
    pub write: Duration,
}

pub struct PolicyMaps {
    active: Map,
    config: Map,
    seeds_v4: Mapped,
    hosts_v4: Mapped,
    seeds_v6: Mapped,
    hosts_v6: Mapped,
    ports: Mapped,
    nets_v4: Map,
    nets_v6: Map,
    rules: Map,
    capacity: Capacity,
    generation: u32,
    held: [Held; 2],
    /// The grace period after the last flip, running; `None` once it has been waited for.
    grace: Option<std::thread::JoinHandle<()>>,
}

impl PolicyMaps {
    /// The policy maps of a loaded object. New maps are all zero, so generation 0 protects
    /// nothing until the first install.
    pub(super) fn open(
        take: &mut dyn FnMut(&'static str) -> Result<Map, DatapathError>,
    ) -> Result<PolicyMaps, DatapathError> {
        let mut mapped =
            |name, size| -> Result<Mapped, DatapathError> { Mapped::new(take(name)?, size) };
        let seeds_v4 = mapped(maps::HOST_SEEDS_V4, 4)?;
        let hosts_v4 = mapped(maps::HOSTS_V4, std::mem::size_of::<HostV4>())?;
        let seeds_v6 = mapped(maps::HOST_SEEDS_V6, 4)?;
        let hosts_v6 = mapped(maps::HOSTS_V6, std::mem::size_of::<HostV6>())?;
        let ports = mapped(maps::PORTS, 4)?;
        let nets_v4 = take(maps::NETS_V4)?;
        let nets_v6 = take(maps::NETS_V6)?;
        let rules = take(maps::RULES)?;
        let entries = |map: &Map| -> Result<u32, DatapathError> {
            Ok(super::load::data(map)?.info()?.max_entries())
        };
        let (n4, n6, r) = (entries(&nets_v4)?, entries(&nets_v6)?, entries(&rules)?);
        let capacity = Capacity::from_max_entries(|name| match name {
            maps::HOST_SEEDS_V4 => seeds_v4.entries(),
            maps::HOSTS_V4 => hosts_v4.entries(),
            maps::HOST_SEEDS_V6 => seeds_v6.entries(),
            maps::HOSTS_V6 => hosts_v6.entries(),
            maps::NETS_V4 => n4,
            maps::NETS_V6 => n6,
            _ => r,
        });
        if ports.entries() < GENERATIONS * PORTS_PER_GENERATION {
            return Err(DatapathError::Pins(format!(
                "the PORTS map has {} entries, fewer than the {} this agent needs",
                ports.entries(),
                GENERATIONS * PORTS_PER_GENERATION
            )));
        }
        Ok(PolicyMaps {
            active: take(maps::ACTIVE)?,
            config: take(maps::CONFIG)?,
            seeds_v4,
            hosts_v4,
            seeds_v6,
            hosts_v6,
            ports,
            nets_v4,
            nets_v6,
            rules,
            capacity,
            generation: 0,
            held: Default::default(),
            grace: None,
        })
    }

    /// Live maps, opened from their pins: reads which generation is in force and what both
    /// generations hold.
    pub(super) fn adopt(
        open: &mut dyn FnMut(&'static str) -> Result<Map, DatapathError>,
    ) -> Result<PolicyMaps, DatapathError> {
        let mut maps = PolicyMaps::open(open)?;
        maps.generation = maps.active_generation()?;
        for (generation, held) in maps.read_held()?.into_iter().enumerate() {
            maps.held[generation] = held;
        }
        // The agent that flipped last may have died right after: assume a reader is left.
        maps.grace = Some(std::thread::spawn(grace_period));
        Ok(maps)
    }

    fn active_generation(&self) -> Result<u32, DatapathError> {
        let active: Array<_, u32> = Array::try_from(&self.active)?;
        Ok(active.get(&0, 0)? % GENERATIONS)
    }

    fn read_held(&self) -> Result<[Held; 2], DatapathError> {
        let mut held: [Held; 2] = Default::default();
        let nets: LpmTrie<_, [u32; 2], u32> = LpmTrie::try_from(&self.nets_v4)?;
        for item in nets.iter() {
            let (key, roles) = item?;
            let [generation, addr] = key.data();
            if let Some(h) = held.get_mut(generation as usize) {
                h.nets_v4.insert((key.prefix_len() - 32, addr), roles);
            }
        }
        let nets: LpmTrie<_, [u32; 5], u32> = LpmTrie::try_from(&self.nets_v6)?;
        for item in nets.iter() {
            let (key, roles) = item?;
            let [generation, a, b, c, d] = key.data();
            if let Some(h) = held.get_mut(generation as usize) {
                h.nets_v6
                    .insert((key.prefix_len() - 32, [a, b, c, d]), roles);
            }
        }
        let rules: BpfHashMap<_, RuleKey, u32> = BpfHashMap::try_from(&self.rules)?;
        for item in rules.iter() {
            let (mut key, slot) = item?;
            if let Some(h) = held.get_mut(usize::from(key.generation)) {
                key.generation = 0;
                h.rules.insert(key, slot);
            }
        }
        Ok(held)
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// The generation in force.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Why `compiled` does not fit these maps, if it does not.
    pub fn fits(&self, compiled: &Compiled) -> Result<(), String> {
        let c = &self.capacity;
        let now = &self.held[self.generation as usize];
        let checks = [
            (
                "IPv4 host table buckets",
                compiled.hosts_v4.seeds.len(),
                c.seeds_v4 as usize,
            ),
            (
                "IPv4 host table slots",
                compiled.hosts_v4.slots.len(),
                c.slots_v4 as usize,
            ),
            (
                "IPv6 host table buckets",
                compiled.hosts_v6.seeds.len(),
                c.seeds_v6 as usize,
            ),
            (
                "IPv6 host table slots",
                compiled.hosts_v6.slots.len(),
                c.slots_v6 as usize,
            ),
            (
                "IPv4 prefixes",
                now.nets_v4.len() + compiled.nets_v4.len(),
                c.nets_v4 as usize,
            ),
            (
                "IPv6 prefixes",
                now.nets_v6.len() + compiled.nets_v6.len(),
                c.nets_v6 as usize,
            ),
            (
                "rule entries",
                now.rules.len() + compiled.rules.len(),
                c.rules as usize,
            ),
        ];
        match checks.iter().find(|(_, need, have)| need > have) {
            Some((what, need, have)) => Err(format!("{what}: {need} needed, room for {have}")),
            None => Ok(()),
        }
    }

    /// Waits until no packet can still be reading the generation before the last switch.
    pub fn settle(&mut self) {
        if let Some(grace) = self.grace.take() {
            // It only waits in the kernel; a panic there is impossible, and it is done either way.
            let _ = grace.join();
        }
    }

    /// Writes `compiled` into the generation not in force, then makes it the one in force.
    /// On an error nothing changes for the kernel: `ACTIVE` still names the old generation.
    pub fn install(&mut self, compiled: &Compiled) -> Result<Installed, DatapathError> {
        self.fits(compiled).map_err(DatapathError::DoesNotFit)?;
        let started = Instant::now();
        self.settle();
        let grace = started.elapsed();
        let next = (self.generation + 1) % GENERATIONS;
        // On an error, what was written stays unread, and `held` still says what is there.
        self.write(next, compiled)?;
        // Every write to the generation is visible before the word that makes it current.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let mut active: Array<_, u32> = Array::try_from(&mut self.active)?;
        active.set(0, next, 0)?;
        self.generation = next;
        self.grace = Some(std::thread::spawn(grace_period));
        Ok(Installed {
            generation: next,
            grace,
            write: started.elapsed() - grace,
        })
    }

    fn layout(&self, generation: u32, compiled: &Compiled) -> Config {
        let c = &self.capacity;
        let place = |masks: TableMasks, seeds: u32, slots: u32| TableMasks {
            seed_base: generation * seeds,
            slot_base: generation * slots,
            ..masks
        };
        Config {
            generation,
            hosts_v4: place(compiled.config.hosts_v4, c.seeds_v4, c.slots_v4),
            hosts_v6: place(compiled.config.hosts_v6, c.seeds_v6, c.slots_v6),
            ..compiled.config
        }
    }

    fn write(&mut self, generation: u32, compiled: &Compiled) -> Result<(), DatapathError> {
        let config = self.layout(generation, compiled);
        let (t4, t6) = (&compiled.hosts_v4, &compiled.hosts_v6);
        self.seeds_v4
            .write(config.hosts_v4.seed_base, &t4.seeds, 0)?;
        self.hosts_v4
            .write(config.hosts_v4.slot_base, &t4.slots, 0)?;
        self.seeds_v6
            .write(config.hosts_v6.seed_base, &t6.seeds, 0)?;
        self.hosts_v6
            .write(config.hosts_v6.slot_base, &t6.slots, 0)?;

        let mut ports = vec![0u32; PORTS_PER_GENERATION as usize];
        for &(slot, roles) in &compiled.ports {
            ports[(slot % PORTS_PER_GENERATION) as usize] = roles;
        }
        self.ports
            .write(generation * PORTS_PER_GENERATION, &ports, 0)?;

        let held = &mut self.held[generation as usize];
        let want: NetsV4 = compiled
            .nets_v4
            .iter()
            .map(|&(len, addr, roles)| ((len, addr), roles))
            .collect();
        let mut trie: LpmTrie<_, [u32; 2], u32> = LpmTrie::try_from(&mut self.nets_v4)?;
        sync(&mut held.nets_v4, &want, |(len, addr), roles| {
            let key = Key::new(len + 32, [generation, addr]);
            match roles {
                Some(roles) => trie.insert(&key, roles, 0),
                None => trie.remove(&key),
            }
        })?;
        let want: NetsV6 = compiled
            .nets_v6
            .iter()
            .map(|&(len, addr, roles)| ((len, addr), roles))
            .collect();
        let mut trie: LpmTrie<_, [u32; 5], u32> = LpmTrie::try_from(&mut self.nets_v6)?;
        sync(&mut held.nets_v6, &want, |(len, [a, b, c, d]), roles| {
            let key = Key::new(len + 32, [generation, a, b, c, d]);
            match roles {
                Some(roles) => trie.insert(&key, roles, 0),
                None => trie.remove(&key),
            }
        })?;
        let want: HashMap<RuleKey, u32> = compiled.rules.iter().copied().collect();
        let mut rules: BpfHashMap<_, RuleKey, u32> = BpfHashMap::try_from(&mut self.rules)?;
        sync(&mut held.rules, &want, |key, slot| {
            let key = RuleKey {
                generation: generation as u8,
                ..key
            };
            match slot {
                Some(slot) => rules.insert(key, slot, 0),
                None => rules.remove(&key),
            }
        })?;

        let mut array: Array<_, Config> = Array::try_from(&mut self.config)?;
        array.set(generation, config, 0)?;
        Ok(())
    }

    /// Pins every policy map under the instance's `maps/`.
    pub(super) fn pin(&self, pins: &Pins) -> Result<(), DatapathError> {
        for (name, map) in self.named() {
            map.pin(pins.map(name))?;
        }
        Ok(())
    }

    fn named(&self) -> [(&'static str, &Map); 10] {
        [
            (maps::ACTIVE, &self.active),
            (maps::CONFIG, &self.config),
            (maps::HOST_SEEDS_V4, self.seeds_v4.map()),
            (maps::HOSTS_V4, self.hosts_v4.map()),
            (maps::HOST_SEEDS_V6, self.seeds_v6.map()),
            (maps::HOSTS_V6, self.hosts_v6.map()),
            (maps::PORTS, self.ports.map()),
            (maps::NETS_V4, &self.nets_v4),
            (maps::NETS_V6, &self.nets_v6),
            (maps::RULES, &self.rules),
        ]
    }

    /// The policy in force as the kernel holds it, read back from the maps themselves.
    pub fn snapshot(&self) -> Result<Snapshot, DatapathError> {
        let generation = self.active_generation()?;
        let array: Array<_, Config> = Array::try_from(&self.config)?;
        let config = array.get(&generation, 0)?;
        let read = |mapped: &Mapped, base: u32, len: u32| -> Vec<u32> {
            (base..base + len)
                .map(|i| mapped.read::<u32>(i).unwrap_or(u32::MAX))
                .collect()
        };
        let (t4, t6) = (config.hosts_v4, config.hosts_v6);
        let sized = |masks: u32| masks + 1;
        let hosts_v4 = (t4.slot_base..t4.slot_base + sized(t4.slots))
            .filter_map(|i| self.hosts_v4.read::<HostV4>(i))
            .collect();
        let hosts_v6 = (t6.slot_base..t6.slot_base + sized(t6.slots))
            .filter_map(|i| self.hosts_v6.read::<HostV6>(i))
            .collect();
        let ports = read(
            &self.ports,
            generation * PORTS_PER_GENERATION,
            PORTS_PER_GENERATION,
        )
        .into_iter()
        .zip(0u32..)
        .filter(|&(roles, _)| roles != 0)
        .map(|(roles, slot)| (slot, roles))
        .collect();
        let held = self.read_held()?;
        let now = &held[generation as usize];
        Ok(Snapshot {
            generation,
            config: Config {
                generation: 0,
                hosts_v4: TableMasks {
                    seed_base: 0,
                    slot_base: 0,
                    ..t4
                },
                hosts_v6: TableMasks {
                    seed_base: 0,
                    slot_base: 0,
                    ..t6
                },
                ..config
            },
            seeds_v4: read(&self.seeds_v4, t4.seed_base, sized(t4.buckets)),
            hosts_v4,
            seeds_v6: read(&self.seeds_v6, t6.seed_base, sized(t6.buckets)),
            hosts_v6,
            ports,
            nets_v4: now.nets_v4.iter().map(|(&(l, a), &r)| (l, a, r)).collect(),
            nets_v6: now.nets_v6.iter().map(|(&(l, a), &r)| (l, a, r)).collect(),
            rules: now.rules.iter().map(|(&k, &v)| (k, v)).collect(),
        })
    }
}

/// The policy in force, read back from the kernel's maps, in the shape of [`Compiled`] with
/// the generation taken out, so that it compares equal to the compiled policy it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub generation: u32,
    pub config: Config,
    pub seeds_v4: Vec<u32>,
    pub hosts_v4: Vec<HostV4>,
    pub seeds_v6: Vec<u32>,
    pub hosts_v6: Vec<HostV6>,
    pub ports: Vec<(u32, u32)>,
    pub nets_v4: BTreeSet<(u32, u32, u32)>,
    pub nets_v6: BTreeSet<(u32, [u32; 4], u32)>,
    pub rules: BTreeMap<RuleKey, u32>,
}

impl Snapshot {
    /// What a snapshot of `compiled` in force looks like.
    pub fn of(compiled: &Compiled) -> Snapshot {
        Snapshot {
            generation: 0,
            config: compiled.config,
            seeds_v4: compiled.hosts_v4.seeds.clone(),
            hosts_v4: compiled.hosts_v4.slots.clone(),
            seeds_v6: compiled.hosts_v6.seeds.clone(),
            hosts_v6: compiled.hosts_v6.slots.clone(),
            ports: compiled.ports.clone(),
            nets_v4: compiled.nets_v4.iter().copied().collect(),
            nets_v6: compiled.nets_v6.iter().copied().collect(),
            rules: compiled.rules.iter().copied().collect(),
        }
    }

    /// Equal policies, whichever generation holds them.
    pub fn same_policy(&self, other: &Snapshot) -> bool {
        Snapshot {
            generation: 0,
            ..self.clone()
        } == Snapshot {
            generation: 0,
            ..other.clone()
        }
    }
}

/// Makes a generation's entries `want`, given that it holds `held`: removes what goes,
/// writes what is new or changed, and keeps `held` true to the map after every step.
fn sync<K: Copy + Eq + std::hash::Hash, V: Copy + PartialEq>(
    held: &mut HashMap<K, V>,
    want: &HashMap<K, V>,
    mut apply: impl FnMut(K, Option<V>) -> Result<(), aya::maps::MapError>,
) -> Result<(), DatapathError> {
    let gone: Vec<K> = held
        .keys()
        .filter(|k| !want.contains_key(k))
        .copied()
        .collect();
    for key in gone {
        apply(key, None)?;
        held.remove(&key);
    }
    for (&key, &value) in want {
        if held.get(&key) != Some(&value) {
            apply(key, Some(value))?;
            held.insert(key, value);
        }
    }
    Ok(())
}

/// Waits until every BPF program that was running has finished: `membarrier` with
/// `MEMBARRIER_CMD_GLOBAL` is `synchronize_rcu()`, and XDP and TC programs run inside RCU
/// read-side sections. On a single CPU it returns at once, which is enough: XDP and TC run in
/// softirq context, which the agent cannot interrupt. Where it is unavailable (nohz_full
/// kernels), a pause far longer than any program run stands in.
fn grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
}
