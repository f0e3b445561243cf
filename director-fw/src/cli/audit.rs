use anyhow::Result;
use director_fw::{control::Request, instance::Instance};

#[derive(Clone, Copy, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    switch: Switch,
}

pub fn run(instance: &Instance, args: Args) -> Result<()> {
    let on = matches!(args.switch, Switch::On);
    super::print_change(super::call(instance, Request::Audit { on })?)
}
