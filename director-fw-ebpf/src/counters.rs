//! Per-CPU counters: rules one by one, and every verdict per interface (see
//! `director_fw_common::interfaces`).

use aya_ebpf::maps::PerCpuArray;
use director_fw_common::{interfaces::interface_counter, Counter, Verdict};

use crate::{
    ingress::Ingress,
    maps::{COUNTERS, IFACE_COUNTERS, IFACE_ROWS, LAST_VERDICT},
};

/// Set by the loader (`EbpfLoader::set_global`) to record each verdict for tests.
#[no_mangle]
static TRACE: aya_ebpf::Global<u8> = aya_ebpf::Global::new(0);

#[inline(always)]
pub fn count(verdict: Verdict, bytes: u64, ingress: &impl Ingress) {
    let slot = verdict.slot();
    if let Verdict::Rule(_) = verdict {
        add(&COUNTERS, slot, bytes);
    }
    add(
        &IFACE_COUNTERS,
        interface_counter(row(ingress), slot),
        bytes,
    );
    if TRACE.load() != 0 {
        if let Some(last) = LAST_VERDICT.get_ptr_mut(0) {
            unsafe { *last = slot };
        }
    }
}

/// The counter row of the packet's interface; 0 for one without a row.
#[inline(always)]
fn row(ingress: &impl Ingress) -> u32 {
    let ifindex = ingress.ifindex() as usize;
    match IFACE_ROWS.get(0) {
        Some(rows) => rows.0.get(ifindex).copied().unwrap_or(0) as u32,
        None => 0,
    }
}

#[inline(always)]
fn add(map: &PerCpuArray<Counter>, index: u32, bytes: u64) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not migrate between CPUs mid-run.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}
