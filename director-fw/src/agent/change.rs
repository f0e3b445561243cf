//! Every change the agent makes goes through [`Agent::commit`]: build the whole new policy,
//! validate and compile it, save the state it implies, and install it in one generation
//! switch. A change that fails anywhere leaves the kernel, the state file and the agent as
//! they were.

use std::time::{Duration, Instant, SystemTime};

use director_fw_common::{events::MAX_EVENT_RATE, Verdict};

use std::collections::HashSet;

use ipnet::IpNet;

use crate::{
    compile::{Incremental, NeedsFull},
    control::protocol::{
        Change, Drops, PendingConfirm, PolicySource, PolicyView, Request, Response, Status,
    },
    datapath::{DatapathError, DropEvents, EventCounts},
    explain,
    policy::{Peer, PeerEntry, RoleId, RuntimePeers},
    telemetry::{metrics, stats},
};

use super::{
    lifecycle::take_over, timestamp, Agent, AgentError, Kernel, Pending, PendingState, Prepared,
    Source, State,
};

impl Agent {
    /// Answers one control request. `events` are the drop events' maps, when they opened.
    pub fn handle(&mut self, request: Request, events: Option<&mut DropEvents>) -> Response {
        let received = Instant::now();
        let result = match request {
            Request::Status => Ok(Response::Status(self.status())),
            Request::PeersList { role } => self.list(role.as_deref()),
            Request::PeersAdd { role, cidrs } => self
                .change_peers(&role, &cidrs, true)
                .map(|n| self.changed(format!("added {n} peer(s) to {role}"), received)),
            Request::PeersDel { role, cidrs } => self
                .change_peers(&role, &cidrs, false)
                .map(|n| self.changed(format!("removed {n} peer(s) from {role}"), received)),
            Request::PolicyReload {
                file,
                confirm_within,
            } => self
                .counted_reload(file, confirm_within)
                .map(|m| self.changed(m, received)),
            Request::PolicyConfirm => match self.pending.take() {
                Some(_) => {
                    self.save_pending(None);
                    Ok(self.changed("confirmed; the new policy stays".into(), received))
                }
                None => Err(AgentError::Refused(
                    "no reload is waiting for confirmation".into(),
                )),
            },
            Request::PolicyShow => Ok(Response::Policy(self.view())),
            Request::Audit { on } => self
                .commit(self.source.clone(), self.state.peers.clone(), Some(on))
                .map(|()| {
                    let m = if on {
                        "audit mode on: nothing is dropped; would-be drops are counted"
                    } else {
                        "audit mode off: the policy drops again"
                    };
                    self.changed(m.into(), received)
                }),
            Request::Stats => self.stats().map(Response::Stats),
            Request::Explain {
                src,
                dst,
                proto,
                sport,
                dport,
            } => explain::explain(&self.effective, src, dst, proto, sport, dport)
                .map(Response::Explain)
                .map_err(AgentError::Refused),
            Request::Drops { .. } => events
                .ok_or_else(no_events)
                .and_then(|events| Ok(events.counts()?))
                .map(|counts| {
                    Response::Drops(Drops {
                        events: self.recent(),
                        rate: self.event_rate,
                        sent: counts.sent,
                        suppressed: counts.suppressed,
                        lost: counts.lost,
                    })
                }),
            Request::DropRate { per_sec } if per_sec > MAX_EVENT_RATE => {
                Err(AgentError::Refused(format!(
                    "{per_sec} drop events a second is more than the agent reads; at most {MAX_EVENT_RATE}"
                )))
            }
            Request::DropRate { per_sec } => events
                .ok_or_else(no_events)
                .and_then(|events| Ok(events.refill(per_sec)?))
                .map(|()| {
                    self.event_rate = per_sec;
                    self.changed(format!("drop events: at most {per_sec} a second"), received)
                }),
            // This agent holds the instance's lock: nothing else changes the pins meanwhile.
            Request::Detach => crate::datapath::detach(&self.kernel.pins)
                .map(|interfaces| Response::Detached { interfaces })
                .map_err(AgentError::from),
        };
        result.unwrap_or_else(|err| Response::Error {
            message: err.to_string(),
        })
    }

    fn changed(&self, message: String, received: Instant) -> Response {
        Response::Changed(Change {
            message,
            generation: self.kernel.maps.generation(),
            micros: received.elapsed().as_micros() as u64,
        })
    }

