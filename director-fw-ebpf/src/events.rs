//! Drop events (see `director_fw_common::events`): a per-CPU budget the agent refills, then
//! the event written into the reserved ring-buffer slot. Only drop verdicts come here; a pass
//! never does.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use director_fw_common::{
    events::{EVENTS_LOST, EVENTS_SENT, EVENTS_SUPPRESSED},
    Config, DropEvent, DropReason,
};

use crate::{
    classify,
    ingress::Ingress,
    maps::{EVENTS, EVENT_BUDGET, EVENT_STATS},
    parse::{self, Packet},
};

#[inline(always)]
fn count(slot: u32) {
    if let Some(n) = EVENT_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, and programs do not migrate between CPUs mid-run.
        unsafe { *n += 1 };
    }
}

/// Sends a drop event, if this CPU's budget allows; counts it either way. `p` is `None` for a
/// frame too malformed to parse.
#[inline(always)]
pub fn report(
    cfg: &Config,
    ingress: &impl Ingress,
    p: Option<&Packet>,
    dst_roles: u32,
    reason: DropReason,
    audit: bool,
) {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, as above.
    unsafe {
        if *budget == 0 {
            count(EVENTS_SUPPRESSED);
            return;
        }
        *budget -= 1;
    }
    // Looked up before the slot is reserved, so that no lookup runs while it is held.
    let src_roles = p.map_or(0, |p| classify::roles(cfg, p.family, &p.src));
    let Some(mut entry) = EVENTS.reserve::<DropEvent>(0) else {
        count(EVENTS_LOST);
        return;
    };
    let mut event = DropEvent {
        time_ns: unsafe { bpf_ktime_get_ns() },
        ifindex: ingress.ifindex(),
        reason: reason as u8,
        audit: u8::from(audit),
        ..DropEvent::default()
    };
    if let Some(p) = p {
        event.src = p.src;
        event.dst = p.dst;
        event.sport = p.sport;
        event.dport = p.dport;
        event.proto = p.proto;
        event.family = p.family;
        event.dst_roles = dst_roles;
        event.src_roles = src_roles;
    }
    event.vlan = match parse::outer_vlan(&ingress.frame()) {
        0 => ingress.offloaded_vlan(),
        tag => tag,
    };
    entry.write(event);
    entry.submit(0);
    count(EVENTS_SENT);
}
