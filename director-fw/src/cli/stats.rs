use anyhow::Result;
use director_fw::{
    control::{Request, Response},
    instance::Instance,
    telemetry::stats,
};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub fn run(instance: &Instance, args: Args) -> Result<()> {
    let stats = match super::call(instance, Request::Stats)? {
        Response::Stats(stats) => stats,
        other => return Err(super::unexpected(other)),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", stats::render(&stats));
    }
    Ok(())
}
