//! What the benches share: statistics over rounds, CPU pinning, resident memory and where
//! reports go.
// Each bench uses its own part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Median of the finite values; NaN when there are none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Smallest and largest finite value; NaN for both when there are none.
pub fn min_max(values: &[f64]) -> (f64, f64) {
    let finite = values.iter().copied().filter(|x| x.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        (f64::NAN, f64::NAN)
    } else {
        (lo, hi)
    }
}

/// The highest CPU this process may use. The benches run there, away from CPU 0, which
/// takes most of the machine's other interrupts.
pub fn last_cpu() -> Result<usize> {
    // SAFETY: cpu_set_t is plain data; the call only writes the set passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
        }
        (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&cpu| libc::CPU_ISSET(cpu, &set))
            .context("the affinity mask is empty")
    }
}

/// Keeps the calling thread on `cpu`.
pub fn pin_thread(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; the call only reads the set passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

/// `target/bench/<file>` of the workspace (`$CARGO_TARGET_DIR` honoured).
pub fn out_path(file: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("director-fw is inside the workspace")
        .to_path_buf();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    target.join("bench").join(file)
}

/// This process's resident memory (VmRSS), in KiB; 0 if /proc does not say.
pub fn resident_kib() -> u64 {
    resident_kib_in("/proc/self/status")
}

/// Resident memory of process `pid`, in KiB (0 when unknown).
pub fn resident_kib_of(pid: u32) -> u64 {
    resident_kib_in(&format!("/proc/{pid}/status"))
}

fn resident_kib_in(status: &str) -> u64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
