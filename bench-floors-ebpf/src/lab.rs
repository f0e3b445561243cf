//! The programs of the lab throughput bench (`director-fw/benches/lab.rs`):
//!
//! - `lab_gen`: the traffic source. The bench runs it with BPF_PROG_RUN in live-frames mode
//!   on the sending host's veth; it rewrites the whole frame (Ethernet, IPv4, TCP, both
//!   checksums) and returns XDP_TX, so every run sends one 64-byte frame to the gateway.
//!   Frame data persists between runs and the gateway rewrites MACs and TTL in place, so
//!   nothing of the previous frame is trusted. A per-CPU sequence number picks, per packet,
//!   an allowed or a denied packet (`deny_share` in 1/256, spread evenly) and, per kind, the
//!   next source address and port of a cycle (`2^hosts_log2` hosts times `2^ports_log2`
//!   ports).
//! - `lab_sink`: on the receiving host's veth. Counts IPv4 frames by TCP destination port
//!   (allowed port, denied port, other) and drops them, so the host's stack costs nothing and
//!   sends nothing back; everything else (ARP) passes.
//! - `lab_drop`: XDP_DROP, the floor of any XDP filter.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// What the source sends. Shared byte for byte with the bench (`GenConfig` there).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GenConfig {
    /// The gateway's MAC on the sender's segment.
    pub dst_mac: [u8; 6],
    /// The sender's own MAC.
    pub src_mac: [u8; 6],
    /// Denied packets per 256 packets: 0 = all allowed, 256 = all denied.
    pub deny_share: u32,
    /// Destination address, host byte order.
    pub dst: u32,
    pub allow: Kind,
    pub deny: Kind,
}

/// One kind of packet: sources `base + (k mod 2^hosts_log2)`, source port
/// `1024 + (k / 2^hosts_log2) mod 2^ports_log2`, for the kind's k-th packet.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Kind {
    /// First source address, host byte order.
    pub base: u32,
    pub hosts_log2: u32,
    pub ports_log2: u32,
    pub dport: u16,
    /// TCP flags (SYN 0x02, ACK 0x10).
    pub flags: u8,
    pub _pad: u8,
}

#[map(name = "GEN_CONFIG")]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

/// Slot 0: sequence number; 1: allowed packets made; 2: denied packets made.
#[map(name = "GEN_COUNT")]
static GEN_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

/// Slot 0: frames to the allowed port; 1: to the denied port; 2: other IPv4.
#[map(name = "SINK_COUNT")]
static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

const HEADERS: usize = 14 + 20 + 20;
const TCP_PROTO: u16 = 6;
const TTL: u16 = 64;

/// One's-complement sum of 16-bit words, folded.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[inline(always)]
fn put16(at: usize, value: u16) {
    // SAFETY: the caller checked `at + 2` against the end of the frame; x86 and XDP allow
    // unaligned packet stores.
    unsafe { (at as *mut [u8; 2]).write_unaligned(value.to_be_bytes()) }
}

#[inline(always)]
fn put32(at: usize, value: u32) {
    // SAFETY: as in put16.
    unsafe { (at as *mut [u8; 4]).write_unaligned(value.to_be_bytes()) }
}

#[inline(always)]
fn bump(slot: u32) -> u64 {
    match GEN_COUNT.get_ptr_mut(slot) {
        Some(count) => {
            // SAFETY: a per-CPU slot; the program runs with migration and BHs disabled.
            unsafe {
                let n = *count;
                *count = n + 1;
                n
            }
        }
        None => 0,
    }
}

#[xdp]
pub fn lab_gen(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + HEADERS > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let Some(cfg) = GEN_CONFIG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let n = bump(0);
    let share = u64::from(cfg.deny_share);
    let denied = ((n + 1) * share) >> 8 != (n * share) >> 8;
    let (kind, k) = if denied {
        (&cfg.deny, bump(2))
    } else {
        (&cfg.allow, bump(1))
    };
    let hosts_log2 = kind.hosts_log2 & 31;
    let host = (k & ((1u64 << hosts_log2) - 1)) as u32;
    let port = ((k >> hosts_log2) & ((1u64 << (kind.ports_log2 & 15)) - 1)) as u16;
    let src = kind.base.wrapping_add(host);
    let sport = 1024 + port;
    let (dst, dport, flags) = (cfg.dst, kind.dport, kind.flags);
    let (seq, ack): (u32, u32) = if flags & 0x10 != 0 { (1, 1) } else { (1, 0) };
    let id = n as u16;

    // Ethernet
    // SAFETY: 12 bytes at the start of a frame of at least HEADERS bytes.
    unsafe {
        (start as *mut [u8; 6]).write_unaligned(cfg.dst_mac);
        ((start + 6) as *mut [u8; 6]).write_unaligned(cfg.src_mac);
    }
    put16(start + 12, 0x0800);

    // IPv4: version 4, IHL 5, total 40, DF, TTL 64, TCP.
    let ip = start + 14;
    let words = [
        0x4500u16,
        40,
        id,
        0x4000,
        (TTL << 8) | TCP_PROTO,
        (src >> 16) as u16,
        src as u16,
        (dst >> 16) as u16,
        dst as u16,
    ];
    let mut sum = 0u32;
    for w in words {
        sum += u32::from(w);
    }
    put16(ip, 0x4500);
    put16(ip + 2, 40);
    put16(ip + 4, id);
    put16(ip + 6, 0x4000);
    put16(ip + 8, (TTL << 8) | TCP_PROTO);
    put16(ip + 10, !fold(sum));
    put32(ip + 12, src);
    put32(ip + 16, dst);

    // TCP: 20 bytes, no options, window 64240; the checksum covers the pseudo-header.
    let tcp = ip + 20;
    let doff_flags = 0x5000u16 | u16::from(flags);
    let window = 64240u16;
    let mut sum = u32::from(TCP_PROTO) + 20;
    for w in [
        (src >> 16) as u16,
        src as u16,
        (dst >> 16) as u16,
        dst as u16,
        sport,
        dport,
        (seq >> 16) as u16,
        seq as u16,
        (ack >> 16) as u16,
        ack as u16,
        doff_flags,
        window,
    ] {
        sum += u32::from(w);
    }
    put16(tcp, sport);
    put16(tcp + 2, dport);
    put32(tcp + 4, seq);
    put32(tcp + 8, ack);
    put16(tcp + 12, doff_flags);
    put16(tcp + 14, window);
    put16(tcp + 16, !fold(sum));
    put16(tcp + 18, 0);
    xdp_action::XDP_TX
}

#[xdp]
pub fn lab_sink(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + HEADERS > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: HEADERS bytes are in the frame (checked above).
    let (ethertype, ver_ihl, proto) = unsafe {
        (
            u16::from_be_bytes(*((start + 12) as *const [u8; 2])),
            *((start + 14) as *const u8),
            *((start + 23) as *const u8),
        )
    };
    if ethertype != 0x0800 {
        return xdp_action::XDP_PASS;
    }
    let slot = if ver_ihl == 0x45 && u16::from(proto) == TCP_PROTO {
        // SAFETY: as above; IHL 5 puts the TCP destination port at 36..38.
        let dport = u16::from_be_bytes(unsafe { *((start + 36) as *const [u8; 2]) });
        match GEN_CONFIG.get(0) {
            Some(cfg) if dport == cfg.allow.dport => 0,
            Some(cfg) if dport == cfg.deny.dport => 1,
            _ => 2,
        }
    } else {
        2
    };
    if let Some(count) = SINK_COUNT.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, see bump.
        unsafe { *count += 1 };
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn lab_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}
