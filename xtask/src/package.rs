//! `cargo xtask package`: the Debian package, built with dpkg-deb from the release binary and
//! `packaging/`, then checked: its contents, and its unit file with `systemd-analyze verify`
//! in a scratch root where the package is unpacked as dpkg would install it.
//!
//! It installs:
//! - `/usr/bin/director-fw`;
//! - `/usr/lib/systemd/system/director-fw@.service`, one agent per instance, reading
//!   `/etc/director-fw/NAME.toml` and `/etc/director-fw/NAME.env`;
//! - completions for bash, zsh and fish, and a man page per command, written by the binary
//!   itself;
//! - an example policy and environment file under `/usr/share/doc/director-fw/examples/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::bootstrap::Env;
use crate::process;

/// Where each generated or copied file goes, relative to the package root.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "usr/share/bash-completion/completions/director-fw"),
    ("zsh", "usr/share/zsh/vendor-completions/_director-fw"),
    (
        "fish",
        "usr/share/fish/vendor_completions.d/director-fw.fish",
    ),
];
const UNIT: &str = "usr/lib/systemd/system/director-fw@.service";
const BINARY: &str = "usr/bin/director-fw";
const MAN_DIR: &str = "usr/share/man/man1";
/// The main page and the page of `run`, which the unit names.
const MAN: [&str; 2] = [
    "usr/share/man/man1/director-fw.1.gz",
    "usr/share/man/man1/director-fw-run.1.gz",
];
const EXAMPLES: &str = "usr/share/doc/director-fw/examples";
const CONFIG_DIR: &str = "etc/director-fw";

/// Builds `target/package/director-fw_VERSION_ARCH.deb` from the release build.
pub fn build(env: &Env) -> Result<PathBuf> {
    let target = crate::build::target_dir(env);
    let binary = target.join("release").join("director-fw");
    ensure!(binary.is_file(), "{} is not built", binary.display());
    let version = env!("CARGO_PKG_VERSION");
    let arch = process::capture(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let out = target.join("package");
    let root = out.join(format!("director-fw_{version}_{arch}"));
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    }
    let put = |path: &str, bytes: &[u8], mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().context("a file has a folder")?)?;
        std::fs::write(&file, bytes).with_context(|| format!("writing {}", file.display()))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let packaging = env.workspace.join("packaging");
    let read = |name: &str| {
        std::fs::read(packaging.join(name)).with_context(|| format!("reading packaging/{name}"))
    };
    put(BINARY, &std::fs::read(&binary)?, 0o755)?;
    put(UNIT, &read("director-fw@.service")?, 0o644)?;
    put(
        &format!("{EXAMPLES}/example.toml"),
        &read("example.toml")?,
        0o644,
    )?;
    put(
        &format!("{EXAMPLES}/instance.env"),
        &read("instance.env")?,
        0o644,
    )?;
    put(
        "usr/share/doc/director-fw/copyright",
        b"director-fw\nLicense: MIT OR Apache-2.0\n",
        0o644,
    )?;
    for (shell, path) in COMPLETIONS {
        let text =
            process::capture(Command::new(&binary).args(["generate", "completions", shell]))?;
        put(path, text.as_bytes(), 0o644)?;
    }
    // A page per command, gzipped as Debian ships them.
    let pages = out.join("man");
    if pages.exists() {
        std::fs::remove_dir_all(&pages)?;
    }
    std::fs::create_dir_all(&pages)?;
    process::run(Command::new(&binary).args(["generate", "man"]).arg(&pages))?;
    for page in std::fs::read_dir(&pages)? {
        let page = page?.path();
        let name = page
            .file_name()
            .and_then(|n| n.to_str())
            .context("a page name")?;
        put(
            &format!("{MAN_DIR}/{name}.gz"),
            &gzip(&std::fs::read(&page)?)?,
            0o644,
        )?;
    }
    std::fs::remove_dir_all(&pages)?;
    // The C library the binary was linked against, as the least it needs.
    let libc =
        process::capture(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "libc6"]))?;
    let libc = libc.split(['-', '+']).next().unwrap_or("2.31").to_string();
    let control = format!(
        "Package: director-fw\nVersion: {version}\nArchitecture: {arch}\nMaintainer: director-fw developers <director-fw@localhost>\nDepends: libc6 (>= {libc})\nSection: net\nPriority: optional\nDescription: eBPF firewall for Lync Server 2013 / Skype for Business topologies\n Enforces Microsoft's Director and Edge port matrices in XDP or TC on Linux gateways, with\n peers changed at runtime, atomic policy changes and live counters.\n"
    );
    put("DEBIAN/control", control.as_bytes(), 0o644)?;
    put(
        "DEBIAN/postinst",
        b"#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n",
        0o755,
    )?;
    // Where the unit looks for each instance's policy and environment file.
    std::fs::create_dir_all(root.join(CONFIG_DIR))?;
    let deb = out.join(format!("director-fw_{version}_{arch}.deb"));
    process::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&root)
            .arg(&deb),
    )
    .context("building the Debian package")?;
    Ok(deb)
}

/// `gzip -9n`: the man page as Debian ships it.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running gzip")?;
    child
        .stdin
        .take()
        .context("gzip's stdin")?
        .write_all(bytes)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "gzip failed ({})", out.status);
    Ok(out.stdout)
}

/// Checks the package: every file is in it, and its unit passes `systemd-analyze verify` in a
/// scratch root where the package is unpacked (with `/bin/kill`, which the unit's reload uses).
pub fn verify(deb: &Path) -> Result<()> {
    let listing = process::capture(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    let mut expected = vec![BINARY, UNIT, CONFIG_DIR];
    expected.extend(MAN);
    expected.extend(COMPLETIONS.iter().map(|(_, path)| *path));
    for path in expected {
        ensure!(
            listing.contains(&format!("./{path}")),
            "the package lacks /{path}:\n{listing}"
        );
    }
    let scratch = deb.with_extension("root");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    process::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&scratch))?;
    std::fs::create_dir_all(scratch.join("bin"))?;
    std::fs::copy("/bin/kill", scratch.join("bin/kill")).context("copying /bin/kill")?;
    let version = process::capture(Command::new(scratch.join(BINARY)).arg("--version"))?;
    ensure!(
        version.contains("kernel object"),
        "the packaged binary's --version says {version:?}"
    );
    let status = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(format!("--root={}", scratch.display()))
        .arg("director-fw@example.service")
        .status()
        .context("running systemd-analyze verify")?;
    if !status.success() {
        bail!("systemd-analyze verify refused the unit (see above)");
    }
    std::fs::remove_dir_all(&scratch)?;
    eprintln!(
        "xtask: {} holds the binary, the unit, completions, the man pages and examples; the unit verifies",
        deb.display()
    );
    Ok(())
}
