//! Loading the kernel object, writing a compiled policy into its maps, attaching it to
//! interfaces, and running it on test packets (BPF_PROG_TEST_RUN).

use std::{path::Path, time::Duration};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{
        tc::TcAttachType, ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp, XdpMode,
    },
    util::nr_cpus,
    Ebpf, EbpfLoader,
};
use director_fw_common::{
    maps::{self, DEFAULT_FRAGS, DEFAULT_NETS, DEFAULT_RULE_ENTRIES},
    Config, Counter, FlowKey, FlowState, RuleKey, Verdict,
};

use crate::{compile::Compiled, host_table::HostTable, instance::Instance, policy::Policy};

/// The kernel object, built by this crate's build script.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/director-fw.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the eBPF object: {0}")]
    Ebpf(#[from] aya::EbpfError),
    #[error("eBPF program: {0}")]
    Program(#[from] ProgramError),
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("pinning: {0}")]
    Pin(#[from] aya::pin::PinError),
    #[error("the eBPF object has no map or program {0:?}; it does not match this agent")]
    Missing(&'static str),
    #[error("cannot attach to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: ProgramError,
    },
    #[error("no network interface {0:?} in this network namespace")]
    NoInterface(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// Looks the name up in the caller's network namespace (unlike /sys/class/net, which
/// belongs to the mount namespace).
fn interface_exists(iface: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// Native (driver) XDP; falls back to generic XDP where the driver has no XDP support.
    Xdp,
    /// Generic (skb) XDP.
    XdpGeneric,
    /// TC clsact ingress (TCX).
    Tc,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Xdp => "xdp",
            AttachMode::XdpGeneric => "xdp-generic",
            AttachMode::Tc => "tc",
        }
    }
}

/// Map sizes for a policy: room to double the policy's entries before a map is full.
fn size(needed: usize, minimum: u32) -> u32 {
    u32::try_from(needed.saturating_mul(2))
        .unwrap_or(u32::MAX)
        .max(minimum)
}

pub struct Datapath {
    ebpf: Ebpf,
}

impl Datapath {
    /// Loads the object sized for `compiled`, writes the policy, and loads (verifies) both
    /// programs. `trace` records each verdict in `LAST_VERDICT` for tests.
    pub fn load(policy: &Policy, compiled: &Compiled, trace: bool) -> Result<Datapath, LoadError> {
        let mut datapath = Datapath::open(policy, compiled, trace)?;
        datapath.xdp_mut()?.load()?;
        datapath.tc_mut()?.load()?;
        Ok(datapath)
    }

    /// Like [`Datapath::load`], but verifies only the program that `mode` attaches: program
    /// verification is most of the time an agent takes to start.
    pub fn load_for(
        policy: &Policy,
        compiled: &Compiled,
        mode: AttachMode,
    ) -> Result<Datapath, LoadError> {
        let mut datapath = Datapath::open(policy, compiled, false)?;
        match mode {
            AttachMode::Xdp | AttachMode::XdpGeneric => datapath.xdp_mut()?.load()?,
            AttachMode::Tc => datapath.tc_mut()?.load()?,
        }
        Ok(datapath)
    }

    /// Creates the maps and writes the policy; loads no program.
    fn open(policy: &Policy, compiled: &Compiled, trace: bool) -> Result<Datapath, LoadError> {
        let trace = u8::from(trace);
        let rule_entries = compiled.rules.len();
        let (t4, t6) = (&compiled.hosts_v4, &compiled.hosts_v6);
        // The tables' sizes are powers of two up to 2^25 or so, well within u32.
        let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let ebpf = EbpfLoader::new()
            .override_global(maps::TRACE_GLOBAL, &trace, true)
            .map_max_entries(maps::FLOWS, policy.options.flow_table_size)
            .map_max_entries(maps::FRAGS, DEFAULT_FRAGS)
            .map_max_entries(maps::HOST_SEEDS_V4, len(t4.seeds.len()))
            .map_max_entries(maps::HOSTS_V4, len(t4.slots.len()))
            .map_max_entries(maps::HOST_SEEDS_V6, len(t6.seeds.len()))
            .map_max_entries(maps::HOSTS_V6, len(t6.slots.len()))
            .map_max_entries(maps::NETS_V4, size(compiled.nets_v4.len(), DEFAULT_NETS))
            .map_max_entries(maps::NETS_V6, size(compiled.nets_v6.len(), DEFAULT_NETS))
            .map_max_entries(maps::RULES, size(rule_entries, DEFAULT_RULE_ENTRIES))
            .load(OBJECT)?;
        let mut datapath = Datapath { ebpf };
        datapath.write_policy(compiled)?;
        Ok(datapath)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, LoadError> {
        self.ebpf.map_mut(name).ok_or(LoadError::Missing(name))
    }

    fn map(&self, name: &'static str) -> Result<&Map, LoadError> {
        self.ebpf.map(name).ok_or(LoadError::Missing(name))
    }

    /// Writes every entry first and the configuration last: until `CONFIG` names the
    /// protected roles, the new entries protect nothing, so no packet sees half a policy.
    pub fn write_policy(&mut self, compiled: &Compiled) -> Result<(), LoadError> {
        self.write_host_table(maps::HOST_SEEDS_V4, maps::HOSTS_V4, &compiled.hosts_v4)?;
        self.write_host_table(maps::HOST_SEEDS_V6, maps::HOSTS_V6, &compiled.hosts_v6)?;
        let mut nets: LpmTrie<_, u32, u32> = LpmTrie::try_from(self.map_mut(maps::NETS_V4)?)?;
        for &(len, addr, roles) in &compiled.nets_v4 {
            nets.insert(&Key::new(len, addr), roles, 0)?;
        }
        let mut nets: LpmTrie<_, [u32; 4], u32> = LpmTrie::try_from(self.map_mut(maps::NETS_V6)?)?;
        for &(len, addr, roles) in &compiled.nets_v6 {
            nets.insert(&Key::new(len, addr), roles, 0)?;
        }
        let mut ports: Array<_, u32> = Array::try_from(self.map_mut(maps::PORTS)?)?;
        for &(slot, roles) in &compiled.ports {
            ports.set(slot, roles, 0)?;
        }
        let mut rules: HashMap<_, RuleKey, u32> = HashMap::try_from(self.map_mut(maps::RULES)?)?;
        for (key, index) in &compiled.rules {
            rules.insert(key, index, 0)?;
        }
        self.set_config(&compiled.config)
    }

    /// Writes the seeds and the used slots; the maps start zeroed, which is what an unused
    /// seed and an empty slot are.
    fn write_host_table<T: aya::Pod + PartialEq + Default>(
        &mut self,
        seeds_map: &'static str,
        slots_map: &'static str,
        table: &HostTable<T>,
    ) -> Result<(), LoadError> {
        let mut seeds: Array<_, u32> = Array::try_from(self.map_mut(seeds_map)?)?;
        for (index, seed) in (0u32..).zip(&table.seeds).filter(|(_, &s)| s != 0) {
            seeds.set(index, seed, 0)?;
        }
        let mut slots: Array<_, T> = Array::try_from(self.map_mut(slots_map)?)?;
        let empty = T::default();
        for (index, slot) in (0u32..).zip(&table.slots).filter(|(_, s)| **s != empty) {
            slots.set(index, slot, 0)?;
        }
        Ok(())
    }

    pub fn set_config(&mut self, config: &Config) -> Result<(), LoadError> {
        let mut array: Array<_, Config> = Array::try_from(self.map_mut(maps::CONFIG)?)?;
        array.set(0, config, 0)?;
        Ok(())
    }

    pub fn xdp_mut(&mut self) -> Result<&mut Xdp, LoadError> {
        let program = self
            .ebpf
            .program_mut(maps::XDP_PROGRAM)
            .ok_or(LoadError::Missing(maps::XDP_PROGRAM))?;
        Ok(program.try_into()?)
    }

    pub fn tc_mut(&mut self) -> Result<&mut SchedClassifier, LoadError> {
        let program = self
            .ebpf
            .program_mut(maps::TC_PROGRAM)
            .ok_or(LoadError::Missing(maps::TC_PROGRAM))?;
        Ok(program.try_into()?)
    }

    /// Attaches to one interface. Native XDP that the driver cannot do falls back to generic
    /// XDP; the returned message says so.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Option<String>, LoadError> {
        if !interface_exists(iface) {
            return Err(LoadError::NoInterface(iface.to_string()));
        }
        let attach_err = |mode: AttachMode, source| LoadError::Attach {
            iface: iface.to_string(),
            mode: mode.name(),
            source,
        };
        match mode {
            AttachMode::Xdp => match self.xdp_mut()?.attach(iface, XdpMode::Driver) {
                Ok(_) => Ok(None),
                Err(native) => {
                    self.xdp_mut()?
                        .attach(iface, XdpMode::Skb)
                        .map_err(|e| attach_err(AttachMode::XdpGeneric, e))?;
                    Ok(Some(format!(
                        "{iface}: native XDP is not available ({native}); attached in generic (skb) mode instead, which is slower. Use --mode tc or a driver with XDP support for line rate."
                    )))
                }
            },
            AttachMode::XdpGeneric => {
                self.xdp_mut()?
                    .attach(iface, XdpMode::Skb)
                    .map_err(|e| attach_err(mode, e))?;
                Ok(None)
            }
            AttachMode::Tc => {
                self.tc_mut()?
                    .attach(iface, TcAttachType::Ingress)
                    .map_err(|e| attach_err(mode, e))?;
                Ok(None)
            }
        }
    }

    /// Pins every map under the instance's directory, so that other commands (`stats`) can
    /// open them.
    pub fn pin_maps(&self, instance: &Instance) -> Result<(), LoadError> {
        let dir = instance.maps_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|err| LoadError::Io(dir.display().to_string(), err))?;
        for name in maps::ALL {
            self.map(name)?.pin(instance.map_pin(name))?;
        }
        Ok(())
    }

    /// Runs the XDP program once on `frame`; returns the XDP action.
    pub fn run_xdp(&self, frame: &[u8]) -> Result<u32, LoadError> {
        Ok(self.test_run_xdp(frame, 1)?.0)
    }

    /// Runs the XDP program `repeat` times; returns the action and the kernel's mean time.
    pub fn test_run_xdp(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration), LoadError> {
        let program: &Xdp = self
            .ebpf
            .program(maps::XDP_PROGRAM)
            .ok_or(LoadError::Missing(maps::XDP_PROGRAM))?
            .try_into()?;
        let result = program.test_run(options(frame, repeat))?;
        Ok((result.return_value, result.duration))
    }

    /// Runs the TC program once on `frame`; returns the TC action.
    pub fn run_tc(&self, frame: &[u8]) -> Result<u32, LoadError> {
        let program: &SchedClassifier = self
            .ebpf
            .program(maps::TC_PROGRAM)
            .ok_or(LoadError::Missing(maps::TC_PROGRAM))?
            .try_into()?;
        Ok(program.test_run(options(frame, 1))?.return_value)
    }

    /// The verdict of the last packet run (needs `trace`); `None` when no packet ran since
    /// [`Datapath::clear_last_verdict`].
    pub fn last_verdict(&self) -> Result<Option<Verdict>, LoadError> {
        let array: PerCpuArray<_, u32> = PerCpuArray::try_from(self.map(maps::LAST_VERDICT)?)?;
        let values = array.get(&0, 0)?;
        Ok(values
            .iter()
            .find(|&&slot| slot != u32::MAX)
            .and_then(|&slot| Verdict::from_slot(slot)))
    }

    pub fn clear_last_verdict(&mut self) -> Result<(), LoadError> {
        let mut array: PerCpuArray<_, u32> =
            PerCpuArray::try_from(self.map_mut(maps::LAST_VERDICT)?)?;
        let cpus = nr_cpus().map_err(|(what, err)| LoadError::Io(what.to_string(), err))?;
        let values = PerCpuValues::try_from(vec![u32::MAX; cpus])
            .map_err(|err| LoadError::Io("per-CPU values".into(), err))?;
        array.set(0, values, 0)?;
        Ok(())
    }

    /// Packets and bytes of one counter slot, summed over CPUs.
    pub fn counter(&self, slot: u32) -> Result<Counter, LoadError> {
        let array: PerCpuArray<_, Counter> = PerCpuArray::try_from(self.map(maps::COUNTERS)?)?;
        Ok(sum(&array.get(&slot, 0)?))
    }

    /// Forgets every tracked flow and fragment.
    pub fn clear_flows(&mut self) -> Result<(), LoadError> {
        let mut flows: HashMap<_, FlowKey, FlowState> =
            HashMap::try_from(self.map_mut(maps::FLOWS)?)?;
        let keys: Vec<FlowKey> = flows.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = flows.remove(&key);
        }
        let mut frags: HashMap<_, director_fw_common::FragKey, director_fw_common::FragState> =
            HashMap::try_from(self.map_mut(maps::FRAGS)?)?;
        let keys: Vec<_> = frags.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = frags.remove(&key);
        }
        Ok(())
    }
}

fn options(frame: &[u8], repeat: u32) -> TestRunOptions<'_> {
    let mut options = TestRunOptions::new();
    options.data_in = Some(frame);
    options.repeat = repeat;
    options
}

pub fn sum(values: &PerCpuValues<Counter>) -> Counter {
    values.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

/// Opens a pinned per-CPU counter map of a running instance.
pub fn pinned_counters(path: &Path) -> Result<PerCpuArray<MapData, Counter>, LoadError> {
    let data = MapData::from_pin(path)?;
    Ok(PerCpuArray::try_from(Map::PerCpuArray(data))?)
}
