//! `cargo xtask test`: everything CI checks, in the order that fails fastest.
//!
//! The eBPF crate is outside the stable workspace (it builds for bpfel-unknown-none on
//! nightly), so it gets its own nightly fmt and clippy steps.

use std::process::Command;

use anyhow::{Context, Result};

use crate::bootstrap::Env;
use crate::process;

struct Step {
    name: &'static str,
    command: Command,
}

pub fn run(env: &Env) -> Result<()> {
    // The eBPF crates build on nightly for bpfel-unknown-none, each in its own workspace.
    let nightly_cargo = |crate_dir: &str, args: &[&str]| {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", "nightly", "cargo"])
            .args(args)
            .current_dir(env.workspace.join(crate_dir));
        cmd
    };
    const EBPF_CLIPPY: [&str; 9] = [
        "clippy",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ];
    let cargo = |args: &[&str]| {
        let mut cmd = env.cargo();
        cmd.args(args);
        cmd
    };

    let steps = [
        Step {
            name: "format (workspace)",
            command: cargo(&["fmt", "--all", "--check"]),
        },
        Step {
            name: "format (eBPF crate)",
            command: nightly_cargo("director-fw-ebpf", &["fmt", "--check"]),
        },
        Step {
            name: "format (bench floors eBPF crate)",
            command: nightly_cargo("bench-floors-ebpf", &["fmt", "--check"]),
        },
        Step {
            name: "clippy (workspace)",
            command: cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--release",
                "--",
                "-D",
                "warnings",
            ]),
        },
        Step {
            name: "clippy (eBPF crate)",
            command: nightly_cargo("director-fw-ebpf", &EBPF_CLIPPY),
        },
        Step {
            name: "clippy (bench floors eBPF crate)",
            command: nightly_cargo("bench-floors-ebpf", &EBPF_CLIPPY),
        },
        Step {
            name: "tests (workspace)",
            // One test thread: the kernel and netns tests share global state (bpffs pins,
            // interface names, sysctls) and must not interleave.
            command: cargo(&["test", "--workspace", "--release", "--", "--test-threads=1"]),
        },
    ];

    // The last step is the package, built from the release binary the tests built.
    let total = steps.len() + 1;
    for (index, mut step) in steps.into_iter().enumerate() {
        let number = index + 1;
        eprintln!(
            "xtask: ==> [{number}/{total}] {}: {}",
            step.name,
            process::describe(&step.command)
        );
        process::run(&mut step.command)
            .with_context(|| format!("step {number}/{total} ({}) failed", step.name))?;
    }
    eprintln!("xtask: ==> [{total}/{total}] package: build the Debian package and verify it");
    crate::build::release(env)
        .and_then(|()| crate::package::build(env))
        .and_then(|deb| crate::package::verify(&deb))
        .with_context(|| format!("step {total}/{total} (package) failed"))?;
    eprintln!("xtask: all {total} steps passed");
    Ok(())
}
