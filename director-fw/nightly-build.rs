// How an eBPF crate (own workspace, own rust-toolchain file) is built on the nightly from a
// stable cargo: included by director-fw/build.rs and by xtask/src/bench.rs, so both builds
// run the same command. The including file provides `Path` and `Command`.

/// `rustup run nightly cargo build --release --target-dir TARGET_DIR` in `crate_dir`, without
/// the settings of the stable cargo that started it, which must not reach the nightly build.
fn nightly_ebpf_build(crate_dir: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--release",
        "--target-dir",
    ])
    .arg(target_dir)
    .current_dir(crate_dir);
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    cmd
}
