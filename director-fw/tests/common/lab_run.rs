//! One lab run of the real agent: the lab, a policy file, the instance and its agent.
//! Dropping it, also during a panic, stops the agent, detaches the instance and removes its
//! state, removes the policy file and deletes the lab, in that order.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use director_fw_lab::{cli, tcp_exchange, Agent, AgentOptions, InstanceGuard, Lab, Role};
use serde_json::Value;

pub const AGENT: &str = env!("CARGO_BIN_EXE_director-fw");

pub struct LabRun {
    pub agent: Option<Agent>,
    pub instance: InstanceGuard,
    pub policy_file: PathBuf,
    pub mode: String,
    pub lab: Lab,
}

impl LabRun {
    /// A lab whose policy file is the built-in profile with `peers` (TOML, `[peers]` table
    /// included) and `extra` after it, and an agent enforcing it in `mode`.
    pub fn start(
        name: &str,
        mode: &str,
        peers: impl FnOnce(&Lab) -> String,
        extra: &str,
    ) -> LabRun {
        LabRun::start_profile(name, mode, "lync2013-single-director", peers, extra)
    }

    /// [`LabRun::start`] with another built-in profile.
    pub fn start_profile(
        name: &str,
        mode: &str,
        profile: &str,
        peers: impl FnOnce(&Lab) -> String,
        extra: &str,
    ) -> LabRun {
        let lab = Lab::new().expect("building the lab");
        let instance = format!("{name}-{}", std::process::id());
        let policy_file = std::env::temp_dir().join(format!("director-fw-{instance}.toml"));
        let policy = format!("profile = {profile:?}\n\n{}\n{extra}", peers(&lab));
        std::fs::write(&policy_file, policy).expect("writing the policy file");
        let mut run = LabRun {
            agent: None,
            instance: InstanceGuard::new(Path::new(AGENT), &instance),
            policy_file,
            mode: mode.to_string(),
            lab,
        };
        run.start_agent(&[]);
        run
    }

    pub fn name(&self) -> &str {
        self.instance.name()
    }

    /// Starts (or restarts) the agent with the run's interfaces, mode and policy file, plus
    /// `extra` arguments, and waits until `status` answers.
    pub fn start_agent(&mut self, extra: &[&OsStr]) {
        assert!(self.agent.is_none(), "an agent runs already");
        let mut args: Vec<&OsStr> = Vec::new();
        let ifaces = self.lab.gateway_ifaces();
        for iface in &ifaces {
            args.extend([OsStr::new("--iface"), OsStr::new(iface)]);
        }
        args.extend([
            OsStr::new("--mode"),
            OsStr::new(&self.mode),
            OsStr::new("--policy"),
            self.policy_file.as_os_str(),
        ]);
        args.extend(extra);
        let options = AgentOptions {
            on_line: Some(Box::new(|line| eprintln!("  agent | {line}"))),
            ..AgentOptions::default()
        };
        let agent = Agent::start(
            self.lab.gateway_ns(),
            Path::new(AGENT),
            self.instance.name(),
            args,
            options,
        )
        .expect("starting the agent via nsenter");
        let agent = self.agent.insert(agent);
        if let Err(e) = agent.wait_ready(Agent::START_TIMEOUT) {
            panic!("{e:#}");
        }
    }

    /// Runs the CLI on the run's instance.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(Path::new(AGENT), self.instance.name(), args).expect("running director-fw")
    }

    /// Runs the CLI and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "director-fw {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a `--json` command and parses its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {text}"))
    }

    /// `status --json`.
    pub fn status(&self) -> Value {
        self.json(&["status", "--json"])
    }

    /// Whether a TCP connection from `from` to `to` on `port` gets an answer, bounded by a
    /// second: what passes answers in milliseconds.
    pub fn connects(&self, from: Role, to: Role, port: u16, ipv6: bool) -> bool {
        let (from, to) = (self.lab.host(from), self.lab.host(to));
        tcp_exchange(from, to, port, ipv6, Duration::from_secs(1)).unwrap_or(false)
    }

    /// Packets counted for rule `id` (`stats --json`).
    pub fn rule_packets(&self, id: &str) -> u64 {
        let stats = self.json(&["stats", "--json"]);
        stats["rules"]
            .as_array()
            .and_then(|rules| rules.iter().find(|r| r["id"] == id))
            .and_then(|r| r["packets"].as_u64())
            .unwrap_or_else(|| panic!("no rule {id} in {stats}"))
    }
}

impl Drop for LabRun {
    fn drop(&mut self) {
        drop(self.agent.take());
        let _ = std::fs::remove_file(&self.policy_file);
        // `instance` drops next (detach), then `lab` (the namespaces).
    }
}
