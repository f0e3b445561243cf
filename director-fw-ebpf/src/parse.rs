//! Parsing, from the Ethernet header down to the L4 header. Every header is read through
//! [`Frame::header`], which checks bounds by comparing pointers (the verifier rejects a length
//! comparison). Consistency checks use `Frame::len`, the whole frame's length, because a TC
//! packet's linear part may be shorter than the packet.

use core::mem::size_of;

use director_fw_common::{proto, FlowKey};

pub const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags skipped; a frame with more is malformed.
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before the L4 header; more is malformed.
pub const MAX_EXT_HEADERS: usize = 6;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;

pub struct Frame {
    pub start: usize,
    /// End of the readable (linear) data.
    pub end: usize,
    /// Length of the whole frame.
    pub len: usize,
}

impl Frame {
    /// The header `T` at `off`, or `Err` when it is not all inside the readable data. Each
    /// header is checked once and its fields read through the one pointer: the verifier
    /// tracks bounds per pointer, and separately computed pointers lose them.
    #[inline(always)]
    pub fn header<T>(&self, off: usize) -> Result<&T, ()> {
        let at = self.start + off;
        if at + size_of::<T>() > self.end {
            return Err(());
        }
        // SAFETY: bounds checked above; every header type has alignment 1 or is only read on
        // architectures where the kernel allows unaligned packet loads.
        Ok(unsafe { &*(at as *const T) })
    }
}

#[repr(C)]
pub struct EthHdr {
    _macs: [u8; 12],
    ethertype: u16,
}

#[repr(C)]
struct VlanHdr {
    tci: u16,
    ethertype: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    ver_ihl: u8,
    _tos: u8,
    total: u16,
    id: u16,
    frag: u16,
    _ttl: u8,
    proto: u8,
    _csum: u16,
    src: u32,
    dst: u32,
}

#[repr(C)]
pub struct Ipv6Hdr {
    ver: u8,
    _flow: [u8; 3],
    payload: u16,
    next: u8,
    _hops: u8,
    src: [u32; 4],
    dst: [u32; 4],
}

#[repr(C)]
struct ExtHdr {
    next: u8,
    len: u8,
}

#[repr(C)]
struct FragHdr {
    next: u8,
    _res: u8,
    field: u16,
    id: u32,
}

#[repr(C)]
struct TcpHdr {
    sport: u16,
    dport: u16,
    _seq: u32,
    _ack: u32,
    doff: u8,
    flags: u8,
}

#[repr(C)]
struct Ports {
    sport: u16,
    dport: u16,
}

#[repr(C)]
struct IcmpHdr {
    ty: u8,
    _code: u8,
    _csum: u16,
    id: u16,
    _seq: u16,
}

/// Where a packet stands among its fragments. A struct, not an enum with data, and with no
/// padding (hence a `u32` kind): every byte of a `Packet` must be written, because a value
/// moved with bytes never written (an enum's unused payload, padding) makes LLVM copy stack
/// slots never stored to, which verifiers before 5.16 refuse to read ("invalid read from
/// stack").
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    kind: u32,
    /// The IP identification; 0 when `kind` is `WHOLE`.
    id: u32,
}

impl Fragment {
    const WHOLE: u32 = 0;
    const FIRST: u32 = 1;
    const LATER: u32 = 2;

    /// Not a fragment.
    pub const NONE: Fragment = Fragment {
        kind: Fragment::WHOLE,
        id: 0,
    };

    /// Offset 0, more fragments follow.
    pub const fn first(id: u32) -> Fragment {
        Fragment {
            kind: Fragment::FIRST,
            id,
        }
    }

    /// Offset > 0: no L4 header here.
    pub const fn later(id: u32) -> Fragment {
        Fragment {
            kind: Fragment::LATER,
            id,
        }
    }

    /// The identification of a first fragment.
    #[inline(always)]
    pub fn first_id(self) -> Option<u32> {
        (self.kind == Fragment::FIRST).then_some(self.id)
    }

    /// The identification of a later fragment.
    #[inline(always)]
    pub fn later_id(self) -> Option<u32> {
        (self.kind == Fragment::LATER).then_some(self.id)
    }
}

/// What the datapath needs to know about an IP packet.
pub struct Packet {
    /// 4 or 6.
    pub family: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub proto: u8,
    pub fragment: Fragment,
    /// Host byte order; 0 when the protocol has no ports.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// Where the L4 header starts, and where the IP packet ends: what [`Packet::quoted`]
    /// needs to read the packet an ICMP error quotes. Only that rare path reads the quoted
    /// packet, so that no other packet pays for it, and it first passes `l4_at` through
    /// [`forget_range`]: the offset differs per VLAN and extension-header path, and the
    /// verifier would otherwise keep the states of those paths apart from here on.
    l4_at: u32,
    ip_end: u32,
}

