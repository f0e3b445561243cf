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
}

pub fn run(instance: Instance, args: Args) -> Result<()> {
    agent::run(
        instance,
        RunOptions {
            ifaces: args.ifaces,
            mode: args.mode,
            policy_file: args.policy,
            audit: args.audit,
            object: args.object,
        },
    )?;
    Ok(())
}
