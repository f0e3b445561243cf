//! Rare events, logged through aya-log for the agent's log: an error path that a healthy
//! datapath never takes. Each kind is logged at most once a second per CPU, so that one turned
//! frequent (inserts failing at line rate) cannot flood the log; the clock is read only here.
//! Nothing on the per-packet path comes here.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};
use aya_log_ebpf::{error, warn};

#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Rare {
    /// The flow table refused a new flow. An LRU table evicts its oldest flow when full, so
    /// this is the kernel out of memory for it.
    FlowInsert = 0,
    /// The same for the fragment table.
    FragmentInsert = 1,
    /// The generation in force has no configuration: a broken install.
    NoConfig = 2,
}
const KINDS: u32 = 3;
const INTERVAL_NS: u64 = 1_000_000_000;

/// When each kind was last logged on this CPU.
#[map(name = "RARE_LOGGED")]
static RARE_LOGGED: PerCpuArray<u64> = PerCpuArray::with_max_entries(KINDS, 0);

/// Logs `kind` with the error code `code` (0 for none), unless it was logged on this CPU in
/// the last second.
#[inline(always)]
pub fn log(kind: Rare, code: i32) {
    let Some(last) = RARE_LOGGED.get_ptr_mut(kind as u32) else {
        return;
    };
    // SAFETY: per-CPU slot, and programs do not migrate between CPUs mid-run.
    let now = unsafe { bpf_ktime_get_ns() };
    unsafe {
        if *last != 0 && now.wrapping_sub(*last) < INTERVAL_NS {
            return;
        }
        *last = now;
    }
    match kind {
        Rare::FlowInsert => warn!(
            &(),
            "the flow table refused a new flow (error {}): its packet passed, and the flow is tracked from its next packet that a rule passes",
            code
        ),
        Rare::FragmentInsert => warn!(
            &(),
            "the fragment table refused a first fragment (error {}): the later fragments of its packet are dropped",
            code
        ),
        Rare::NoConfig => error!(
            &(),
            "the policy generation in force has no configuration: passing everything"
        ),
    }
}
