//! Creating the maps and verifying the programs of an object. The policy maps are sized for a
//! policy with room to grow; the state maps (flows, fragments, counters) are either new or the
//! instance's pinned ones, so that a new program takes over what the old one learnt.

use aya::{
    maps::{Map, MapData},
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use director_fw_common::{
    config::GENERATIONS,
    maps::{self, DEFAULT_FRAGS, DEFAULT_NETS, DEFAULT_RULE_ENTRIES},
};
use sha2::{Digest, Sha256};

use super::{pins::Pins, swap::PolicyMaps, Counters, DatapathError};
use crate::compile::Compiled;

/// The kernel object, built by this crate's build script.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/director-fw.bpf.o"));

/// A short id of an object (the start of its SHA-256), pinned with its program so that a
/// restarted agent can tell its own program from another build's.
pub fn object_id(object: &[u8]) -> String {
    hex::encode(&Sha256::digest(object)[..8])
}

/// Sizes of the policy maps: host tables per generation, and entries of the prefix tries and
/// the rule map for both generations together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub seeds_v4: u32,
    pub slots_v4: u32,
    pub seeds_v6: u32,
    pub slots_v6: u32,
    pub nets_v4: u32,
    pub nets_v6: u32,
    pub rules: u32,
}

/// At least this many host slots per generation, so small policies can grow without a reload.
const MIN_SLOTS: usize = 4096;
const MIN_SEEDS: usize = 1024;

fn room(needed: usize, minimum: usize) -> u32 {
    u32::try_from(needed.saturating_mul(2).max(minimum)).unwrap_or(u32::MAX)
}

impl Capacity {
    /// Room for twice the policy: peers can be added at runtime and a reload can grow, up to
    /// that, through a generation switch alone. Beyond it the agent loads maps of a new size.
    pub fn for_policy(compiled: &Compiled) -> Capacity {
        // Each trie and the rule map hold both generations.
        let both = |n: usize, min: u32| room(n * GENERATIONS as usize, min as usize);
        Capacity {
            seeds_v4: room(compiled.hosts_v4.seeds.len(), MIN_SEEDS),
            slots_v4: room(compiled.hosts_v4.slots.len(), MIN_SLOTS),
            seeds_v6: room(compiled.hosts_v6.seeds.len(), MIN_SEEDS),
            slots_v6: room(compiled.hosts_v6.slots.len(), MIN_SLOTS),
            nets_v4: both(compiled.nets_v4.len(), DEFAULT_NETS),
            nets_v6: both(compiled.nets_v6.len(), DEFAULT_NETS),
            rules: both(compiled.rules.len(), DEFAULT_RULE_ENTRIES),
        }
    }

    /// The capacity of maps as they are in the kernel (per generation for the host tables).
    pub(super) fn from_max_entries(entries: impl Fn(&'static str) -> u32) -> Capacity {
        Capacity {
            seeds_v4: entries(maps::HOST_SEEDS_V4) / GENERATIONS,
            slots_v4: entries(maps::HOSTS_V4) / GENERATIONS,
            seeds_v6: entries(maps::HOST_SEEDS_V6) / GENERATIONS,
            slots_v6: entries(maps::HOSTS_V6) / GENERATIONS,
            nets_v4: entries(maps::NETS_V4),
            nets_v6: entries(maps::NETS_V6),
            rules: entries(maps::RULES),
        }
    }

    fn max_entries(&self, name: &str) -> Option<u32> {
        Some(match name {
            maps::HOST_SEEDS_V4 => self.seeds_v4 * GENERATIONS,
            maps::HOSTS_V4 => self.slots_v4 * GENERATIONS,
            maps::HOST_SEEDS_V6 => self.seeds_v6 * GENERATIONS,
            maps::HOSTS_V6 => self.slots_v6 * GENERATIONS,
            maps::NETS_V4 => self.nets_v4,
            maps::NETS_V6 => self.nets_v6,
            maps::RULES => self.rules,
            _ => return None,
        })
    }
}

/// Which programs to verify. Verification is most of the time a load takes, so the agent
/// verifies only the one it attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Programs {
    Xdp,
    Tc,
    Both,
}