impl Packet {
    /// Every field written: what a packet starts as before `parse` fills it in.
    pub const EMPTY: Packet = Packet {
        family: 0,
        src: [0; 4],
        dst: [0; 4],
        proto: 0,
        fragment: Fragment::NONE,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        l4_at: 0,
        ip_end: 0,
    };

    /// For an ICMP error, the flow of the packet it quotes, when that is TCP or UDP of the same
    /// family and its ports are present. `frame` is the frame this packet was parsed from.
    #[inline(always)]
    pub fn quoted(&self, frame: &Frame) -> Option<FlowKey> {
        let at = forget_range(self.l4_at as usize);
        quoted_flow(frame, self.family, at, self.ip_end as usize)
    }
}

/// Parses a frame: a packet for IPv4 and IPv6, one of family 0 for anything else, `Err` for
/// a malformed frame. Not an enum that carries the packet, for the reason `Fragment` gives: a
/// non-IP frame's variant would move a packet never written.
#[inline(always)]
pub fn parse(frame: &Frame) -> Result<Packet, ()> {
    if frame.len < ETH_HLEN {
        return Err(());
    }
    let mut ethertype = u16::from_be(frame.header::<EthHdr>(0)?.ethertype);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = u16::from_be(frame.header::<VlanHdr>(off)?.ethertype);
        off += 4;
    }
    match ethertype {
        ETH_P_IPV4 => ipv4(frame, off),
        ETH_P_IPV6 => ipv6(frame, off),
        ETH_P_8021Q | ETH_P_8021AD => Err(()),
        _ => Ok(Packet::EMPTY),
    }
}

/// The id of the frame's outer VLAN tag, 0 for none. Read again for a drop event only, so that
/// no packet pays for it in `parse`.
#[inline(always)]
pub fn outer_vlan(frame: &Frame) -> u16 {
    let Ok(eth) = frame.header::<EthHdr>(0) else {
        return 0;
    };
    let ethertype = u16::from_be(eth.ethertype);
    if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
        return 0;
    }
    frame
        .header::<VlanHdr>(ETH_HLEN)
        .map_or(0, |tag| u16::from_be(tag.tci) & 0x0fff)
}

#[inline(always)]
fn ipv4(frame: &Frame, off: usize) -> Result<Packet, ()> {
    let ip = frame.header::<Ipv4Hdr>(off)?;
    if ip.ver_ihl >> 4 != 4 {
        return Err(());
    }
    let hlen = ((ip.ver_ihl & 0x0f) as usize) * 4;
    if hlen < 20 {
        return Err(());
    }
    let total = u16::from_be(ip.total) as usize;
    if total < hlen || off + total > frame.len {
        return Err(());
    }
    let id = u16::from_be(ip.id) as u32;
    let frag = u16::from_be(ip.frag);
    let fragment = if frag & 0x1fff != 0 {
        Fragment::later(id)
    } else if frag & 0x2000 != 0 {
        Fragment::first(id)
    } else {
        Fragment::NONE
    };
    let mut packet = Packet {
        family: 4,
        src: [ip.src, 0, 0, 0],
        dst: [ip.dst, 0, 0, 0],
        proto: ip.proto,
        fragment,
        l4_at: (off + hlen) as u32,
        ip_end: (off + total) as u32,
        ..Packet::EMPTY
    };
    l4(frame, &mut packet, off + hlen, off + total)?;
    Ok(packet)
}

#[inline(always)]
fn ipv6(frame: &Frame, off: usize) -> Result<Packet, ()> {
    let ip = frame.header::<Ipv6Hdr>(off)?;
    if ip.ver >> 4 != 6 {
        return Err(());
    }
    let ip_end = off + 40 + u16::from_be(ip.payload) as usize;
    if ip_end > frame.len {
        return Err(());
    }
    let mut next = ip.next;
    let mut cur = off + 40;
    let mut fragment = Fragment::NONE;
    for _ in 0..MAX_EXT_HEADERS {
        if next == IPV6_FRAGMENT {
            if cur + 8 > ip_end {
                return Err(());
            }
            let frag = frame.header::<FragHdr>(cur)?;
            let field = u16::from_be(frag.field);
            let id = u32::from_be(frag.id);
            next = frag.next;
            cur = forget_range(cur + 8);
            if field >> 3 != 0 {
                fragment = Fragment::later(id);
                break;
            }
            if field & 1 != 0 {
                fragment = Fragment::first(id);
            }
            continue;
        }
        let ext = match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AUTH => {
                frame.header::<ExtHdr>(cur)?
            }
            _ => break,
        };
        let len = if next == IPV6_AUTH {
            (ext.len as usize + 2) * 4
        } else {
            (ext.len as usize + 1) * 8
        };
        if cur + len > ip_end {
            return Err(());
        }
        next = ext.next;
        cur = forget_range(cur + len);
    }
    if fragment.later_id().is_none() && is_extension_header(next) {
        return Err(());
    }
    let mut packet = Packet {
        family: 6,
        src: ip.src,
        dst: ip.dst,
        proto: next,
        fragment,
        l4_at: cur as u32,
        ip_end: ip_end as u32,
        ..Packet::EMPTY
    };
    l4(frame, &mut packet, cur, ip_end)?;
    Ok(packet)
}

