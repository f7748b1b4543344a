//! `qformer train`: one run from a TOML config: its name and folder, the `latest`/`auto` resume
//! rule, signals, and the exit status a scheduler reads.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::args::{BackendArg, ConfigArgs};
use super::console::Console;
use crate::kernels::backend::dispatch;
use crate::train::checkpoint;
use crate::train::config::TrainConfig;
use crate::train::metrics::Progress;
use crate::train::run::TrainJob;
use crate::util::error::{Error, Result};

#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub backend: BackendArg,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Continue a run: its folder under checkpoints/, a step folder, `latest` for this config's
    /// run, or `auto`: `latest` when the run has a checkpoint, a fresh start otherwise (one
    /// command line for a job that a scheduler restarts).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start afresh in a run folder that already holds a run, removing that run's checkpoints and metrics.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
}

/// Exit status of a run stopped by SIGINT or SIGTERM after checkpointing its step.
pub const STOPPED_STATUS: u8 = 130;
/// Exit status when a second signal stops a run at once (its last checkpoint stays intact).
pub const KILLED_STATUS: i32 = 143;

/// The run's name: `train.run_name`, else the config file's stem.
pub fn run_name(cfg: &TrainConfig, config: &Path) -> String {
    cfg.train.run_name.clone().unwrap_or_else(|| config.file_stem().and_then(|s| s.to_str()).unwrap_or("run").to_string())
}

/// Where a run starts from: `(resume, overwrite)` after the `latest` and `auto` rules. `latest`
/// refuses a damaged checkpoint, naming the newest intact one; `auto` falls back to it, saying
/// which it passed over and why.
pub(super) fn resume_rule(resume: Option<PathBuf>, overwrite: bool, run_dir: PathBuf) -> Result<(Option<PathBuf>, bool)> {
    let (intact, skipped) = checkpoint::newest_intact(&run_dir);
    match resume {
        Some(r) if r.as_os_str() == "latest" => {
            if let (Some(good), Some(first)) = (&intact, skipped.first()) {
                return Err(Error::file(
                    &run_dir,
                    format!("its latest checkpoint is damaged ({first}); the newest intact one is {0}: resume it with --resume {0} or --resume auto", good.display()),
                ));
            }
            Ok((Some(run_dir), overwrite))
        }
        Some(r) if r.as_os_str() == "auto" => match intact {
            Some(good) => {
                for s in &skipped {
                    eprintln!("--resume auto: passed over a damaged checkpoint: {s}");
                }
                Ok((Some(good), false))
            }
            // A run whose every checkpoint is damaged is kept for a person to look at.
            None if !skipped.is_empty() => {
                Err(Error::file(&run_dir, format!("no checkpoint of this run verifies: {}", skipped.join("; "))))
            }
            // No checkpoint: start fresh, replacing what an attempt that never reached its first
            // checkpoint left.
            None => Ok((None, true)),
        },
        other => Ok((other, overwrite)),
    }
}

/// The first SIGINT or SIGTERM sets the returned flag (the run finishes its step, checkpoints and
/// stops); a second one ends the process at once.
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        let failed = |e| Error::input("signals", format!("cannot install the handler: {e}"));
        // Registered first, so it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(signal, KILLED_STATUS, Arc::clone(&stop)).map_err(failed)?;
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(failed)?;
    }
    Ok(stop)
}

pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let cfg = args.backend.config(&args.config)?;
    let backend = cfg.train.backend;
    let name = run_name(&cfg, &args.config.config);
    let node = cfg.distributed.node;
    let (resume, overwrite) = resume_rule(args.resume, args.overwrite, cfg.checkpoint.dir.join(&name))?;
    let console = Arc::new(Console::new(cfg.log.every));
    let job = TrainJob::new(cfg, name, resume).reporting(console.clone()).overwriting(overwrite).stopping_on(stop_on_signals()?);
    let outcome = dispatch(backend, job);
    console.finish();
    let outcome = outcome?;
    if outcome.stopped {
        eprintln!("stopped at step {}; resume with --resume latest", outcome.steps);
        return Ok(ExitCode::from(STOPPED_STATUS));
    }
    if node == 0 {
        println!("finished {} steps; run folder {}", outcome.steps, outcome.run_dir.display());
    } else {
        println!("finished {} steps on node {node}; node 0 writes the run folder", outcome.steps);
    }
    println!("final: {}", outcome.last.summary());
    if let Some(r) = outcome.recall {
        println!(
            "held-out retrieval: i2t R@1 {:.1} R@5 {:.1} R@10 {:.1} | t2i R@1 {:.1} R@5 {:.1} R@10 {:.1}",
            r.i2t_r1, r.i2t_r5, r.i2t_r10, r.t2i_r1, r.t2i_r5, r.t2i_r10
        );
    }
    Ok(ExitCode::SUCCESS)
}
