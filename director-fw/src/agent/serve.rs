//! The agent's loop: control requests one at a time, SIGHUP as a reload, the confirm
//! deadline, and SIGTERM or SIGINT as a stop that leaves the datapath enforcing.

use tokio::signal::unix::{signal, SignalKind};

use crate::{
    control::{protocol::Response, server::Server},
    instance::Instance,
};

use super::{Agent, AgentError, RunOptions};

/// How often the agent checks that every interface it filters still has a live link: an
/// interface removed and created again is filtered by nothing until it is attached again.
const LINK_WATCH: std::time::Duration = std::time::Duration::from_secs(2);

/// `director-fw run`: starts the agent and serves until a signal stops it or `detach`.
pub fn run(instance: Instance, options: RunOptions) -> Result<(), AgentError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AgentError::Io("starting the agent's runtime".into(), e))?;
    runtime.block_on(async move {
        let io = |what: &str| {
            let what = what.to_string();
            move |e| AgentError::Io(what, e)
        };
        // Before anything else: SIGHUP's default action would kill a starting agent.
        let mut hup = signal(SignalKind::hangup()).map_err(io("SIGHUP handler"))?;
        let mut term = signal(SignalKind::terminate()).map_err(io("SIGTERM handler"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(io("SIGINT handler"))?;

        let mut agent = Agent::start(instance, options)?;
        let server = Server::bind(&agent.instance)
            .map_err(io(&agent.instance.socket().display().to_string()))?;
        let s = agent.status();
        eprintln!(
            "director-fw: instance {:?} enforcing {} ({} rules, {} peers, {} at runtime{}) on {} in {} mode ({} the datapath); control socket {}",
            s.instance,
            s.policy.source,
            agent.effective.rules.len(),
            s.peers,
            s.runtime_peers,
            if s.audit { ", audit mode" } else { "" },
            s.interfaces.join(", "),
            s.mode,
            s.start,
            agent.instance.socket().display()
        );
        let mut watch = tokio::time::interval(LINK_WATCH);
        loop {
            let deadline = agent.deadline();
            let expiry = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                connection = server.accept() => {
                    let Ok(mut connection) = connection else { continue };
                    let response = match connection.request().await {
                        Ok(request) => agent.handle(request),
                        Err(refusal) => refusal,
                    };
                    let detached = matches!(response, Response::Detached { .. });
                    connection.respond(response).await;
                    if detached {
                        eprintln!("director-fw: detached on request; the interfaces pass everything now");
                        return Ok(());
                    }
                }
                _ = hup.recv() => agent.reload_on_signal(),
                _ = watch.tick() => agent.heal_links(),
                _ = expiry => agent.revert(),
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        eprintln!(
            "director-fw: stopping; the datapath stays attached to {} and keeps enforcing (`director-fw detach` removes it)",
            agent.kernel.ifaces.join(", ")
        );
        Ok(())
    })
}
