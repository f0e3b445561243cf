//! The single `CONFIG` entry: options and role masks of the active policy.

use crate::TableMasks;

/// Options and role masks of one policy generation. `CONFIG` holds one per generation and
/// `ACTIVE` says which one the kernel uses: the agent writes a whole generation, then flips
/// `ACTIVE` with one word, so a packet sees one policy or the other, never a mix. An all-zero
/// `Config` protects nothing, so a freshly loaded program passes everything until a policy
/// is installed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Roles used as the `to` of some rule: an address with one of them is protected.
    pub to_roles: u32,
    /// Roles used as the `from` of some rule; other role bits are masked off source lookups.
    pub from_roles: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// This entry's index in `CONFIG`: rule keys, prefix keys and the `PORTS` index carry it.
    pub generation: u32,
    /// Sizes of the host tables (`HOSTS_V4`, `HOSTS_V6` and their seeds).
    pub hosts_v4: TableMasks,
    pub hosts_v6: TableMasks,
    pub tcp_timeout_ns: u64,
    pub tcp_closing_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    pub icmp_timeout_ns: u64,
    pub fragment_timeout_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Config>() == 88);

/// Drop packets to unprotected addresses instead of passing them.
pub const FLAG_UNPROTECTED_DROP: u32 = 1 << 0;
/// Drop ICMP echo requests to protected addresses.
pub const FLAG_ICMP_ECHO_DENY: u32 = 1 << 1;
/// Count would-be drops, drop nothing.
pub const FLAG_AUDIT: u32 = 1 << 2;
/// `NETS_V4` has entries: look there when an address is not in `HOSTS_V4`.
pub const FLAG_NETS_V4: u32 = 1 << 3;
/// `NETS_V6` has entries: look there when an address is not in `HOSTS_V6`.
pub const FLAG_NETS_V6: u32 = 1 << 4;

/// Policy generations: the one the kernel reads, and the one the agent writes next.
pub const GENERATIONS: u32 = 2;

pub const NS_PER_SEC: u64 = 1_000_000_000;
/// A flow whose TCP connection was reset or closed in both directions lingers this long, so
/// that the last ACK and retransmitted FINs still pass.
pub const TCP_CLOSING_TIMEOUT_SECS: u64 = 10;
pub const ICMP_TIMEOUT_SECS: u64 = 30;
pub const FRAGMENT_TIMEOUT_SECS: u64 = 30;
