//! Entering a network namespace without `ip netns exec` (whose private /sys hides bpffs).

use anyhow::{anyhow, bail, Context, Result};
use std::any::Any;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread;

/// `/run/netns/<ns>`, where `ip netns add` keeps the namespace.
pub fn netns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

fn open_netns(ns: &str) -> Result<File> {
    ensure_plain_name(ns)?;
    let path = netns_path(ns);
    File::open(&path).with_context(|| format!("opening network namespace {}", path.display()))
}

fn ensure_plain_name(ns: &str) -> Result<()> {
    if ns.is_empty() || ns.contains('/') || ns == "." || ns == ".." {
        bail!("{ns:?} is not a network namespace name");
    }
    Ok(())
}

/// Runs `f` on a new thread that has joined the network namespace `ns` (`setns` on
/// `/run/netns/<ns>` with `CLONE_NEWNET` only, so the mount namespace and bpffs stay shared)
/// and returns its result. The calling thread never changes namespace.
///
/// Sockets created inside `f` belong to `ns` for their whole life and may be returned and used
/// from any thread. `/proc/sys/net` also resolves against the thread's namespace, but
/// `/proc/self/net` does not (it follows the main thread): use `/proc/thread-self/net`.
/// A panic in `f` comes back as an error.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = open_netns(ns)?;
    let target = file
        .metadata()
        .with_context(|| format!("stat of netns {ns}"))?;
    let ns_name = ns.to_owned();
    let handle = thread::Builder::new()
        .name("dfw-lab-netns".into())
        .spawn(move || -> Result<T> {
            // SAFETY: plain syscall on a valid, open fd; it changes only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                return Err(anyhow!(err).context(format!("setns into netns {ns_name}")));
            }
            drop(file);
            // Make sure this thread really is in the namespace before running anything.
            let now = std::fs::metadata("/proc/thread-self/ns/net")
                .context("stat of /proc/thread-self/ns/net")?;
            if (now.dev(), now.ino()) != (target.dev(), target.ino()) {
                bail!("thread did not end up in netns {ns_name}");
            }
            f()
        })
        .context("spawning a thread")?;
    handle
        .join()
        .map_err(|payload| anyhow!("thread in netns {ns} panicked: {}", panic_text(&payload)))?
}

fn panic_text(payload: &Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

/// A [`Command`] that runs `program` inside `ns` by entering only its network namespace:
/// `nsenter --net=/run/netns/<ns> -- program`. Add arguments, stdio and environment as usual.
/// nsenter execs `program` without forking, so the child's PID is the program's PID.
pub fn netns_command(ns: &str, program: &Path) -> Result<Command> {
    ensure_plain_name(ns)?;
    let path = netns_path(ns);
    if !path.exists() {
        bail!("network namespace {} does not exist", path.display());
    }
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", path.display()))
        .arg("--")
        .arg(program);
    Ok(cmd)
}

/// Spawns `program args...` inside `ns` (see [`netns_command`]), inheriting stdio. The caller
/// owns the child: wait for it, or kill it by its PID.
pub fn spawn_in_netns(ns: &str, program: &Path, args: &[&str]) -> Result<Child> {
    netns_command(ns, program)?
        .args(args)
        .spawn()
        .with_context(|| format!("spawning {} in netns {ns} via nsenter", program.display()))
}
