//! The maps, declared once. Sizes here are defaults: the loader sets them from the policy.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use director_fw_common::{
    config::GENERATIONS,
    events::{EVENTS_BYTES, EVENT_STATS_SLOTS},
    interfaces::{InterfaceRows, INTERFACE_COUNTERS},
    maps::{DEFAULT_FLOWS, DEFAULT_FRAGS, DEFAULT_NETS, DEFAULT_RULE_ENTRIES},
    verdict::COUNTER_SLOTS,
    Config, Counter, FlowKey, FlowState, FragKey, FragState, HostV4, HostV6, RuleKey, PORT_SLOTS,
};

#[map(name = "ACTIVE")]
pub static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);
#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(GENERATIONS, 0);

// The loader sizes the host tables to the policy. The agent writes them through mmap.
#[map(name = "HOST_SEEDS_V4")]
pub static HOST_SEEDS_V4: Array<u32> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map(name = "HOSTS_V4")]
pub static HOSTS_V4: Array<HostV4> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map(name = "HOST_SEEDS_V6")]
pub static HOST_SEEDS_V6: Array<u32> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map(name = "HOSTS_V6")]
pub static HOSTS_V6: Array<HostV6> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map(name = "NETS_V4")]
pub static NETS_V4: LpmTrie<[u32; 2], u32> = LpmTrie::with_max_entries(DEFAULT_NETS, 0);
#[map(name = "NETS_V6")]
pub static NETS_V6: LpmTrie<[u32; 5], u32> = LpmTrie::with_max_entries(DEFAULT_NETS, 0);

#[map(name = "PORTS")]
pub static PORTS: Array<u32> = Array::with_max_entries(PORT_SLOTS, BPF_F_MMAPABLE);
#[map(name = "RULES")]
pub static RULES: HashMap<RuleKey, u32> = HashMap::with_max_entries(DEFAULT_RULE_ENTRIES, 0);

#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(DEFAULT_FLOWS, 0);
#[map(name = "FRAGS")]
pub static FRAGS: LruHashMap<FragKey, FragState> = LruHashMap::with_max_entries(DEFAULT_FRAGS, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);
#[map(name = "IFACE_COUNTERS")]
pub static IFACE_COUNTERS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(INTERFACE_COUNTERS, 0);
#[map(name = "IFACE_ROWS")]
pub static IFACE_ROWS: Array<InterfaceRows> = Array::with_max_entries(1, 0);
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "EVENT_BUDGET")]
pub static EVENT_BUDGET: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "EVENT_STATS")]
pub static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_STATS_SLOTS, 0);

#[map(name = "LAST_VERDICT")]
pub static LAST_VERDICT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
