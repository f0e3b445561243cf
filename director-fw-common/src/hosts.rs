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

/// Sizes of a host table, as index masks: buckets and slots are powers of two.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableMasks {
    pub buckets: u32,
    pub slots: u32,
}

/// A 64-bit mixer (xor-shift, multiply, xor-shift): every input bit reaches the low bits that
/// index the tables.
#[inline(always)]
pub fn mix(x: u64) -> u64 {
    let x = (x ^ (x >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    x ^ (x >> 32)
}

/// The 64-bit key of an IPv4 address.
#[inline(always)]
pub fn key_v4(addr: u32) -> u64 {
    u64::from(addr)
}

/// The 64-bit key of an IPv6 address: its two halves, one mixed, folded.
#[inline(always)]
pub fn key_v6(addr: &[u32; 4]) -> u64 {
    let high = (u64::from(addr[1]) << 32) | u64::from(addr[0]);
    let low = (u64::from(addr[3]) << 32) | u64::from(addr[2]);
    high ^ mix(low)
}

/// The bucket of a key; its seed is `seeds[bucket]`.
#[inline(always)]
pub fn bucket(key: u64, masks: &TableMasks) -> u32 {
    (mix(key) as u32) & masks.buckets
}

/// The slot of a key, given its bucket's seed.
#[inline(always)]
pub fn slot(key: u64, seed: u32, masks: &TableMasks) -> u32 {
    let salt = u64::from(seed)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mix(key ^ salt) as u32) & masks.slots
}
