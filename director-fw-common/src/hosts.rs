//! Host tables: which roles a host address has, found without a hash map. The agent builds a
//! minimal-collision ("hash and displace") table for the policy's host addresses: a level-1
//! hash picks a bucket, the bucket's seed picks a slot, and no two hosts share a slot. The
//! kernel computes both indices with a few multiplies and reads two arrays, which the verifier
//! inlines; a hash map lookup is a function call that hashes and walks a chain. The slot still
//! holds the address, so any other address misses. Both sides use the functions here, so they
//! cannot disagree on an index.

/// One host in the IPv4 table. An empty slot has `roles == 0`, which no host has.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostV4 {
    /// As it lies in the packet (network byte order in memory).
    pub addr: u32,
    pub roles: u32,
}
const _: () = assert!(core::mem::size_of::<HostV4>() == 8);

/// One host in the IPv6 table. An empty slot has `roles == 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostV6 {
    pub addr: [u32; 4],
    pub roles: u32,
}
const _: () = assert!(core::mem::size_of::<HostV6>() == 20);

/// Where one generation's host table lies in its maps, and its sizes as index masks: buckets
/// and slots are powers of two. Each generation has a half of `HOST_SEEDS_*` and `HOSTS_*`
/// of its own, starting at the bases, so the agent can build the next table while the kernel
/// reads the current one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableMasks {
    pub buckets: u32,
    pub slots: u32,
    pub seed_base: u32,
    pub slot_base: u32,
}
const _: () = assert!(core::mem::size_of::<TableMasks>() == 16);

/// A 64-bit mixer (xor-shift, multiply, xor-shift): every input bit reaches the low bits that
/// index the tables.
#[inline(always)]
pub fn mix(x: u64) -> u64 {
    let x = (x ^ (x >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    x ^ (x >> 32)
}

/// The seed's contribution to a slot index.
#[inline(always)]
fn salt(seed: u32) -> u64 {
    u64::from(seed)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// An address that a host table indexes: its bucket, and its slot for a bucket's seed. Two
/// different addresses get different slots for almost every seed, which is what lets the
/// builder separate them.
pub trait HostAddr {
    fn bucket(&self, masks: &TableMasks) -> u32;
    fn slot(&self, seed: u32, masks: &TableMasks) -> u32;
}

/// An IPv4 address as it lies in the packet.
impl HostAddr for u32 {
    #[inline(always)]
    fn bucket(&self, masks: &TableMasks) -> u32 {
        (mix(u64::from(*self)) as u32) & masks.buckets
    }

    #[inline(always)]
    fn slot(&self, seed: u32, masks: &TableMasks) -> u32 {
        (mix(u64::from(*self) ^ salt(seed)) as u32) & masks.slots
    }
}

/// An IPv6 address as it lies in the packet. Its slot mixes both halves in turn, so it
/// depends on all 128 bits: no fold to 64 bits can make two addresses inseparable.
impl HostAddr for [u32; 4] {
    #[inline(always)]
    fn bucket(&self, masks: &TableMasks) -> u32 {
        let (high, low) = halves(self);
        (mix(high ^ mix(low)) as u32) & masks.buckets
    }

    #[inline(always)]
    fn slot(&self, seed: u32, masks: &TableMasks) -> u32 {
        let (high, low) = halves(self);
        (mix(mix(high ^ salt(seed)) ^ low) as u32) & masks.slots
    }
}

#[inline(always)]
fn halves(addr: &[u32; 4]) -> (u64, u64) {
    (
        (u64::from(addr[1]) << 32) | u64::from(addr[0]),
        (u64::from(addr[3]) << 32) | u64::from(addr[2]),
    )
}
