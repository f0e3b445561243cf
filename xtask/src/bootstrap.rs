//! Makes a fresh machine ready to build, test and run director-fw.
//!
//! Nothing installed by hand survives on these machines, so every `cargo xtask` command
//! runs this first. Each step checks before acting, so a second run only costs a few
//! quick queries, and each step prints one line only when it changes something.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

use crate::process;

/// bpf-linker release built from crates.io. 0.13.0 is the version known to work with
/// aya-ebpf 0.2.1 and to offer the `no-llvm-linking` feature.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Nightly components the eBPF build and checks need: `rust-src` for `-Z build-std=core`,
/// `rustfmt` and `clippy` for the eBPF crate's format and lint steps.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "rustfmt", "clippy"];

/// Debian packages used by the tests and benches: `ip`, `nft`, `iptables`, `ethtool`,
/// `nsenter` (util-linux), which lets a process join a lab netns but keep the shared /sys,
/// and so the bpffs pins, `xdp-filter` (xdp-tools), a baseline of the lab bench, `curl`, the
/// real HTTP client of the metrics test, and `systemd`, whose `systemd-analyze` checks the
/// package's unit.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "iptables",
    "ethtool",
    "util-linux",
    "xdp-tools",
    "curl",
    "systemd",
];

/// Debian packages for booting other kernels under qemu, installed only when a kernel run is
/// asked for. busybox-static, kmod, cpio and file build virtme-ng's guest; without `udev` the
/// guest has no virtio ports and vng fails with "cannot find script I/O ports";
/// `python3-venv` holds virtme-ng, which Debian does not package.
const VM_DEBIAN_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "cpio",
    "udev",
    "file",
    "python3-venv",
];

/// virtme-ng from PyPI: 1.42 is the release the kernel recipe (shared/KERNELS.md) verified.
const VIRTME_NG: &str = "virtme-ng==1.42";

const BPFFS: &str = "/sys/fs/bpf";

/// Set once `apt-get update` has run in this process, so a run never refreshes twice.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// What later steps need to know about the prepared machine.
pub struct Env {
    /// Root of the cargo workspace.
    pub workspace: PathBuf,
}

impl Env {
    /// A `cargo` command for the (stable) workspace, run from the workspace root.
    pub fn cargo(&self) -> Command {
        let mut cmd = cargo();
        cmd.current_dir(&self.workspace);
        cmd
    }
}

/// The cargo that is running xtask (cargo sets `CARGO` for `cargo run`), so child builds
/// use the same stable toolchain as the workspace.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs all bootstrap steps and exports the environment child commands need.
pub fn ensure() -> Result<Env> {
    require_root()?;
    let workspace = workspace_root()?;
    let nightly = nightly_version()?;
    ensure_nightly_components(&nightly)?;
    let bpf_linker = ensure_bpf_linker(&workspace, &nightly)?;
    ensure_debian_packages()?;
    ensure_bpffs()?;
    export_env(&bpf_linker)?;
    Ok(Env { workspace })
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "cargo xtask must run as root (euid is {euid}): loading eBPF programs, mounting \
             bpffs and creating network namespaces for the tests all need it"
        );
    }
    Ok(())
}

/// xtask lives one directory below the workspace root.
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no parent directory", manifest_dir.display()))
}

fn nightly(args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly"]).args(args);
    cmd
}

/// `rustc -vV` of the nightly toolchain; it identifies the exact libLLVM bpf-linker links to.
fn nightly_version() -> Result<String> {
    process::capture(&mut nightly(&["rustc", "-vV"])).context(
        "the nightly toolchain is needed to build the eBPF program (bpfel-unknown-none, \
         -Z build-std); install it with `rustup toolchain install nightly --profile minimal \
         --component rust-src,rustfmt,clippy`",
    )
}

fn ensure_nightly_components(nightly_vv: &str) -> Result<()> {
    let host = rustc_host(nightly_vv)?;
    let installed = process::capture(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    let missing = missing_components(&installed, host, NIGHTLY_COMPONENTS);
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: adding nightly components: {}", missing.join(" "));
    process::run(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", "nightly"])
            .args(&missing),
    )
    .context("could not add the nightly components the eBPF build needs")
}

/// `rustup component list --installed` prints `rust-src` but `clippy-x86_64-unknown-linux-gnu`,
/// so a component counts as installed if a line is its name, alone or with the host suffix.
fn missing_components<'a>(installed: &str, host: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    let installed: Vec<&str> = installed.lines().map(str::trim).collect();
    wanted
        .iter()
        .copied()
        .filter(|name| {
            let with_host = format!("{name}-{host}");
            !installed
                .iter()
                .any(|line| line == name || *line == with_host)
        })
        .collect()
}

