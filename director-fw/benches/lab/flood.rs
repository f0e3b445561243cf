//! The control socket under a flood: the wall time of `director-fw status` and of a
//! `peers add` / `peers del` of one host through the real agent (native XDP on the gateway's
//! ingress, drop events on at their default rate), first idle, then while the generator
//! sends denied packets at full rate. The agent reads no more drop events than their rate
//! allows, so a flood should not reach it; this measures that it does not. The flood's
//! softirq work runs on the generator's CPU; the agent and the CLI share the other one.

use super::*;

const AGENT: &str = env!("CARGO_BIN_EXE_director-fw");
/// Calls of each kind, idle and under the flood.
const CALLS: usize = 20;
const GAP: Duration = Duration::from_millis(20);
/// A host in no role of the lab, added and removed again.
const HOST: &str = "198.19.250.9";

pub(crate) struct Flood {
    /// Milliseconds per `status`, then per `peers add|del`: idle, and under the flood.
    pub(crate) idle: (Vec<f64>, Vec<f64>),
    pub(crate) flooded: (Vec<f64>, Vec<f64>),
    /// The traffic during the flood.
    pub(crate) sample: Sample,
}

pub(crate) fn control_under_flood(
    traffic: &mut Traffic,
    bed: &Bed,
    cpu: usize,
    policy_text: &str,
) -> Result<Flood> {
    let name = format!("bench-flood-{}", std::process::id());
    let instance = director_fw_lab::InstanceGuard::new(Path::new(AGENT), &name);
    let policy = std::env::temp_dir().join(format!("{name}.toml"));
    fs::write(&policy, policy_text).with_context(|| format!("writing {}", policy.display()))?;
    let result = (|| -> Result<Flood> {
        let args = [
            "--iface",
            bed.gw_in.as_str(),
            "--mode",
            "xdp",
            "--policy",
            policy.to_str().context("temp path")?,
        ];
        let mut agent = director_fw_lab::Agent::start(
            &bed.gw,
            Path::new(AGENT),
            instance.name(),
            args,
            director_fw_lab::AgentOptions::default(),
        )?;
        agent.wait_ready(director_fw_lab::Agent::START_TIMEOUT)?;
        let idle = calls(instance.name())?;
        // The flood is `measure`'s deny mix, on its own thread; the calls start once it is
        // warm and end well inside its window.
        let warmup = Duration::from_millis(500);
        let window = Duration::from_secs(4);
        let (sample, flooded) = thread::scope(|scope| -> Result<(Sample, _)> {
            let flood = scope.spawn(|| measure(traffic, bed, Mix::Deny, cpu, warmup, window));
            thread::sleep(warmup + Duration::from_millis(200));
            let started = Instant::now();
            let flooded = calls(instance.name());
            // Calls that ran past the flood would be timed idle.
            let took = started.elapsed();
            ensure!(
                took + Duration::from_millis(200) < window,
                "the calls took {took:?}, past the flood's window of {window:?}"
            );
            let sample = flood
                .join()
                .map_err(|_| anyhow!("the flood's thread panicked"))??;
            Ok((sample, flooded?))
        })?;
        agent.stop(director_fw_lab::Agent::STOP_TIMEOUT);
        Ok(Flood {
            idle,
            flooded,
            sample,
        })
    })();
    let _ = fs::remove_file(&policy);
    drop(instance);
    result
}

/// `CALLS` of `status`, then as many peer changes, timed from start to return.
fn calls(instance: &str) -> Result<(Vec<f64>, Vec<f64>)> {
    let time = |args: &[&str]| -> Result<f64> {
        let started = Instant::now();
        let out = director_fw_lab::cli(Path::new(AGENT), instance, args)?;
        let took = started.elapsed().as_secs_f64() * 1e3;
        ensure!(
            out.status.success(),
            "director-fw {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        thread::sleep(GAP);
        Ok(took)
    };
    let status = (0..CALLS)
        .map(|_| time(&["status", "--json"]))
        .collect::<Result<_>>()?;
    let peers = (0..CALLS)
        .map(|i| {
            let verb = if i % 2 == 0 { "add" } else { "del" };
            time(&["peers", verb, "internal-clients", HOST])
        })
        .collect::<Result<_>>()?;
    Ok((status, peers))
}

/// The table's lines and the report's part.
pub(crate) fn flood_report(flood: &Flood) -> (String, Value) {
    let (idle_status, idle_peers) = (median(&flood.idle.0), median(&flood.idle.1));
    let (status, peers) = (median(&flood.flooded.0), median(&flood.flooded.1));
    let max = |v: &[f64]| min_max(v).1;
    let text = format!(
        "\ncontrol socket under a flood of denied packets ({} Mpps received, {} Mpps dropped), median ms (max):\n  \
         status        idle {idle_status:>6.2} ({:.2})  flooded {status:>6.2} ({:.2})  ratio {:.2}\n  \
         peers add/del idle {idle_peers:>6.2} ({:.2})  flooded {peers:>6.2} ({:.2})  ratio {:.2}\n",
        mpps(flood.sample.received),
        mpps(flood.sample.dropped()),
        max(&flood.idle.0),
        max(&flood.flooded.0),
        status / idle_status,
        max(&flood.idle.1),
        max(&flood.flooded.1),
        peers / idle_peers,
    );
    let part = json!({
        "received_pps": flood.sample.received,
        "dropped_pps": flood.sample.dropped(),
        "status_ms": {"idle": stat(&flood.idle.0), "flooded": stat(&flood.flooded.0)},
        "peer_change_ms": {"idle": stat(&flood.idle.1), "flooded": stat(&flood.flooded.1)},
        "ratio_status": status / idle_status,
        "ratio_peer_change": peers / idle_peers,
    });
    (text, part)
}
