//! The control protocol: one JSON object per line each way, a request and its response, over
//! the instance's Unix socket. Every message carries the protocol version; an agent answers a
//! request of another version with an error that says so, never with a guess.

use std::{net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    explain::{Explanation, Probe},
    policy::{format_ports, matrix::MatrixLine, profile, Options, PeerEntry, Policy},
    telemetry::stats::Stats,
};

pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub version: u32,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    Status,
    PeersAdd {
        role: String,
        cidrs: Vec<String>,
    },
    PeersDel {
        role: String,
        cidrs: Vec<String>,
    },
    PeersList {
        role: Option<String>,
    },
    /// Apply the policy file again (`file: None`: the one in force) with the runtime peers.
    /// With `confirm_within`, revert unless `PolicyConfirm` comes in that many seconds.
    PolicyReload {
        file: Option<PathBuf>,
        confirm_within: Option<u64>,
    },
    PolicyConfirm,
    PolicyShow,
    Audit {
        on: bool,
    },
    Stats,
    Explain {
        src: IpAddr,
        dst: IpAddr,
        proto: Probe,
        sport: u16,
        dport: u16,
    },
    /// Remove the programs and pins and stop: the explicit fail-open.
    Detach,
    /// The most recent drop events; with `follow`, every new one as it comes, until the
    /// client hangs up.
    Drops {
        follow: bool,
    },
    /// How many drop events per second the kernel may send, across all CPUs.
    DropRate {
        per_sec: u32,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "response", rename_all = "kebab-case")]
pub enum Response {
    Status(Status),
    Changed(Change),
    Peers { peers: Vec<PeerEntry> },
    Policy(PolicyView),
    Stats(Stats),
    Explain(Explanation),
    Detached { interfaces: Vec<String> },
    Drops(Drops),
    DropEvent(DropEventView),
    Error { message: String },
}

/// The recent drop events, and how many the kernel sent, suppressed and lost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Drops {
    pub events: Vec<DropEventView>,
    /// Events per second the kernel may send.
    pub rate: u32,
    pub sent: u64,
    /// Drops beyond the rate: counted, not sent.
    pub suppressed: u64,
    /// Sent while the ring buffer was full.
    pub lost: u64,
}

/// One drop event, as `drops` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DropEventView {
    pub time: String,
    pub iface: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, a protocol number, or empty for a malformed frame.
    pub proto: String,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: u16,
    pub dport: u16,
    /// The outer VLAN id, 0 for none.
    pub vlan: u16,
    pub reason: String,
    /// Audit mode passed the packet.
    pub audit: bool,
    pub src_roles: Vec<String>,
    pub dst_roles: Vec<String>,
}

/// The agent, as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub pid: u32,
    pub instance: String,
    pub interfaces: Vec<String>,
    pub mode: String,
    pub policy: PolicySource,
    /// Peer entries in force: the file's and the runtime ones.
    pub peers: usize,
    pub runtime_peers: usize,
    pub audit: bool,
    /// The policy generation the kernel reads (0 or 1).
    pub generation: u32,
    /// How this agent came to the datapath: `loaded`, `adopted` or `upgraded`.
    pub start: String,
    pub started_at: String,
    pub last_change: String,
    /// A reload waiting for `policy confirm`.
    pub pending_confirm: Option<PendingConfirm>,
    /// The id of the kernel object in use.
    pub object: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicySource {
    /// The file, or `built-in profile ...`.
    pub source: String,
    /// SHA-256 of the policy file's text (of the empty string for the built-in profile).
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingConfirm {
    /// The file that will be reverted to.
    pub revert_to: String,
    pub seconds_left: u64,
}

/// What a change did, once the kernel enforces it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Change {
    pub message: String,
    pub generation: u32,
    /// Time from receiving the request until the kernel enforced it.
    pub micros: u64,
}

/// The policy in force, as `policy show` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyView {
    pub source: String,
    pub rules: Vec<RuleView>,
    pub options: Options,
    pub peers: Vec<PeerEntry>,
    /// The profile's documented choices, each with the rule that makes the other one.
    pub notes: Vec<String>,
    /// The effective port matrix (see [`crate::policy::matrix`]).
    #[serde(default)]
    pub matrix: Vec<MatrixLine>,
}

impl PolicyView {
    /// `policy`'s rules with their origins, options and documented choices, and `peers`.
    pub fn new(policy: &Policy, peers: Vec<PeerEntry>) -> PolicyView {
        PolicyView {
            source: policy.source.clone(),
            rules: policy
                .rules
                .iter()
                .map(|r| RuleView {
                    id: r.id.clone(),
                    from: policy.source_name(r.from).into(),
                    to: policy.role_name(r.to).into(),
                    proto: r.protocol.name().into(),
                    ports: format_ports(&r.ports),
                    origin: r.origin.to_string(),
                })
                .collect(),
            options: policy.options.clone(),
            matrix: crate::policy::matrix::matrix(policy),
            peers,
            notes: policy
                .profiles
                .iter()
                .filter_map(|name| profile::find(name))
                .flat_map(profile::Profile::notes)
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleView {
    pub id: String,
    pub from: String,
    pub to: String,
    pub proto: String,
    pub ports: String,
    pub origin: String,
}
