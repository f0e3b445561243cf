use std::path::PathBuf;

use anyhow::Result;
use director_fw::{
    agent::{self, RunOptions},
    instance::Instance,
    AttachMode,
};

#[derive(clap::Args)]
pub struct Args {
    /// Interface to filter (ingress); repeat for each.
    #[arg(long = "iface", required = true)]
    ifaces: Vec<String>,
    /// Policy file (TOML); default: the built-in profile with no peers, which protects nothing.
    #[arg(long)]
    policy: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "xdp")]
    mode: AttachMode,
    /// Count would-be drops, drop nothing.
    #[arg(long)]
    audit: bool,
    /// Run another build of the kernel object instead of the built-in one.
    #[arg(long, hide = true)]
    object: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`GET /metrics`), e.g. 127.0.0.1:9810.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Drop events per second the kernel may send, across all CPUs (`drops`); 0 for none.
    #[arg(
        long,
        value_name = "PER_SEC",
        default_value_t = director_fw_common::events::DEFAULT_EVENT_RATE,
        value_parser = clap::value_parser!(u32).range(0..=i64::from(director_fw_common::events::MAX_EVENT_RATE))
    )]
    drop_events: u32,
    /// Least level logged: error, warn, info, debug or trace. RUST_LOG, when set, wins.
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

/// Logs to stderr: colours only on a terminal, and no timestamps under systemd's journal,
/// which stamps every line itself.
fn init_logs(level: tracing::Level) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env_lossy();
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
}

pub fn run(instance: Instance, args: Args) -> Result<()> {
    init_logs(args.log_level);
    agent::run(
        instance,
        RunOptions {
            ifaces: args.ifaces,
            mode: args.mode,
            policy_file: args.policy,
            audit: args.audit,
            object: args.object,
            metrics: args.metrics,
            drop_events: args.drop_events,
        },
    )?;
    Ok(())
}
