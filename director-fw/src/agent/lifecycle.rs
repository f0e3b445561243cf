//! Starting an agent on an instance: it loads a new datapath when nothing is pinned, adopts
//! the pinned one when it is this agent's own object, and otherwise takes it over (an upgrade,
//! or maps that must grow) by replacing the program on the pinned links in one step. In every
//! case the datapath that enforces keeps enforcing until the new one does.

use std::{borrow::Cow, collections::BTreeSet, path::PathBuf, time::SystemTime};

use crate::{
    compile::Compiled,
    datapath::{self, object_id, AttachMode, Capacity, Counters, Datapath, PolicyMaps, OBJECT},
    instance::{ensure_bpffs, Instance},
};

use super::{Agent, AgentError, Kernel, Pending, Prepared, Source, State};

/// What `director-fw run` asks for.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub ifaces: Vec<String>,
    pub mode: AttachMode,
    pub policy_file: Option<PathBuf>,
    pub audit: bool,
    /// Another build of the kernel object to run instead of the built-in one (upgrade tests).
    pub object: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`GET /metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Drop events per second the kernel may send (0: none).
    pub drop_events: u32,
}

impl Agent {
    /// Claims the instance and makes the datapath enforce the policy on every interface.
    pub fn start(instance: Instance, options: RunOptions) -> Result<Agent, AgentError> {
        ensure_bpffs()?;
        let lock = instance.lock()?;
        let object: Cow<'static, [u8]> = match &options.object {
            Some(path) => Cow::Owned(
                std::fs::read(path).map_err(|e| AgentError::Io(path.display().to_string(), e))?,
            ),
            None => Cow::Borrowed(OBJECT),
        };
        let state = State::load(&instance.state_file())?;
        let source = Source::read(options.policy_file.as_ref())?;
        let (source, peers, pending) = resume_confirm(&state, source)?;
        let prepared = Prepared::new(&source, peers, options.audit, state.audit, &state)
        .map_err(|err| match err {
            AgentError::Peers(err) => AgentError::Refused(format!(
                "{err}. The runtime peers are kept in {}: start with the policy file that has the role, or remove the peer from that file",
                instance.state_file().display()
            )),
            other => other,
        })?;
        let Prepared {
            effective,
            slots,
            fresh: fresh_slots,
            live,
            mut state,
        } = prepared;
        if pending.is_none() {
            state.pending = None;
        }
        let compiled = live.compiled();

        let pins = instance.pins();
        for iface in pins.prune_dead_links()? {
            tracing::warn!("the pinned link on {iface} held no interface any more (it was removed, or removed and created again), so nothing filtered it; attaching again");
        }
        let pinned = pins.links()?;
        let wanted: BTreeSet<&str> = options.ifaces.iter().map(String::as_str).collect();
        if let Some(link) = pinned
            .iter()
            .find(|l| !wanted.contains(l.iface.as_str()) || l.mode != options.mode)
        {
            let all: Vec<String> = pinned
                .iter()
                .map(|l| format!("{} ({})", l.iface, l.mode.name()))
                .collect();
            return Err(AgentError::Refused(format!(
                "instance {:?} is pinned on {}; {} {} is not what this run asks for ({} in {} mode). Run it with the same interfaces and mode, or remove the old ones first with `director-fw detach --yes` (the gateway passes everything until the agent attaches again)",
                instance.name,
                all.join(", "),
                link.iface,
                link.mode.name(),
                options.ifaces.join(", "),
                options.mode.name()
            )));
        }
        let id = object_id(&object);
        let flows = effective.options.flow_table_size;
        if pins.exist() && pinned.is_empty() && pins.check_state_layout().is_err() {
            // A start that died before it pinned its links: none of it ever enforced.
            std::fs::remove_dir_all(pins.dir())
                .map_err(|e| AgentError::Io(pins.dir().display().to_string(), e))?;
        }

        let (maps, counters, start) = if !pins.exist() {
            let mut dp = load(&object, compiled, flows, options.mode, None)?;
            zero(&mut dp.state.counters, &fresh_slots)?;
            dp.policy.install(compiled)?;
            let mut links = Vec::new();
            for iface in &options.ifaces {
                // An error drops the links made so far, which detaches them: nothing was
                // enforcing before, and nothing is pinned yet.
                let (link, warning) = dp.attach(iface, options.mode)?;
                if let Some(warning) = warning {
                    tracing::warn!("{warning}");
                }
                links.push((options.mode, iface.clone(), link));
            }
            if let Err(err) = pins.commit(&mut dp, links) {
                // What was pinned before the error comes off again, netlink filters included:
                // nothing enforced before this start.
                let _ = datapath::detach(&pins);
                return Err(err.into());
            }
            let (maps, counters) = dp.into_parts();
            (maps, counters, "loaded")
        } else {
            pins.check_state_layout()?;
            let all_pinned = options
                .ifaces
                .iter()
                .all(|i| pinned.iter().any(|l| &l.iface == i));
            let upgrade = pins.object_id().as_deref() != Some(id.as_str());
            match pins.adopt(&lock, &id)? {
                Some(mut adopted) if all_pinned && adopted.policy.fits(compiled).is_ok() => {
                    zero(&mut adopted.counters, &fresh_slots)?;
                    adopted.policy.install(compiled)?;
                    (adopted.policy, adopted.counters, "adopted")
                }
                _ => {
                    let (maps, counters) = take_over(
                        &pins,
                        &object,
                        compiled,
                        flows,
                        options.mode,
                        &fresh_slots,
                        &options.ifaces,
                    )?;
                    (
                        maps,
                        counters,
                        if upgrade { "upgraded" } else { "took over" },
                    )
                }
            }
        };
        let mut kernel = Kernel {
            pins,
            ifaces: options.ifaces,
            mode: options.mode,
            object,
            maps,
            counters,
        };
        state.interface_rows = kernel.assign_rows(&state.interface_rows);
        state.save(&instance.state_file())?;
        let now = SystemTime::now();
        Ok(Agent {
            kernel,
            object_id: id,
            audit_flag: options.audit,
            reloads: 0,
            reload_failures: 0,
            event_rate: options.drop_events,
            recent: super::drops::recent_store(),
            followers: tokio::sync::broadcast::channel(super::drops::FOLLOW_BUFFER).0,
            ifnames: Default::default(),
            source,
            state,
            effective,
            slots,
            live,
            start,
            started_at: now,
            last_change: now,
            pending,
            instance,
            _lock: lock,
        })
    }
}

/// A reload that waited for `policy confirm` when the last agent stopped: past its deadline,
/// the agent starts with the policy from before it; before, with the unconfirmed one and the
/// rest of the window, when that is what it was asked to run. Returns the source and runtime
/// peers to start with, and the window still open.
fn resume_confirm(
    state: &State,
    source: Source,
) -> Result<(Source, crate::policy::RuntimePeers, Option<Pending>), AgentError> {
    let Some(waiting) = &state.pending else {
        return Ok((source, state.peers.clone(), None));
    };
    let previous = Source::from_text(waiting.file.clone(), waiting.text.clone())?;
    let now = super::unix_now();
    if now >= waiting.deadline {
        tracing::warn!(
            "a reload was not confirmed before its deadline while no agent ran: reverting to {}",
            previous.policy.source
        );
        let peers = super::peers_for_revert(
            &waiting.peers,
            &state.peers,
            &source.policy,
            &previous.policy,
        );
        return Ok((previous, peers, None));
    }
    if source.sha256 != waiting.unconfirmed {
        // This start names another policy than the unconfirmed one: nothing is left to revert.
        return Ok((source, state.peers.clone(), None));
    }
    let left = std::time::Duration::from_secs(waiting.deadline - now);
    tracing::warn!(
        "the reload waits for `director-fw policy confirm`: it reverts to {} in {} s",
        previous.policy.source,
        left.as_secs()
    );
    let pending = Pending {
        deadline: std::time::Instant::now() + left,
        previous,
        peers: waiting.peers.clone(),
    };
    Ok((source, state.peers.clone(), Some(pending)))
}

fn load(
    object: &[u8],
    compiled: &Compiled,
    flows: u32,
    mode: AttachMode,
    reuse: Option<&datapath::Pins>,
) -> Result<Datapath, AgentError> {
    let capacity = Capacity::for_policy(compiled);
    Ok(Datapath::load(
        object,
        &capacity,
        flows,
        mode.programs(),
        false,
        reuse,
    )?)
}

fn zero(counters: &mut Counters, slots: &[u32]) -> Result<(), AgentError> {
    for &slot in slots {
        counters.zero_rule(director_fw_common::Verdict::Rule(slot).slot())?;
    }
    Ok(())
}

/// Loads `object` with maps sized for `compiled`, sharing the pinned flows and counters, and
/// puts it under every pinned link in one step each; then attaches to the interfaces of
/// `ifaces` that have no link yet.
pub(super) fn take_over(
    pins: &datapath::Pins,
    object: &[u8],
    compiled: &Compiled,
    flows: u32,
    mode: AttachMode,
    fresh_slots: &[u32],
    ifaces: &[String],
) -> Result<(PolicyMaps, Counters), AgentError> {
    let mut dp = load(object, compiled, flows, mode, Some(pins))?;
    zero(&mut dp.state.counters, fresh_slots)?;
    dp.policy.install(compiled)?;
    let (pinned, mut warnings) = pins.take_over(&mut dp)?;
    // The pinned links run the new maps now: nothing below may fail the hand-over, or the
    // agent would go on writing maps that nothing reads. An interface that cannot be attached
    // now is retried by the agent's link watch.
    for iface in ifaces
        .iter()
        .filter(|i| !pinned.iter().any(|l| &&l.iface == i))
    {
        let attached = dp.attach(iface, mode).and_then(|(link, warning)| {
            pins.pin_links(vec![(mode, iface.clone(), link)])?;
            Ok(warning)
        });
        match attached {
            Ok(warning) => warnings.extend(warning),
            Err(err) => warnings.push(format!(
                "{iface}: not attached yet ({err}); the agent tries again every few seconds"
            )),
        }
    }
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    Ok(dp.into_parts())
}

/// Removes the programs and pins of an instance that no agent runs: the explicit fail-open.
/// Refused while an agent holds the instance, even one still starting. Returns the
/// interfaces it detached from.
pub fn detach(instance: &Instance) -> Result<Vec<String>, AgentError> {
    ensure_bpffs()?;
    let _lock = instance.lock()?;
    Ok(datapath::detach(&instance.pins())?)
}
