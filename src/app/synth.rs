//! `qformer synth`: the generated shapes data set, written to a folder.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::data::synth;
use crate::util::error::Result;

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Folder to write train.json, eval.json and images/ into.
    #[arg(long)]
    pub out: PathBuf,
    /// Training scenes.
    #[arg(long, default_value_t = 4000)]
    pub n: usize,
    /// Held-out scenes.
    #[arg(long, default_value_t = 500)]
    pub n_eval: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    /// Seed of the scenes (the same seed gives the same set).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: SynthArgs) -> Result<ExitCode> {
    let (train, eval) = synth::generate(&args.out, args.n, args.n_eval, args.size, args.seed)?;
    println!("wrote {} and {}", train.display(), eval.display());
    Ok(ExitCode::SUCCESS)
}