/// The `host: x86_64-unknown-linux-gnu` line of `rustc -vV`.
fn rustc_host(rustc_vv: &str) -> Result<&str> {
    rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("host:"))
        .map(str::trim)
        .context("`rustc +nightly -vV` printed no `host:` line")
}

/// Makes sure `.tools/bpf-linker/bin/bpf-linker` exists and was built for this nightly.
///
/// No prebuilt bpf-linker can be downloaded here and Debian has no matching LLVM, so it is
/// built from crates.io against the libLLVM shared library that ships with the nightly
/// toolchain. That ties the binary to one nightly: the stamp records which one.
fn ensure_bpf_linker(workspace: &Path, nightly_vv: &str) -> Result<PathBuf> {
    let root = workspace.join(".tools").join("bpf-linker");
    let binary = root.join("bin").join("bpf-linker");
    let stamp_path = root.join("stamp");

    let major = llvm_major(nightly_vv)?;
    // The recipe is part of the stamp so that changing it here also forces a rebuild.
    let stamp = format!(
        "{}\nbpf-linker {BPF_LINKER_VERSION} features llvm-{major},no-llvm-linking\n",
        nightly_vv.trim_end()
    );
    let current = fs::read_to_string(&stamp_path).ok();
    if binary.is_file() && current.as_deref() == Some(stamp.as_str()) {
        return Ok(binary);
    }

    let sysroot = process::capture(&mut nightly(&["rustc", "--print", "sysroot"]))?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    let names = list_dir(&lib_dir)?;
    let link_name = llvm_link_name(&names, major).with_context(|| {
        format!(
            "no libLLVM-{major}-*.so in {}; the nightly toolchain looks incomplete",
            lib_dir.display()
        )
    })?;

    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against the nightly's {link_name} \
         (about a minute, once per nightly)"
    );
    fs::create_dir_all(&root).with_context(|| format!("could not create {}", root.display()))?;
    build_bpf_linker(&root, &lib_dir, &link_name)?;
    verify_linked_llvm(&binary, &lib_dir)?;
    fs::write(&stamp_path, stamp)
        .with_context(|| format!("could not write {}", stamp_path.display()))?;
    Ok(binary)
}

/// The LLVM major version from the `LLVM version: 22.1.4` line of `rustc -vV`.
fn llvm_major(rustc_vv: &str) -> Result<u32> {
    let version = rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .context("`rustc +nightly -vV` printed no `LLVM version:` line")?
        .trim();
    let major = version.split('.').next().unwrap_or_default();
    major
        .parse()
        .with_context(|| format!("cannot read the LLVM major version from `{version}`"))
}

/// The `-l dylib=` name of the nightly's libLLVM: `libLLVM-22-rust-1.97.0-nightly.so`
/// gives `LLVM-22-rust-1.97.0-nightly`. Sorted so the choice is stable if there are several.
fn llvm_link_name(file_names: &[String], major: u32) -> Option<String> {
    let prefix = format!("libLLVM-{major}-");
    let mut found: Vec<&str> = file_names
        .iter()
        .filter(|name| name.starts_with(&prefix))
        .filter_map(|name| name.strip_suffix(".so"))
        .filter_map(|name| name.strip_prefix("lib"))
        .collect();
    found.sort_unstable();
    found.first().map(|name| (*name).to_owned())
}

/// The names of the entries of `dir`.
pub fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let entries = fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("could not list {}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

fn build_bpf_linker(root: &Path, lib_dir: &Path, link_name: &str) -> Result<()> {
    let major = link_name
        .strip_prefix("LLVM-")
        .and_then(|rest| rest.split('-').next())
        .context("unexpected libLLVM name")?;
    let lib = lib_dir.to_string_lossy();
    // Link the nightly's libLLVM ourselves (no-llvm-linking) and record its directory as
    // rpath, so the binary finds it at run time without LD_LIBRARY_PATH.
    let rustflags = [
        "-L".to_owned(),
        lib.to_string(),
        "-C".to_owned(),
        format!("link-arg=-Wl,-rpath,{lib}"),
        "-l".to_owned(),
        format!("dylib={link_name}"),
    ];
    let install = |locked: bool| {
        let mut cmd = cargo();
        cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major},no-llvm-linking"))
            // --force: the stamp, not cargo's own install record, decides when to rebuild.
            .arg("--force")
            .arg("--root")
            .arg(root)
            // Cargo reads `.cargo/config.toml` from the working directory upwards, and .tools
            // is inside the workspace; start from outside it so the workspace's settings
            // cannot leak into this unrelated build.
            .current_dir(std::env::temp_dir())
            // The 0x1f-separated form keeps paths with spaces intact; it also takes
            // precedence, so drop a plain RUSTFLAGS to avoid confusion.
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
            .env_remove("RUSTFLAGS");
        if locked {
            cmd.arg("--locked");
        }
        process::run(&mut cmd)
    };
    // --locked gives the dependency versions bpf-linker was released with; if that lock
    // file cannot be used here, a fresh resolution is the next best thing.
    if install(true).is_err() {
        eprintln!("xtask: `cargo install --locked` failed, retrying bpf-linker without --locked");
        install(false).context("could not build bpf-linker")?;
    }
    Ok(())
}

