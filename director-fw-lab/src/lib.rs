//! A network-namespace lab for director-fw, shared by the end-to-end tests, `cargo xtask demo`
//! and `cargo xtask bench` (SPEC section 6).
//!
//! [`Lab::new`] builds one gateway namespace with IPv4 and IPv6 forwarding on, and one host
//! namespace per [`Role`], each linked to the gateway by its own veth pair:
//!
//! ```text
//!   <prefix>reverse-proxy    198.18.1.10/24 2001:db8:1::10/64 ---+
//!   <prefix>director         198.18.2.10/24 2001:db8:2::10/64 ---+
//!   <prefix>front-end        198.18.3.10/24 2001:db8:3::10/64 ---+--- <prefix>gw  (.1 / ::1 on
//!   <prefix>internal-clients 198.18.4.10/24 2001:db8:4::10/64 ---+     every segment, forwarding)
//!   <prefix>edge-internal    198.18.5.10/24 2001:db8:5::10/64 ---+
//!   <prefix>outsider         198.18.6.10/24 2001:db8:6::10/64 ---+
//! ```
//!
//! Everything lives in namespaces the lab creates itself; the root namespace is only asked to
//! add, list and delete those namespaces. Addresses come only from 198.18.0.0/15 and
//! 2001:db8::/32. Names carry a per-run prefix (`dfw<pid%10000><counter>-`), and dropping the
//! [`Lab`] deletes every namespace it made, which also removes the veth pairs.
//!
//! The helpers [`in_netns`], [`netns_command`] and [`spawn_in_netns`] enter only the network
//! namespace (never `ip netns exec`, whose private `/sys` hides bpffs pins), and
//! [`tcp_exchange`] / [`udp_exchange`] drive one bounded, verified exchange between two hosts.

mod agent;
mod conversation;
mod netns;
mod traffic;

use anyhow::{bail, ensure, Context, Result};
use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

pub use agent::{agent_pin_dir, cli, Agent, AgentOptions, InstanceGuard, OnLine};
pub use conversation::Conversation;
pub use netns::{
    check_interrupted, in_netns, interrupted, link_info, netns_command, netns_path, run_in_netns,
    spawn_in_netns, InterruptGuard, LinkInfo, COMMAND_TIMEOUT, INTERRUPT_SIGNALS,
};
pub use traffic::{tcp_exchange, udp_exchange};

// ---------------------------------------------------------------------------------------------
// Address plan
// ---------------------------------------------------------------------------------------------

/// The IPv4 range the lab may use at all: 198.18.0.0/15 (RFC 2544 benchmarking).
pub const LAB_V4_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);
/// The IPv6 range the lab may use at all: 2001:db8::/32 (documentation).
pub const LAB_V6_NET: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 0x0db8, 0, 0, 0, 0, 0, 0), 32);
/// Segment `i` (1..=6) is `198.18.i.0/24`.
pub const V4_SEGMENT_PREFIX_LEN: u8 = 24;
/// Segment `i` (1..=6) is `2001:db8:i::/64`.
pub const V6_SEGMENT_PREFIX_LEN: u8 = 64;
/// Last octet of the gateway's IPv4 address on every segment (`198.18.i.1`).
pub const V4_GATEWAY_ID: u8 = 1;
/// Last octet of the host's IPv4 address on its segment (`198.18.i.10`).
pub const V4_HOST_ID: u8 = 10;
/// Interface id of the gateway's IPv6 address on every segment (`2001:db8:i::1`).
pub const V6_GATEWAY_ID: u16 = 0x1;
/// Interface id of the host's IPv6 address on its segment (`2001:db8:i::10`, hex 0x10).
pub const V6_HOST_ID: u16 = 0x10;
/// MTU of every veth end.
pub const MTU: u32 = 1500;

/// How long [`Lab::new`] waits for links to come up and IPv6 addresses to leave "tentative".
const READY_TIMEOUT: Duration = Duration::from_secs(5);
const READY_POLL: Duration = Duration::from_millis(20);

/// The IPv4 address with last octet `id` on segment `segment` (`198.18.<segment>.<id>`).
pub fn segment_v4(segment: u8, id: u8) -> Ipv4Addr {
    let base = LAB_V4_NET.0.octets();
    Ipv4Addr::new(base[0], base[1], segment, id)
}

/// The IPv6 address with interface id `id` on segment `segment` (`2001:db8:<segment>::<id>`).
pub fn segment_v6(segment: u8, id: u16) -> Ipv6Addr {
    let base = LAB_V6_NET.0.segments();
    Ipv6Addr::new(base[0], base[1], u16::from(segment), 0, 0, 0, 0, id)
}

