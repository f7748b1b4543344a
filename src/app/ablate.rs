//! Ablation sweeps: the same config with objectives switched off, over seeds, summarised as a
//! table of final per-objective losses and held-out R@1 (markdown and CSV).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use super::args::{BackendArg, ConfigArgs};
use super::console::Console;
use super::report::mean_sd;
use super::train::resume_rule;
use crate::kernels::backend::dispatch;
use crate::train::checkpoint;
use crate::train::config::TrainConfig;
use crate::train::metrics::Progress;
use crate::train::run::{TrainJob, TrainOutcome};
use crate::util::error::{Error, Result};

#[derive(clap::Args)]
pub struct AblateArgs {
    #[command(flatten)]
    pub backend: BackendArg,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Variants: all, no-itc, no-itm, no-itg, itc-only, itm-only, itg-only.
    #[arg(long, value_delimiter = ',', default_value = "all,no-itc,no-itm,no-itg")]
    pub variants: Vec<String>,
    /// Seeds to train each variant with (train.seed), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Continue an interrupted sweep: every variant's run from its latest checkpoint (`latest`),
    /// or from its newest intact one, starting the variants that have none (`auto`).
    #[arg(long, value_enum)]
    pub resume: Option<SweepResume>,
    /// Replace variants' runs left in their folders by an earlier sweep.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepResume {
    Latest,
    Auto,
}

/// A sweep: variants × seeds of one config, and how each variant's run starts.
pub struct Sweep {
    pub config: PathBuf,
    pub overrides: Vec<String>,
    pub variants: Vec<String>,
    pub seeds: Vec<u64>,
    pub resume: Option<SweepResume>,
    pub overwrite: bool,
}

/// Where one variant's run starts (as `train --resume` / `--overwrite` would).
#[derive(Clone, Debug)]
pub struct Start {
    pub resume: Option<PathBuf>,
    pub overwrite: bool,
}

