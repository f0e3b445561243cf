//! `cargo xtask test --kernel VERSION` (and the second half of `cargo xtask test`): the kernel,
//! differential, lab and attachment tests inside a qemu VM booted with one of Debian's own kernels.
//!
//! Why it works this way (shared/KERNELS.md has the long story and the pitfalls):
//! - Gateways run distribution kernels, so the VM boots Debian's `linux-image-*-amd64-unsigned`
//!   packages: 6.1 and 6.12 from the system's bookworm sources, 5.10 from bullseye through a
//!   private sources file and private lists, which leave the system's apt state untouched.
//! - The extracted kernels stay in a cache folder outside the repository, fetched once per
//!   machine. Delete a kernel's folder there to fetch a newer point release.
//! - `/dev/kvm` on these machines runs only PVM kernels, so qemu emulates the CPU (TCG). That
//!   is 6 to 10 times slower, hence release test binaries and a smaller differential run.
//! - virtme-ng boots the kernel with the host's root file system over 9p, so the guest runs the
//!   host's test binaries, the agent they start, `ip`, `nft` and the rest unchanged.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bootstrap::{self, Env};
use crate::process;

/// A Debian kernel series that `--kernel` can name.
#[derive(Debug, PartialEq, Eq)]
pub struct Series {
    /// major.minor, as typed after `--kernel`.
    pub version: &'static str,
    /// Which apt sources ship it.
    origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The system's own sources: bookworm (6.1) and bookworm-security (6.12).
    System,
    /// Debian 11, through a private sources file and private lists in the cache.
    Bullseye,
}

/// The supported kernels, newest first (the order of `all` and of the matrix).
const SERIES: [Series; 3] = [
    Series {
        version: "6.12",
        origin: Origin::System,
    },
    Series {
        version: "6.1",
        origin: Origin::System,
    },
    Series {
        version: "5.10",
        origin: Origin::Bullseye,
    },
];

/// One `--kernel` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelChoice {
    All,
    One(&'static Series),
}

/// Parses a `--kernel` value: a series from [`SERIES`] or `all`.
pub fn parse_choice(text: &str) -> Result<KernelChoice, String> {
    if text == "all" {
        return Ok(KernelChoice::All);
    }
    SERIES
        .iter()
        .find(|series| series.version == text)
        .map(KernelChoice::One)
        .ok_or_else(|| {
            let known: Vec<&str> = SERIES.iter().map(|series| series.version).collect();
            format!("unknown kernel `{text}`: use {} or all", known.join(", "))
        })
}

/// The series to run, each once, in [`SERIES`] order whatever the order of the arguments.
fn select(choices: &[KernelChoice]) -> Vec<&'static Series> {
    let all = choices.contains(&KernelChoice::All);
    SERIES
        .iter()
        .filter(|series| all || choices.contains(&KernelChoice::One(series)))
        .collect()
}

/// The integration tests that run in the VM, by their `--test` name: the datapath, and its
/// attachments outliving the agent (TC mode without TCX is a netlink filter). The runtime and
/// atomicity tests stay on the host: they exercise the agent's control plane, not the kernel.
const TEST_BINARIES: [&str; 4] = ["kernel", "differential", "lab", "attachments"];

/// The differential test's packet count inside a VM. The host runs 120,000; under TCG that takes
/// minutes per kernel, and the matrix must stay well under CI's budget. The issue sets 20,000
/// as the floor.
const VM_DIFFERENTIAL_PACKETS: u32 = 20_000;

/// Bound on one test binary inside the guest. The slowest measured cell (kernel tests on 6.1)
/// took about 150 s.
const BINARY_TIMEOUT: Duration = Duration::from_secs(420);

/// Bound on one whole VM run: a boot (about 40 s under TCG) plus every binary at its bound.
const VM_TIMEOUT: Duration =
    Duration::from_secs(120 + BINARY_TIMEOUT.as_secs() * TEST_BINARIES.len() as u64);

/// Marks the guest script's lines that the host parses; everything else is test output.
const RESULT_MARK: &str = "director-fw-vm: result ";

/// The default cache, outside the repository so that every worktree and CI clone shares it.
const DEFAULT_CACHE: &str = "/var/cache/director-fw-kernels";