/// True when `addr` lies inside the ranges the lab may use (198.18.0.0/15, 2001:db8::/32).
pub fn is_lab_addr(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX << (32 - u32::from(LAB_V4_NET.1));
            u32::from(a) & mask == u32::from(LAB_V4_NET.0)
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX << (128 - u32::from(LAB_V6_NET.1));
            u128::from(a) & mask == u128::from(LAB_V6_NET.0)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Roles and hosts
// ---------------------------------------------------------------------------------------------

/// The lab's hosts: one per role of the built-in profile, plus an outsider that has no role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    ReverseProxy,
    Director,
    FrontEnd,
    InternalClients,
    EdgeInternal,
    /// Belongs to no role; [`Lab::peers_toml`] leaves it out.
    Outsider,
}

impl Role {
    /// Every role, in segment order (segment 1 first).
    pub const ALL: [Role; 6] = [
        Role::ReverseProxy,
        Role::Director,
        Role::FrontEnd,
        Role::InternalClients,
        Role::EdgeInternal,
        Role::Outsider,
    ];

    /// The role's name as used in policy files (and in the host namespace's name).
    pub fn name(self) -> &'static str {
        match self {
            Role::ReverseProxy => "reverse-proxy",
            Role::Director => "director",
            Role::FrontEnd => "front-end",
            Role::InternalClients => "internal-clients",
            Role::EdgeInternal => "edge-internal",
            Role::Outsider => "outsider",
        }
    }

    /// The role's segment number, 1..=6 (the third IPv4 octet and third IPv6 group).
    pub fn segment(self) -> u8 {
        self as u8 + 1
    }

    /// False only for [`Role::Outsider`], the host that no policy names.
    pub fn is_peer(self) -> bool {
        self != Role::Outsider
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One host namespace of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub role: Role,
    /// Network namespace name (under /run/netns).
    pub ns: String,
    /// The host's veth end, inside `ns`.
    pub iface: String,
    /// The gateway's veth end facing this host, inside the gateway namespace.
    pub gw_iface: String,
    /// `198.18.<segment>.10`
    pub v4: Ipv4Addr,
    /// `2001:db8:<segment>::10`
    pub v6: Ipv6Addr,
    /// The gateway's address on this segment, `198.18.<segment>.1` (the host's default route).
    pub gw_v4: Ipv4Addr,
    /// The gateway's address on this segment, `2001:db8:<segment>::1` (the host's default route).
    pub gw_v6: Ipv6Addr,
}

impl Host {
    /// The host's IPv6 address when `ipv6`, else its IPv4 address.
    pub fn addr(&self, ipv6: bool) -> IpAddr {
        if ipv6 {
            IpAddr::V6(self.v6)
        } else {
            IpAddr::V4(self.v4)
        }
    }

    /// `/run/netns/<ns>`
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.ns)
    }
}

// ---------------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------------

/// Counter that makes the name prefix unique within this process.
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);
/// Upper bound on prefix candidates tried when leftovers from an earlier run share the name.
const PREFIX_ATTEMPTS: u32 = 100;
/// Linux's interface name limit (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// The gateway plus one host per [`Role`]. Dropping it deletes every namespace it created.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    gateway: String,
    hosts: Vec<Host>,
    /// Namespaces this lab created, in creation order; the only ones Drop deletes.
    created: Vec<String>,
}

