//! `cargo xtask demo`: director-fw at work, for someone who has never seen it (SPEC section 6).
//!
//! It builds the network-namespace lab (a gateway routing between one host per role, plus an
//! outsider), writes a policy file with the built-in profile and the lab's hosts as peers,
//! shows the policy, and starts the agent on every gateway interface in XDP mode. Then it
//! opens real TCP/UDP connections between the hosts, prints for each one what the policy says
//! and what happened, and shows the agent's live counters. At the end it stops the agent and
//! deletes the lab, also on an error or Ctrl-C.
//!
//! The agent binary is the release build of the `director-fw` crate, which xtask runs as a
//! separate program (xtask cannot link the crate itself: its build script needs the eBPF
//! toolchain). The demo fails when any connection did not do what the policy says.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use director_fw_lab::{
    agent_pin_dir, netns_command, tcp_exchange, udp_exchange, Agent, AgentOptions, Lab, Role,
};

use crate::process;

use Role::{Director, EdgeInternal, FrontEnd, InternalClients, Outsider, ReverseProxy};

/// An allowed connection completes in milliseconds; this only bounds a failure.
const PASS_TIMEOUT: Duration = Duration::from_secs(2);
/// A blocked connection never answers: give up after this (the SYN is dropped silently).
const DROP_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
enum Proto {
    Tcp,
    Udp,
}

/// What the policy says about an attempt, and why.
#[derive(Clone, Copy)]
enum Expect {
    /// A rule of the profile opens it.
    Rule(&'static str),
    /// The destination belongs to no protected role.
    Unprotected,
    /// A protected host's own outbound connection: its replies come back as a tracked flow.
    Outbound,
    /// No rule opens it.
    Denied,
}

impl Expect {
    fn passes(self) -> bool {
        !matches!(self, Expect::Denied)
    }
}

struct Attempt {
    from: Role,
    to: Role,
    proto: Proto,
    port: u16,
    ipv6: bool,
    expect: Expect,
}

const fn tcp(from: Role, to: Role, port: u16, ipv6: bool, expect: Expect) -> Attempt {
    Attempt {
        from,
        to,
        proto: Proto::Tcp,
        port,
        ipv6,
        expect,
    }
}

/// The connections the demo drives, in the order it drives them.
const ATTEMPTS: &[Attempt] = &[
    tcp(
        ReverseProxy,
        Director,
        4443,
        false,
        Expect::Rule("rp-director-https"),
    ),
    tcp(
        ReverseProxy,
        Director,
        8080,
        true,
        Expect::Rule("rp-director-http"),
    ),
    tcp(
        InternalClients,
        Director,
        443,
        false,
        Expect::Rule("clients-director-https"),
    ),
    tcp(
        InternalClients,
        Director,
        80,
        true,
        Expect::Rule("clients-director-http"),
    ),
    tcp(
        Director,
        FrontEnd,
        444,
        false,
        Expect::Rule("director-fe-https"),
    ),
    tcp(
        EdgeInternal,
        Director,
        5061,
        false,
        Expect::Rule("edge-director-sip"),
    ),
    tcp(
        Director,
        EdgeInternal,
        5061,
        true,
        Expect::Rule("director-edge-sip"),
    ),
    tcp(
        FrontEnd,
        EdgeInternal,
        5061,
        false,
        Expect::Rule("fe-edge-sip"),
    ),
    tcp(
        EdgeInternal,
        FrontEnd,
        5061,
        true,
        Expect::Rule("edge-fe-sip"),
    ),
    tcp(
        ReverseProxy,
        FrontEnd,
        4443,
        false,
        Expect::Rule("rp-fe-https"),
    ),
    tcp(
        Outsider,
        EdgeInternal,
        50001,
        false,
        Expect::Rule("any-edge-cls"),
    ),
    tcp(Outsider, ReverseProxy, 22, false, Expect::Unprotected),
    tcp(Director, Outsider, 9000, false, Expect::Outbound),
    tcp(Outsider, Director, 443, false, Expect::Denied),
    tcp(Outsider, Director, 443, true, Expect::Denied),
    tcp(InternalClients, Director, 8080, false, Expect::Denied),
    tcp(ReverseProxy, FrontEnd, 444, false, Expect::Denied),
    tcp(Director, FrontEnd, 443, true, Expect::Denied),
    tcp(EdgeInternal, Director, 5062, false, Expect::Denied),
    tcp(InternalClients, FrontEnd, 5061, true, Expect::Denied),
    Attempt {
        from: InternalClients,
        to: Director,
        proto: Proto::Udp,
        port: 443,
        ipv6: false,
        expect: Expect::Denied,
    },
];

pub fn run(_args: &[String]) -> Result<()> {
    let _signals = SignalGuard::install()?;
    let started = Instant::now();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo must run as root: it creates network namespaces and loads eBPF programs");
    }
    let binary = agent_binary();
    if !binary.exists() {
        bail!(
            "{} does not exist; build it with `cargo build --release -p director-fw` \
             (`cargo xtask demo` does that first)",
            binary.display()
        );
    }
    let instance = format!("demo-{}", std::process::id());

