//! Working inside a lab namespace from the outside: entering only its network namespace (never
//! `ip netns exec`, whose private /sys hides bpffs), running commands there with a time limit,
//! reading a link and writing sysctls; and the interrupt flag that lets a long-running user
//! of the lab unwind, so that its guards delete namespaces and pins.

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use std::any::Any;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

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
/// and returns its result. The calling thread never changes namespace. The thread is scoped,
/// so `f` may borrow from the caller (a program to attach, a flag to watch).
///
/// Sockets created inside `f` belong to `ns` for their whole life and may be returned and used
/// from any thread. `/proc/sys/net` also resolves against the thread's namespace, but
/// `/proc/self/net` does not (it follows the main thread): use `/proc/thread-self/net`.
/// A panic in `f` comes back as an error.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file = open_netns(ns)?;
    let target = file
        .metadata()
        .with_context(|| format!("stat of netns {ns}"))?;
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name("dfw-lab-netns".into())
            .spawn_scoped(scope, move || -> Result<T> {
                // SAFETY: plain syscall on a valid, open fd; it changes only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    let err = std::io::Error::last_os_error();
                    return Err(anyhow!(err).context(format!("setns into netns {ns}")));
                }
                drop(file);
                // Make sure this thread really is in the namespace before running anything.
                let now = std::fs::metadata("/proc/thread-self/ns/net")
                    .context("stat of /proc/thread-self/ns/net")?;
                if (now.dev(), now.ino()) != (target.dev(), target.ino()) {
                    bail!("thread did not end up in netns {ns}");
                }
                f()
            })
            .context("spawning a thread")?;
        handle
            .join()
            .map_err(|payload| anyhow!("thread in netns {ns} panicked: {}", panic_text(&payload)))?
    })
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

// ---------------------------------------------------------------------------------------------
// Commands with a time limit
// ---------------------------------------------------------------------------------------------

/// How long [`run_in_netns`] and [`ip_ns`](crate::ip_ns) let a command (ip, nft, ethtool,
/// xdp-filter, ...) run before they kill it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`run_bounded`] looks whether its child has exited.
const EXIT_POLL: Duration = Duration::from_millis(5);
/// How long [`run_bounded`] waits for the output of a child that exited, at least.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Runs `program args...` inside `ns` (see [`netns_command`]) with a time limit of
/// [`COMMAND_TIMEOUT`], feeding it `input` on stdin (else stdin is null), and returns its
/// stdout. It fails, naming the command and quoting its stderr, when the command cannot
/// start, exits unsuccessfully or runs too long (then it and its process group are killed).
///
/// The command runs in a process group of its own, so a Ctrl-C at the terminal reaches only
/// the caller (see [`InterruptGuard`]), whose cleanup commands then still run.
pub fn run_in_netns(ns: &str, program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let mut cmd = netns_command(ns, Path::new(program))?;
    cmd.args(args);
    let line = format!("{program} {}", args.join(" "));
    run_bounded(cmd, line.trim_end(), input, COMMAND_TIMEOUT)
        .with_context(|| format!("in netns {ns}"))
}

/// Runs `cmd` in a process group of its own and returns its stdout, as described for
/// [`run_in_netns`]; `line` names it in errors, and `timeout` bounds the whole run, output
/// included (with at least [`OUTPUT_GRACE`] for the output once the child exited). Stdin, stdout and stderr are served by threads of their own, so a command that
/// writes much before it reads its input cannot block on a full pipe.
pub(crate) fn run_bounded(
    mut cmd: Command,
    line: &str,
    input: Option<&str>,
    timeout: Duration,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    cmd.process_group(0)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| {
        let program = cmd.get_program().to_string_lossy();
        format!("running `{line}` (is {program} installed?)")
    })?;
    let started = (|| -> Result<_> {
        let fed = match (child.stdin.take(), input) {
            (Some(mut pipe), Some(text)) => {
                let text = text.to_owned();
                Some(on_thread(move || pipe.write_all(text.as_bytes()))?)
            }
            _ => None,
        };
        let stdout = child.stdout.take().context("stdout not piped")?;
        let stderr = child.stderr.take().context("stderr not piped")?;
        Ok((
            fed,
            on_thread(move || read_all(stdout))?,
            on_thread(move || read_all(stderr))?,
        ))
    })();
    // Without its readers the child could block on a full pipe: then it is stopped at once.
    let status = wait_until(
        &mut child,
        if started.is_ok() {
            deadline
        } else {
            Instant::now()
        },
    );
    let (fed, stdout, stderr) = started?;
    let status = status.with_context(|| format!("running `{line}`"))?;
    let Some(status) = status else {
        bail!("`{line}` took longer than {timeout:?}; stopped it");
    };
    // A child that exits without reading all of its input fails the write; its status says
    // more, so it is looked at first.
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(OUTPUT_GRACE)
    };
    let stderr = stderr.recv_timeout(left()).unwrap_or_default();
    if !status.success() {
        bail!(
            "`{line}` failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    if let Some(fed) = fed {
        fed.recv_timeout(left())
            .map_err(|_| anyhow!("`{line}` did not take its input in time"))?
            .with_context(|| format!("`{line}` did not read all of its input"))?;
    }
    let stdout = stdout
        .recv_timeout(left())
        .map_err(|_| anyhow!("`{line}` exited but its output stayed open past {timeout:?}"))?;
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Waits for `child` until `deadline`: `Some(status)` when it exited, `None` when it ran too
/// long and was killed, together with its whole process group, and reaped.
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            // The child is not reaped yet, so its PID still names the process group it leads
            // (`process_group(0)`): this reaches whatever it started too, and nothing else.
            if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: plain syscall; the group is this child's own.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        thread::sleep(EXIT_POLL);
    }
}