impl Lab {
    /// Builds the whole lab and waits (bounded) until every link is up and no IPv6 address is
    /// tentative. Needs root. On any failure the namespaces created so far are deleted.
    pub fn new() -> Result<Lab> {
        let prefix = pick_prefix()?;
        let mut lab = Lab {
            gateway: format!("{prefix}gw"),
            prefix,
            hosts: Vec::with_capacity(Role::ALL.len()),
            created: Vec::with_capacity(Role::ALL.len() + 1),
        };
        // Any `?` below drops `lab`, which deletes what has been created so far.
        lab.build()
            .with_context(|| format!("building lab {}", lab.prefix))?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        // Every sysctl the lab relies on, set in each namespace it creates. A new namespace
        // inherits the root's IPv4 settings (forwarding on any gateway), and with
        // net.core.devconf_inherit_init_net its IPv6 ones too: the lab assumes none of them.
        // They are written before any veth exists, so the `default` values reach the veths.
        // IPv6 on; DAD off, so that link-local addresses too are usable at once; forwarding
        // on the gateway only (`ip_forward` and IPv6 `all` also set every existing link).
        let sysctls = |forwarding| {
            [
                ("ipv6/conf/all/disable_ipv6", "0"),
                ("ipv6/conf/default/disable_ipv6", "0"),
                ("ipv6/conf/all/accept_dad", "0"),
                ("ipv6/conf/default/accept_dad", "0"),
                ("ipv4/ip_forward", forwarding),
                ("ipv4/conf/default/forwarding", forwarding),
                ("ipv6/conf/all/forwarding", forwarding),
                ("ipv6/conf/default/forwarding", forwarding),
                // Reverse-path filtering (a distribution default of 1 or 2) would drop what
                // the lab's own tests blackhole on purpose before the test sees it.
                ("ipv4/conf/all/rp_filter", "0"),
                ("ipv4/conf/default/rp_filter", "0"),
            ]
        };
        let gw = self.gateway.clone();
        self.add_netns(&gw)?;
        write_sysctls(&gw, &sysctls("1"))?;
        ip_ns(&gw, &["link", "set", "lo", "up"])?;

        for role in Role::ALL {
            let host = host_plan(&self.prefix, role)?;
            self.add_netns(&host.ns)?;
            write_sysctls(&host.ns, &sysctls("0"))?;
            ip_ns(&host.ns, &["link", "set", "lo", "up"])?;

            let mtu = MTU.to_string();
            ip_ns(
                &gw,
                &[
                    "link",
                    "add",
                    &host.gw_iface,
                    "mtu",
                    &mtu,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &host.iface,
                    "mtu",
                    &mtu,
                    "netns",
                    &host.ns,
                ],
            )?;
            ip_ns(&gw, &["link", "set", &host.gw_iface, "up"])?;
            ip_ns(&host.ns, &["link", "set", &host.iface, "up"])?;

            let (l4, l6) = (V4_SEGMENT_PREFIX_LEN, V6_SEGMENT_PREFIX_LEN);
            let gw4 = format!("{}/{l4}", host.gw_v4);
            let gw6 = format!("{}/{l6}", host.gw_v6);
            let h4 = format!("{}/{l4}", host.v4);
            let h6 = format!("{}/{l6}", host.v6);
            ip_ns(&gw, &["addr", "add", &gw4, "dev", &host.gw_iface])?;
            ip_ns(
                &gw,
                &["-6", "addr", "add", &gw6, "dev", &host.gw_iface, "nodad"],
            )?;
            ip_ns(&host.ns, &["addr", "add", &h4, "dev", &host.iface])?;
            ip_ns(
                &host.ns,
                &["-6", "addr", "add", &h6, "dev", &host.iface, "nodad"],
            )?;

            let (r4, r6) = (host.gw_v4.to_string(), host.gw_v6.to_string());
            ip_ns(
                &host.ns,
                &["route", "add", "default", "via", &r4, "dev", &host.iface],
            )?;
            ip_ns(
                &host.ns,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &r6,
                    "dev",
                    &host.iface,
                ],
            )?;
            self.hosts.push(host);
        }
        self.wait_ready()
    }

    fn add_netns(&mut self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_owned());
        Ok(())
    }

    /// Polls (bounded by READY_TIMEOUT) until every veth end reports `state UP` and no
    /// namespace has a tentative IPv6 address.
    fn wait_ready(&self) -> Result<()> {
        let rounds = READY_TIMEOUT.as_millis() / READY_POLL.as_millis() + 1;
        let mut last_problem = String::new();
        for _ in 0..rounds {
            match self.not_ready() {
                Ok(None) => return Ok(()),
                Ok(Some(problem)) => last_problem = problem,
                Err(e) => return Err(e),
            }
            thread::sleep(READY_POLL);
        }
        bail!("lab not ready after {READY_TIMEOUT:?}: {last_problem}")
    }

    /// `None` when ready, else a description of what is not ready yet.
    fn not_ready(&self) -> Result<Option<String>> {
        for host in &self.hosts {
            for (ns, dev) in [(&self.gateway, &host.gw_iface), (&host.ns, &host.iface)] {
                let out = ip_ns(ns, &["-o", "link", "show", "dev", dev])?;
                if !out.contains("state UP") {
                    return Ok(Some(format!("{dev} in {ns} is not up: {}", out.trim())));
                }
            }
        }
        for ns in self.created.iter() {
            let out = ip_ns(ns, &["-6", "-o", "addr", "show", "tentative"])?;
            if !out.trim().is_empty() {
                return Ok(Some(format!(
                    "tentative IPv6 address in {ns}: {}",
                    out.trim()
                )));
            }
        }
        Ok(None)
    }

    /// The per-run name prefix shared by every namespace and interface of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Network namespace name of the gateway.
    pub fn gateway_ns(&self) -> &str {
        &self.gateway
    }

    /// `/run/netns/<gateway>`
    pub fn gateway_netns_path(&self) -> PathBuf {
        netns_path(&self.gateway)
    }

    /// The gateway-side veth names (inside the gateway namespace), in segment order.
    pub fn gateway_ifaces(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.gw_iface.clone()).collect()
    }

    /// The host of `role`.
    pub fn host(&self, role: Role) -> &Host {
        &self.hosts[role as usize]
    }

    /// All hosts, in [`Role::ALL`] order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Policy file text (TOML) with a `[peers]` table naming each role host's IPv4 and IPv6
    /// address; the outsider is left out. It has no top-level keys, so a caller may put
    /// `profile = "..."` in front of it or append `[options]` / `[[rules]]` after it.
    pub fn peers_toml(&self) -> String {
        let mut out = String::from("[peers]\n");
        for h in self.hosts.iter().filter(|h| h.role.is_peer()) {
            out.push_str(&format!(
                "{:<16} = [\"{}\", \"{}\"]\n",
                h.role.name(),
                h.v4,
                h.v6
            ));
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth ends inside it, and with them their peers.
        // `ip` runs bounded and in a process group of its own, so a second Ctrl-C does not
        // cut the cleanup short.
        for ns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "delete", ns]) {
                // Never panic in drop, not even on a closed stderr.
                let _ = writeln!(
                    std::io::stderr(),
                    "director-fw-lab: could not delete netns {ns}: {e:#}"
                );
            }
        }
    }
}

