//! Flow and fragment tracking. One LRU entry per flow serves both directions; entries expire
//! by idle time, checked on lookup, and the LRU evicts the oldest when the table is full.

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use director_fw_common::{
    flow::{FLOW_BOTH_FIN, FLOW_FIN_HI, FLOW_FIN_LO, FLOW_RST, REFRESH_GRANULARITY_NS},
    proto, tcp_flags, Config, FlowKey, FlowState, FragKey, FragState,
};

use crate::{
    maps::{FLOWS, FRAGS},
    parse::Packet,
    rare::{self, Rare},
};

/// Set by the loader (`EbpfLoader::override_global`) to 0 where the kernel lacks
/// `bpf_ktime_get_coarse_ns` (before 5.11). A constant to the verifier, which removes the
/// branch not taken, the unknown helper's call with it.
#[no_mangle]
static COARSE_CLOCK: aya_ebpf::Global<u8> = aya_ebpf::Global::new(1);

/// A coarse clock is enough for timeouts of seconds, and costs less per packet. Both clocks
/// are CLOCK_MONOTONIC.
#[inline(always)]
pub fn now() -> u64 {
    if COARSE_CLOCK.load() != 0 {
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        unsafe { bpf_ktime_get_ns() }
    }
}

#[inline(always)]
fn idle_timeout(cfg: &Config, proto: u8, flags: u32) -> u64 {
    match proto {
        proto::TCP if flags & FLOW_RST != 0 || flags & FLOW_BOTH_FIN == FLOW_BOTH_FIN => {
            cfg.tcp_closing_timeout_ns
        }
        proto::TCP => cfg.tcp_timeout_ns,
        proto::UDP => cfg.udp_timeout_ns,
        _ => cfg.icmp_timeout_ns,
    }
}

/// TCP state after a segment with `tcp` flags from the `lo` end (or not).
#[inline(always)]
fn tcp_flags_after(mut flags: u32, tcp: u8, from_lo: bool) -> u32 {
    // A SYN on a closed flow is a new connection on the same tuple.
    if tcp & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
        && (flags & FLOW_RST != 0 || flags & FLOW_BOTH_FIN == FLOW_BOTH_FIN)
    {
        flags = 0;
    }
    if tcp & tcp_flags::RST != 0 {
        flags |= FLOW_RST;
    }
    if tcp & tcp_flags::FIN != 0 {
        flags |= if from_lo { FLOW_FIN_LO } else { FLOW_FIN_HI };
    }
    flags
}

#[inline(always)]
fn key(p: &Packet) -> (FlowKey, bool) {
    FlowKey::new(p.src, p.sport, p.dst, p.dport, p.proto, p.family)
}

/// Whether the packet belongs to a live flow; if so, refreshes it.
#[inline(always)]
pub fn refresh(cfg: &Config, p: &Packet) -> bool {
    let (key, from_lo) = key(p);
    let Some(state) = FLOWS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: the pointer is to a live map value; a concurrent update of the same flow on
    // another CPU can at worst lose one refresh.
    let state = unsafe { &mut *state };
    let now = now();
    if now.wrapping_sub(state.last_seen_ns) > idle_timeout(cfg, p.proto, state.flags) {
        return false;
    }
    if p.proto == proto::TCP {
        let flags = tcp_flags_after(state.flags, p.tcp_flags, from_lo);
        if flags != state.flags {
            state.flags = flags;
        }
    }
    if now.wrapping_sub(state.last_seen_ns) >= REFRESH_GRANULARITY_NS {
        state.last_seen_ns = now;
    }
    true
}

/// Starts tracking the packet's flow.
#[inline(always)]
pub fn create(p: &Packet) {
    let (key, from_lo) = key(p);
    let flags = if p.proto == proto::TCP {
        tcp_flags_after(0, p.tcp_flags, from_lo)
    } else {
        0
    };
    let state = FlowState {
        last_seen_ns: now(),
        flags,
        _pad: 0,
    };
    // A full LRU evicts its oldest entry, so insertion only fails on memory pressure; the
    // packet still passes and the flow is picked up again by its next forward packet.
    if let Err(code) = FLOWS.insert(key, state, 0) {
        rare::log(Rare::FlowInsert, code);
    }
}

/// Whether the flow an ICMP error quotes is live.
#[inline(always)]
pub fn is_live(cfg: &Config, key: &FlowKey) -> bool {
    match FLOWS.get_ptr(key) {
        Some(state) => {
            let state = unsafe { &*state };
            now().wrapping_sub(state.last_seen_ns) <= idle_timeout(cfg, key.proto, state.flags)
        }
        None => false,
    }
}

/// IPv6 fragments carry the protocol in the Fragment header's next-header field, which a
/// later fragment and its first fragment need not agree on after more extension headers; the
/// 32-bit identification is unique enough alone, so IPv6 keys leave the protocol 0.
#[inline(always)]
fn fragment_key(p: &Packet, id: u32) -> FragKey {
    FragKey {
        src: p.src,
        dst: p.dst,
        id,
        proto: if p.family == 4 { p.proto } else { 0 },
        family: p.family,
        _pad: [0; 2],
    }
}

#[inline(always)]
pub fn first_fragment_passed(cfg: &Config, p: &Packet, id: u32) -> bool {
    match FRAGS.get_ptr(fragment_key(p, id)) {
        Some(state) => {
            now().wrapping_sub(unsafe { (*state).last_seen_ns }) <= cfg.fragment_timeout_ns
        }
        None => false,
    }
}

#[inline(always)]
pub fn remember_first_fragment(p: &Packet, id: u32) {
    let state = FragState {
        last_seen_ns: now(),
    };
    if let Err(code) = FRAGS.insert(fragment_key(p, id), state, 0) {
        rare::log(Rare::FragmentInsert, code);
    }
}
