//! The cost floors `cargo xtask bench` measures director-fw against, in the same run:
//!
//! - F0 (`floor_parse`): parse Ethernet, IPv4 and the TCP/UDP header with the same checks
//!   director-fw makes (header bounds, IHL, total length, fragment offset, TCP data offset),
//!   then pass. The least any filter that reads ports can cost.
//! - F1 (`floor_lookup`): F0, then one exact-match hash lookup of the destination address
//!   (`DSTS`, filled with 10,000 entries by the bench) and one per-CPU counter increment. The
//!   least a filter that consults a table and counts can cost.
//!
//! The lab throughput bench's traffic source, sink and XDP_DROP floor live in [`lab`].
#![no_std]
#![no_main]

mod lab;

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};

/// Room for the 10,000 entries the bench writes (the kernel rounds the buckets up to 16,384).
#[map(name = "DSTS")]
static DSTS: HashMap<u32, u32> = HashMap::with_max_entries(16_384, 0);

/// Slot 0 counts hits, slot 1 misses.
#[map(name = "COUNT")]
static COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const TCP: u8 = 6;
const UDP: u8 = 17;

#[repr(C)]
struct EthHdr {
    _macs: [u8; 12],
    ethertype: u16,
}

#[repr(C)]
struct Ipv4Hdr {
    ver_ihl: u8,
    _tos: u8,
    total: u16,
    _id: u16,
    frag: u16,
    _ttl: u8,
    proto: u8,
    _csum: u16,
    _src: u32,
    dst: u32,
}

#[repr(C)]
struct TcpHdr {
    sport: u16,
    dport: u16,
    _seq: u32,
    _ack: u32,
    doff: u8,
    _flags: u8,
}

#[repr(C)]
struct UdpHdr {
    sport: u16,
    dport: u16,
}

struct Frame {
    start: usize,
    end: usize,
    len: usize,
}

impl Frame {
    fn new(ctx: &XdpContext) -> Frame {
        // As in director-fw: hide `len == end - start` from LLVM, or it drops the pointer
        // comparisons the verifier needs.
        Frame {
            start: ctx.data(),
            end: ctx.data_end(),
            len: core::hint::black_box(ctx.data_end() - ctx.data()),
        }
    }

    /// The header `T` at `off`, checked by comparing pointers.
    #[inline(always)]
    fn header<T>(&self, off: usize) -> Option<&T> {
        let at = self.start + off;
        if at + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: bounds checked above; the headers have alignment 1 or 2 and XDP allows
        // unaligned packet loads.
        Some(unsafe { &*(at as *const T) })
    }
}

enum Parsed {
    /// Not IPv4, or a later fragment: nothing to look at.
    Other,
    /// Destination address (as it lies in the packet) and ports.
    Ported { dst: u32, sport: u16, dport: u16 },
}

/// `None` means malformed.
#[inline(always)]
fn parse(frame: &Frame) -> Option<Parsed> {
    if frame.len < ETH_HLEN {
        return None;
    }
    if u16::from_be(frame.header::<EthHdr>(0)?.ethertype) != ETH_P_IPV4 {
        return Some(Parsed::Other);
    }
    let ip = frame.header::<Ipv4Hdr>(ETH_HLEN)?;
    if ip.ver_ihl >> 4 != 4 {
        return None;
    }
    let hlen = ((ip.ver_ihl & 0x0f) as usize) * 4;
    let total = u16::from_be(ip.total) as usize;
    if hlen < 20 || total < hlen || ETH_HLEN + total > frame.len {
        return None;
    }
    if u16::from_be(ip.frag) & 0x1fff != 0 {
        return Some(Parsed::Other);
    }
    let dst = ip.dst;
    let l4 = ETH_HLEN + hlen;
    let ip_end = ETH_HLEN + total;
    let (sport, dport) = match ip.proto {
        TCP => {
            if l4 + 20 > ip_end {
                return None;
            }
            let tcp = frame.header::<TcpHdr>(l4)?;
            let doff = (tcp.doff >> 4) as usize;
            if doff < 5 || l4 + doff * 4 > ip_end {
                return None;
            }
            (u16::from_be(tcp.sport), u16::from_be(tcp.dport))
        }
        UDP => {
            if l4 + 8 > ip_end {
                return None;
            }
            let udp = frame.header::<UdpHdr>(l4)?;
            (u16::from_be(udp.sport), u16::from_be(udp.dport))
        }
        _ => return Some(Parsed::Other),
    };
    Some(Parsed::Ported { dst, sport, dport })
}

/// Every field read is used, so the compiler cannot drop any of the parsing.
#[inline(always)]
fn action(parsed: &Option<Parsed>) -> u32 {
    match parsed {
        Some(Parsed::Ported { sport, dport, .. }) if *sport == 0 || *dport == 0 => {
            xdp_action::XDP_DROP
        }
        Some(_) => xdp_action::XDP_PASS,
        None => xdp_action::XDP_DROP,
    }
}

/// F0: parse and pass.
#[xdp]
pub fn floor_parse(ctx: XdpContext) -> u32 {
    action(&parse(&Frame::new(&ctx)))
}

/// F1: parse, one hash lookup of the destination, one per-CPU counter increment, pass.
#[xdp]
pub fn floor_lookup(ctx: XdpContext) -> u32 {
    let parsed = parse(&Frame::new(&ctx));
    if let Some(Parsed::Ported { dst, .. }) = &parsed {
        let slot = if DSTS.get_ptr(dst).is_some() { 0 } else { 1 };
        if let Some(count) = COUNT.get_ptr_mut(slot) {
            // SAFETY: a per-CPU slot, and a program does not migrate between CPUs mid-run.
            unsafe { *count += 1 };
        }
    }
    action(&parsed)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
