//! The agent: it starts (loading a datapath, or adopting the pinned one), serves the control
//! socket, applies changes, and stops without taking the datapath with it.
//!
//! - `lifecycle`: start (load, adopt or take over) and the pinned datapath's checks;
//! - `change`: every change (peers, reload, audit, confirm) through one commit;
//! - `serve`: the socket, signals and the confirm deadline;
//! - `slots`, `rows`, `state`: counter slots of rule ids, counter rows of interfaces, and
//!   what is kept across restarts.

mod change;
mod drops;
mod lifecycle;
mod rows;
mod serve;
mod slots;
mod state;

use std::{
    borrow::Cow,
    path::PathBuf,
    time::{Instant, SystemTime},
};

pub use lifecycle::{detach, RunOptions};
pub use serve::run;
pub use slots::RuleSlots;
pub use state::{PendingState, State, StateError};

use crate::{
    compile::Incremental,
    datapath::{AttachMode, Counters, DatapathError, Pins, PolicyMaps},
    instance::{Instance, InstanceError, Lock},
    policy::{PeerError, Policy, PolicyError, RuntimePeers},
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Peers(#[from] PeerError),
    #[error(transparent)]
    Compile(#[from] crate::compile::CompileError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Refused(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// A policy file as read, or the built-in profile.
#[derive(Clone, Debug)]
struct Source {
    file: Option<PathBuf>,
    policy: Policy,
    sha256: String,
    /// The file's text as read, so that a reverted policy is the one that was in force even
    /// when the file has changed since (`None` for the built-in profile).
    text: Option<String>,
}

impl Source {
    fn read(file: Option<&PathBuf>) -> Result<Source, AgentError> {
        let Some(file) = file else {
            return Source::from_text(None, None);
        };
        let file = std::path::absolute(file).unwrap_or(file.clone());
        let text =
            std::fs::read_to_string(&file).map_err(|err| PolicyError::unreadable(&file, &err))?;
        Source::from_text(Some(file), Some(text))
    }

    /// The policy of `text` (read from `file`), or the built-in profile without either.
    fn from_text(file: Option<PathBuf>, text: Option<String>) -> Result<Source, AgentError> {
        use sha2::{Digest, Sha256};
        let (policy, sha256) = match (&file, &text) {
            (Some(file), Some(text)) => (
                Policy::from_toml(&file.display().to_string(), text)?,
                hex::encode(Sha256::digest(text.as_bytes())),
            ),
            _ => (Policy::builtin(), hex::encode(Sha256::digest(b""))),
        };
        Ok(Source {
            file,
            policy,
            sha256,
            text,
        })
    }
}

/// Seconds since the epoch, now.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The runtime peers after a revert to `previous`: those of now, and those of then that the
/// reload dropped because its file (`reloaded`) listed them; a peer deleted since stays
/// deleted. A peer whose role `previous` lacks cannot stay, and the log says so.
fn peers_for_revert(
    then: &RuntimePeers,
    now: &RuntimePeers,
    reloaded: &Policy,
    previous: &Policy,
) -> RuntimePeers {
    let (peers, dropped) = then.listed_in(reloaded).union(now).keep_roles_of(previous);
    for (role, net) in dropped {
        tracing::warn!(
            "the revert drops runtime peer {net} of role {role:?}, which {} does not have",
            previous.source
        );
    }
    peers
}

/// A reload waiting for `policy confirm`: what to go back to.
struct Pending {
    deadline: Instant,
    previous: Source,
    peers: RuntimePeers,
}

/// A whole policy made ready to install: the file's with the runtime peers and the audit
/// setting, its rules' counter slots, its compiled form, and the state that goes with it.
struct Prepared {
    effective: Policy,
    slots: Vec<u32>,
    /// Slots of rules new to the policy, to zero before it is installed.
    fresh: Vec<u32>,
    live: Incremental,
    state: State,
}

impl Prepared {
    fn new(
        source: &Source,
        peers: RuntimePeers,
        audit_flag: bool,
        audit_switch: Option<bool>,
        state: &State,
    ) -> Result<Prepared, AgentError> {
        let peers = peers.rebase(&source.policy)?;
        let mut effective = peers.apply(&source.policy);
        // `audit on|off` is the operator's last word, over the file and `--audit`.
        effective.options.audit = audit_switch.unwrap_or(source.policy.options.audit || audit_flag);
        let assigned = state.rule_slots.assign(&effective);
        let live = Incremental::new(&effective, &assigned.slots)?;
        Ok(Prepared {
            effective,
            slots: assigned.slots,
            fresh: assigned.fresh,
            live,
            state: State {
                peers,
                rule_slots: assigned.table,
                audit: audit_switch,
                ..state.clone()
            },
        })
    }
}

/// The datapath the agent drives: where it is pinned and attached, the object it loads, and
/// the live maps it writes.
struct Kernel {
    pins: Pins,
    ifaces: Vec<String>,
    mode: AttachMode,
    object: Cow<'static, [u8]>,
    maps: PolicyMaps,
    counters: Counters,
}

pub struct Agent {
    instance: Instance,
    _lock: Lock,
    kernel: Kernel,
    object_id: String,
    /// `run --audit`: audit whatever the file says (unless `audit off` said otherwise).
    audit_flag: bool,
    /// Reloads applied and refused since the start, for the metrics.
    reloads: u64,
    reload_failures: u64,
    /// Drop events per second the kernel may send.
    event_rate: u32,
    /// The most recent drop events, and the `drops --follow` clients.
    recent: std::collections::VecDeque<crate::control::protocol::DropEventView>,
    followers: tokio::sync::broadcast::Sender<crate::control::protocol::DropEventView>,
    /// Interface names by index, for drop events.
    ifnames: std::collections::HashMap<u32, String>,
    source: Source,
    state: State,
    /// The policy in force: the file's with the runtime peers and the audit switch.
    effective: Policy,
    /// Counter slot of each rule of `effective`.
    slots: Vec<u32>,
    /// `effective` compiled, kept up to date peer by peer.
    live: Incremental,
    start: &'static str,
    started_at: SystemTime,
    last_change: SystemTime,
    pending: Option<Pending>,
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
