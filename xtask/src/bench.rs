//! `cargo xtask bench`: the kernel cost per packet, the control-plane load time and the lab
//! throughput (SPEC section 7).
//!
//! Builds the floor and lab programs (`bench-floors-ebpf`, nightly, bpfel-unknown-none, with
//! the bpf-linker the bootstrap put on PATH), then runs director-fw's `kernel`, `control` and
//! `lab` benches with `DIRECTOR_FW_FLOORS_OBJ` naming the object. Each prints its table and
//! writes `target/bench/<name>.json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::process;

/// The floors crate, relative to the workspace root. It has its own `[workspace]` and
/// toolchain file, like director-fw-ebpf.
const FLOORS_CRATE: &str = "bench-floors-ebpf";
/// Its binary (the eBPF object) name.
const FLOORS_BIN: &str = "bench-floors";

include!("../../director-fw/nightly-build.rs");

/// The benches, in the order a full run takes them.
const BENCHES: [&str; 3] = ["kernel", "control", "lab"];

/// `cargo xtask bench [--quick]` runs every bench; `cargo xtask bench NAME ARGS...` runs one,
/// with its own arguments (`lab --rounds 9 --mixes deny`).
pub fn run(args: &[String]) -> Result<()> {
    let workspace = workspace_root()?;
    let target = target_dir(&workspace);
    let object = build_floors(&workspace, &target)?;
    let (benches, args): (Vec<&str>, &[String]) = match args.split_first() {
        Some((name, rest)) if BENCHES.contains(&name.as_str()) => (vec![name.as_str()], rest),
        _ => (BENCHES.to_vec(), args),
    };
    for bench in benches {
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(&workspace)
            .args(["bench", "-p", "director-fw", "--bench", bench, "--"])
            .args(args)
            .env("DIRECTOR_FW_FLOORS_OBJ", &object);
        eprintln!("xtask: ==> {}", process::describe(&cmd));
        process::run(&mut cmd).with_context(|| format!("the {bench} bench failed"))?;
    }
    Ok(())
}

/// Builds the floors object into `<target>/bench-floors-ebpf` (so nothing lands in the
/// source tree) and returns its path.
fn build_floors(workspace: &Path, target: &Path) -> Result<PathBuf> {
    let target_dir = target.join(FLOORS_CRATE);
    let mut cmd = nightly_ebpf_build(&workspace.join(FLOORS_CRATE), &target_dir);
    eprintln!("xtask: ==> {}", process::describe(&cmd));
    process::run(&mut cmd).context("building the bench floor programs failed")?;
    let object = target_dir
        .join("bpfel-unknown-none")
        .join("release")
        .join(FLOORS_BIN);
    if !object.is_file() {
        anyhow::bail!("the floors build produced no {}", object.display());
    }
    Ok(object)
}

/// xtask lives one directory below the workspace root.
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no parent directory", manifest_dir.display()))
}

/// Where cargo puts the workspace's build: `CARGO_TARGET_DIR` wins, as in cargo.
fn target_dir(workspace: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
}