    /// Makes `source` with `peers` (and the audit switch) the policy in force.
    pub(super) fn commit(
        &mut self,
        source: Source,
        peers: RuntimePeers,
        audit_switch: Option<bool>,
    ) -> Result<(), AgentError> {
        let next = Prepared::new(&source, peers, self.audit_flag, audit_switch, &self.state)?;
        let path = self.instance.state_file();
        next.state.save(&path)?;
        let flows = self.effective.options.flow_table_size;
        let installed = self
            .kernel
            .install(next.live.compiled(), &next.fresh, flows);
        if let Err(err) = installed {
            // The kernel did not change; neither does the saved state.
            if let Err(undo) = self.state.save(&path) {
                tracing::warn!("could not restore {}: {undo}", path.display());
            }
            return Err(err);
        }
        if next.effective.options.flow_table_size != flows {
            tracing::warn!("flow_table_size {} takes effect only when the datapath is loaded anew (after `director-fw detach`); the flow table keeps its size",
                next.effective.options.flow_table_size
            );
        }
        self.source = source;
        self.state = next.state;
        self.effective = next.effective;
        self.slots = next.slots;
        self.live = next.live;
        self.last_change = SystemTime::now();
        Ok(())
    }

    /// Adds `cidrs` to `role` or removes them, all or none, without compiling the whole
    /// policy again when they are hosts. Returns how many peers changed.
    fn change_peers(
        &mut self,
        role: &str,
        cidrs: &[String],
        add: bool,
    ) -> Result<usize, AgentError> {
        let file = &self.source.policy;
        let peers = if add {
            self.state.peers.add(file, role, cidrs)?
        } else {
            self.state.peers.del(file, role, cidrs)?
        };
        let before = self.state.peers.nets(role);
        let after = peers.nets(role);
        let changed: Vec<IpNet> = before.symmetric_difference(&after).copied().collect();
        if changed.is_empty() {
            return Ok(0);
        }
        let role_id = file.role(role).expect("checked by add and del");
        let state = State {
            peers,
            ..self.state.clone()
        };
        let path = self.instance.state_file();
        state.save(&path)?;
        self.set_peers(role_id, &changed, add);
        let compiled = match self
            .live
            .change(&self.effective, &self.slots, role_id, &changed, add)
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(NeedsFull)) => Incremental::new(&self.effective, &self.slots).map(|live| {
                self.live = live;
            }),
            Err(err) => Err(err),
        };
        let flows = self.effective.options.flow_table_size;
        let result = compiled
            .map_err(AgentError::from)
            .and_then(|()| self.kernel.install(self.live.compiled(), &[], flows));
        if let Err(err) = result {
            // Back to the policy in force, in memory and on disk; the kernel did not change.
            self.set_peers(role_id, &changed, !add);
            if let Ok(live) = Incremental::new(&self.effective, &self.slots) {
                self.live = live;
            }
            if let Err(undo) = self.state.save(&path) {
                tracing::warn!("could not restore {}: {undo}", path.display());
            }
            return Err(err);
        }
        self.state = state;
        self.last_change = SystemTime::now();
        Ok(changed.len())
    }

    /// Adds or removes the runtime peers `nets` of `role` in the policy in force.
    fn set_peers(&mut self, role: RoleId, nets: &[IpNet], add: bool) {
        if add {
            self.effective
                .peers
                .extend(nets.iter().map(|&net| Peer { role, net }));
        } else {
            let gone: HashSet<&IpNet> = nets.iter().collect();
            self.effective
                .peers
                .retain(|p| p.role != role || !gone.contains(&p.net));
        }
    }

    /// [`Agent::reload`], counted for the metrics.
    fn counted_reload(
        &mut self,
        file: Option<std::path::PathBuf>,
        confirm_within: Option<u64>,
    ) -> Result<String, AgentError> {
        let result = self.reload(file, confirm_within);
        match result {
            Ok(_) => self.reloads += 1,
            Err(_) => self.reload_failures += 1,
        }
        result
    }

    fn reload(
        &mut self,
        file: Option<std::path::PathBuf>,
        confirm_within: Option<u64>,
    ) -> Result<String, AgentError> {
        if let Some(pending) = &self.pending {
            // Only `policy confirm` ends the safety net: a reload now would lose the way back.
            return Err(AgentError::Refused(format!(
                "a reload waits for `director-fw policy confirm` (it reverts to {} in {} s); confirm it or let it revert first",
                pending.previous.policy.source,
                pending.deadline.saturating_duration_since(Instant::now()).as_secs()
            )));
        }
        let file = file.or_else(|| self.source.file.clone());
        let source = Source::read(file.as_ref())?;
        let previous = (self.source.clone(), self.state.peers.clone());
        self.commit(source, self.state.peers.clone(), self.state.audit)?;
        let what = format!(
            "reloaded {} ({} rules, {} peers)",
            self.source.policy.source,
            self.effective.rules.len(),
            self.effective.peers.len()
        );
        let Some(secs) = confirm_within else {
            return Ok(what);
        };
        let to = previous.0.policy.source.clone();
        self.save_pending(Some(PendingState {
            deadline: super::unix_now() + secs,
            unconfirmed: self.source.sha256.clone(),
            file: previous.0.file.clone(),
            text: previous.0.text.clone(),
            peers: previous.1.clone(),
        }));
        self.pending = Some(Pending {
            deadline: Instant::now() + Duration::from_secs(secs),
            previous: previous.0,
            peers: previous.1,
        });
        Ok(format!(
            "{what}; it reverts to {to} in {secs} s unless `director-fw policy confirm` comes first"
        ))
    }

    /// Keeps the confirm window (or its end) in the state file, so that a restart honours it.
    fn save_pending(&mut self, pending: Option<PendingState>) {
        self.state.pending = pending;
        let path = self.instance.state_file();
        if let Err(err) = self.state.save(&path) {
            tracing::error!("saving the confirm window in {}: {err}", path.display());
        }
    }

    /// The confirm deadline, if a reload waits for one.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.deadline)
    }

    /// The deadline passed: back to the policy before the reload. Runtime peers are those of
    /// then and those added since; a peer whose role the old file lacks cannot stay.
    pub(super) fn revert(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let to = pending.previous.policy.source.clone();
        let peers = super::peers_for_revert(
            &pending.peers,
            &self.state.peers,
            &self.source.policy,
            &pending.previous.policy,
        );
        let reverted = self.commit(pending.previous, peers, self.state.audit);
        self.save_pending(None);
        match reverted {
            Ok(()) => tracing::info!("no `policy confirm` in time: reverted to {to}"),
            Err(err) => {
                tracing::error!("reverting to {to} failed, the reloaded policy stays: {err}")
            }
        }
    }

    /// Attaches again where an interface lost its link (see [`crate::datapath::Pins::heal`]).
    pub(super) fn heal_links(&mut self) {
        match self.kernel.pins.heal(&self.kernel.ifaces, self.kernel.mode) {
            Ok(healed) => {
                if !healed.is_empty() {
                    // A recreated interface has a new ifindex.
                    if let Err(err) = self.kernel.point_rows(&self.state.interface_rows) {
                        tracing::error!("pointing the interfaces at their counter rows: {err}");
                    }
                }
                for (iface, warning) in healed {
                    tracing::info!("{iface} had no live link (the interface was created again, or appeared); attached again");
                    if let Some(warning) = warning {
                        tracing::warn!("{warning}");
                    }
                }
            }
            Err(err) => tracing::error!("checking the interfaces' links: {err}"),
        }
    }

    pub(super) fn reload_on_signal(&mut self) {
        match self.counted_reload(None, None) {
            Ok(what) => tracing::info!("SIGHUP: {what}"),
            Err(err) => {
                tracing::error!("SIGHUP reload refused, nothing changed: {err}")
            }
        }
    }

    pub fn status(&self) -> Status {
        Status {
            pid: std::process::id(),
            instance: self.instance.name.clone(),
            interfaces: self.kernel.ifaces.clone(),
            mode: self.kernel.mode.name().into(),
            policy: PolicySource {
                source: self.source.policy.source.clone(),
                sha256: self.source.sha256.clone(),
            },
            peers: self.effective.peers.len(),
            runtime_peers: self.state.peers.len(),
            audit: self.effective.options.audit,
            generation: self.kernel.maps.generation(),
            start: self.start.into(),
            started_at: timestamp(self.started_at),
            last_change: timestamp(self.last_change),
            pending_confirm: self.pending.as_ref().map(|p| PendingConfirm {
                revert_to: p.previous.policy.source.clone(),
                seconds_left: p
                    .deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs(),
            }),
            object: self.object_id.clone(),
        }
    }

    fn list(&self, role: Option<&str>) -> Result<Response, AgentError> {
        if let Some(role) = role {
            if self.source.policy.role(role).is_none() {
                return Err(AgentError::Refused(format!(
                    "unknown role {role:?}; the policy's roles are: {}",
                    self.source.policy.roles.join(", ")
                )));
            }
        }
        let peers: Vec<PeerEntry> = self.state.peers.list(&self.source.policy, role);
        Ok(Response::Peers { peers })
    }

    fn view(&self) -> PolicyView {
        PolicyView::new(
            &self.effective,
            self.state.peers.list(&self.source.policy, None),
        )
    }

    /// The Prometheus text of this moment.
    pub(super) fn metrics(&self, events: Option<EventCounts>) -> Result<String, AgentError> {
        let stats = self.stats()?;
        let (flow_entries, flow_capacity) = self.kernel.pins.flow_table()?;
        let mut peers: std::collections::BTreeMap<String, i64> = self
            .effective
            .roles
            .iter()
            .map(|role| (role.clone(), 0))
            .collect();
        for peer in &self.effective.peers {
            *peers
                .entry(self.effective.role_name(peer.role).to_string())
                .or_default() += 1;
        }
        let last_change = self
            .last_change
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Ok(metrics::render(&metrics::Snapshot {
            stats: &stats,
            peers: peers.into_iter().collect(),
            flow_entries: flow_entries as i64,
            flow_capacity: flow_capacity as i64,
            reloads: self.reloads,
            reload_failures: self.reload_failures,
            last_change,
            version: env!("CARGO_PKG_VERSION"),
            object: &self.object_id,
            events: events.map(|c| (c.sent, c.suppressed, c.lost)),
        }))
    }

    fn stats(&self) -> Result<stats::Stats, AgentError> {
        let rules: Vec<(String, u32)> = self
            .effective
            .rules
            .iter()
            .zip(&self.slots)
            .map(|(r, &s)| (r.id.clone(), s))
            .collect();
        let mut rows = Vec::new();
        for iface in &self.kernel.ifaces {
            if let Some(&row) = self.state.interface_rows.get(iface) {
                rows.push((iface.clone(), self.kernel.counters.row(row)?));
            }
        }
        rows.push((stats::OTHER.to_string(), self.kernel.counters.row(0)?));
        Ok(stats::collect(
            &rules,
            &self.kernel.ifaces,
            &rows,
            |slot| self.kernel.counters.rule(slot),
        )?)
    }
}

