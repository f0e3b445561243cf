//! Map names, as the loader finds them in the object and as they are pinned under
//! `/sys/fs/bpf/director-fw/INSTANCE/maps/`. Kernel names are limited to 15 characters.

/// `Array<u32>`, one entry: the policy generation in force, an index into [`CONFIG`].
pub const ACTIVE: &str = "ACTIVE";
/// `Array<Config>`, one entry per generation: options, role masks and table layout.
pub const CONFIG: &str = "CONFIG";
/// `Array<u32>`: the seed of each bucket of the IPv4 host table (see [`crate::hosts`]), one
/// half per generation. Memory-mappable, like every host table and `PORTS`, so the agent
/// writes a generation's half with a copy instead of a syscall per entry.
pub const HOST_SEEDS_V4: &str = "HOST_SEEDS_V4";
/// `Array<HostV4>`: the slots of the IPv4 host table: address and role bits.
pub const HOSTS_V4: &str = "HOSTS_V4";
/// `Array<u32>`: the seed of each bucket of the IPv6 host table.
pub const HOST_SEEDS_V6: &str = "HOST_SEEDS_V6";
/// `Array<HostV6>`: the slots of the IPv6 host table.
pub const HOSTS_V6: &str = "HOSTS_V6";
/// `LpmTrie<[u32; 2], u32>`: (generation, IPv4 prefix) -> role bits of the prefix and every
/// prefix covering it. The generation word is always matched whole (prefix length 32 + n).
pub const NETS_V4: &str = "NETS_V4";
/// `LpmTrie<[u32; 5], u32>`: the same for IPv6.
pub const NETS_V6: &str = "NETS_V6";
/// `Array<u32>`, [`crate::PORT_SLOTS`] entries indexed by [`crate::port_slot`]: the role bits
/// of the destinations that any rule opens this protocol and port on.
pub const PORTS: &str = "PORTS";
/// `HashMap<RuleKey, u32>`: the counter slot of the rule that passes this
/// source/destination/port combination.
pub const RULES: &str = "RULES";
/// `LruHashMap<FlowKey, FlowState>`: tracked flows, one entry for both directions.
pub const FLOWS: &str = "FLOWS";
/// `LruHashMap<FragKey, FragState>`: first fragments that passed.
pub const FRAGS: &str = "FRAGS";
/// `PerCpuArray<Counter>`: packets and bytes per counter slot (see [`crate::verdict`]), of
/// the rule slots only: verdicts without a rule count per interface, in [`IFACE_COUNTERS`].
pub const COUNTERS: &str = "COUNTERS";
/// `PerCpuArray<Counter>`: packets and bytes per interface row and verdict (see
/// [`crate::interfaces`]).
pub const IFACE_COUNTERS: &str = "IFACE_COUNTERS";
/// `Array<InterfaceRows>`, one entry: the counter row of each ingress ifindex.
pub const IFACE_ROWS: &str = "IFACE_ROWS";
/// `RingBuf` of [`crate::DropEvent`]s.
pub const EVENTS: &str = "EVENTS";
/// `PerCpuArray<u32>`, one entry: drop events each CPU may still send until the agent refills it.
pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
/// `PerCpuArray<u64>`: drop events sent, suppressed and lost (see [`crate::events`]).
pub const EVENT_STATS: &str = "EVENT_STATS";
/// `PerCpuArray<u32>`, one entry: the counter slot of the last verdict. Written only when
/// the program is loaded with the `TRACE` global set, for tests.
pub const LAST_VERDICT: &str = "LAST_VERDICT";

/// Every map, in the order the loader pins them. The object has two more that are never
/// pinned, because they belong to one program and go with it: aya-log's `AYA_LOGS` ring buffer
/// and `RARE_LOGGED`, when each rare event was last logged (see the eBPF crate's `rare`).
pub const ALL: [&str; 19] = [
    ACTIVE,
    CONFIG,
    HOST_SEEDS_V4,
    HOSTS_V4,
    HOST_SEEDS_V6,
    HOSTS_V6,
    NETS_V4,
    NETS_V6,
    PORTS,
    RULES,
    FLOWS,
    FRAGS,
    COUNTERS,
    IFACE_COUNTERS,
    IFACE_ROWS,
    EVENTS,
    EVENT_BUDGET,
    EVENT_STATS,
    LAST_VERDICT,
];

/// Maps that hold what the datapath has learnt rather than what the policy says: they are
/// kept when a new program or a resized policy takes over (adoption, upgrade, reload).
pub const STATE: [&str; 8] = [
    FLOWS,
    FRAGS,
    COUNTERS,
    IFACE_COUNTERS,
    IFACE_ROWS,
    EVENTS,
    EVENT_BUDGET,
    EVENT_STATS,
];

/// Name of the `.rodata` global that turns on [`LAST_VERDICT`].
pub const TRACE_GLOBAL: &str = "TRACE";
/// Name of the `.rodata` global that picks the flow clock: 1 (the object's value) for
/// `bpf_ktime_get_coarse_ns`, 0 for `bpf_ktime_get_ns` where the kernel lacks the former.
pub const COARSE_CLOCK_GLOBAL: &str = "COARSE_CLOCK";

/// Program names in the object.
pub const XDP_PROGRAM: &str = "director_fw_xdp";
pub const TC_PROGRAM: &str = "director_fw_tc";

/// Default sizes; the loader overrides them from the policy's options.
pub const DEFAULT_NETS: u32 = 16_384;
pub const DEFAULT_RULE_ENTRIES: u32 = 65_536;
pub const DEFAULT_FLOWS: u32 = 262_144;
pub const DEFAULT_FRAGS: u32 = 8_192;