/// Runs the VM test binaries on each chosen kernel and prints the matrix.
///
/// Under `CI=true` a kernel that cannot be fetched is an error; elsewhere (a laptop without
/// the archive, say) it is skipped with a warning and shown as skipped in the matrix.
pub fn run(env: &Env, choices: &[KernelChoice]) -> Result<()> {
    let ci = std::env::var("CI").is_ok_and(|value| value == "true");
    let cache = Cache::open()?;
    let vng = bootstrap::ensure_vm_runner(&cache.root.join("venv"))?;
    // Every kernel is fetched before anything is built, so a missing one fails fast.
    let mut rows = Vec::new();
    for series in select(choices) {
        rows.push(fetch_row(&cache, series, ci)?);
    }
    if rows.iter().any(|row| row.kernel.is_some()) {
        let binaries = build_test_binaries(env)?;
        let staged = Staged::new(&cache, &binaries, &env.workspace)?;
        let logs = logs_dir(env)?;
        for row in &mut rows {
            if let Some(kernel) = &row.kernel {
                let log = logs.join(format!("{}.log", kernel.release));
                row.vm = Some(boot(&vng, &cache, kernel, &staged, &log)?);
            }
        }
    }

    eprintln!("{}", render_matrix(&rows));
    let failed: Vec<&str> = rows
        .iter()
        .filter(|row| row.failed())
        .map(|row| row.series.version)
        .collect();
    if !failed.is_empty() {
        bail!(
            "the tests failed on kernel {} (guest output in {})",
            failed.join(", "),
            logs_dir(env)?.display()
        );
    }
    Ok(())
}

/// A matrix row with its kernel fetched, or skipped (outside CI) because it could not be.
fn fetch_row(cache: &Cache, series: &'static Series, ci: bool) -> Result<Row> {
    let started = Instant::now();
    match fetch(cache, series) {
        Ok(kernel) => Ok(Row {
            series,
            fetched: (!kernel.was_cached).then(|| started.elapsed()),
            kernel: Some(kernel),
            vm: None,
            skipped: None,
        }),
        Err(err) if !ci => {
            eprintln!(
                "xtask: warning: skipping kernel {}: {err:#}",
                series.version
            );
            Ok(Row::skipped(series, format!("{err:#}")))
        }
        Err(err) => Err(err.context(format!(
            "kernel {} cannot be tested (CI=true: a kernel that cannot be fetched fails the run)",
            series.version
        ))),
    }
}

/// `target/kernel-matrix`, where each VM's output is saved as `RELEASE.log`.
fn logs_dir(env: &Env) -> Result<PathBuf> {
    let logs = crate::build::target_dir(env).join("kernel-matrix");
    fs::create_dir_all(&logs).with_context(|| format!("could not create {}", logs.display()))?;
    Ok(logs)
}

/// The kernel cache: extracted kernels, the private bullseye apt state, virtme-ng's venv and
/// the files of the current run.
struct Cache {
    root: PathBuf,
}

