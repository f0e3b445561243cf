//! Flow and fragment tracking keys. Addresses are four `u32` words as they lie in the packet
//! (network byte order in memory); an IPv4 address takes the first word and `family` keeps
//! the two families apart. Ports and fragment ids are in host byte order.

/// One entry per flow for both directions: the endpoint that sorts lower is `lo`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub lo_addr: [u32; 4],
    pub hi_addr: [u32; 4],
    pub lo_port: u16,
    pub hi_port: u16,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The key of the flow a packet from `src:sport` to `dst:dport` belongs to, and whether the
    /// packet's source is the key's `lo` end. ICMP echo uses the identifier as `sport` and 0
    /// as `dport` in both directions.
    #[inline(always)]
    pub fn new(
        src: [u32; 4],
        sport: u16,
        dst: [u32; 4],
        dport: u16,
        proto: u8,
        family: u8,
    ) -> (FlowKey, bool) {
        let src_is_lo = endpoint_le(&src, sport, &dst, dport);
        let (lo_addr, lo_port, hi_addr, hi_port) = if src_is_lo {
            (src, sport, dst, dport)
        } else {
            (dst, dport, src, sport)
        };
        let key = FlowKey {
            lo_addr,
            hi_addr,
            lo_port,
            hi_port,
            proto,
            family,
            _pad: [0; 2],
        };
        (key, src_is_lo)
    }
}

/// `(a, a_port) <= (b, b_port)`, comparing address words in order as native `u32`s.
#[inline(always)]
fn endpoint_le(a: &[u32; 4], a_port: u16, b: &[u32; 4], b_port: u16) -> bool {
    let mut i = 0;
    while i < 4 {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    a_port <= b_port
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// `bpf_ktime_get_ns` of the last packet.
    pub last_seen_ns: u64,
    /// `FLOW_*` bits.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FlowState>() == 16);

/// A flow's `last_seen_ns` is only rewritten when it is older than this: timeouts are whole
/// seconds, and not writing the entry on every packet keeps its cache line shared between
/// CPUs.
pub const REFRESH_GRANULARITY_NS: u64 = 1_000_000_000;

/// The `lo` end sent a FIN.
pub const FLOW_FIN_LO: u32 = 1 << 0;
/// The `hi` end sent a FIN.
pub const FLOW_FIN_HI: u32 = 1 << 1;
/// Either end sent a RST.
pub const FLOW_RST: u32 = 1 << 2;
/// A TCP flow in any of these states uses the closing timeout.
pub const FLOW_CLOSED: u32 = FLOW_RST;
pub const FLOW_BOTH_FIN: u32 = FLOW_FIN_LO | FLOW_FIN_HI;

/// A first fragment that passed, by source, destination, protocol and identification.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// IPv4's 16-bit or IPv6's 32-bit identification, host byte order.
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragState {
    pub last_seen_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_share_one_key() {
        let a = [1, 0, 0, 0];
        let b = [2, 0, 0, 0];
        let (k1, fwd) = FlowKey::new(a, 1000, b, 80, 6, 4);
        let (k2, rev) = FlowKey::new(b, 80, a, 1000, 6, 4);
        assert_eq!(k1, k2);
        assert!(fwd && !rev);
    }

    #[test]
    fn same_address_sorts_by_port() {
        let a = [7, 7, 7, 7];
        let (k, src_is_lo) = FlowKey::new(a, 9, a, 3, 17, 6);
        assert!(!src_is_lo);
        assert_eq!((k.lo_port, k.hi_port), (3, 9));
    }
}