    println!("director-fw demo");
    println!("================");
    println!(
        "A gateway network namespace routes between one host namespace per role of the built-in\n\
         profile `lync2013-single-director`, plus an `outsider` host that has no role. director-fw\n\
         runs on the gateway and filters what enters it from each host. Everything runs in\n\
         namespaces created for this demo and is removed at the end (also on Ctrl-C)."
    );

    step(1, "building the lab");
    let lab = Lab::new().context("building the lab")?;
    let mut demo = Demo {
        agent: None,
        policy_file: std::env::temp_dir().join(format!("director-fw-{instance}.toml")),
        lab,
    };
    let width = demo
        .lab
        .hosts()
        .iter()
        .map(|h| h.ns.len())
        .chain([demo.lab.gateway_ns().len()])
        .max()
        .unwrap_or(0);
    println!(
        "  {:<17} {:<width$}  {:<16} IPv6",
        "ROLE", "NAMESPACE", "IPv4"
    );
    for host in demo.lab.hosts() {
        println!(
            "  {:<17} {:<width$}  {:<16} {}",
            host.role.name(),
            host.ns,
            host.v4,
            host.v6
        );
    }
    println!(
        "  {:<17} {:<width$}  interfaces {}",
        "gateway",
        demo.lab.gateway_ns(),
        demo.lab.gateway_ifaces().join(", ")
    );
    check_interrupt()?;

    step(2, "writing the policy file");
    let policy = format!(
        "profile = \"lync2013-single-director\"\n\n{}",
        demo.lab.peers_toml()
    );
    std::fs::write(&demo.policy_file, &policy)
        .with_context(|| format!("writing {}", demo.policy_file.display()))?;
    println!("  {}:", demo.policy_file.display());
    print_indented(&policy);
    check_interrupt()?;

    step(3, "the rules it enforces (`director-fw policy show`)");
    let shown = process::capture(
        Command::new(&binary)
            .args(["--instance", &instance, "policy", "show", "--policy"])
            .arg(&demo.policy_file)
            .stdin(Stdio::null()),
    )?;
    print_indented(&shown);
    check_interrupt()?;

    step(
        4,
        &format!("starting the agent in the gateway namespace (instance {instance}, xdp mode)"),
    );
    let ifaces = demo.lab.gateway_ifaces();
    let mut args = vec!["--instance", &instance, "run"];
    for iface in &ifaces {
        args.extend(["--iface", iface]);
    }
    args.extend(["--mode", "xdp", "--policy"]);
    let args: Vec<&OsStr> = args
        .into_iter()
        .map(OsStr::new)
        .chain([demo.policy_file.as_os_str()])
        .collect();
    let mut shown = netns_command(demo.lab.gateway_ns(), &binary)?;
    println!("  $ {}", process::describe(shown.args(&args)));
    // Its own process group: Ctrl-C reaches only the demo, which then stops the agent in order.
    let options = AgentOptions {
        on_line: Some(Box::new(|line| {
            let _ = writeln!(std::io::stdout(), "    agent | {line}");
        })),
        own_process_group: true,
    };
    let agent = Agent::start(demo.lab.gateway_ns(), &binary, &args, options)?;
    let agent = demo.agent.insert(agent);
    agent
        .wait_enforcing_with(&instance, Agent::START_TIMEOUT, check_interrupt)
        .context("the agent did not start")?;

    step(5, "driving real connections through the gateway");
    println!(
        "  POLICY   {:<16}    {:<16}  {:<9}  {:<4}  RESULT",
        "FROM", "TO", "PROTO", "IP"
    );
    let mut unexpected = Vec::new();
    for attempt in ATTEMPTS {
        check_interrupt()?;
        if let Some(problem) = drive(&demo.lab, attempt) {
            unexpected.push(problem);
        }
    }
    check_interrupt()?;

    step(6, "the live counters (`director-fw stats`)");
    let stats = process::capture(
        Command::new(&binary)
            .args(["--instance", &instance, "stats"])
            .stdin(Stdio::null()),
    )?;
    print_indented(&stats);