impl Cache {
    /// `DIRECTOR_FW_KERNEL_CACHE` moves the cache (for a machine whose /var is small).
    fn open() -> Result<Cache> {
        let root = std::env::var_os("DIRECTOR_FW_KERNEL_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE));
        let cache = Cache { root };
        for dir in [cache.kernels(), cache.downloads()] {
            fs::create_dir_all(&dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
        }
        Ok(cache)
    }

    /// One folder per kernel release, each the extracted package (`boot/`, `lib/modules/`).
    fn kernels(&self) -> PathBuf {
        self.root.join("kernels")
    }

    /// Where `apt-get download` puts the packages; each is deleted once extracted.
    fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }
}

/// An extracted kernel, ready to boot.
struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-57-amd64`.
    release: String,
    /// The extracted package.
    dir: PathBuf,
    was_cached: bool,
}

impl Kernel {
    fn image(&self) -> PathBuf {
        self.dir
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }
}

/// The newest cached kernel of `series`, or the newest one apt offers, downloaded and extracted.
fn fetch(cache: &Cache, series: &Series) -> Result<Kernel> {
    let cached = bootstrap::list_dir(&cache.kernels())?;
    if let Some(release) = newest_cached(series, &cached) {
        let dir = cache.kernels().join(&release);
        return Ok(Kernel {
            release,
            dir,
            was_cached: true,
        });
    }
    let apt = Apt::for_origin(cache, series.origin)?;
    let (package, deb) = download_newest(&apt, series, &cache.downloads())?;
    let release = release_of_package(series, &package)
        .with_context(|| format!("{package} names no kernel release"))?;
    let dir = extract(&deb, &cache.kernels(), &release)
        .with_context(|| format!("could not unpack {package}"))?;
    Ok(Kernel {
        release,
        dir,
        was_cached: false,
    })
}

/// apt, with either the system's configuration or the private bullseye one.
struct Apt {
    /// `-o` options that redirect sources, lists and cache; empty for the system's apt.
    options: Vec<String>,
    origin: Origin,
}

impl Apt {
    fn for_origin(cache: &Cache, origin: Origin) -> Result<Apt> {
        let options = match origin {
            Origin::System => Vec::new(),
            Origin::Bullseye => bullseye_options(&cache.root.join("bullseye"))?,
        };
        Ok(Apt { options, origin })
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        for option in &self.options {
            cmd.args(["-o", option]);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// Refreshes the lists: the system's through the bootstrap, which does it at most once
    /// per xtask run, the private ones directly.
    fn update(&self) -> Result<()> {
        match self.origin {
            Origin::System => bootstrap::apt_update_once(),
            Origin::Bullseye => process::run(self.command("apt-get").args(["-q", "update"]))
                .context("could not update the private bullseye package lists"),
        }
    }

    /// The newest package of `series` in the current lists, if any.
    fn newest_package(&self, series: &Series) -> Result<Option<String>> {
        let found = process::capture(self.command("apt-cache").args([
            "search",
            "--names-only",
            &series.package_regex(),
        ]))?;
        Ok(newest_package(series, &found))
    }
}

/// Writes the private bullseye sources file and returns the apt options that use it, with
/// lists and cache of its own. The archive is the one the system's sources name, so the
/// machine's mirror choice carries over.
fn bullseye_options(dir: &Path) -> Result<Vec<String>> {
    const SYSTEM_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
    let system = fs::read_to_string(SYSTEM_SOURCES)
        .with_context(|| format!("could not read {SYSTEM_SOURCES} to find the Debian archive"))?;
    let (archive, security) = archive_uris(&system)
        .with_context(|| format!("{SYSTEM_SOURCES} has no Debian archive with a URIs: line"))?;
    let lists = dir.join("lists");
    let apt_cache = dir.join("apt-cache");
    for partial in [lists.join("partial"), apt_cache.join("archives/partial")] {
        fs::create_dir_all(&partial)
            .with_context(|| format!("could not create {}", partial.display()))?;
    }
    let sources = dir.join("sources.list");
    let key = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let text = format!(
        "deb [signed-by={key}] {archive} bullseye main\n\
         deb [signed-by={key}] {security} bullseye-security main\n"
    );
    fs::write(&sources, text).with_context(|| format!("could not write {}", sources.display()))?;
    Ok(vec![
        format!("Dir::Etc::SourceList={}", sources.display()),
        // An empty parts folder, so none of the system's sources leak in.
        "Dir::Etc::SourceParts=/nonexistent".to_owned(),
        format!("Dir::State::Lists={}", lists.display()),
        format!("Dir::Cache={}", apt_cache.display()),
    ])
}

/// The main and security archive URIs from a deb822 sources file. The security one is the
/// stanza whose suites end in `-security`; without one, Debian's layout (`URI-security`).
fn archive_uris(deb822: &str) -> Option<(String, String)> {
    let mut main = None;
    let mut security = None;
    for stanza in deb822.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .filter(|line| !line.starts_with('#'))
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.split_whitespace().next())
        };
        let (Some(uri), Some(suite)) = (field("URIs:"), field("Suites:")) else {
            continue;
        };
        let slot = if suite.ends_with("-security") {
            &mut security
        } else {
            &mut main
        };
        slot.get_or_insert_with(|| uri.trim_end_matches('/').to_owned());
    }
    let main = main?;
    let security = security.unwrap_or_else(|| format!("{main}-security"));
    Some((main, security))
}

/// Downloads the newest package of `series`. If the lists are missing, stale (a package that
/// is no longer in the archive) or have no such kernel, refreshes them once and tries again.
fn download_newest(apt: &Apt, series: &Series, dir: &Path) -> Result<(String, PathBuf)> {
    match try_download(apt, series, dir) {
        Ok(found) => Ok(found),
        Err(err) => {
            eprintln!("xtask: {err:#}; refreshing the package lists and trying again");
            apt.update()?;
            try_download(apt, series, dir)
        }
    }
}

fn try_download(apt: &Apt, series: &Series, dir: &Path) -> Result<(String, PathBuf)> {
    let package = apt.newest_package(series)?.with_context(|| {
        format!(
            "the package lists have no {} (kernel {})",
            series.package_pattern(),
            series.version
        )
    })?;
    eprintln!("xtask: downloading {package}");
    process::run(
        apt.command("apt-get")
            // The download folder is root's; without this apt warns that its `_apt` user
            // cannot write there, which reads like an error in a CI log.
            .args(["-o", "APT::Sandbox::User=root"])
            .args(["-q", "download", &package])
            .current_dir(dir),
    )
    .with_context(|| format!("could not download {package}"))?;
    let prefix = format!("{package}_");
    let deb = bootstrap::list_dir(dir)?
        .into_iter()
        .find(|name| name.starts_with(&prefix) && name.ends_with(".deb"))
        .with_context(|| {
            format!(
                "apt-get download left no {package}_*.deb in {}",
                dir.display()
            )
        })?;
    Ok((package, dir.join(deb)))
}

/// Unpacks `deb` into `kernels/RELEASE` (through a temporary folder, so an interrupted
/// unpack is never mistaken for a cached kernel) and deletes the package.
fn extract(deb: &Path, kernels: &Path, release: &str) -> Result<PathBuf> {
    let partial = kernels.join(format!(".{release}.partial"));
    let dir = kernels.join(release);
    if partial.exists() {
        fs::remove_dir_all(&partial)
            .with_context(|| format!("could not remove {}", partial.display()))?;
    }
    process::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial))?;
    let image = partial.join("boot").join(format!("vmlinuz-{release}"));
    if !image.is_file() {
        bail!("{} has no boot/vmlinuz-{release}", deb.display());
    }
    fs::rename(&partial, &dir)
        .with_context(|| format!("could not move {} to {}", partial.display(), dir.display()))?;
    fs::remove_file(deb).with_context(|| format!("could not remove {}", deb.display()))?;
    Ok(dir)
}

const IMAGE_PREFIX: &str = "linux-image-";
const IMAGE_SUFFIX: &str = "-amd64-unsigned";

impl Series {
    /// For messages: the packages this series looks for.
    fn package_pattern(&self) -> String {
        format!("{IMAGE_PREFIX}{}.*{IMAGE_SUFFIX}", self.version)
    }

    /// For `apt-cache search`: a first filter, [`release_of_package`] decides.
    fn package_regex(&self) -> String {
        let version = self.version.replace('.', "\\.");
        format!("^{IMAGE_PREFIX}{version}\\..*{IMAGE_SUFFIX}$")
    }

    /// True when `upstream` (`6.1.0-57`, `6.12.117+deb12`) is a generic kernel of this series:
    /// its version starts with this major.minor (6.1 must not take 6.12), and anything after
    /// it is a numeric ABI, not a flavour such as `cloud` or `rt`.
    fn owns(&self, upstream: &str) -> bool {
        let mut parts = upstream.split('-');
        let version = parts.next().unwrap_or_default();
        let only_abi =
            parts.all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
        let base = version.split('+').next().unwrap_or_default();
        let mut components = base.split('.');
        only_abi
            && self
                .version
                .split('.')
                .all(|wanted| components.next() == Some(wanted))
    }
}

/// The release (`uname -r`) a kernel package installs: `linux-image-6.1.0-57-amd64-unsigned`
/// gives `6.1.0-57-amd64`. None for other series and other flavours.
fn release_of_package(series: &Series, package: &str) -> Option<String> {
    let upstream = package
        .strip_prefix(IMAGE_PREFIX)?
        .strip_suffix(IMAGE_SUFFIX)?;
    series.owns(upstream).then(|| format!("{upstream}-amd64"))
}

/// The newest package of `series` in `apt-cache search` output (`NAME - DESCRIPTION` lines).
fn newest_package(series: &Series, search: &str) -> Option<String> {
    search
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| release_of_package(series, name).is_some())
        .max_by_key(|name| version_key(name))
        .map(str::to_owned)
}

/// The newest cached release of `series`, from the names of the folders in the cache.
fn newest_cached(series: &Series, names: &[String]) -> Option<String> {
    names
        .iter()
        .filter(|name| {
            name.strip_suffix("-amd64")
                .is_some_and(|upstream| series.owns(upstream))
        })
        .max_by_key(|name| version_key(name))
        .cloned()
}

/// The numbers in a name, in order: `6.12.117+deb12` gives [6, 12, 117, 12], so ABI 57 sorts
/// after ABI 9 and 6.12.117 after 6.12.99, where a string comparison would not.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|run| !run.is_empty())
        .filter_map(|run| run.parse().ok())
        .collect()
}

/// Builds the VM's test binaries once, in release (the debug differential test did not
/// finish in 300 s under TCG), and returns them by `--test` name.
fn build_test_binaries(env: &Env) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = env.cargo();
    cmd.args(["test", "--release", "-p", "director-fw"]);
    for name in TEST_BINARIES {
        cmd.args(["--test", name]);
    }
    // Cargo's progress stays on the terminal; the JSON on stdout names the executables.
    cmd.args(["--no-run", "--message-format=json"])
        .stderr(Stdio::inherit());
    eprintln!(
        "xtask: ==> building the VM's test binaries: {}",
        process::describe(&cmd)
    );
    let messages = process::capture(&mut cmd).context("could not build the VM's test binaries")?;
    let found = test_executables(&messages);
    for name in TEST_BINARIES {
        if !found.iter().any(|(built, _)| built == name) {
            bail!("cargo built no executable for the `{name}` test");
        }
    }
    Ok(found)
}

/// The test executables in cargo's `--message-format=json` output, by target name.
fn test_executables(messages: &str) -> Vec<(String, PathBuf)> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["profile"]["test"] == true)
        .filter_map(|message| {
            let name = message["target"]["name"].as_str()?;
            let executable = message["executable"].as_str()?;
            Some((name.to_owned(), PathBuf::from(executable)))
        })
        .collect()
}

/// The test binaries and the guest script, copied into the cache for one xtask run: the guest
/// sees the cache (`--rodir`), and a copy cannot change under a VM when cargo rebuilds.
/// Removed on drop.
struct Staged {
    dir: PathBuf,
    script: PathBuf,
}

impl Staged {
    fn new(cache: &Cache, binaries: &[(String, PathBuf)], workspace: &Path) -> Result<Staged> {
        let dir = cache.root.join("runs").join(std::process::id().to_string());
        if dir.exists() {
            fs::remove_dir_all(&dir)
                .with_context(|| format!("could not remove {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        let staged = Staged {
            script: dir.join("guest-tests.sh"),
            dir,
        };
        for (name, binary) in binaries {
            let copy = staged.dir.join(name);
            fs::copy(binary, &copy).with_context(|| {
                format!("could not copy {} to {}", binary.display(), copy.display())
            })?;
        }
        // The tests run from the package folder, as under `cargo test`.
        let package = workspace.join("director-fw");
        let script = guest_script(&staged.dir, &package);
        fs::write(&staged.script, script)
            .with_context(|| format!("could not write {}", staged.script.display()))?;
        Ok(staged)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Best effort: a leftover folder only costs space, and the next run with the same
        // process id replaces it.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The VM's only command. It prints one [`RESULT_MARK`] line per test binary, which the host
/// parses; a binary that prints none (the VM died or timed out) counts as failed.
fn guest_script(bin_dir: &Path, package_dir: &Path) -> String {
    let binaries = TEST_BINARIES.join(" ");
    let bin_dir = shell_quote(&bin_dir.to_string_lossy());
    let package_dir = shell_quote(&package_dir.to_string_lossy());
    let timeout = BINARY_TIMEOUT.as_secs();
    format!(
        r#"#!/bin/sh
# Written by `cargo xtask test --kernel`; runs as root inside the VM.
echo "director-fw-vm: kernel $(uname -r)"
# virtme-ng mounts no bpffs, and the tests pin maps there.
mount -t bpf bpf /sys/fs/bpf || echo "director-fw-vm: could not mount bpffs"
# CI=true: a test that cannot run fails instead of skipping.
export CI=true DIRECTOR_FW_DIFFERENTIAL_PACKETS={VM_DIFFERENTIAL_PACKETS}
cd {package_dir} || exit 1
failed=0
for name in {binaries}; do
    echo "director-fw-vm: running $name"
    start=$(date +%s%N)
    # --nocapture: a binary stopped by the timeout never prints its failures summary, so
    # each test's output and panic must appear as it happens.
    timeout --kill-after=10 {timeout} {bin_dir}/"$name" --test-threads=1 --nocapture
    code=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    if [ "$code" -eq 0 ]; then verdict=PASS; else verdict=FAIL; failed=1; fi
    echo "{RESULT_MARK}$name $verdict exit=$code ms=$ms"
done
exit $failed
"#
    )
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// What one VM run produced.
struct VmRun {
    took: Duration,
    /// vng's exit status (the guest script's); None if it was killed by a signal.
    exit: Option<i32>,
    results: BTreeMap<String, Outcome>,
}

/// One test binary's result line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    passed: bool,
    exit: i32,
    took: Duration,
}

/// Boots `kernel` under TCG and runs the guest script, showing the guest's output and saving
/// it to `log`.
fn boot(vng: &Path, cache: &Cache, kernel: &Kernel, staged: &Staged, log: &Path) -> Result<VmRun> {
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=30")
        .arg(VM_TIMEOUT.as_secs().to_string())
        .arg(vng)
        // The KVM here runs only PVM kernels; stock ones hang or stop under it.
        .arg("--disable-kvm")
        // No virtiofsd on these machines.
        .arg("--force-9p")
        .args(["-p", "2", "-m", "2G"])
        .args(["--overlay-rwdir", "/var"])
        // The guest mounts tmpfs over /var/cache: without this it would not see the cache,
        // nor, through it, the kernel's modules (veth, sch_ingress, cls_bpf).
        .arg("--rodir")
        .arg(&cache.root)
        .arg("--run")
        .arg(kernel.image())
        .arg("--exec")
        .arg(format!("/bin/sh {}", staged.script.display()))
        // vng wires stdin into the guest.
        .stdin(Stdio::null());
    // vng starts its sibling `virtme-run` through PATH, so the venv's bin folder goes first.
    if let Some(bin) = vng.parent() {
        cmd.env("PATH", with_first_on_path(bin)?);
    }
    // One pipe for stdout and stderr. Never a file: qemu reopens its stdout at offset 0 and
    // would overwrite what the guest printed.
    let (reader, writer) = std::io::pipe().context("could not create a pipe for vng")?;
    cmd.stdout(writer.try_clone().context("could not duplicate the pipe")?)
        .stderr(writer);
    eprintln!(
        "xtask: ==> kernel {} under qemu (TCG, bounded at {} s): {}",
        kernel.release,
        VM_TIMEOUT.as_secs(),
        process::describe(&cmd)
    );
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{}`", process::describe(&cmd)))?;
    // The Command holds the pipe's write ends; drop it or the read below never ends.
    drop(cmd);
    let output = tee(reader, log)?;
    let status = child.wait().context("could not wait for vng")?;
    let took = started.elapsed();
    if status.code() == Some(124) {
        eprintln!(
            "xtask: kernel {}: the VM run hit its {} s bound",
            kernel.release,
            VM_TIMEOUT.as_secs()
        );
    }
    Ok(VmRun {
        took,
        exit: status.code(),
        results: parse_results(&output),
    })
}

