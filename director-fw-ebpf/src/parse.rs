//! Parsing, from the Ethernet header down to the L4 header. Every read goes through
//! [`Frame::load`], which checks bounds by comparing pointers (the verifier rejects a length
//! comparison). Consistency checks use `Frame::len`, the whole frame's length, because a TC
//! packet's linear part may be shorter than the packet.

use core::mem::size_of;

use director_fw_common::proto;

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
    /// Reads a `T` at `off`, or fails when it is not all inside the readable data.
    #[inline(always)]
    pub fn load<T: Copy>(&self, off: usize) -> Result<T, ()> {
        let at = self.start + off;
        if at + size_of::<T>() > self.end {
            return Err(());
        }
        // SAFETY: bounds checked above; packet data has no alignment guarantee, and the
        // kernel allows unaligned packet loads on the architectures we run on.
        Ok(unsafe { core::ptr::read(at as *const T) })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    None,
    /// Offset 0, more fragments follow.
    First(u32),
    /// Offset > 0: no L4 header here.
    Later(u32),
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
    /// Offset of the L4 header from the frame start.
    pub l4: usize,
    /// End of the IP packet (from its length field), from the frame start.
    pub ip_end: usize,
}

pub enum Parsed {
    NonIp,
    Ip(Packet),
}

/// Parses a frame. `Err` means malformed.
#[inline(always)]
pub fn parse(frame: &Frame) -> Result<Parsed, ()> {
    if frame.len < ETH_HLEN {
        return Err(());
    }
    let mut ethertype = u16::from_be(frame.load::<u16>(12)?);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = u16::from_be(frame.load::<u16>(off + 2)?);
        off += 4;
    }
    let packet = match ethertype {
        ETH_P_IPV4 => ipv4(frame, off)?,
        ETH_P_IPV6 => ipv6(frame, off)?,
        ETH_P_8021Q | ETH_P_8021AD => return Err(()),
        _ => return Ok(Parsed::NonIp),
    };
    Ok(Parsed::Ip(packet))
}

#[inline(always)]
fn ipv4(frame: &Frame, off: usize) -> Result<Packet, ()> {
    let ver_ihl = frame.load::<u8>(off)?;
    // The fixed header must be there before any field of it counts.
    frame.load::<[u32; 5]>(off)?;
    if ver_ihl >> 4 != 4 {
        return Err(());
    }
    let hlen = ((ver_ihl & 0x0f) as usize) * 4;
    if hlen < 20 {
        return Err(());
    }
    let total = u16::from_be(frame.load::<u16>(off + 2)?) as usize;
    if total < hlen || off + total > frame.len {
        return Err(());
    }
    let id = u16::from_be(frame.load::<u16>(off + 4)?) as u32;
    let frag = u16::from_be(frame.load::<u16>(off + 6)?);
    let fragment = if frag & 0x1fff != 0 {
        Fragment::Later(id)
    } else if frag & 0x2000 != 0 {
        Fragment::First(id)
    } else {
        Fragment::None
    };
    let mut packet = Packet {
        family: 4,
        src: [frame.load::<u32>(off + 12)?, 0, 0, 0],
        dst: [frame.load::<u32>(off + 16)?, 0, 0, 0],
        proto: frame.load::<u8>(off + 9)?,
        fragment,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        l4: off + hlen,
        ip_end: off + total,
    };
    l4(frame, &mut packet)?;
    Ok(packet)
}

#[inline(always)]
fn ipv6(frame: &Frame, off: usize) -> Result<Packet, ()> {
    let ver = frame.load::<u8>(off)?;
    frame.load::<[u32; 10]>(off)?;
    if ver >> 4 != 6 {
        return Err(());
    }
    let payload = u16::from_be(frame.load::<u16>(off + 4)?) as usize;
    let ip_end = off + 40 + payload;
    if ip_end > frame.len {
        return Err(());
    }
    let mut next = frame.load::<u8>(off + 6)?;
    let mut cur = off + 40;
    let mut fragment = Fragment::None;
    for _ in 0..MAX_EXT_HEADERS {
        let len = match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                (frame.load::<u8>(cur + 1)? as usize + 1) * 8
            }
            IPV6_AUTH => (frame.load::<u8>(cur + 1)? as usize + 2) * 4,
            IPV6_FRAGMENT => 8,
            _ => break,
        };
        if cur + len > ip_end {
            return Err(());
        }
        if next == IPV6_FRAGMENT {
            let field = u16::from_be(frame.load::<u16>(cur + 2)?);
            let id = u32::from_be(frame.load::<u32>(cur + 4)?);
            next = frame.load::<u8>(cur)?;
            cur += len;
            if field >> 3 != 0 {
                fragment = Fragment::Later(id);
                break;
            }
            if field & 1 != 0 {
                fragment = Fragment::First(id);
            }
        } else {
            next = frame.load::<u8>(cur)?;
            cur += len;
        }
    }
    if !matches!(fragment, Fragment::Later(_)) && is_extension_header(next) {
        return Err(());
    }
    let mut packet = Packet {
        family: 6,
        src: frame.load::<[u32; 4]>(off + 8)?,
        dst: frame.load::<[u32; 4]>(off + 24)?,
        proto: next,
        fragment,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        l4: cur,
        ip_end,
    };
    l4(frame, &mut packet)?;
    Ok(packet)
}

