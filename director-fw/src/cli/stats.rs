use anyhow::Result;
use director_fw::{instance::Instance, stats};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub fn run(instance: &Instance, args: Args) -> Result<()> {
    let stats = stats::read(instance)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", stats::render(&stats));
    }
    Ok(())
}
