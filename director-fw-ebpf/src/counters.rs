//! Per-CPU counters: one slot per verdict (see `director_fw_common::verdict`).

use director_fw_common::Verdict;

use crate::maps::{COUNTERS, LAST_VERDICT};

/// Set by the loader (`EbpfLoader::set_global`) to record each verdict for tests.
#[no_mangle]
static TRACE: aya_ebpf::Global<u8> = aya_ebpf::Global::new(0);

#[inline(always)]
pub fn count(verdict: Verdict, bytes: u64) {
    let slot = verdict.slot();
    if let Some(counter) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, and programs do not migrate between CPUs mid-run.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
    if TRACE.load() != 0 {
        if let Some(last) = LAST_VERDICT.get_ptr_mut(0) {
            unsafe { *last = slot };
        }
    }
}