/// Runs `f` on a thread of its own; its result arrives on the returned channel.
fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<Receiver<T>> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("dfw-lab-cmd-io".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .context("spawning a thread")?;
    Ok(rx)
}

/// Everything `pipe` yields until it closes; a read error ends it early.
fn read_all(mut pipe: impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = pipe.read_to_end(&mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Links
// ---------------------------------------------------------------------------------------------

/// A link as `ip -j -s link show dev IFACE` reports it: its index, Ethernet address and
/// packet counters (64-bit). Every link the lab makes is an Ethernet (veth) link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// Packets the link received (`stats64.rx.packets`).
    pub rx_packets: u64,
    /// Received packets the link dropped (`stats64.rx.dropped`; 0 when not reported).
    pub rx_dropped: u64,
    /// Packets the link sent (`stats64.tx.packets`).
    pub tx_packets: u64,
    /// Packets the link dropped on sending (`stats64.tx.dropped`; 0 when not reported).
    pub tx_dropped: u64,
}

/// Reads link `iface` in namespace `ns` with `ip -n NS -j -s link show dev IFACE` (bounded by
/// [`COMMAND_TIMEOUT`]).
pub fn link_info(ns: &str, iface: &str) -> Result<LinkInfo> {
    let out = crate::ip_ns(ns, &["-j", "-s", "link", "show", "dev", iface])?;
    parse_link_json(&out).with_context(|| format!("reading link {iface} in netns {ns}"))
}

/// The one link in `ip -j -s link show` output.
fn parse_link_json(text: &str) -> Result<LinkInfo> {
    let list: Vec<Value> = serde_json::from_str(text).context("parsing `ip -j` output")?;
    let [link] = &list[..] else {
        bail!("`ip -j` listed {} links, not one", list.len());
    };
    let count = |dir: &str, what: &str| {
        link["stats64"][dir][what]
            .as_u64()
            .with_context(|| format!("no stats64.{dir}.{what}"))
    };
    let address = link["address"].as_str().context("no address")?;
    Ok(LinkInfo {
        ifindex: link["ifindex"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .context("no ifindex")?,
        mac: parse_mac(address)?,
        rx_packets: count("rx", "packets")?,
        rx_dropped: count("rx", "dropped").unwrap_or(0),
        tx_packets: count("tx", "packets")?,
        tx_dropped: count("tx", "dropped").unwrap_or(0),
    })
}

/// `aa:bb:cc:dd:ee:ff` as six bytes.
fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {text}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow!("MAC {text} is not 6 bytes"))
}

// ---------------------------------------------------------------------------------------------
// Interrupts
// ---------------------------------------------------------------------------------------------

/// Set by the handler that [`InterruptGuard`] installs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The signals [`InterruptGuard`] catches: Ctrl-C, `kill`, and a closing terminal.
pub const INTERRUPT_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// While it lives, the [`INTERRUPT_SIGNALS`] no longer end the process: they only set a flag,
/// which [`interrupted`] reads and [`check_interrupted`] turns into an error. A long run over
/// a lab (a bench, the demo) checks it between steps and unwinds normally, so that every
/// guard's Drop runs and deletes its namespaces and pins. Commands run by [`run_in_netns`]
/// have process groups of their own, so a terminal's Ctrl-C does not stop the cleanup's
/// commands either. Dropping the guard restores the previous handlers; keep it alive until
/// the cleanup is over.
pub struct InterruptGuard {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl InterruptGuard {
    /// Clears the flag and catches the [`INTERRUPT_SIGNALS`] (with `SA_RESTART`, so system
    /// calls in progress go on). On failure the handlers installed so far are restored.
    pub fn install() -> Result<InterruptGuard> {
        INTERRUPTED.store(false, Ordering::SeqCst);
        let mut guard = InterruptGuard {
            previous: Vec::with_capacity(INTERRUPT_SIGNALS.len()),
        };
        for signal in INTERRUPT_SIGNALS {
            // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value, and the
            // handler only stores to an atomic, which is async-signal-safe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut old) != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("catching signal {signal}"));
                }
                guard.previous.push((signal, old));
            }
        }
        Ok(guard)
    }
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        for (signal, old) in &self.previous {
            // SAFETY: restores an action the kernel handed back to us.
            unsafe { libc::sigaction(*signal, old, std::ptr::null_mut()) };
        }
    }
}

/// True once one of the [`INTERRUPT_SIGNALS`] arrived while an [`InterruptGuard`] was
/// installed (the last one installed clears it).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error ("interrupted; cleaning up") once [`interrupted`], for `?` between steps.
pub fn check_interrupted() -> Result<()> {
    ensure!(!interrupted(), "interrupted; cleaning up");
    Ok(())
}
