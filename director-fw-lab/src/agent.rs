//! The director-fw agent (`director-fw run`) as a child process in a lab namespace, shared by
//! the lab test and `cargo xtask demo`.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns_command;

/// The start of the line the agent prints to stderr once it enforces.
pub const AGENT_READY_LINE: &str = "director-fw: instance";

const POLL: Duration = Duration::from_millis(20);

/// `/sys/fs/bpf/director-fw/<instance>`: where the agent of `instance` pins its maps.
pub fn agent_pin_dir(instance: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/director-fw").join(instance)
}

/// A callback for each line the agent writes to stderr (see [`AgentOptions::on_line`]).
pub type OnLine = Box<dyn Fn(&str) + Send>;

/// How [`Agent::start`] runs the agent.
#[derive(Default)]
pub struct AgentOptions {
    /// Called with every line the agent writes to stderr, on the thread that reads them (to
    /// echo them, say). The lines are kept for [`Agent::log`] either way.
    pub on_line: Option<OnLine>,
    /// Runs the agent in a process group of its own, so that a terminal's Ctrl-C reaches only
    /// the caller, which can then stop the agent in order.
    pub own_process_group: bool,
}

/// The agent process, run by nsenter in a lab namespace (nsenter execs it, so the child's PID
/// is the agent's). Its stdin is null and its stderr is read line by line on a thread of its
/// own. Dropping it stops the agent (see [`Agent::stop`]).
pub struct Agent {
    child: Child,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    /// Set once the child has been reaped (or could not be); holds its status if it exited.
    reaped: Option<Option<ExitStatus>>,
}

impl Agent {
    /// How long the agent may take to load, attach and pin, for [`Agent::wait_enforcing`].
    pub const START_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long the agent may take to detach after SIGTERM before it is killed, for
    /// [`Agent::stop`] and `Drop`.
    pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

    /// Starts `program args...` in the network namespace `ns` (see [`netns_command`]),
    /// capturing its stderr as described by `options`.
    pub fn start<I, S>(ns: &str, program: &Path, args: I, options: AgentOptions) -> Result<Agent>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = netns_command(ns, program)?;
        cmd.args(args).stdin(Stdio::null()).stderr(Stdio::piped());
        if options.own_process_group {
            cmd.process_group(0);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} in netns {ns} via nsenter", program.display()))?;
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the agent's stderr was not piped");
        };
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&log);
        let on_line = options.on_line;
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(on_line) = &on_line {
                    on_line(&line);
                }
                if let Ok(mut log) = keep.lock() {
                    log.push(line.clone());
                }
                // The receiver may be gone once the agent is up; keep draining regardless.
                let _ = tx.send(line);
            }
        });
        Ok(Agent {
            child,
            lines,
            log,
            reaped: None,
        })
    }

    /// Waits at most `timeout` until the agent has printed its ready line
    /// ([`AGENT_READY_LINE`]) and pinned its counters for `instance`. An error, carrying the
    /// agent's stderr, if it exits first or is not ready in time.
    pub fn wait_enforcing(&mut self, instance: &str, timeout: Duration) -> Result<()> {
        self.wait_enforcing_with(instance, timeout, || Ok(()))
    }

    /// [`Agent::wait_enforcing`] that also calls `check` every few milliseconds and gives up
    /// with its error (an interrupt, say).
    pub fn wait_enforcing_with(
        &mut self,
        instance: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        let counters = agent_pin_dir(instance).join("maps/COUNTERS");
        let deadline = Instant::now() + timeout;
        let mut ready = false;
        while !(ready && counters.exists()) {
            check()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "the agent is not enforcing after {timeout:?} (ready line seen: {ready}, {} \
                     exists: {}); its stderr: {:?}",
                    counters.display(),
                    counters.exists(),
                    self.log()
                );
            }
            match self.lines.recv_timeout(left.min(POLL)) {
                Ok(line) => ready |= line.starts_with(AGENT_READY_LINE),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Its stderr closed: it has exited, or is about to.
                    let status = self.stop(Self::STOP_TIMEOUT);
                    bail!(
                        "the agent exited before enforcing ({}); its stderr: {:?}",
                        status.map_or_else(|| "killed".to_owned(), |s| s.to_string()),
                        self.log()
                    );
                }
            }
        }
        Ok(())
    }

    /// Every line the agent has written to stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The agent's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the agent: SIGTERM by PID, a wait of at most `timeout`, then SIGKILL. Returns its
    /// exit status if it exited by itself, `None` if it had to be killed or could not be
    /// waited for. Calling it again returns the same. Never panics (it runs in `Drop`).
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.reaped {
            return status;
        }
        let status = self.terminate(timeout);
        self.reaped = Some(status);
        status
    }

    fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        match self.child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain syscall; `pid` is our own child, not yet reaped, so it is not reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => thread::sleep(POLL),
                Err(_) => break,
            }
        }
        let _ = writeln!(
            std::io::stderr(),
            "agent pid {pid} did not stop within {timeout:?} of SIGTERM; killing it"
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop(Self::STOP_TIMEOUT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{netns_path, Lab};
    use std::os::unix::fs::MetadataExt as _;
    use std::os::unix::process::ExitStatusExt as _;

    /// The agent's plumbing, with `sh` standing in for the agent binary (the lab test in the
    /// director-fw crate runs the real one).
    #[test]
    fn start_wait_and_stop_with_a_stand_in() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED start_wait_and_stop_with_a_stand_in: needs root");
            return;
        }
        let lab = Lab::new().expect("building the lab");
        let ns = lab.gateway_ns();
        let sh = Path::new("/bin/sh");

        // Exits before it is ready: the error names its status and carries its stderr.
        let script = "echo oops >&2; exit 3";
        let mut agent = Agent::start(ns, sh, ["-c", script], AgentOptions::default()).unwrap();
        let err = agent
            .wait_enforcing("dfw-agent-unit", Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exit status: 3") && err.contains("oops"),
            "{err}"
        );
        assert_eq!(agent.stop(Duration::ZERO).and_then(|s| s.code()), Some(3));

        // Says it is ready but pins nothing: the wait is bounded, and SIGTERM stops it.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&seen);
        let options = AgentOptions {
            on_line: Some(Box::new(move |line| {
                keep.lock().unwrap().push(line.to_owned())
            })),
            own_process_group: true,
        };
        let script = format!("echo '{AGENT_READY_LINE} x' >&2; exec sleep 30");
        let mut agent = Agent::start(ns, sh, ["-c", &script], options).unwrap();
        let started = Instant::now();
        let err = agent
            .wait_enforcing("dfw-agent-unit", Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ready line seen: true"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // It has printed, so nsenter has entered the namespace and exec'd it under the same PID.
        let in_ns = std::fs::metadata(format!("/proc/{}/ns/net", agent.pid())).unwrap();
        let gateway = std::fs::metadata(netns_path(ns)).unwrap();
        assert_eq!((in_ns.dev(), in_ns.ino()), (gateway.dev(), gateway.ino()));
        let status = agent
            .stop(Duration::from_secs(5))
            .expect("it exits on SIGTERM");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert_eq!(agent.stop(Duration::ZERO), Some(status));
        assert_eq!(agent.log(), [format!("{AGENT_READY_LINE} x")]);
        assert_eq!(*seen.lock().unwrap(), agent.log());
    }
}