impl Kernel {
    /// Gives each interface a counter row, the one it had in `before` where it can, and
    /// returns the rows. The datapath enforces already, so a failure here costs counters
    /// only: it is logged, never fatal.
    pub(super) fn assign_rows(
        &mut self,
        before: &super::rows::RowsByName,
    ) -> super::rows::RowsByName {
        let rows = super::rows::assign(before, &self.ifaces);
        for iface in self.ifaces.iter().filter(|i| !rows.contains_key(*i)) {
            tracing::warn!(
                "{iface}: no counter row is left for it; its packets count as {}",
                stats::OTHER
            );
        }
        // Only the interfaces that keep their rows point at rows while the others are folded
        // into row 0, so that a row given to another interface starts from zero.
        let kept: super::rows::RowsByName = rows
            .iter()
            .filter(|(iface, row)| before.get(*iface) == Some(row))
            .map(|(iface, row)| (iface.clone(), *row))
            .collect();
        let folded = self.point_rows(&kept).and_then(|()| {
            let rows: Vec<u8> = kept.values().copied().collect();
            self.counters.fold_rows_except(&rows)
        });
        if let Err(err) = folded.and_then(|()| self.point_rows(&rows)) {
            tracing::error!("setting up the counters per interface: {err}");
        }
        rows
    }

