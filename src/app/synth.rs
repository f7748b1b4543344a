//! `qformer synth`: the generated shapes data set, written to a folder.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::data::synth;
use crate::util::error::{Error, Result};

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
    /// Radius of a small object, as a fraction of the image side (`data.synth.small_radius`).
    #[arg(long, default_value_t = synth::DEFAULT_RADII.0)]
    pub small_radius: f32,
    /// Radius of a large object, as a fraction of the image side (`data.synth.large_radius`).
    #[arg(long, default_value_t = synth::DEFAULT_RADII.1)]
    pub large_radius: f32,
    /// Replace a set already in the folder (its annotations and every image).
    #[arg(long)]
    pub overwrite: bool,
}

/// Refuses to write over a set unless `--overwrite`, which removes the old set first so that no
/// stale image remains.
pub fn run(args: SynthArgs) -> Result<ExitCode> {
    let present = synth::set_files(&args.out);
    if !present.is_empty() {
        if !args.overwrite {
            return Err(Error::file(
                &args.out,
                format!("already holds a data set ({}): pass --overwrite to replace it", present.join(", ")),
            ));
        }
        synth::remove_set(&args.out)?;
    }
    let spec = synth::SynthConfig {
        small_radius: args.small_radius,
        large_radius: args.large_radius,
        ..synth::SynthConfig::new(args.n, args.n_eval, args.seed)
    };
    let (train, eval) = synth::generate(&args.out, &spec, args.size)?;
    println!("wrote {} and {}", train.display(), eval.display());
    Ok(ExitCode::SUCCESS)
}