pub fn run(args: AblateArgs) -> Result<ExitCode> {
    let sweep = Sweep {
        config: args.config.config,
        overrides: args.backend.overrides(&args.config.overrides),
        variants: args.variants,
        seeds: args.seeds,
        resume: args.resume,
        overwrite: args.overwrite,
    };
    let (dir, table) = ablate(&sweep, |cfg, name, start| {
        let backend = cfg.train.backend;
        let console = Arc::new(Console::new(cfg.log.every));
        let job = TrainJob::new(cfg, name, start.resume).reporting(console.clone()).overwriting(start.overwrite);
        let outcome = dispatch(backend, job);
        console.finish();
        outcome
    })?;
    println!("{table}");
    println!("written to {0}/ablation.md, ablation.csv, report.png and report.md", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// `--set` overrides of a named variant.
pub fn variant_overrides(name: &str) -> Result<Vec<String>> {
    let on = |itc: bool, itm: bool, itg: bool| {
        vec![format!("objectives.itc.enabled={itc}"), format!("objectives.itm.enabled={itm}"), format!("objectives.itg.enabled={itg}")]
    };
    Ok(match name {
        "all" => on(true, true, true),
        "no-itc" => on(false, true, true),
        "no-itm" => on(true, false, true),
        "no-itg" => on(true, true, false),
        "itc-only" => on(true, false, false),
        "itm-only" => on(false, true, false),
        "itg-only" => on(false, false, true),
        other => {
            return Err(Error::config(
                "--variants",
                format!("unknown variant `{other}` (all, no-itc, no-itm, no-itg, itc-only, itm-only, itg-only)"),
                "command line",
            ))
        }
    })
}

pub struct AblationRow {
    pub variant: String,
    pub seed: u64,
    pub outcome: TrainOutcome,
}

/// The table's figures of one run: final losses and the last held-out R@1.
const COLUMNS: [&str; 6] = ["loss", "itc", "itm", "itg", "i2t R@1", "t2i R@1"];

fn figures(o: &TrainOutcome) -> [Option<f64>; 6] {
    let m = &o.last;
    let (i2t, t2i) = o.recall.map_or((None, None), |x| (Some(x.i2t_r1), Some(x.t2i_r1)));
    [Some(m.loss), m.loss_itc, m.loss_itm, m.loss_itg, i2t, t2i]
}

fn cell(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

/// Writes `ablation.md` (each run, then each variant's mean ± sample standard deviation over its
/// seeds) and `ablation.csv` (each run) into `dir`; returns the markdown.
pub fn write_table(dir: &Path, rows: &[AblationRow]) -> Result<String> {
    let header = COLUMNS.join(" | ");
    let rule = "---|".repeat(COLUMNS.len());
    let mut md = format!("| variant | seed | steps | {header} |\n|---|---|---|{rule}\n");
    let mut csv = String::from("variant,seed,steps,loss,loss_itc,loss_itm,loss_itg,i2t_r1,t2i_r1\n");
    for r in rows {
        let f = figures(&r.outcome);
        let cells: Vec<String> = f.iter().map(|&v| cell(v)).collect();
        let _ = writeln!(md, "| {} | {} | {} | {} |", r.variant, r.seed, r.outcome.steps, cells.join(" | "));
        let values: Vec<String> = f.iter().map(|v| v.map_or(String::new(), |v| v.to_string())).collect();
        let _ = writeln!(csv, "{},{},{},{}", r.variant, r.seed, r.outcome.steps, values.join(","));
    }
    let mut variants: Vec<&str> = Vec::new();
    for r in rows {
        if !variants.contains(&r.variant.as_str()) {
            variants.push(&r.variant);
        }
    }
    if rows.len() > variants.len() {
        let _ = write!(md, "\nOver seeds (mean ± sample standard deviation):\n\n| variant | seeds | {header} |\n|---|---|{rule}\n");
        for variant in variants {
            let runs: Vec<[Option<f64>; 6]> = rows.iter().filter(|r| r.variant == variant).map(|r| figures(&r.outcome)).collect();
            let cells: Vec<String> = (0..COLUMNS.len())
                .map(|c| {
                    let v: Vec<f64> = runs.iter().filter_map(|f| f[c]).collect();
                    match mean_sd(&v) {
                        Some((mean, sd)) if v.len() == runs.len() => format!("{mean:.4} ± {sd:.4}"),
                        _ => "-".into(),
                    }
                })
                .collect();
            let _ = writeln!(md, "| {variant} | {} | {} |", runs.len(), cells.join(" | "));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    std::fs::write(dir.join("ablation.md"), &md).map_err(|e| Error::io(dir, e))?;
    std::fs::write(dir.join("ablation.csv"), &csv).map_err(|e| Error::io(dir, e))?;
    Ok(md)
}

/// How every planned variant starts, checked for all of them before the first one trains: a
/// fresh sweep is refused while any variant's folder holds a run, `latest` while any has no
/// checkpoint.
fn starts(sweep: &Sweep, planned: &[(&String, u64, TrainConfig, String)]) -> Result<Vec<Start>> {
    let mut starts = Vec::new();
    let mut refused = Vec::new();
    for (_, _, cfg, name) in planned {
        let dir = cfg.checkpoint.dir.join(name);
        let rule = sweep.resume.map(|r| PathBuf::from(if r == SweepResume::Latest { "latest" } else { "auto" }));
        let (resume, overwrite) = resume_rule(rule, sweep.overwrite, dir.clone())?;
        match &resume {
            Some(path) if checkpoint::resolve(path).is_err() => refused.push(format!("{} (no checkpoint to resume)", dir.display())),
            None if !overwrite && dir.exists() => {
                let held = checkpoint::run_contents(&dir)?;
                if !held.is_empty() {
                    refused.push(format!("{} ({})", dir.display(), held.join(", ")));
                }
            }
            _ => {}
        }
        starts.push(Start { resume, overwrite });
    }
    if !refused.is_empty() {
        return Err(Error::input(
            "ablate",
            format!(
                "no variant was trained: {}; continue the sweep with --resume auto, or replace its runs with --overwrite",
                refused.join("; ")
            ),
        ));
    }
    Ok(starts)
}

/// Runs every variant and seed with `run` and writes the table under the config's checkpoint dir.
pub fn ablate(sweep: &Sweep, mut run: impl FnMut(TrainConfig, String, Start) -> Result<TrainOutcome>) -> Result<(PathBuf, String)> {
    let stem = sweep.config.file_stem().and_then(|s| s.to_str()).unwrap_or("run").to_string();
    // Every variant's config and folder is checked before the first one trains.
    let mut planned = Vec::new();
    for variant in &sweep.variants {
        for &seed in &sweep.seeds {
            let mut overrides = sweep.overrides.clone();
            overrides.extend(variant_overrides(variant)?);
            overrides.push(format!("train.seed={seed}"));
            let name = format!("{stem}-ablate/{variant}-seed{seed}");
            planned.push((variant, seed, TrainConfig::load(&sweep.config, &overrides)?, name));
        }
    }
    let starts = starts(sweep, &planned)?;
    let mut rows = Vec::new();
    for ((variant, seed, cfg, name), start) in planned.into_iter().zip(starts) {
        eprintln!("== ablation {variant}, seed {seed}");
        rows.push(AblationRow { variant: variant.clone(), seed, outcome: run(cfg, name, start)? });
    }
    let base = TrainConfig::load(&sweep.config, &sweep.overrides)?;
    let dir = base.checkpoint.dir.join(format!("{stem}-ablate"));
    let md = write_table(&dir, &rows)?;
    let runs: Vec<PathBuf> = rows.iter().map(|r| r.outcome.run_dir.clone()).collect();
    crate::app::report::write(&runs, &dir)?;
    Ok((dir, md))
}