    step(7, "stopping the agent and removing the lab");
    match demo
        .agent
        .take()
        .map(|mut agent| agent.stop(Agent::STOP_TIMEOUT))
    {
        Some(Some(status)) if status.success() => {
            println!("  the agent stopped and detached ({status})")
        }
        other => unexpected.push(format!(
            "the agent did not exit cleanly on SIGTERM: {other:?}"
        )),
    }
    let pins = agent_pin_dir(&instance);
    if pins.exists() {
        unexpected.push(format!(
            "{} is still there after the agent stopped",
            pins.display()
        ));
    }
    drop(demo);
    println!("  namespaces and policy file removed");

    println!();
    let total = ATTEMPTS.len();
    if unexpected.is_empty() {
        println!(
            "All {total} connections did what the policy says. Done in {:.1?}.",
            started.elapsed()
        );
        Ok(())
    } else {
        println!("{} thing(s) did not go as expected:", unexpected.len());
        for problem in &unexpected {
            println!("  - {problem}");
        }
        bail!(
            "{} unexpected outcome(s) in the demo (see above)",
            unexpected.len()
        )
    }
}

/// Drives one attempt and prints its line; returns a description when the result is not
/// what the policy says.
fn drive(lab: &Lab, a: &Attempt) -> Option<String> {
    let (from, to) = (lab.host(a.from), lab.host(a.to));
    let timeout = if a.expect.passes() {
        PASS_TIMEOUT
    } else {
        DROP_TIMEOUT
    };
    let result = match a.proto {
        Proto::Tcp => tcp_exchange(from, to, a.port, a.ipv6, timeout),
        Proto::Udp => udp_exchange(from, to, a.port, a.ipv6, timeout),
    };
    let (proto, verb) = match a.proto {
        Proto::Tcp => ("tcp", "connected"),
        Proto::Udp => ("udp", "answered"),
    };
    let ip = if a.ipv6 { "IPv6" } else { "IPv4" };
    let label = if a.expect.passes() {
        "ALLOWED"
    } else {
        "DENIED"
    };
    let why = match a.expect {
        Expect::Rule(id) => format!("rule {id}"),
        Expect::Unprotected => format!("{} is not protected", a.to),
        Expect::Outbound => "reply to the director's own connection, tracked as a flow".into(),
        Expect::Denied => "as the policy says".into(),
    };
    let (outcome, problem) = match (result, a.expect.passes()) {
        (Ok(true), true) => (format!("{verb} ({why})"), None),
        (Ok(false), false) => (format!("blocked ({why})"), None),
        (Ok(true), false) => (
            format!("{verb}   <-- UNEXPECTED: no rule opens this"),
            Some("it got through"),
        ),
        (Ok(false), true) => (
            format!("blocked   <-- UNEXPECTED: {why} should let it through"),
            Some("it was blocked"),
        ),
        (Err(e), _) => (
            format!("error   <-- UNEXPECTED: {e:#}"),
            Some("the exchange failed"),
        ),
    };
    let path = format!("{proto}/{}", a.port);
    println!(
        "  {label:<8} {:<16} -> {:<16}  {path:<9}  {ip}  {outcome}",
        a.from.name(),
        a.to.name()
    );
    problem.map(|p| format!("{label} {} -> {} {path} {ip}: {p}", a.from, a.to))
}

/// The lab, the policy file and the agent. Dropping it stops the agent (by PID), removes the
/// policy file, and then deletes the lab's namespaces, whatever made the demo end.
struct Demo {
    agent: Option<Agent>,
    policy_file: PathBuf,
    lab: Lab,
}

impl Drop for Demo {
    fn drop(&mut self) {
        drop(self.agent.take());
        let _ = std::fs::remove_file(&self.policy_file);
        // `lab` drops after this, deleting the namespaces.
    }
}

/// `<target dir>/release/director-fw`, honouring `CARGO_TARGET_DIR` as cargo does.
fn agent_binary() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().unwrap_or(manifest);
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    target.join("release").join("director-fw")
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}

// ---------------------------------------------------------------------------------------------
// Ctrl-C: the handler only sets a flag; the demo checks it between steps and unwinds normally,
// so every Drop above runs.
// ---------------------------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; the agent was stopped and the lab removed");
    }
    Ok(())
}

/// Catches SIGINT and SIGTERM while the demo runs; restores the previous handlers on drop.
struct SignalGuard {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalGuard {
    fn install() -> Result<SignalGuard> {
        let mut guard = SignalGuard {
            previous: Vec::new(),
        };
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: zeroed sigaction is a valid "no flags, empty mask" value; the handler only
            // stores to an atomic, which is async-signal-safe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut old) != 0 {
                    return Err(std::io::Error::last_os_error())
                        .context("installing the Ctrl-C handler");
                }
                guard.previous.push((signal, old));
            }
        }
        Ok(guard)
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (signal, old) in &self.previous {
            // SAFETY: restores an action the kernel handed back to us.
            unsafe { libc::sigaction(*signal, old, std::ptr::null_mut()) };
        }
    }
}