/// A bpf-linker that picked up some other libLLVM (or none) would fail later with
/// confusing errors, so check the loader's view right after building.
fn verify_linked_llvm(binary: &Path, lib_dir: &Path) -> Result<()> {
    let ldd = process::capture(Command::new("ldd").arg(binary))?;
    let resolved = ldd_llvm_path(&ldd).with_context(|| {
        format!(
            "ldd shows no resolved libLLVM for {}:\n{}",
            binary.display(),
            ldd.trim()
        )
    })?;
    let inside = match (fs::canonicalize(resolved), fs::canonicalize(lib_dir)) {
        (Ok(resolved), Ok(lib_dir)) => resolved.starts_with(lib_dir),
        _ => false,
    };
    if !inside {
        bail!(
            "{} loads {resolved}, not the libLLVM in {}",
            binary.display(),
            lib_dir.display()
        );
    }
    Ok(())
}

/// The path ldd resolved libLLVM to, from a line like
/// `libLLVM.so.22.1-rust-1.97.0-nightly => /path/libLLVM.so.22.1-rust-1.97.0-nightly (0x...)`.
/// None when libLLVM is absent or `not found`.
fn ldd_llvm_path(ldd: &str) -> Option<&str> {
    ldd.lines().find_map(|line| {
        let (name, target) = line.trim().split_once(" => ")?;
        if !name.starts_with("libLLVM") {
            return None;
        }
        let path = target.split(" (").next()?.trim();
        path.starts_with('/').then_some(path)
    })
}

fn ensure_debian_packages() -> Result<()> {
    ensure_packages(DEBIAN_PACKAGES).context("could not install the Debian packages the tests need")
}