/// PATH with `dir` in front.
fn with_first_on_path(dir: &Path) -> Result<std::ffi::OsString> {
    let old = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&old));
    std::env::join_paths(dirs).with_context(|| format!("cannot put {} on PATH", dir.display()))
}

/// Copies the VM's output to our stderr and to `log`, and returns it.
fn tee(reader: std::io::PipeReader, log: &Path) -> Result<String> {
    let mut file =
        fs::File::create(log).with_context(|| format!("could not create {}", log.display()))?;
    let mut reader = BufReader::new(reader);
    let mut output = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .context("could not read the VM's output")?;
        if read == 0 {
            break;
        }
        // Best effort on the terminal; the log and the parsed copy are what count.
        let _ = std::io::stderr().write_all(&line);
        file.write_all(&line)
            .with_context(|| format!("could not write {}", log.display()))?;
        output.extend_from_slice(&line);
    }
    Ok(String::from_utf8_lossy(&output).into_owned())
}

/// The result lines in the guest's output, by binary. The serial console may add `\r` or
/// other text before the mark, so the mark is searched anywhere in the line.
fn parse_results(output: &str) -> BTreeMap<String, Outcome> {
    output
        .lines()
        .filter_map(|line| line.split_once(RESULT_MARK).map(|(_, rest)| rest))
        .filter_map(parse_result)
        .collect()
}

