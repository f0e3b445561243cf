//! The agent's loop: control requests one at a time, SIGHUP as a reload, the confirm
//! deadline, and SIGTERM or SIGINT as a stop that leaves the datapath enforcing.

use tokio::signal::unix::{signal, SignalKind};

use crate::{
    control::{
        protocol::{Request, Response},
        server::Server,
    },
    datapath::{DropEvents, KernelLog},
    instance::Instance,
};

use super::{Agent, AgentError, RunOptions};

/// Metrics connections served at once, and how long one scrape's text serves the next ones.
const SCRAPERS: usize = 8;
const SCRAPE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Drop events read per wake-up of the agent's loop.
const EVENT_BATCH: usize = 1024;

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

        // Bound before the datapath is touched: a bad address changes nothing.
        let metrics_addr = options.metrics;
        let metrics = match metrics_addr {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(io(&format!("serving metrics on {addr}")))?,
            ),
            None => None,
        };
        let mut agent = Agent::start(instance, options)?;
        if let Some(addr) = metrics_addr {
            tracing::info!("Prometheus metrics on http://{addr}/metrics");
        }
        let server = Server::bind(&agent.instance)
            .map_err(io(&agent.instance.socket().display().to_string()))?;
        let s = agent.status();
        tracing::info!("instance {:?} enforcing {} ({} rules, {} peers, {} at runtime{}) on {} in {} mode ({} the datapath); control socket {}",
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
        let scrapers = std::sync::Arc::new(tokio::sync::Semaphore::new(SCRAPERS));
        let mut scraped: Option<(std::time::Instant, Result<String, String>)> = None;
        // The drop events: read as they come; each CPU's budget refilled every second. Without
        // them the agent still enforces and serves, and says why.
        let mut events = match DropEvents::open(&agent.kernel.pins).and_then(|events| {
            let interest = tokio::io::Interest::READABLE;
            // SAFETY: the ring buffer's fd is owned by `events`, which the AsyncFd owns and
            // drops after deregistering it.
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(events, interest) }
                .map_err(|e| {
                    crate::datapath::DatapathError::Io("watching the drop events".into(), e.into())
                })
        }) {
            Ok(events) => Some(events),
            Err(err) => {
                tracing::warn!("drop events are off: {err}");
                None
            }
        };
        // The program whose log was last opened (or tried): a failure is not retried until
        // another program takes the links.
        let mut log_program = KernelLog::program_in_force(&agent.kernel.pins, agent.kernel.mode).ok();
        let mut kernel_log = open_kernel_log(&agent);
        let mut refill = tokio::time::interval(std::time::Duration::from_secs(1));
        // A refill missed while the agent was busy is not made up for in a burst.
        refill.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                        Ok(Request::Drops { follow: true }) if events.is_some() => {
                            tokio::spawn(connection.stream(agent.subscribe()));
                            continue;
                        }
                        Ok(request) => agent.handle(request, events.as_mut().map(|e| e.get_mut())),
                        Err(refusal) => refusal,
                    };
                    let detached = matches!(response, Response::Detached { .. });
                    connection.respond(response).await;
                    if detached {
                        tracing::info!("detached on request; the interfaces pass everything now");
                        return Ok(());
                    }
                }
                scrape = accept(metrics.as_ref()) => {
                    let Ok((stream, _)) = scrape else { continue };
                    // A few scrapes at a time; more connections are closed at once.
                    let Ok(permit) = scrapers.clone().try_acquire_owned() else { continue };
                    // The text is made on the agent's thread, at most once per SCRAPE_TTL
                    // (counting the flows walks the flow table), and served on a task of its
                    // own, so that neither a slow scraper nor a flood of connections holds the
                    // agent up.
                    let fresh = scraped.as_ref().is_some_and(|(at, _)| at.elapsed() < SCRAPE_TTL);
                    if !fresh {
                        let counts = events.as_ref().and_then(|e| e.get_ref().counts().ok());
                        let text = agent.metrics(counts).map_err(|e| e.to_string());
                        scraped = Some((std::time::Instant::now(), text));
                    }
                    let text = scraped
                        .as_ref()
                        .map_or_else(|| Err("no snapshot".into()), |(_, t)| t.clone());
                    tokio::spawn(async move {
                        serve_metrics(stream, text).await;
                        drop(permit);
                    });
                }
                ready = readable(events.as_mut()) => {
                    if let Ok(mut ready) = ready {
                        // A batch at a time, so that a burst cannot hold the socket up; the
                        // readiness stays set while events are left.
                        let mut read = 0;
                        while read < EVENT_BATCH {
                            match ready.get_inner_mut().next_event() {
                                Some(event) => agent.record(&event),
                                None => break,
                            }
                            read += 1;
                        }
                        if read < EVENT_BATCH {
                            ready.clear_ready();
                        }
                    }
                }
                ready = readable(kernel_log.as_mut()) => {
                    if let Ok(mut ready) = ready {
                        ready.get_inner_mut().flush();
                        ready.clear_ready();
                    }
                }
                _ = refill.tick() => {
                    if let Some(events) = events.as_mut() {
                        if let Err(err) = events.get_mut().refill(agent.event_rate) {
                            tracing::error!("refilling the drop events' budget: {err}");
                        }
                    }
                }
                _ = hup.recv() => agent.reload_on_signal(),
                _ = watch.tick() => {
                    agent.heal_links();
                    // A larger policy or an upgrade put another program, with its own log,
                    // under the links.
                    let program = KernelLog::program_in_force(&agent.kernel.pins, agent.kernel.mode).ok();
                    if program != log_program {
                        // What the old program logged before the swap is logged first.
                        if let Some(mut old) = kernel_log.take() {
                            old.get_mut().flush();
                        }
                        log_program = program;
                        kernel_log = open_kernel_log(&agent);
                    }
                }
                _ = expiry => agent.revert(),
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!("stopping; the datapath stays attached to {} and keeps enforcing (`director-fw detach` removes it)",
            agent.kernel.ifaces.join(", ")
        );
        Ok(())
    })
}