/// Installs the packages of `packages` that are missing, refreshing the lists first (at most
/// once per run).
fn ensure_packages(packages: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for package in packages {
        let status = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", package])
            .output()
            .context("could not run dpkg-query; these tools expect a Debian-based machine")?;
        // dpkg-query fails for packages it has never heard of, which also means missing.
        if !status.status.success()
            || String::from_utf8_lossy(&status.stdout) != "install ok installed"
        {
            missing.push(*package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    apt_update_once()?;
    process::run(
        Command::new("apt-get")
            .args(["-q", "install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// `apt-get update` of the system's lists, the first time it is called in this process only.
pub fn apt_update_once() -> Result<()> {
    if APT_UPDATED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    process::run(
        Command::new("apt-get")
            .args(["-q", "update"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("could not refresh the system's package lists")
}

/// Installs what booting a kernel under qemu needs and returns the `vng` to run.
///
/// virtme-ng goes into its own venv, made by Debian's python3 rather than whatever `python3`
/// is first on PATH, so the system's Python packages stay untouched (Debian refuses a plain
/// `pip install` there anyway). A stamp records the pinned version.
pub fn ensure_vm_runner(venv: &Path) -> Result<PathBuf> {
    ensure_packages(VM_DEBIAN_PACKAGES)
        .context("could not install the Debian packages that boot kernels under qemu")?;
    let vng = venv.join("bin").join("vng");
    let stamp_path = venv.join("director-fw-stamp");
    if vng.is_file() && fs::read_to_string(&stamp_path).ok().as_deref() == Some(VIRTME_NG) {
        return Ok(vng);
    }
    eprintln!("xtask: installing {VIRTME_NG} into {}", venv.display());
    process::run(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(venv),
    )
    .context("could not create the venv for virtme-ng")?;
    process::run(
        Command::new(venv.join("bin").join("pip")).args(["install", "--quiet", VIRTME_NG]),
    )
    .with_context(|| format!("could not install {VIRTME_NG}"))?;
    if !vng.is_file() {
        bail!("{VIRTME_NG} installed no {}", vng.display());
    }
    fs::write(&stamp_path, VIRTME_NG)
        .with_context(|| format!("could not write {}", stamp_path.display()))?;
    Ok(vng)
}

fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("could not read /proc/mounts")?;
    if bpffs_mounted(&mounts) {
        return Ok(());
    }
    eprintln!("xtask: mounting bpffs at {BPFFS}");
    process::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
        .context("could not mount bpffs, which the agent needs to pin its maps and links")
}

/// True when a `bpf` filesystem is mounted at /sys/fs/bpf (fields: source, target, type, ...).
fn bpffs_mounted(proc_mounts: &str) -> bool {
    proc_mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    })
}

/// Puts bpf-linker first on PATH and names it in `DIRECTOR_FW_BPF_LINKER`.
///
/// Setting our own environment (rather than each Command's) means every child inherits it,
/// including the ones the demo and bench modules start. xtask is single-threaded, so
/// `set_var` is sound here.
fn export_env(bpf_linker: &Path) -> Result<()> {
    let bin_dir = bpf_linker
        .parent()
        .context("bpf-linker path has no parent directory")?;
    let old = std::env::var_os("PATH").unwrap_or_default();
    let rest = std::env::split_paths(&old).filter(|dir| dir != bin_dir);
    let path: OsString = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(rest))
        .context("cannot put the bpf-linker directory on PATH")?;
    std::env::set_var("PATH", path);
    std::env::set_var("DIRECTOR_FW_BPF_LINKER", bpf_linker);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUSTC_VV: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\n\
        binary: rustc\n\
        host: x86_64-unknown-linux-gnu\n\
        release: 1.97.0-nightly\n\
        LLVM version: 22.1.4\n";

    const HOST: &str = "x86_64-unknown-linux-gnu";

    #[test]
    fn reads_host() {
        assert_eq!(rustc_host(RUSTC_VV).ok(), Some(HOST));
        assert!(rustc_host("rustc 1.0\n").is_err());
    }

    #[test]
    fn reads_llvm_major() {
        assert_eq!(llvm_major(RUSTC_VV).ok(), Some(22));
        assert!(llvm_major("rustc 1.0\n").is_err());
        assert!(llvm_major("LLVM version: x.1\n").is_err());
    }

    #[test]
    fn finds_llvm_link_name() {
        let names: Vec<String> = [
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "libLLVM-22-rust-1.97.0-nightly.so",
            "librustc_driver-b5a965480ee51f9a.so",
            "rustlib",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            llvm_link_name(&names, 22).as_deref(),
            Some("LLVM-22-rust-1.97.0-nightly")
        );
        assert_eq!(llvm_link_name(&names, 21), None);
    }

    #[test]
    fn reads_ldd_llvm_path() {
        let ok = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibLLVM.so.22.1-rust-1.97.0-nightly => /tc/lib/libLLVM.so.22.1-rust-1.97.0-nightly (0x00007f72)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f71)\n";
        assert_eq!(
            ldd_llvm_path(ok),
            Some("/tc/lib/libLLVM.so.22.1-rust-1.97.0-nightly")
        );
        assert_eq!(
            ldd_llvm_path("\tlibLLVM.so.22.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"),
            None
        );
        assert_eq!(ldd_llvm_path("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"), None);
    }

    #[test]
    fn detects_bpffs() {
        let without = "sysfs /sys sysfs rw 0 0\nproc /proc proc rw 0 0\n";
        assert!(!bpffs_mounted(without));
        let with = format!("{without}bpf /sys/fs/bpf bpf rw,relatime 0 0\n");
        assert!(bpffs_mounted(&with));
        // Something else mounted there is not bpffs.
        assert!(!bpffs_mounted("tmpfs /sys/fs/bpf tmpfs rw 0 0\n"));
    }

    #[test]
    fn finds_missing_components() {
        let installed =
            "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrust-src\n";
        assert_eq!(
            missing_components(installed, HOST, NIGHTLY_COMPONENTS),
            vec!["rustfmt"]
        );
        // `rust-std-...` must not count as `rust-src`, nor `rust-src` as `rust`.
        assert_eq!(
            missing_components(
                "rust-std-x86_64-unknown-linux-gnu\n",
                HOST,
                &["rust-src", "rust"]
            ),
            vec!["rust-src", "rust"]
        );
    }
}