/// `kernel PASS exit=0 ms=97123` (the text after [`RESULT_MARK`]).
fn parse_result(text: &str) -> Option<(String, Outcome)> {
    let mut fields = text.split_whitespace();
    let name = fields.next()?;
    let passed = match fields.next()? {
        "PASS" => true,
        "FAIL" => false,
        _ => return None,
    };
    let exit: i32 = fields.next()?.strip_prefix("exit=")?.parse().ok()?;
    let ms: u64 = fields.next()?.strip_prefix("ms=")?.parse().ok()?;
    // A PASS with a non-zero exit would be a bug in the script; believe the exit code.
    let outcome = Outcome {
        passed: passed && exit == 0,
        exit,
        took: Duration::from_millis(ms),
    };
    Some((name.to_owned(), outcome))
}

/// One line of the matrix.
struct Row {
    series: &'static Series,
    kernel: Option<Kernel>,
    /// How long fetching took; None when the kernel was cached.
    fetched: Option<Duration>,
    vm: Option<VmRun>,
    /// Why the kernel was not tested (outside CI only).
    skipped: Option<String>,
}

impl Row {
    fn skipped(series: &'static Series, why: String) -> Row {
        Row {
            series,
            kernel: None,
            fetched: None,
            vm: None,
            skipped: Some(why),
        }
    }