    /// Points each interface's ifindex at its counter row.
    pub(super) fn point_rows(
        &mut self,
        rows: &super::rows::RowsByName,
    ) -> Result<(), DatapathError> {
        let named = rows.iter().map(|(iface, &row)| (iface.as_str(), row));
        for iface in self.counters.assign_rows(named)? {
            tracing::warn!(
                "{iface}: its ifindex is too large for a counter row; its packets count as {}",
                stats::OTHER
            );
        }
        Ok(())
    }

    /// Installs in one generation switch, or, when the policy has outgrown the maps, loads
    /// maps of a new size and puts their program under the links in one step.
    fn install(
        &mut self,
        compiled: &crate::Compiled,
        fresh: &[u32],
        flow_table_size: u32,
    ) -> Result<(), AgentError> {
        // Packets of the policy before the last switch may still count in a slot that has
        // just been freed: zero new rules' slots only once they are done.
        self.maps.settle();
        for &slot in fresh {
            self.counters.zero_rule(Verdict::Rule(slot).slot())?;
        }
        match self.maps.install(compiled) {
            Ok(_) => Ok(()),
            Err(DatapathError::DoesNotFit(why)) => {
                tracing::info!("the policy outgrows its maps ({why}); loading larger ones");
                let (maps, counters) = take_over(
                    &self.pins,
                    &self.object,
                    compiled,
                    flow_table_size,
                    self.mode,
                    &[],
                    &self.ifaces,
                )?;
                self.maps = maps;
                self.counters = counters;
                Ok(())
            }
            Err(err) => Err(err.into()),
        }
    }
}

fn no_events() -> AgentError {
    AgentError::Refused(
        "drop events are not available: their maps did not open when the agent started (see its log)".into(),
    )
}
