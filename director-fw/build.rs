//! Builds the kernel object (director-fw-ebpf, nightly, bpfel-unknown-none) so that the agent
//! can embed it. The toolchain pieces are set up by `cargo xtask`; without them this fails
//! with a message that says so.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

include!("nightly-build.rs");

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let ebpf = root.join("director-fw-ebpf");
    let linker_dir = root.join(".tools/bpf-linker/bin");
    for watched in [
        "director-fw/nightly-build.rs",
        "director-fw-ebpf/src",
        "director-fw-ebpf/Cargo.toml",
        "director-fw-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        linker_dir.join("bpf-linker").display()
    );

    if !linker_dir.join("bpf-linker").exists() {
        fail("bpf-linker is not installed in .tools/. Run `cargo xtask build` (or any `cargo xtask` command) once: it installs the nightly's rust-src and builds bpf-linker against the nightly's own LLVM.");
    }
    let target_dir = root.join("target/ebpf");
    let path = format!(
        "{}:{}",
        linker_dir.display(),
        env::var("PATH").unwrap_or_default()
    );
    let mut cargo = nightly_ebpf_build(&ebpf, &target_dir);
    cargo.env("PATH", path);
    match cargo.status() {
        Ok(status) if status.success() => {}
        Ok(status) => fail(&format!(
            "building the eBPF object failed ({status}); see the errors above. `cargo xtask build` checks the toolchain."
        )),
        Err(err) => fail(&format!("could not run rustup to build the eBPF object: {err}")),
    }
    // The commit, for `--version`; a tree without git (a source package) says so.
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=DIRECTOR_FW_COMMIT={commit}");
    // A commit moves the branch's ref, not HEAD: watch both, and the packed refs.
    for git in [".git/HEAD", ".git/packed-refs"] {
        println!("cargo:rerun-if-changed={}", root.join(git).display());
    }
    if let Ok(head) = std::fs::read_to_string(root.join(".git/HEAD")) {
        if let Some(branch) = head.trim().strip_prefix("ref: ") {
            let branch = root.join(".git").join(branch);
            println!("cargo:rerun-if-changed={}", branch.display());
        }
    }
    let object = target_dir.join("bpfel-unknown-none/release/director-fw");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("director-fw.bpf.o");
    copy(&object, &out);
}

fn copy(from: &Path, to: &Path) {
    if let Err(err) = std::fs::copy(from, to) {
        fail(&format!(
            "cannot copy {} to {}: {err}",
            from.display(),
            to.display()
        ));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    println!("cargo:warning={message}");
    std::process::exit(1);
}
