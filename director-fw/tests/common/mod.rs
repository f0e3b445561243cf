//! Shared by the kernel and lab tests: the root guard, the test policy, a frame builder, and
//! the real eBPF object loaded with verdict tracing.
#![allow(dead_code)]

pub mod frames;
pub mod lab_run;

use std::net::IpAddr;

use director_fw::{compile, datapath::Programs, Compiled, Datapath, Model, Policy};
use director_fw_common::{config::NS_PER_SEC, Config, Counter, Verdict};
use director_fw_lab::{segment_v4, segment_v6, Role, V4_HOST_ID, V6_HOST_ID};

/// Kernel and lab tests need root (BPF, netns). In CI they must fail, not skip.
pub fn root_or_skip(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs root (BPF and network namespaces) and CI=true: failing instead of skipping");
    }
    eprintln!("SKIPPED {test}: needs root");
    false
}

pub fn addr(role: Role, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(segment_v6(role.segment(), V6_HOST_ID))
    } else {
        IpAddr::V4(segment_v4(role.segment(), V4_HOST_ID))
    }
}

/// The built-in profile with one v4 and one v6 host per lab role (the outsider in none),
/// plus `extra` TOML.
pub fn lab_policy(extra: &str) -> Policy {
    let mut text = String::from("profile = \"lync2013-single-director\"\n");
    text.push_str(extra);
    if !extra.contains("[peers]") {
        text.push_str("\n[peers]\n");
        for role in Role::ALL.iter().filter(|r| r.is_peer()) {
            text.push_str(&format!(
                "{} = [\"{}\", \"{}\"]\n",
                role.name(),
                addr(*role, false),
                addr(*role, true)
            ));
        }
    }
    Policy::from_toml("test-policy.toml", &text).expect("test policy is valid")
}

/// Timeouts that never expire during a test, so the kernel's clock and the model's agree.
pub fn test_config(policy: &Policy) -> Config {
    let mut config = compile(policy).expect("compiles").config;
    let forever = 1_000_000 * NS_PER_SEC;
    config.tcp_timeout_ns = forever;
    config.tcp_closing_timeout_ns = forever;
    config.udp_timeout_ns = forever;
    config.icmp_timeout_ns = forever;
    config.fragment_timeout_ns = forever;
    config
}

/// The real object, loaded with the policy and verdict tracing.
pub struct Kernel {
    pub datapath: Datapath,
    pub policy: Policy,
    pub config: Config,
    pub compiled: Compiled,
}

impl Kernel {
    pub fn load(policy: Policy) -> Kernel {
        let config = test_config(&policy);
        Kernel::with_config(policy, config)
    }

    pub fn with_config(policy: Policy, config: Config) -> Kernel {
        let mut compiled = compile(&policy).expect("compiles");
        compiled.config = config;
        let datapath = Datapath::with_policy(
            &compiled,
            policy.options.flow_table_size,
            Programs::Both,
            true,
        )
        .expect("loads and verifies");
        Kernel {
            datapath,
            policy,
            config,
            compiled,
        }
    }

    /// Installs the policy again with other options, as a live change would.
    pub fn set_config(&mut self, config: Config) {
        self.compiled.config = config;
        self.datapath
            .policy
            .install(&self.compiled)
            .expect("installs");
    }

    pub fn counter(&self, slot: u32) -> Counter {
        self.datapath.state.counters.total(slot).expect("reads")
    }

    pub fn model(&self) -> Model<'_> {
        Model::new(&self.policy, self.config)
    }

    /// Runs the XDP program on `frame`; checks the action agrees with the verdict.
    pub fn judge(&mut self, frame: &[u8]) -> Verdict {
        self.datapath.clear_last_verdict().unwrap();
        let action = self.datapath.run_xdp(frame).unwrap();
        let verdict = self
            .datapath
            .last_verdict()
            .unwrap()
            .expect("the program records a verdict for every packet");
        let expected = if verdict.passes() { 2 } else { 1 }; // XDP_PASS, XDP_DROP
        assert_eq!(
            action, expected,
            "action disagrees with verdict {verdict:?}"
        );
        verdict
    }

    /// The same through the TC program.
    pub fn judge_tc(&mut self, frame: &[u8]) -> Verdict {
        self.datapath.clear_last_verdict().unwrap();
        let action = self.datapath.run_tc(frame).unwrap();
        let verdict = self.datapath.last_verdict().unwrap().expect("verdict");
        let expected = if verdict.passes() { 0 } else { 2 }; // TC_ACT_OK, TC_ACT_SHOT
        assert_eq!(
            action, expected,
            "action disagrees with verdict {verdict:?}"
        );
        verdict
    }

    pub fn rule(&self, id: &str) -> Verdict {
        let index = self
            .policy
            .rules
            .iter()
            .position(|r| r.id == id)
            .expect("rule exists");
        Verdict::Rule(index as u32)
    }
}