#[inline(always)]
fn is_extension_header(next: u8) -> bool {
    matches!(
        next,
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AUTH | IPV6_DEST_OPTS
    )
}

/// Reads ports, TCP flags or the ICMP type. A later fragment has no L4 header.
#[inline(always)]
fn l4(frame: &Frame, p: &mut Packet) -> Result<(), ()> {
    if matches!(p.fragment, Fragment::Later(_)) {
        return Ok(());
    }
    let at = p.l4;
    match (p.proto, p.family) {
        (proto::TCP, _) => {
            if at + 20 > p.ip_end {
                return Err(());
            }
            let doff = (frame.load::<u8>(at + 12)? >> 4) as usize;
            if doff < 5 || at + doff * 4 > p.ip_end {
                return Err(());
            }
            p.sport = u16::from_be(frame.load::<u16>(at)?);
            p.dport = u16::from_be(frame.load::<u16>(at + 2)?);
            p.tcp_flags = frame.load::<u8>(at + 13)?;
        }
        (proto::UDP, _) => {
            if at + 8 > p.ip_end {
                return Err(());
            }
            p.sport = u16::from_be(frame.load::<u16>(at)?);
            p.dport = u16::from_be(frame.load::<u16>(at + 2)?);
        }
        (proto::ICMP, 4) | (proto::ICMPV6, 6) => {
            if at + 8 > p.ip_end {
                return Err(());
            }
            p.icmp_type = frame.load::<u8>(at)?;
            // The echo identifier stands in for both ports, so that a request and its reply
            // share one flow key.
            let id = u16::from_be(frame.load::<u16>(at + 4)?);
            p.sport = id;
            p.dport = id;
        }
        _ => {}
    }
    Ok(())
}

/// The 5-tuple of the packet quoted in an ICMP error, when it is TCP or UDP of the same
/// family and wholly present: `(src, sport, dst, dport, proto)`.
#[inline(always)]
pub fn quoted_flow(frame: &Frame, p: &Packet) -> Option<([u32; 4], u16, [u32; 4], u16, u8)> {
    let inner = p.l4 + 8;
    let (src, dst, proto, l4) = if p.family == 4 {
        let ver_ihl = frame.load::<u8>(inner).ok()?;
        if ver_ihl >> 4 != 4 || inner + 20 > p.ip_end {
            return None;
        }
        let hlen = ((ver_ihl & 0x0f) as usize) * 4;
        if hlen < 20 {
            return None;
        }
        let src = [frame.load::<u32>(inner + 12).ok()?, 0, 0, 0];
        let dst = [frame.load::<u32>(inner + 16).ok()?, 0, 0, 0];
        (src, dst, frame.load::<u8>(inner + 9).ok()?, inner + hlen)
    } else {
        if frame.load::<u8>(inner).ok()? >> 4 != 6 || inner + 40 > p.ip_end {
            return None;
        }
        let src = frame.load::<[u32; 4]>(inner + 8).ok()?;
        let dst = frame.load::<[u32; 4]>(inner + 24).ok()?;
        (src, dst, frame.load::<u8>(inner + 6).ok()?, inner + 40)
    };
    if (proto != proto::TCP && proto != proto::UDP) || l4 + 4 > p.ip_end {
        return None;
    }
    let sport = u16::from_be(frame.load::<u16>(l4).ok()?);
    let dport = u16::from_be(frame.load::<u16>(l4 + 2).ok()?);
    Some((src, sport, dst, dport, proto))
}
