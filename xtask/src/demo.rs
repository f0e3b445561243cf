//! `cargo xtask demo`: director-fw at work, for someone who has never seen it (SPEC section 6).
//!
//! It builds the network-namespace lab (a gateway routing between one host per role, plus an
//! outsider), writes a policy file with the built-in profile and the lab's hosts as peers,
//! starts the agent on every gateway interface in XDP mode and shows the policy in force. It
//! shows a host in no role refused, then added with `peers add` and connecting at once. Then
//! it opens real TCP/UDP connections between the hosts, prints for each one what the policy
//! says and what happened, and shows the live counters. It kills the agent with `kill -9`
//! while a connection is open, shows the connection and the counters going on, and starts an
//! agent that adopts the datapath. At the end it detaches and deletes the lab, also on an
//! error or Ctrl-C.
//!
//! The agent binary is the release build of the `director-fw` crate, which xtask runs as a
//! separate program (xtask cannot link the crate itself: its build script needs the eBPF
//! toolchain). The demo fails when any connection did not do what the policy says.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use director_fw_lab::{
    agent_pin_dir, check_interrupted, cli, netns_command, tcp_exchange, udp_exchange, Agent,
    AgentOptions, Conversation, InstanceGuard, InterruptGuard, Lab, Role,
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
    let _signals = InterruptGuard::install()?;
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
        instance: InstanceGuard::new(&binary, &instance),
        binary: binary.clone(),
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
    check_interrupted()?;

    step(
        2,
        "writing the policy file: every role's host but the internal clients'",
    );
    let client = demo.lab.host(InternalClients).clone();
    let mut peers = String::from("[peers]\n");
    for h in demo
        .lab
        .hosts()
        .iter()
        .filter(|h| h.role.is_peer() && h.role != InternalClients)
    {
        peers += &format!("{:<16} = [\"{}\", \"{}\"]\n", h.role.name(), h.v4, h.v6);
    }
    let policy = format!("profile = \"lync2013-single-director\"\n\n{peers}");
    std::fs::write(&demo.policy_file, &policy)
        .with_context(|| format!("writing {}", demo.policy_file.display()))?;
    println!("  {}:", demo.policy_file.display());
    print_indented(&policy);
    check_interrupted()?;

    step(
        3,
        &format!("starting the agent in the gateway namespace (instance {instance}, xdp mode)"),
    );
    let ifaces = demo.lab.gateway_ifaces();
    let mut args: Vec<&OsStr> = Vec::new();
    for iface in &ifaces {
        args.extend([OsStr::new("--iface"), OsStr::new(iface)]);
    }
    args.extend([
        OsStr::new("--mode"),
        OsStr::new("xdp"),
        OsStr::new("--policy"),
    ]);
    let policy_file = demo.policy_file.clone();
    args.push(policy_file.as_os_str());
    let mut shown = netns_command(demo.lab.gateway_ns(), &binary)?;
    shown.args(["--instance", &instance, "run"]).args(&args);
    println!("  $ {}", process::describe(&shown));
    demo.start_agent(&binary, &args)?;
    println!("  $ director-fw status   (the agent answers once it enforces)");
    print_indented(&demo.cli(&["status"])?);
    check_interrupted()?;

    step(4, "the policy in force (`director-fw policy show`)");
    print_indented(&demo.cli(&["policy", "show"])?);
    check_interrupted()?;

    let mut unexpected = Vec::new();
    step(
        5,
        "a peer added at runtime connects at once (`director-fw peers add`)",
    );
    print_header();
    let before = tcp(InternalClients, Director, 443, false, Expect::Denied);
    unexpected.extend(drive(&demo.lab, &before));
    let (v4, v6) = (client.v4.to_string(), client.v6.to_string());
    println!("  $ director-fw peers add internal-clients {v4} {v6}");
    print_indented(&demo.cli(&["peers", "add", "internal-clients", &v4, &v6])?);
    print_header();
    for ipv6 in [false, true] {
        let after = tcp(
            InternalClients,
            Director,
            443,
            ipv6,
            Expect::Rule("clients-director-https"),
        );
        unexpected.extend(drive(&demo.lab, &after));
    }
    check_interrupted()?;

    step(6, "driving real connections through the gateway");
    print_header();
    for attempt in ATTEMPTS {
        check_interrupted()?;
        unexpected.extend(drive(&demo.lab, attempt));
    }
    check_interrupted()?;

    step(7, "the live counters (`director-fw stats`)");
    print_indented(&demo.cli(&["stats"])?);
    println!("\n  $ director-fw drops   (the most recent drop events)");
    let drops = demo.cli(&["drops"])?;
    let lines: Vec<&str> = drops.lines().collect();
    // The last few events and the counts line: enough to see what an event says.
    print_indented(&lines[lines.len().saturating_sub(5)..].join("\n"));

    step(
        8,
        "kill -9 of the agent while a connection is open: the datapath keeps enforcing",
    );
    let mut talk = Conversation::open(&client, demo.lab.host(Director), 443, false, PASS_TIMEOUT)
        .context("opening a connection from the internal clients to the Director")?;
    talk.exchange()?;
    let flows_before = demo.flow_packets()?;
    if let Some(agent) = demo.agent.as_mut() {
        println!("  $ kill -9 {}", agent.pid());
        agent.kill();
    }
    demo.agent = None;
    for _ in 0..20 {
        if let Err(e) = talk.exchange() {
            unexpected.push(format!(
                "the open connection broke without the agent: {e:#}"
            ));
            break;
        }
    }
    println!(
        "  the open connection exchanged {} messages each way, with no agent running",
        talk.rounds()
    );
    print_header();
    unexpected.extend(drive(
        &demo.lab,
        &tcp(Outsider, Director, 443, false, Expect::Denied),
    ));
    check_interrupted()?;

    step(
        9,
        "a new agent adopts the pinned datapath, with its flows and counters",
    );
    demo.start_agent(&binary, &args)?;
    print_indented(&demo.cli(&["status"])?);
    talk.exchange()?;
    let flows_after = demo.flow_packets()?;
    println!("  flow passes counted: {flows_before} before the kill, {flows_after} now (the kernel counted while no agent ran)");
    if flows_after <= flows_before {
        unexpected.push("the flow counter did not move across the restart".into());
    }
    drop(talk);

    step(
        10,
        "detaching (`director-fw detach --yes`) and removing the lab",
    );
    drop(demo.agent.take());
    print_indented(&demo.cli(&["detach", "--yes"])?);
    let pins = agent_pin_dir(&instance);
    if pins.exists() {
        unexpected.push(format!("{} is still there after detach", pins.display()));
    }
    drop(demo);
    println!("  namespaces, state and policy file removed");

    println!();
    if unexpected.is_empty() {
        println!(
            "Every connection did what the policy says. Done in {:.1?}.",
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

fn print_header() {
    println!(
        "  POLICY   {:<16}    {:<16}  {:<9}  {:<4}  RESULT",
        "FROM", "TO", "PROTO", "IP"
    );
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

/// The lab, the policy file, the instance and its agent. Dropping it stops the agent (by
/// PID), detaches the instance and removes its state, removes the policy file, and then
/// deletes the lab's namespaces, whatever made the demo end.
struct Demo {
    agent: Option<Agent>,
    instance: InstanceGuard,
    binary: PathBuf,
    policy_file: PathBuf,
    lab: Lab,
}

impl Demo {
    fn start_agent(&mut self, binary: &Path, args: &[&OsStr]) -> Result<()> {
        // Its own process group: Ctrl-C reaches only the demo, which then stops it in order.
        let options = AgentOptions {
            on_line: Some(Box::new(|line| {
                let _ = writeln!(std::io::stdout(), "    agent | {line}");
            })),
            own_process_group: true,
        };
        let agent = Agent::start(
            self.lab.gateway_ns(),
            binary,
            self.instance.name(),
            args,
            options,
        )?;
        self.agent
            .insert(agent)
            .wait_ready_with(Agent::START_TIMEOUT, check_interrupted)
            .context("the agent did not start")
    }

    /// Runs `director-fw --instance NAME ARGS` and returns what it printed.
    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = cli(&self.binary, self.instance.name(), args)?;
        if !out.status.success() {
            bail!(
                "director-fw {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Packets passed as part of a tracked flow, from `stats --json`.
    fn flow_packets(&self) -> Result<u64> {
        let stats: serde_json::Value = serde_json::from_str(&self.cli(&["stats", "--json"])?)?;
        stats["passes"]
            .as_array()
            .and_then(|passes| passes.iter().find(|p| p["kind"] == "flow"))
            .and_then(|p| p["packets"].as_u64())
            .context("stats --json has no flow packets")
    }
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