/// The names and addresses of `role`'s host in the lab with name prefix `prefix`, checked
/// against the lab's address ranges and the interface name limit.
fn host_plan(prefix: &str, role: Role) -> Result<Host> {
    let seg = role.segment();
    let host = Host {
        role,
        ns: format!("{prefix}{}", role.name()),
        iface: format!("{prefix}h{seg}"),
        gw_iface: format!("{prefix}g{seg}"),
        v4: segment_v4(seg, V4_HOST_ID),
        v6: segment_v6(seg, V6_HOST_ID),
        gw_v4: segment_v4(seg, V4_GATEWAY_ID),
        gw_v6: segment_v6(seg, V6_GATEWAY_ID),
    };
    for a in [
        host.v4.into(),
        host.v6.into(),
        host.gw_v4.into(),
        host.gw_v6.into(),
    ] {
        ensure!(is_lab_addr(a), "address {a} is outside the lab ranges");
    }
    for name in [&host.iface, &host.gw_iface] {
        ensure!(
            name.len() <= IFNAME_MAX,
            "interface name {name} is too long"
        );
    }
    Ok(host)
}

/// Picks `dfw<pid%10000 as 4 digits><counter>-` such that no existing namespace starts with it.
fn pick_prefix() -> Result<String> {
    let existing = ip(&["netns", "list"])?;
    let names: Vec<&str> = existing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let pid = std::process::id() % 10_000;
    for _ in 0..PREFIX_ATTEMPTS {
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed) % 1000;
        let prefix = format!("dfw{pid:04}{n}-");
        if !names.iter().any(|name| name.starts_with(&prefix)) {
            return Ok(prefix);
        }
    }
    bail!("no free lab name prefix after {PREFIX_ATTEMPTS} attempts (leftover namespaces?)")
}

/// Writes each `(key, value)` to `/proc/sys/net/<key>` inside `ns`, in order, from a thread
/// that joined only that namespace (for example `("ipv4/conf/all/rp_filter", "0")`).
/// /proc/sys/net resolves against the calling thread's network namespace, so this never
/// touches the root namespace's settings ([`in_netns`] verifies the thread really joined `ns`).
/// A key must be a relative path without `.` or `..` components.
pub fn write_sysctls(ns: &str, settings: &[(&str, &str)]) -> Result<()> {
    for (key, _) in settings {
        ensure!(
            !key.split('/')
                .any(|c| c.is_empty() || c == "." || c == ".."),
            "{key:?} is not a sysctl key under /proc/sys/net"
        );
    }
    in_netns(ns, || {
        for (key, value) in settings {
            let path = format!("/proc/sys/net/{key}");
            std::fs::write(&path, value).with_context(|| format!("writing {value} to {path}"))?;
        }
        Ok(())
    })
    .with_context(|| format!("setting sysctls in netns {ns}"))
}

/// Runs `ip ARGS` like [`run_in_netns`] runs a command (own process group, at most
/// [`COMMAND_TIMEOUT`]) and returns its stdout; a failure carries the command line and stderr.
fn ip(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    netns::run_bounded(
        cmd,
        &format!("ip {}", args.join(" ")),
        None,
        COMMAND_TIMEOUT,
    )
}

/// Runs `ip -n NS ARGS` (own process group, at most [`COMMAND_TIMEOUT`]) and returns its
/// stdout; a failure carries the command line and stderr. Everything the lab does except
/// adding, listing and deleting namespaces happens inside a lab namespace this way.
pub fn ip_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = Vec::with_capacity(args.len() + 2);
    full.extend_from_slice(&["-n", ns]);
    full.extend_from_slice(args);
    ip(&full)
}

#[cfg(test)]
mod tests;
