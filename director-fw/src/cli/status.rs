use std::time::{Duration, Instant};

use anyhow::Result;
use director_fw::{
    control::{protocol::Status, Client, ClientError, Request, Response},
    instance::Instance,
};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
    /// Wait up to SECS for an agent to be enforcing, instead of failing at once.
    #[arg(long, value_name = "SECS")]
    wait: Option<f64>,
}

const POLL: Duration = Duration::from_millis(50);

pub fn run(instance: &Instance, args: Args) -> Result<()> {
    let status = match args.wait {
        Some(secs) => wait(instance, Duration::from_secs_f64(secs.max(0.0)))?,
        None => ask(instance)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "agent:        pid {} ({} the datapath at {})",
        status.pid, status.start, status.started_at
    );
    println!(
        "interfaces:   {} ({} mode)",
        status.interfaces.join(", "),
        status.mode
    );
    println!("policy:       {}", status.policy.source);
    println!("sha256:       {}", status.policy.sha256);
    println!(
        "peers:        {} ({} added at runtime)",
        status.peers, status.runtime_peers
    );
    println!(
        "audit:        {}",
        if status.audit {
            "on: nothing is dropped"
        } else {
            "off"
        }
    );
    println!(
        "last change:  {} (generation {})",
        status.last_change, status.generation
    );
    if let Some(p) = &status.pending_confirm {
        println!(
            "PENDING:      reverts to {} in {} s unless `director-fw policy confirm`",
            p.revert_to, p.seconds_left
        );
    }
    println!("object:       {}", status.object);
    Ok(())
}

fn ask(instance: &Instance) -> Result<Status, ClientError> {
    match Client::connect(instance)?.call(Request::Status)? {
        Response::Status(status) => Ok(status),
        other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
    }
}

/// Polls until an agent answers: it binds its socket only once it enforces.
fn wait(instance: &Instance, timeout: Duration) -> Result<Status> {
    let deadline = Instant::now() + timeout;
    loop {
        match ask(instance) {
            Ok(status) => return Ok(status),
            Err(ClientError::NotRunning { .. }) if Instant::now() < deadline => {
                std::thread::sleep(POLL)
            }
            Err(ClientError::NotRunning { instance: name, socket }) => anyhow::bail!(
                "no director-fw agent for instance {name:?} became ready within {timeout:?} (nothing listens on {})",
                socket.display()
            ),
            Err(err) => return Err(err.into()),
        }
    }
}