/// A ring buffer once it has records; never, without it.
async fn readable<T: std::os::fd::AsRawFd>(
    ring: Option<&mut tokio::io::unix::AsyncFd<T>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, T>> {
    match ring {
        Some(ring) => ring.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// The kernel program's log, watched. Without it the agent still enforces, and says why.
fn open_kernel_log(agent: &Agent) -> Option<tokio::io::unix::AsyncFd<KernelLog>> {
    let log = KernelLog::open(&agent.kernel.pins, agent.kernel.mode).and_then(|log| {
        let interest = tokio::io::Interest::READABLE;
        // SAFETY: the ring buffer's fd is owned by `log`, which the AsyncFd owns and drops
        // after deregistering it.
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(log, interest) }.map_err(|e| {
            crate::datapath::DatapathError::Io("watching the kernel program's log".into(), e.into())
        })
    });
    match log {
        Ok(log) => Some(log),
        Err(err) => {
            tracing::warn!("the kernel program's rare events are not logged: {err}");
            None
        }
    }
}

/// The next scrape's connection; never, without a metrics address.
async fn accept(
    listener: Option<&tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Answers one HTTP connection: `GET /metrics` with `text`, anything else with 404.
async fn serve_metrics(stream: tokio::net::TcpStream, text: Result<String, String>) {
    use http_body_util::Full;
    use hyper::{body::Bytes, header::CONTENT_TYPE, Response, StatusCode};

    const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
        let (status, kind, body) = match (request.uri().path(), &text) {
            ("/metrics", Ok(text)) => (StatusCode::OK, OPENMETRICS, text.clone()),
            ("/metrics", Err(err)) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("reading the counters: {err}\n"),
            ),
            _ => (StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into()),
        };
        let response = Response::builder()
            .status(status)
            .header(CONTENT_TYPE, kind)
            .body(Full::new(Bytes::from(body)));
        async move { response }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), connection).await;
}
