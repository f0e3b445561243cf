//! Namespaces, commands and interfaces: what the bench does inside the lab's namespaces.

use std::{os::unix::process::CommandExt, process::Output};

use super::*;

/// Moves the calling thread (only) into network namespace `ns`, and checks it arrived.
pub(crate) fn enter_netns(ns: &str) -> Result<()> {
    let path = netns_path(ns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let target = file.metadata()?;
    // SAFETY: plain syscall on a valid, open fd; it changes only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns into {ns}"));
    }
    let now = fs::metadata("/proc/thread-self/ns/net")?;
    ensure!(
        (now.dev(), now.ino()) == (target.dev(), target.ino()),
        "thread did not end up in netns {ns}"
    );
    Ok(())
}

/// Runs `f` on a scoped thread inside `ns` (so `f` may borrow), and returns its result.
pub(crate) fn with_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_netns(ns)?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("thread in netns {ns} panicked"))?
    })
}

/// How long a helper command (ip, nft, iptables, xdp-filter) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts `cmd` in a process group of its own, so that a Ctrl-C at the terminal reaches only
/// the bench, which then cleans up with further commands that must not die too; waits at
/// most [`COMMAND_TIMEOUT`] for it, feeding `input`, and returns its output.
fn run_bounded(cmd: &mut Command, line: &str, input: Option<&str>) -> Result<Output> {
    cmd.process_group(0)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("running `{line}`"))?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().context("no stdin")?;
        stdin.write_all(text.as_bytes())?;
    }
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            // Our own child, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{line}` took longer than {COMMAND_TIMEOUT:?}; stopped it");
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(child.wait_with_output()?)
}

/// Runs `program args` inside `ns` (nsenter, network namespace only), feeding `input` on
/// stdin; returns stdout. Failures carry the command and its stderr.
pub(crate) fn run_in(
    ns: &str,
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String> {
    let line = format!("{program} {}", args.join(" "));
    let mut cmd = netns_command(ns, Path::new(program))?;
    cmd.args(args);
    let out = run_bounded(&mut cmd, &line, input).with_context(|| format!("in {ns}"))?;
    if !out.status.success() {
        bail!(
            "`{line}` in {ns} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    let out = run_bounded(
        Command::new("ip").args(&full),
        &format!("ip {}", full.join(" ")),
        None,
    )?;
    ensure!(
        out.status.success(),
        "`ip {}` failed: {}",
        full.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -j -s link show dev IFACE` inside `ns`.
pub(crate) fn link_json(ns: &str, iface: &str) -> Result<Value> {
    let out = ip_in(ns, &["-j", "-s", "link", "show", "dev", iface])?;
    let mut list: Vec<Value> = serde_json::from_str(&out).context("parsing ip -j output")?;
    ensure!(list.len() == 1, "no link {iface} in {ns}");
    Ok(list.remove(0))
}

pub(crate) fn mac_of(ns: &str, iface: &str) -> Result<[u8; 6]> {
    let link = link_json(ns, iface)?;
    let text = link["address"].as_str().context("no address")?;
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {text}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow!("MAC {text} is not 6 bytes"))
}

/// Received packets and receive drops of `iface` in `ns`.
pub(crate) fn rx_counters(ns: &str, iface: &str) -> Result<(u64, u64)> {
    let link = link_json(ns, iface)?;
    let rx = &link["stats64"]["rx"];
    Ok((
        rx["packets"].as_u64().context("no rx packets")?,
        rx["dropped"].as_u64().unwrap_or(0),
    ))
}

pub(crate) fn write_sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/net/{key}");
    let value = value.to_owned();
    with_netns(ns, || {
        fs::write(&path, &value).with_context(|| format!("writing {value} to {path}"))
    })
}
