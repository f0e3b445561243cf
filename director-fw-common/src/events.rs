//! Drop events: a sample of the drops, sent by the kernel through the `EVENTS` ring buffer.
//! Each CPU may send as many as its budget in `EVENT_BUDGET` allows, which the agent refills
//! every second from the rate it is set to; a drop beyond the budget is counted as suppressed
//! in `EVENT_STATS`, never silently lost. Only drops pay for any of this.

/// One dropped packet (or, in audit mode, one that would have been). Addresses are as in
/// the packet (network byte order in memory; IPv4 in the first word); ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC, in nanoseconds.
    pub time_ns: u64,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// The interface the packet came in on.
    pub ifindex: u32,
    pub src_roles: u32,
    pub dst_roles: u32,
    pub sport: u16,
    pub dport: u16,
    /// The outer VLAN id of the frame, 0 for none.
    pub vlan: u16,
    pub proto: u8,
    /// 4 or 6; 0 when the frame was too malformed to tell.
    pub family: u8,
    /// A `DropReason`.
    pub reason: u8,
    /// 1 when audit mode passed the packet.
    pub audit: u8,
    pub _pad: [u8; 10],
}
const _: () = assert!(core::mem::size_of::<DropEvent>() == 72);

/// Bytes of the `EVENTS` ring buffer: 3,276 events of 72 bytes with their 8-byte record
/// headers, a few seconds at the default rate.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Slots of the per-CPU `EVENT_STATS` counters.
pub const EVENTS_SENT: u32 = 0;
pub const EVENTS_SUPPRESSED: u32 = 1;
/// The ring buffer was full: the agent is not reading.
pub const EVENTS_LOST: u32 = 2;
pub const EVENT_STATS_SLOTS: u32 = 3;

/// Events per second across all CPUs, unless `run --drop-events` or `drops --rate` says
/// otherwise.
pub const DEFAULT_EVENT_RATE: u32 = 1000;
/// The most a rate may be: the agent reads every event it lets through.
pub const MAX_EVENT_RATE: u32 = 100_000;