    /// A skipped kernel is not a failure (outside CI only; in CI it is an error earlier).
    fn failed(&self) -> bool {
        self.vm.as_ref().is_some_and(|vm| {
            TEST_BINARIES
                .iter()
                .any(|name| !vm.results.get(*name).is_some_and(|outcome| outcome.passed))
        })
    }
}

/// The matrix: one row per kernel, one column per test binary, with wall times.
fn render_matrix(rows: &[Row]) -> String {
    let mut text = format!(
        "xtask: kernel matrix (qemu TCG, release test binaries, differential with {VM_DIFFERENTIAL_PACKETS} packets)\n"
    );
    let _ = write!(text, "  {:<24}", "kernel");
    for name in TEST_BINARIES {
        let _ = write!(text, " {name:<14}");
    }
    let _ = writeln!(text, " {:<8} fetch", "VM run");
    for row in rows {
        let release = row
            .kernel
            .as_ref()
            .map_or(row.series.version, |kernel| kernel.release.as_str());
        let _ = write!(text, "  {release:<24}");
        match (&row.vm, &row.skipped) {
            (Some(vm), _) => {
                for name in TEST_BINARIES {
                    let _ = write!(text, " {:<14}", cell(vm.results.get(name)));
                }
                let fetched = row
                    .fetched
                    .map_or("cached".to_owned(), |took| format!("{} s", took.as_secs()));
                let exit = match vm.exit {
                    Some(124) => " (timed out)".to_owned(),
                    Some(_) => String::new(),
                    None => " (killed)".to_owned(),
                };
                let _ = writeln!(
                    text,
                    " {:<8} {fetched}{exit}",
                    format!("{} s", vm.took.as_secs())
                );
            }
            (None, why) => {
                let why = why.as_deref().unwrap_or("not run");
                let _ = writeln!(text, " SKIPPED: {why}");
            }
        }
    }
    text
}

