// Settings of the stable cargo that runs a build script or xtask, which must not reach a
// nightly eBPF build started from there. Included by director-fw/build.rs and by
// xtask/src/bench.rs, so both builds scrub the same list.
const STABLE_ONLY_ENV: [&str; 9] = [
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "RUSTUP_TOOLCHAIN",
    "CARGO",
];
