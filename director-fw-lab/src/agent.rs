//! The director-fw agent (`director-fw run`) as a child process in a lab namespace, and the
//! instance it runs, shared by the lab tests, `cargo xtask demo` and the benches.
//!
//! Readiness comes from the agent's own API (`director-fw status`), never from its stderr.
//! The agent leaves its datapath enforcing when it stops, so an [`InstanceGuard`] detaches it
//! and removes the instance's state when the test or demo ends, however it ends.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns_command;

const POLL: Duration = Duration::from_millis(20);

/// `/sys/fs/bpf/director-fw/<instance>`: where the agent of `instance` pins its datapath.
pub fn agent_pin_dir(instance: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/director-fw").join(instance)
}

/// Runs `program --instance INSTANCE ARGS...` (the CLI) and returns its output.
pub fn cli<I, S>(program: &Path, instance: &str, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(program)
        .arg("--instance")
        .arg(instance)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", program.display()))
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
/// own. Dropping it stops the agent (see [`Agent::stop`]); the datapath stays.
pub struct Agent {
    child: Child,
    program: PathBuf,
    instance: String,
    log: Arc<Mutex<Vec<String>>>,
    /// Set once the child has been reaped (or could not be); holds its status if it exited.
    reaped: Option<Option<ExitStatus>>,
}

impl Agent {
    /// How long the agent may take to load or adopt, attach and pin, for [`Agent::wait_ready`].
    pub const START_TIMEOUT: Duration = Duration::from_secs(15);
    /// How long the agent may take to exit after SIGTERM before it is killed.
    pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

    /// Starts `program --instance INSTANCE run RUN_ARGS...` in the network namespace `ns`
    /// (see [`netns_command`]), capturing its stderr as described by `options`.
    pub fn start<I, S>(
        ns: &str,
        program: &Path,
        instance: &str,
        run_args: I,
        options: AgentOptions,
    ) -> Result<Agent>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = netns_command(ns, program)?;
        cmd.args(["--instance", instance, "run"])
            .args(run_args)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        Agent::spawn(cmd, program, instance, options)
    }

    /// Starts an arbitrary command as the agent of `instance` (unit tests use a stand-in).
    fn spawn(
        mut cmd: Command,
        program: &Path,
        instance: &str,
        options: AgentOptions,
    ) -> Result<Agent> {
        if options.own_process_group {
            cmd.process_group(0);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the agent's stderr was not piped");
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&log);
        let on_line = options.on_line;
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(on_line) = &on_line {
                    on_line(&line);
                }
                if let Ok(mut log) = keep.lock() {
                    log.push(line);
                }
            }
        });
        Ok(Agent {
            child,
            program: program.to_path_buf(),
            instance: instance.to_owned(),
            log,
            reaped: None,
        })
    }

    /// Waits at most `timeout` until `director-fw status` answers for the instance, which it
    /// does once the agent enforces. An error, carrying the agent's stderr, if it exits
    /// first or is not ready in time.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        self.wait_ready_with(timeout, || Ok(()))
    }

    /// [`Agent::wait_ready`] that also calls `check` between polls and gives up with its
    /// error (an interrupt, say).
    pub fn wait_ready_with(
        &mut self,
        timeout: Duration,
        mut check: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            check()?;
            if let Ok(Some(status)) = self.child.try_wait() {
                self.reaped = Some(Some(status));
                bail!(
                    "the agent exited before it was ready ({status}); its stderr: {:?}",
                    self.log()
                );
            }
            let out = cli(&self.program, &self.instance, ["status", "--json"])?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the agent is not ready after {timeout:?}: `status` says {:?}; its stderr: {:?}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    self.log()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Every line the agent has written to stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The agent's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (SIGHUP, say) without waiting for anything.
    pub fn signal(&self, signal: libc::c_int) {
        if self.reaped.is_none() {
            // SAFETY: plain syscall; `pid` is our own child, not yet reaped, so not reused.
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        }
    }

    /// Kills the agent with SIGKILL, as a crash would end it, and reaps it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.reaped {
            return status;
        }
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        self.reaped = Some(status);
        status
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

/// An instance a test, the demo or a bench runs. Dropping it, also during a panic, detaches
/// the instance's datapath (`director-fw detach --yes`) and removes its state and socket, so
/// that nothing of it outlives the run. Drop the agents first.
pub struct InstanceGuard {
    program: PathBuf,
    name: String,
}

impl InstanceGuard {
    pub fn new(program: &Path, name: &str) -> InstanceGuard {
        InstanceGuard {
            program: program.to_path_buf(),
            name: name.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/lib/director-fw/<instance>`, where the agent keeps its state.
    pub fn state_dir(&self) -> PathBuf {
        Path::new("/var/lib/director-fw").join(&self.name)
    }
}

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        let problem = match cli(&self.program, &self.name, ["detach", "--yes"]) {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(problem) = problem {
            let _ = writeln!(
                std::io::stderr(),
                "director-fw-lab: detaching instance {}: {problem}",
                self.name
            );
        }
        let _ = std::fs::remove_dir_all(self.state_dir());
        for ext in ["sock", "lock"] {
            let _ = std::fs::remove_file(format!("/run/director-fw/{}.{ext}", self.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{netns_path, Lab};
    use std::os::unix::fs::MetadataExt as _;
    use std::os::unix::process::ExitStatusExt as _;

    /// The agent's plumbing, with `sh` standing in for the agent binary (the lab tests in the
    /// director-fw crate run the real one). `sh` cannot answer `status`, so it is never ready.
    #[test]
    fn start_wait_and_stop_with_a_stand_in() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("start_wait_and_stop_with_a_stand_in needs root, and CI=true");
            }
            eprintln!("SKIPPED start_wait_and_stop_with_a_stand_in: needs root");
            return;
        }
        let lab = Lab::new().expect("building the lab");
        let ns = lab.gateway_ns();
        let sh = Path::new("/bin/sh");
        let stand_in = |script: &str, options| {
            let mut cmd = netns_command(ns, sh).unwrap();
            cmd.args(["-c", script])
                .stdin(Stdio::null())
                .stderr(Stdio::piped());
            Agent::spawn(cmd, sh, "dfw-agent-unit", options).unwrap()
        };

        // Exits before it is ready: the error names its status and carries its stderr.
        let mut agent = stand_in("echo oops >&2; exit 3", AgentOptions::default());
        let err = agent
            .wait_ready(Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exit status: 3") && err.contains("oops"),
            "{err}"
        );
        assert_eq!(agent.stop(Duration::ZERO).and_then(|s| s.code()), Some(3));

        // Never ready: the wait is bounded, and SIGTERM stops it.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&seen);
        let options = AgentOptions {
            on_line: Some(Box::new(move |line| {
                keep.lock().unwrap().push(line.to_owned())
            })),
            own_process_group: true,
        };
        let mut agent = stand_in("echo started >&2; exec sleep 30", options);
        let started = Instant::now();
        let err = agent
            .wait_ready(Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not ready"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // It has printed, so nsenter has entered the namespace and exec'd it under the same PID.
        let in_ns = std::fs::metadata(format!("/proc/{}/ns/net", agent.pid())).unwrap();
        let gateway = std::fs::metadata(netns_path(ns)).unwrap();
        assert_eq!((in_ns.dev(), in_ns.ino()), (gateway.dev(), gateway.ino()));
        let status = agent
            .stop(Duration::from_secs(5))
            .expect("it exits on SIGTERM");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert_eq!(agent.stop(Duration::ZERO), Some(status));
        assert_eq!(agent.log(), ["started"]);
        assert_eq!(*seen.lock().unwrap(), agent.log());
    }
}