fn cell(outcome: Option<&Outcome>) -> String {
    match outcome {
        Some(outcome) if outcome.passed => format!("pass {} s", outcome.took.as_secs()),
        // `timeout`'s status: the binary hit BINARY_TIMEOUT.
        Some(outcome) if outcome.exit == 124 => format!("TIMEOUT {} s", outcome.took.as_secs()),
        Some(outcome) => format!("FAIL {} s", outcome.took.as_secs()),
        None => "NO RESULT".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(version: &str) -> &'static Series {
        match parse_choice(version) {
            Ok(KernelChoice::One(series)) => series,
            other => panic!("{version} parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_kernel_choices() {
        assert_eq!(parse_choice("all"), Ok(KernelChoice::All));
        assert_eq!(series("6.1").version, "6.1");
        assert_eq!(series("5.10").origin, Origin::Bullseye);
        let err = parse_choice("6.6").unwrap_err();
        assert!(err.contains("5.10") && err.contains("all"), "{err}");
        assert!(parse_choice("6").is_err());
        assert!(parse_choice("6.12.117").is_err());
    }

    #[test]
    fn selects_each_kernel_once_newest_first() {
        let versions = |choices: &[KernelChoice]| -> Vec<&str> {
            select(choices)
                .iter()
                .map(|series| series.version)
                .collect()
        };
        let one = |version| KernelChoice::One(series(version));
        assert_eq!(
            versions(&[one("5.10"), one("6.12"), one("5.10")]),
            ["6.12", "5.10"]
        );
        assert_eq!(
            versions(&[one("6.1"), KernelChoice::All]),
            ["6.12", "6.1", "5.10"]
        );
        assert!(versions(&[]).is_empty());
    }

    #[test]
    fn reads_releases_from_package_names() {
        let release = |version, package| release_of_package(series(version), package);
        assert_eq!(
            release("6.1", "linux-image-6.1.0-57-amd64-unsigned").as_deref(),
            Some("6.1.0-57-amd64")
        );
        assert_eq!(
            release("6.12", "linux-image-6.12.117+deb12-amd64-unsigned").as_deref(),
            Some("6.12.117+deb12-amd64")
        );
        // 6.1 must not take 6.12, nor other flavours, nor the signed or debug packages.
        assert_eq!(
            release("6.1", "linux-image-6.12.117+deb12-amd64-unsigned"),
            None
        );
        assert_eq!(
            release("6.1", "linux-image-6.1.0-57-cloud-amd64-unsigned"),
            None
        );
        assert_eq!(
            release("6.1", "linux-image-6.1.0-57-rt-amd64-unsigned"),
            None
        );
        assert_eq!(release("6.1", "linux-image-6.1.0-57-amd64"), None);
        assert_eq!(release("6.1", "linux-image-6.1.0-57-amd64-dbg"), None);
        assert_eq!(release("5.10", "linux-image-amd64-unsigned"), None);
    }

    #[test]
    fn picks_the_newest_package() {
        let search = "linux-image-6.1.0-9-amd64-unsigned - Linux 6.1 for 64-bit PCs\n\
            linux-image-6.1.0-57-amd64-unsigned - Linux 6.1 for 64-bit PCs\n\
            linux-image-6.1.0-58-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud\n\
            linux-image-6.1.0-56-amd64-unsigned - Linux 6.1 for 64-bit PCs\n\
            linux-image-6.12.99+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs\n\
            linux-image-6.12.117+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs\n\
            linux-image-6.12.118+deb12-rt-amd64-unsigned - Linux 6.12, PREEMPT_RT\n";
        assert_eq!(
            newest_package(series("6.1"), search).as_deref(),
            Some("linux-image-6.1.0-57-amd64-unsigned")
        );
        assert_eq!(
            newest_package(series("6.12"), search).as_deref(),
            Some("linux-image-6.12.117+deb12-amd64-unsigned")
        );
        assert_eq!(newest_package(series("5.10"), search), None);
        assert_eq!(newest_package(series("5.10"), ""), None);
    }

    #[test]
    fn picks_the_newest_cached_kernel() {
        let names: Vec<String> = [
            "6.1.0-9-amd64",
            "6.1.0-57-amd64",
            ".6.1.0-58-amd64.partial",
            "6.12.117+deb12-amd64",
            "5.10.0-46-amd64",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            newest_cached(series("6.1"), &names).as_deref(),
            Some("6.1.0-57-amd64")
        );
        assert_eq!(
            newest_cached(series("6.12"), &names).as_deref(),
            Some("6.12.117+deb12-amd64")
        );
        assert_eq!(
            newest_cached(series("5.10"), &names).as_deref(),
            Some("5.10.0-46-amd64")
        );
        assert_eq!(newest_cached(series("5.10"), &[]), None);
    }

    #[test]
    fn reads_archive_uris_from_deb822() {
        let sources = "Types: deb\n\
            # http://snapshot.example/archive/debian/20250520T000000Z\n\
            URIs: http://mirror.example/debian/\n\
            Suites: bookworm bookworm-updates\n\
            Components: main\n\
            \n\
            Types: deb\n\
            URIs: http://security.example/debian-security\n\
            Suites: bookworm-security\n\
            Components: main\n";
        assert_eq!(
            archive_uris(sources),
            Some((
                "http://mirror.example/debian".to_owned(),
                "http://security.example/debian-security".to_owned()
            ))
        );
        // Without a security stanza, Debian's layout.
        let main_only = "URIs: http://mirror.example/debian\nSuites: bookworm\n";
        assert_eq!(
            archive_uris(main_only),
            Some((
                "http://mirror.example/debian".to_owned(),
                "http://mirror.example/debian-security".to_owned()
            ))
        );
        assert_eq!(archive_uris("Types: deb\n"), None);
    }

    #[test]
    fn finds_test_executables_in_cargo_json() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"director_fw","kind":["lib"]},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","target":{"name":"kernel","kind":["test"]},"profile":{"test":true},"executable":"/w/target/release/deps/kernel-0a1b"}
{"reason":"compiler-artifact","target":{"name":"director-fw","kind":["bin"]},"profile":{"test":false},"executable":"/w/target/release/director-fw"}
{"reason":"build-finished","success":true}
not json
{"reason":"compiler-artifact","target":{"name":"lab","kind":["test"]},"profile":{"test":true},"executable":"/w/target/release/deps/lab-2c3d"}"#;
        assert_eq!(
            test_executables(messages),
            vec![
                (
                    "kernel".to_owned(),
                    PathBuf::from("/w/target/release/deps/kernel-0a1b")
                ),
                (
                    "lab".to_owned(),
                    PathBuf::from("/w/target/release/deps/lab-2c3d")
                ),
            ]
        );
    }

    #[test]
    fn parses_guest_results() {
        let output = "director-fw-vm: kernel 6.1.0-57-amd64\n\
            test result: ok. 17 passed; 0 failed\n\
            director-fw-vm: result kernel PASS exit=0 ms=147250\r\n\
            [  200.1] veth0: link up director-fw-vm: result lab FAIL exit=101 ms=63000\n\
            director-fw-vm: result differential PASS exit=1 ms=5\n\
            director-fw-vm: result broken PASS\n";
        let results = parse_results(output);
        assert_eq!(
            results.get("kernel"),
            Some(&Outcome {
                passed: true,
                exit: 0,
                took: Duration::from_millis(147_250)
            })
        );
        assert_eq!(
            results.get("lab").map(|outcome| outcome.passed),
            Some(false)
        );
        // The exit code wins over the word.
        assert_eq!(
            results.get("differential").map(|outcome| outcome.passed),
            Some(false)
        );
        assert!(!results.contains_key("broken"));
    }

    #[test]
    fn a_missing_result_fails_the_row() {
        let outcome = |passed| Outcome {
            passed,
            exit: if passed { 0 } else { 1 },
            took: Duration::from_secs(3),
        };
        let row = |results: &[(&str, bool)]| Row {
            series: series("6.1"),
            kernel: Some(Kernel {
                release: "6.1.0-57-amd64".to_owned(),
                dir: PathBuf::from("/cache/kernels/6.1.0-57-amd64"),
                was_cached: true,
            }),
            fetched: None,
            vm: Some(VmRun {
                took: Duration::from_secs(200),
                exit: Some(0),
                results: results
                    .iter()
                    .map(|(name, passed)| ((*name).to_owned(), outcome(*passed)))
                    .collect(),
            }),
            skipped: None,
        };
        let all = row(&[
            ("kernel", true),
            ("differential", true),
            ("lab", true),
            ("attachments", true),
        ]);
        assert!(!all.failed());
        assert!(row(&[("kernel", true), ("differential", true)]).failed());
        assert!(row(&[
            ("kernel", true),
            ("differential", true),
            ("lab", true),
            ("attachments", false)
        ])
        .failed());
        assert!(!Row::skipped(series("5.10"), "offline".to_owned()).failed());
        let matrix = render_matrix(&[all, Row::skipped(series("5.10"), "offline".to_owned())]);
        assert!(matrix.contains("6.1.0-57-amd64"), "{matrix}");
        assert!(matrix.contains("pass 3 s"), "{matrix}");
        assert!(matrix.contains("SKIPPED: offline"), "{matrix}");
        let timed_out = Outcome {
            passed: false,
            exit: 124,
            took: Duration::from_secs(420),
        };
        assert_eq!(cell(Some(&timed_out)), "TIMEOUT 420 s");
        assert_eq!(cell(None), "NO RESULT");
    }

    #[test]
    fn guest_script_reports_every_binary() {
        let script = guest_script(Path::new("/cache/runs/7"), Path::new("/w/director-fw"));
        assert!(script.contains("for name in kernel differential lab attachments; do"));
        assert!(script.contains(&format!("echo \"{RESULT_MARK}$name $verdict")));
        assert!(script.contains("DIRECTOR_FW_DIFFERENTIAL_PACKETS=20000"));
        assert!(script.contains("\"$name\" --test-threads=1 --nocapture"));
        assert!(script.contains("cd '/w/director-fw'"));
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
