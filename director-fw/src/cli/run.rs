use std::path::PathBuf;

use anyhow::{Context, Result};
use director_fw::{
    compile,
    instance::{AgentInfo, Instance},
    AttachMode, Datapath, Policy,
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
}

/// Removes the instance's pins and description however `run` ends.
struct Published<'a>(&'a Instance);

impl Drop for Published<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

pub fn run(instance: &Instance, args: Args) -> Result<()> {
    let mut policy = match &args.policy {
        Some(file) => Policy::from_file(file)?,
        None => Policy::builtin(),
    };
    policy.options.audit |= args.audit;
    let compiled = compile(&policy)?;
    instance.claim()?;

    let mut datapath = Datapath::load_for(&policy, &compiled, args.mode)?;
    for iface in &args.ifaces {
        // An error drops the datapath, which detaches the interfaces already attached.
        if let Some(warning) = datapath.attach(iface, args.mode)? {
            eprintln!("director-fw: warning: {warning}");
        }
    }
    let published = Published(instance);
    datapath.pin_maps(instance)?;
    instance.publish(&AgentInfo {
        pid: std::process::id(),
        interfaces: args.ifaces.clone(),
        mode: args.mode.name().to_string(),
        policy_file: args
            .policy
            .as_ref()
            .map(|p| p.canonicalize().unwrap_or(p.clone())),
        audit: policy.options.audit,
        rules: policy.rules.iter().map(|r| r.id.clone()).collect(),
    })?;
    eprintln!(
        "director-fw: instance {:?} enforcing {} ({} rules, {} peers{}) on {} in {} mode; stop with Ctrl-C",
        instance.name,
        policy.source,
        policy.rules.len(),
        policy.peers.len(),
        if policy.options.audit { ", audit mode" } else { "" },
        args.ifaces.join(", "),
        args.mode.name()
    );

    wait_for_stop()?;
    eprintln!(
        "director-fw: stopping; detaching from {}",
        args.ifaces.join(", ")
    );
    drop(datapath);
    drop(published);
    Ok(())
}

fn wait_for_stop() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    })?;
    Ok(())
}