/// The state maps: flows, fragments, counters and the drop events' maps.
pub struct StateMaps {
    pub(super) flows: Map,
    pub(super) frags: Map,
    pub counters: Counters,
    /// The drop events' ring buffer, budget and counters, only pinned here: the agent opens
    /// them from their pins.
    pub(super) events: [(&'static str, Map); 3],
}

impl StateMaps {
    pub(super) fn event_map(&mut self, name: &'static str) -> Result<&mut Map, DatapathError> {
        self.events
            .iter_mut()
            .find(|(n, _)| *n == name)
            .map(|(_, map)| map)
            .ok_or(DatapathError::Missing(name))
    }
}

/// A loaded object: verified programs, new policy maps (ready for [`PolicyMaps::install`])
/// and the state maps.
pub struct Datapath {
    pub(super) ebpf: Ebpf,
    pub policy: PolicyMaps,
    pub state: StateMaps,
    pub(super) id: String,
}

impl Datapath {
    /// Loads `object` with policy maps of `capacity` and verifies `programs`. With `reuse`, the
    /// state maps are the instance's pinned ones (check their layout first,
    /// [`Pins::check_state_layout`]); otherwise they are new. `trace` records each verdict in
    /// `LAST_VERDICT`, for tests.
    pub fn load(
        object: &[u8],
        capacity: &Capacity,
        flow_table_size: u32,
        programs: Programs,
        trace: bool,
        reuse: Option<&Pins>,
    ) -> Result<Datapath, DatapathError> {
        let mut loader = EbpfLoader::new();
        if trace {
            // Otherwise the object's own value stands (0 in the built-in object).
            loader.override_global(maps::TRACE_GLOBAL, &1u8, true);
        }
        if !coarse_clock() {
            loader.override_global(maps::COARSE_CLOCK_GLOBAL, &0u8, true);
        }
        loader
            .map_max_entries(maps::FLOWS, flow_table_size)
            .map_max_entries(maps::FRAGS, DEFAULT_FRAGS);
        for name in maps::ALL {
            if let Some(entries) = capacity.max_entries(name) {
                loader.map_max_entries(name, entries);
            }
        }
        // Only pins that exist: a state map an older object lacked is created here and pinned
        // with the rest after the hand-over, so a failed one leaves no orphan pinned.
        let state_pins: Vec<_> = reuse
            .map(|pins| {
                maps::STATE
                    .iter()
                    .map(|&name| (name, pins.map(name)))
                    .filter(|(_, path)| path.exists())
                    .collect()
            })
            .unwrap_or_default();
        for (name, path) in &state_pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object)?;
        if matches!(programs, Programs::Xdp | Programs::Both) {
            xdp(&mut ebpf)?.load()?;
        }
        if matches!(programs, Programs::Tc | Programs::Both) {
            tc(&mut ebpf)?.load()?;
        }
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::Missing(name));
        let policy = PolicyMaps::open(&mut take)?;
        let state = StateMaps {
            flows: take(maps::FLOWS)?,
            frags: take(maps::FRAGS)?,
            counters: Counters::open(&mut take)?,
            events: [
                (maps::EVENTS, take(maps::EVENTS)?),
                (maps::EVENT_BUDGET, take(maps::EVENT_BUDGET)?),
                (maps::EVENT_STATS, take(maps::EVENT_STATS)?),
            ],
        };
        Ok(Datapath {
            ebpf,
            policy,
            state,
            id: object_id(object),
        })
    }

    /// [`Datapath::load`] of the built-in object with new state maps.
    pub fn load_fresh(
        capacity: &Capacity,
        flow_table_size: u32,
        programs: Programs,
        trace: bool,
    ) -> Result<Datapath, DatapathError> {
        Datapath::load(OBJECT, capacity, flow_table_size, programs, trace, None)
    }

    /// The id of the object this datapath was loaded from ([`object_id`]).
    pub fn object_id(&self) -> &str {
        &self.id
    }

    pub(super) fn xdp_mut(&mut self) -> Result<&mut Xdp, DatapathError> {
        xdp(&mut self.ebpf)
    }

    pub(super) fn tc_mut(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        tc(&mut self.ebpf)
    }
}

fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    let program = ebpf
        .program_mut(maps::XDP_PROGRAM)
        .ok_or(DatapathError::Missing(maps::XDP_PROGRAM))?;
    Ok(program.try_into()?)
}

fn tc(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DatapathError> {
    let program = ebpf
        .program_mut(maps::TC_PROGRAM)
        .ok_or(DatapathError::Missing(maps::TC_PROGRAM))?;
    Ok(program.try_into()?)
}

/// The `MapData` inside any of the map kinds the object declares.
pub(super) fn data(map: &Map) -> Result<&MapData, DatapathError> {
    match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::RingBuf(d) => Ok(d),
        other => Err(DatapathError::Pins(format!(
            "a map of an unexpected kind ({other:?})"
        ))),
    }
}

impl Datapath {
    /// The policy maps and counters, for an agent that keeps them once the programs are
    /// attached and pinned: the links hold the programs from then on.
    pub fn into_parts(self) -> (PolicyMaps, Counters) {
        (self.policy, self.state.counters)
    }
}

impl Datapath {
    /// A new datapath holding `compiled` (sized for it), as the agent loads one, but attached
    /// nowhere and pinned nowhere: for tests and benches.
    pub fn with_policy(
        compiled: &Compiled,
        flow_table_size: u32,
        programs: Programs,
        trace: bool,
    ) -> Result<Datapath, DatapathError> {
        let mut datapath = Datapath::load_fresh(
            &Capacity::for_policy(compiled),
            flow_table_size,
            programs,
            trace,
        )?;
        datapath.policy.install(compiled)?;
        Ok(datapath)
    }

    /// Instructions the verifier processed for the XDP program, where the kernel says.
    pub fn xdp_verified_instructions(&mut self) -> Option<u32> {
        self.xdp_mut()
            .ok()
            .and_then(|p| p.info().ok())
            .and_then(|info| info.verified_instruction_count())
    }
}

/// Whether XDP and TC programs may call `bpf_ktime_get_coarse_ns` (Linux 5.11 and later, and
/// kernels that backported it): probed by loading a program that calls it, not read from the
/// version. A failed probe counts as no, which costs a finer clock, never a refused load.
fn coarse_clock() -> bool {
    use aya::{
        programs::ProgramType,
        sys::{is_helper_supported, BpfHelper},
    };
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBED.get_or_init(|| {
        let supported = [ProgramType::Xdp, ProgramType::SchedClassifier].iter().all(|&kind| {
            is_helper_supported(kind, BpfHelper::BPF_FUNC_ktime_get_coarse_ns).unwrap_or(false)
        });
        if !supported {
            tracing::info!("this kernel has no bpf_ktime_get_coarse_ns (Linux 5.11): flows are timed with bpf_ktime_get_ns");
        }
        supported
    })
}