/// No header starts past this offset: 22 bytes of Ethernet and VLAN tags, 40 of IPv6, then
/// [`MAX_EXT_HEADERS`] extension headers of at most 2,048 bytes each, 12,350 in all.
const MAX_HEADER_OFFSET: usize = 0x3fff;

/// `off`, with what the verifier knows of it reduced to `0..=MAX_HEADER_OFFSET`. The verifier
/// tracks each path through the extension headers with the range of offsets that path allows,
/// and cannot merge paths whose ranges differ: 6 headers of 5 kinds made hundreds of thousands
/// of states. A 32-bit read of a 64-bit stack slot is a value it does not track; the mask
/// bounds it at once (a bound check would not bound a copy spilled before it on 5.10), and
/// changes nothing, since no offset reaches `MAX_HEADER_OFFSET`. It costs a store, a load and
/// an `and`, on the rare paths that call it.
#[inline(always)]
fn forget_range(off: usize) -> usize {
    let mut slot = 0u64;
    // SAFETY: both accesses are to the local `slot`; the read is of its low (little-endian)
    // half, and volatile, so that LLVM keeps the store and the load.
    let off = unsafe {
        core::ptr::write_volatile(&mut slot, off as u64);
        core::ptr::read_volatile(&slot as *const u64 as *const u32)
    } as usize;
    off & MAX_HEADER_OFFSET
}

#[inline(always)]
fn is_extension_header(next: u8) -> bool {
    matches!(
        next,
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AUTH | IPV6_DEST_OPTS
    )
}

/// Reads ports, TCP flags or the ICMP type from the L4 header at `at`, inside the IP packet
/// that ends at `ip_end`. A later fragment has no L4 header.
#[inline(always)]
fn l4(frame: &Frame, p: &mut Packet, at: usize, ip_end: usize) -> Result<(), ()> {
    if p.fragment.later_id().is_some() {
        return Ok(());
    }
    match (p.proto, p.family) {
        (proto::TCP, _) => {
            if at + 20 > ip_end {
                return Err(());
            }
            let tcp = frame.header::<TcpHdr>(at)?;
            let doff = (tcp.doff >> 4) as usize;
            if doff < 5 || at + doff * 4 > ip_end {
                return Err(());
            }
            p.sport = u16::from_be(tcp.sport);
            p.dport = u16::from_be(tcp.dport);
            p.tcp_flags = tcp.flags;
        }
        (proto::UDP, _) => {
            if at + 8 > ip_end {
                return Err(());
            }
            let udp = frame.header::<Ports>(at)?;
            p.sport = u16::from_be(udp.sport);
            p.dport = u16::from_be(udp.dport);
        }
        (proto::ICMP, 4) | (proto::ICMPV6, 6) => {
            if at + 8 > ip_end {
                return Err(());
            }
            let icmp = frame.header::<IcmpHdr>(at)?;
            p.icmp_type = icmp.ty;
            // The echo identifier stands in for both ports, so that a request and its reply
            // share one flow key.
            p.sport = u16::from_be(icmp.id);
            p.dport = p.sport;
        }
        _ => {}
    }
    Ok(())
}

/// Destination unreachable (including fragmentation needed), packet too big, time exceeded.
#[inline(always)]
pub fn is_icmp_error(family: u8, icmp_type: u8) -> bool {
    matches!((family, icmp_type), (4, 3 | 11) | (6, 1..=3))
}

/// The flow of the packet quoted in an ICMP error at `at`, when it is TCP or UDP of the same
/// family and its ports are present.
#[inline(always)]
fn quoted_flow(frame: &Frame, family: u8, at: usize, ip_end: usize) -> Option<FlowKey> {
    let inner = at + 8;
    let (src, dst, proto, l4) = if family == 4 {
        if inner + 20 > ip_end {
            return None;
        }
        let ip = frame.header::<Ipv4Hdr>(inner).ok()?;
        let hlen = ((ip.ver_ihl & 0x0f) as usize) * 4;
        if ip.ver_ihl >> 4 != 4 || hlen < 20 {
            return None;
        }
        ([ip.src, 0, 0, 0], [ip.dst, 0, 0, 0], ip.proto, inner + hlen)
    } else {
        if inner + 40 > ip_end {
            return None;
        }
        let ip = frame.header::<Ipv6Hdr>(inner).ok()?;
        if ip.ver >> 4 != 6 {
            return None;
        }
        (ip.src, ip.dst, ip.next, inner + 40)
    };
    if (proto != proto::TCP && proto != proto::UDP) || l4 + 4 > ip_end {
        return None;
    }
    let ports = frame.header::<Ports>(l4).ok()?;
    let (key, _) = FlowKey::new(
        src,
        u16::from_be(ports.sport),
        dst,
        u16::from_be(ports.dport),
        proto,
        family,
    );
    Some(key)
}
