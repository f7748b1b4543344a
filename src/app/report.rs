//! `qformer report`: one PNG with a panel per curve (each loss term, ITM against its constant
//! answer, learning rate, temperature, held-out retrieval, the re-ranking gain and ITG's grounding
//! gap) with several runs overlaid, and a markdown summary table. Reads only the
//! runs' `metrics.jsonl`, so it works on finished, running and resumed runs alike.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::train::checkpoint::METRICS_FILE;
use crate::train::metrics::{MetricsLog, StepMetrics};
use crate::util::error::{Error, Result};

/// Embedded so that plots render the same without system fonts (assets/README.md).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
pub const PLOT_FILE: &str = "report.png";
pub const SUMMARY_FILE: &str = "report.md";
/// Loss curves are drawn as a running mean over this many steps.
const SMOOTH: usize = 10;
/// Curves of at most this many points (evaluations) get a marker, and over seeds a bar, per point.
const MARKED_POINTS: usize = 30;

/// One run's metrics.
pub struct Run {
    pub name: String,
    pub steps: Vec<StepMetrics>,
}

impl Run {
    /// Reads `dir/metrics.jsonl`; the run is named after its folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let steps = MetricsLog::read(dir)?;
        if steps.is_empty() {
            return Err(Error::file(dir.join(METRICS_FILE), "no steps recorded"));
        }
        let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Self { name, steps })
    }
}

struct Panel {
    title: &'static str,
    /// The y axis: quantity and unit.
    unit: &'static str,
    /// The value at a step, if recorded there.
    value: fn(&StepMetrics) -> Option<f64>,
    smooth: bool,
}

const PANELS: [Panel; 12] = [
    Panel { title: "total loss", unit: "nats", value: |m| Some(m.loss), smooth: true },
    Panel { title: "ITC loss", unit: "nats", value: |m| m.loss_itc, smooth: true },
    Panel { title: "ITM loss", unit: "nats", value: |m| m.loss_itm, smooth: true },
    Panel { title: "ITM loss minus a constant answer's", unit: "nats (< 0: learning)", value: itm_margin, smooth: true },
    Panel { title: "ITG loss", unit: "nats per token", value: |m| m.loss_itg, smooth: true },
    Panel { title: "learning rate", unit: "lr", value: |m| Some(m.lr), smooth: false },
    Panel { title: "temperature", unit: "τ", value: |m| Some(m.temp), smooth: false },
    Panel { title: "held-out i2t R@1 (ITC)", unit: "%", value: |m| m.retrieval.map(|r| r.i2t_r1), smooth: false },
    Panel { title: "held-out t2i R@1 (ITC)", unit: "%", value: |m| m.retrieval.map(|r| r.t2i_r1), smooth: false },
    Panel { title: "held-out i2t R@1 gain from ITM re-ranking", unit: "points", value: |m| gain(m).map(|g| g.0), smooth: false },
    Panel { title: "held-out t2i R@1 gain from ITM re-ranking", unit: "points", value: |m| gain(m).map(|g| g.1), smooth: false },
    Panel {
        title: "held-out ITG grounding gap",
        unit: "nats per token",
        value: |m| m.evaluation.as_ref().map(|e| e.itg_grounding_gap),
        smooth: false,
    },
];

fn itm_margin(m: &StepMetrics) -> Option<f64> {
    Some(m.loss_itm? - m.itm_constant?)
}

fn gain(m: &StepMetrics) -> Option<(f64, f64)> {
    m.evaluation.as_ref().map(|e| e.rerank_gain())
}

/// One curve: (step, value) points.
type Series = Vec<(f64, f64)>;

/// Points of one panel for one run; loss curves as a running mean.
fn series(run: &Run, panel: &Panel) -> Series {
    let raw: Vec<(f64, f64)> =
        run.steps.iter().filter_map(|m| (panel.value)(m).filter(|v| v.is_finite()).map(|v| (m.step as f64, v))).collect();
    if !panel.smooth {
        return raw;
    }
    (0..raw.len())
        .map(|i| {
            let window = &raw[i.saturating_sub(SMOOTH - 1)..=i];
            (raw[i].0, window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64)
        })
        .collect()
}

/// A run's group: its name without a trailing `-seed<N>` (the runs of an ablation sweep).
fn group_of(name: &str) -> &str {
    match name.rsplit_once("-seed") {
        Some((group, seed)) if !seed.is_empty() && seed.bytes().all(|b| b.is_ascii_digit()) => group,
        _ => name,
    }
}

/// Runs grouped by [`group_of`], in first-appearance order. Only seeds of one variant share a
/// group: runs without a `-seed<N>` suffix stay alone even when their names match (two runs of
/// one name in different folders are not seeds of each other).
fn groups(runs: &[Run]) -> Vec<(String, Vec<&Run>)> {
    let mut out: Vec<(String, Vec<&Run>)> = Vec::new();
    for run in runs {
        let g = group_of(&run.name);
        if g == run.name {
            out.push((g.to_string(), vec![run]));
            continue;
        }
        match out.iter_mut().find(|(name, members)| name == g && members[0].name != g) {
            Some((_, members)) => members.push(run),
            None => out.push((g.to_string(), vec![run])),
        }
    }
    out
}

/// What a panel draws for one group: a run's curve, or over several seeds the mean and, at each
/// step every seed recorded, the lowest and highest value (a band).
struct Curve {
    name: String,
    line: Series,
    band: Option<(Series, Series)>,
}

fn curves(groups: &[(String, Vec<&Run>)], panel: &Panel) -> Vec<Curve> {
    groups
        .iter()
        .map(|(name, members)| {
            let all: Vec<Series> = members.iter().map(|r| series(r, panel)).collect();
            if all.len() == 1 {
                return Curve { name: members[0].name.clone(), line: all[0].clone(), band: None };
            }
            let mut line = Series::new();
            let (mut lo, mut hi) = (Series::new(), Series::new());
            for &(step, _) in &all[0] {
                let at: Vec<f64> = all.iter().filter_map(|s| s.iter().find(|p| p.0 == step).map(|p| p.1)).collect();
                if at.len() < all.len() {
                    continue;
                }
                line.push((step, at.iter().sum::<f64>() / at.len() as f64));
                lo.push((step, at.iter().copied().fold(f64::INFINITY, f64::min)));
                hi.push((step, at.iter().copied().fold(f64::NEG_INFINITY, f64::max)));
            }
            Curve { name: format!("{name} (mean of {} seeds; band and bars: min–max)", all.len()), line, band: Some((lo, hi)) }
        })
        .collect()
}

/// Where a sparse banded curve (held-out evaluations, the final full evaluation) gets a bar from
/// the lowest to the highest seed at each point: (step, min, mean, max). A band alone is drawn
/// between points, so at a lone point, such as the one full evaluation at the last step, it
/// would show no spread at all. Dense curves (losses) keep only the band.
fn whiskers(curve: &Curve) -> Vec<(f64, f64, f64, f64)> {
    match &curve.band {
        Some((lo, hi)) if curve.line.len() <= MARKED_POINTS => {
            curve.line.iter().zip(lo.iter().zip(hi)).map(|(&(step, mean), (l, h))| (step, l.1, mean, h.1)).collect()
        }
        _ => Vec::new(),
    }
}

/// How many x labels to ask for so that they fall on whole steps (at most 6).
fn step_ticks(x_max: f64) -> usize {
    (x_max.round() as usize).clamp(1, 6)
}

/// An axis label in one notation for the whole axis (`lo..hi`), with as many digits as its range
/// needs: scientific when the axis's largest magnitude is below 0.01 (learning rates), else fixed.
fn label(v: f64, lo: f64, hi: f64) -> String {
    let range = (hi - lo).max(1e-300);
    // A tick at zero computed with rounding error (-2.7e-20) reads as 0.
    let v = if v.abs() < range * 1e-9 { 0.0 } else { v };
    let scale = lo.abs().max(hi.abs());
    if scale < 1e-2 {
        if v == 0.0 {
            return "0".into();
        }
        // Mantissa digits enough to tell ticks a tenth of the range apart.
        let digits = ((scale / range).log10().ceil() + 1.0).clamp(1.0, 4.0) as usize;
        return format!("{v:.digits$e}");
    }
    let digits = (2.0 - range.log10().floor()).clamp(0.0, 6.0) as usize;
    format!("{v:.digits$}")
}

/// Room around the data on the y axis: 5 % of its range, and for a flat series (range below a
/// thousandth of its size) 10 % of its size, so that rounding noise is not drawn as a slope.
fn y_pad(lo: f64, hi: f64) -> f64 {
    let size = lo.abs().max(hi.abs());
    if hi - lo <= size * 1e-3 {
        return if size > 0.0 { size * 0.1 } else { 1.0 };
    }
    (hi - lo) * 0.05
}

/// Line colours that read on white (no yellow), in the order runs get them.
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 140, 160),
    RGBColor(140, 86, 75),
    RGBColor(60, 60, 60),
];

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::file(path, format!("cannot draw the plot: {e}"))
}

/// Draws every panel that some run has data for into one PNG.
fn draw(runs: &[Run], path: &Path) -> Result<()> {
    // Registering again replaces the font: harmless across calls.
    register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| plot_error(path, "the embedded font is invalid"))?;
    let groups = groups(runs);
    let panels: Vec<(&Panel, Vec<Curve>)> =
        PANELS.iter().map(|p| (p, curves(&groups, p))).filter(|(_, c)| c.iter().any(|c| !c.line.is_empty())).collect();
    let cols = panels.len().div_ceil(2).max(1);
    let root = BitMapBackend::new(path, (420 * cols as u32, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let areas = root.split_evenly((2, cols));
    for ((panel, data), area) in panels.iter().zip(areas.iter()) {
        let points = data.iter().flat_map(|c| c.line.iter().chain(c.band.iter().flat_map(|(lo, hi)| lo.iter().chain(hi))));
        let (x_max, y_min, y_max) =
            points.fold((1f64, f64::INFINITY, f64::NEG_INFINITY), |(x, lo, hi), p| (x.max(p.0), lo.min(p.1), hi.max(p.1)));
        let pad = y_pad(y_min, y_max);
        let title = if panel.smooth { format!("{} ({SMOOTH}-step running mean)", panel.title) } else { panel.title.to_string() };
        // Room above the data for the legend, so it never covers the last points.
        let legend_room = (y_max - y_min + 2.0 * pad) * 0.12 * data.len() as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(64)
            // 4 % beyond the last step, so its points sit off the frame.
            .build_cartesian_2d(0f64..x_max * 1.04, (y_min - pad)..(y_max + pad + legend_room))
            .map_err(|e| plot_error(path, e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(panel.unit)
            .label_style(("sans-serif", 12))
            .x_label_formatter(&|v| format!("{}", v.round() as i64))
            .x_labels(step_ticks(x_max))
            .y_label_formatter(&|v| label(*v, y_min - pad, y_max + pad))
            .draw()
            .map_err(|e| plot_error(path, e))?;
        for (i, curve) in data.iter().enumerate() {
            let pts = &curve.line;
            if pts.is_empty() {
                continue;
            }
            let color = COLOURS[i % COLOURS.len()].to_rgba();
            if let Some((lo, hi)) = &curve.band {
                let outline: Vec<(f64, f64)> = lo.iter().chain(hi.iter().rev()).copied().collect();
                chart.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.2).filled()))).map_err(|e| plot_error(path, e))?;
            }
            let style = ShapeStyle::from(color).stroke_width(2);
            let drawn = chart.draw_series(LineSeries::new(pts.iter().copied(), style)).map_err(|e| plot_error(path, e))?;
            drawn.label(curve.name.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
            let bars = whiskers(curve).into_iter().map(|(step, lo, mean, hi)| ErrorBar::new_vertical(step, lo, mean, hi, style, 10));
            chart.draw_series(bars).map_err(|e| plot_error(path, e))?;
            if pts.len() <= MARKED_POINTS {
                // Each run its own marker and size, so points at one step (the final evaluation
                // of several runs) stay visible on top of each other.
                let size = 6 - (i % 3) as i32;
                let markers = pts.iter().map(|&p| -> DynElement<BitMapBackend, (f64, f64)> {
                    match i % 3 {
                        0 => Circle::new(p, size, color.stroke_width(2)).into_dyn(),
                        1 => TriangleMarker::new(p, size, color.filled()).into_dyn(),
                        _ => Cross::new(p, size, color.stroke_width(2)).into_dyn(),
                    }
                });
                chart.draw_series(markers).map_err(|e| plot_error(path, e))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 12))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_error(path, e))?;
    }
    root.present().map_err(|e| plot_error(path, e))
}

/// Mean of a loss term over the last [`SMOOTH`] steps that have it.
fn tail_mean(run: &Run, value: fn(&StepMetrics) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = run.steps.iter().rev().filter_map(value).take(SMOOTH).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The markdown summary: final losses (mean of the last steps), the last held-out figures and
/// the diagnostics that say whether ITM and ITG use the image.
pub fn summary(runs: &[Run]) -> String {
    let cell = |v: Option<f64>, digits: usize| v.map_or("–".to_string(), |v| format!("{v:.digits$}"));
    let pair = |v: Option<(f64, f64)>, digits: usize| v.map_or("–".to_string(), |(a, b)| format!("{a:.digits$} / {b:.digits$}"));
    let mut md = format!(
        "| run | steps | loss | ITC | ITM | ITM constant | ITG | R@1 i2t / t2i | R@5 i2t / t2i | R@10 i2t / t2i | re-ranked R@1 | re-ranking gain | ITM acc. pos / neg | ITG grounding gap | captions naming both objects |\n|{}\n",
        "---|".repeat(15)
    );
    for run in runs {
        let r = run.steps.iter().rev().find_map(|m| m.retrieval);
        let e = run.steps.iter().rev().find_map(|m| m.evaluation.as_ref());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.name,
            run.steps.last().map_or(0, |m| m.step),
            cell(tail_mean(run, |m| Some(m.loss)), 3),
            cell(tail_mean(run, |m| m.loss_itc), 3),
            cell(tail_mean(run, |m| m.loss_itm), 3),
            cell(tail_mean(run, |m| m.loss_itm.and(m.itm_constant)), 3),
            cell(tail_mean(run, |m| m.loss_itg), 3),
            pair(r.map(|r| (r.i2t_r1, r.t2i_r1)), 1),
            pair(r.map(|r| (r.i2t_r5, r.t2i_r5)), 1),
            pair(r.map(|r| (r.i2t_r10, r.t2i_r10)), 1),
            pair(e.map(|e| (e.itm.i2t_r1, e.itm.t2i_r1)), 1),
            pair(e.map(|e| e.rerank_gain()), 1),
            pair(e.map(|e| (e.itm_acc_positive, e.itm_acc_negative)), 1),
            cell(e.map(|e| e.itg_grounding_gap), 3),
            cell(e.and_then(|e| e.caption_accuracy), 1),
        );
    }
    md + &format!(
        "\nLosses: mean of the last {SMOOTH} steps; \"ITM constant\" is the loss a constant answer gets on the same label mix (ITM at it \
         does not tell pairs apart). Retrieval: the last held-out evaluation, percent; the re-ranking gain is re-ranked R@1 minus \
         ITC R@1 (points). ITM accuracy on matching pairs and on each query's hardest ITC negative. The grounding gap is the held-out \
         captions' ITG loss with other images minus with their own (nats per token; near 0: ITG ignores the image). Captions: \
         percent of held-out images whose greedy caption names the colour and shape of both objects (generated shapes set).\n"
    )
}

/// A final figure of a run, for the across-seeds table.
type Figure = (&'static str, fn(&Run) -> Option<f64>);

fn last_eval(run: &Run) -> Option<&crate::eval::evaluate::EvalReport> {
    run.steps.iter().rev().find_map(|m| m.evaluation.as_ref())
}

fn last_recall(run: &Run) -> Option<crate::eval::retrieval::Recall> {
    run.steps.iter().rev().find_map(|m| m.retrieval)
}

const FIGURES: [Figure; 12] = [
    ("ITC", |r| tail_mean(r, |m| m.loss_itc)),
    ("ITM", |r| tail_mean(r, |m| m.loss_itm)),
    ("ITG", |r| tail_mean(r, |m| m.loss_itg)),
    ("R@1 i2t", |r| last_recall(r).map(|x| x.i2t_r1)),
    ("R@1 t2i", |r| last_recall(r).map(|x| x.t2i_r1)),
    ("re-ranked R@1 i2t", |r| last_eval(r).map(|e| e.itm.i2t_r1)),
    ("re-ranked R@1 t2i", |r| last_eval(r).map(|e| e.itm.t2i_r1)),
    ("ITM acc. pos", |r| last_eval(r).map(|e| e.itm_acc_positive)),
    ("ITM acc. neg", |r| last_eval(r).map(|e| e.itm_acc_negative)),
    ("grounding gap", |r| last_eval(r).map(|e| e.itg_grounding_gap)),
    ("ITG ppl", |r| last_eval(r).map(|e| e.itg_perplexity)),
    ("captions %", |r| last_eval(r).and_then(|e| e.caption_accuracy)),
];

/// Mean and sample standard deviation of at least two values.
pub fn mean_sd(v: &[f64]) -> Option<(f64, f64)> {
    if v.len() < 2 {
        return None;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    Some((mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()))
}

/// Groups of several seeds: each final figure as mean ± sample standard deviation.
fn seed_table(runs: &[Run]) -> Option<String> {
    let groups: Vec<_> = groups(runs).into_iter().filter(|(_, m)| m.len() > 1).collect();
    if groups.is_empty() {
        return None;
    }
    let mut md = format!(
        "\n| variant | seeds | {} |\n|{}\n",
        FIGURES.iter().map(|f| f.0).collect::<Vec<_>>().join(" | "),
        "---|".repeat(FIGURES.len() + 2)
    );
    for (name, members) in groups {
        let cells: Vec<String> = FIGURES
            .iter()
            .map(|(_, value)| {
                let v: Vec<f64> = members.iter().filter_map(|r| value(r)).collect();
                match mean_sd(&v) {
                    Some((mean, sd)) if v.len() == members.len() => format!("{mean:.2} ± {sd:.2}"),
                    _ => "–".to_string(),
                }
            })
            .collect();
        let _ = writeln!(md, "| {name} | {} | {} |", members.len(), cells.join(" | "));
    }
    Some(md + "\nAcross seeds: mean ± sample standard deviation of each run's final figure (losses: mean of its last steps).\n")
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Run folders (each with its metrics.jsonl), or folders of runs such as an ablation sweep's.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Folder for report.png and report.md.
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
}

pub fn run(args: ReportArgs) -> Result<ExitCode> {
    let (png, md) = write(&args.runs, &args.out)?;
    println!("wrote {} and {}", png.display(), md.display());
    Ok(ExitCode::SUCCESS)
}

/// The run folders `dirs` name: a folder with a `metrics.jsonl` is a run; one without (an
/// ablation sweep's folder) stands for the runs directly inside it, in name order. A run named
/// twice (by the same or another path) is read once.
pub fn run_folders(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let is_run = |d: &Path| d.join(METRICS_FILE).is_file();
    let mut out: Vec<PathBuf> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for dir in dirs {
        let found = if is_run(dir) {
            vec![dir.clone()]
        } else {
            let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            let mut inner: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_run(p)).collect();
            inner.sort();
            if inner.is_empty() {
                return Err(Error::file(dir, format!("no {METRICS_FILE} in this folder or the folders directly inside it")));
            }
            inner
        };
        for run in found {
            if seen.insert(std::fs::canonicalize(&run).map_err(|e| Error::io(&run, e))?) {
                out.push(run);
            }
        }
    }
    Ok(out)
}

/// Writes `report.png` and `report.md` for `run_dirs` (runs or folders of runs) into `out`.
pub fn write(run_dirs: &[PathBuf], out: &Path) -> Result<(PathBuf, PathBuf)> {
    let runs = run_folders(run_dirs)?.iter().map(|d| Run::load(d)).collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let (png, md) = (out.join(PLOT_FILE), out.join(SUMMARY_FILE));
    draw(&runs, &png)?;
    let text = format!("# Training report\n\n![curves]({PLOT_FILE})\n\n{}{}", summary(&runs), seed_table(&runs).unwrap_or_default());
    std::fs::write(&md, text).map_err(|e| Error::io(&md, e))?;
    Ok((png, md))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, itc: &[f64]) -> Run {
        let steps =
            itc.iter().enumerate().map(|(i, &v)| StepMetrics { step: i as u64 + 1, loss_itc: Some(v), ..Default::default() }).collect();
        Run { name: name.into(), steps }
    }

    #[test]
    fn axes_read_in_one_notation_and_flat_series_are_not_magnified() {
        // A learning-rate axis: every tick scientific, zero plain.
        let ticks: Vec<String> = [0.0, 2e-4, 1e-3].iter().map(|&v| label(v, 0.0, 1.1e-3)).collect();
        assert_eq!(ticks, ["0", "2.0e-4", "1.0e-3"]);
        // Close ticks get the digits that tell them apart.
        assert_eq!(label(1.05e-3, 1.0e-3, 1.1e-3), "1.050e-3");
        assert_eq!(label(6.25, 6.0, 7.0), "6.25");
        // A flat series at 8 spans 7.2..8.8, not 7.992..8.008; a flat zero spans -1..1.
        assert_eq!(y_pad(8.0, 8.0), 0.8);
        assert_eq!(y_pad(0.0, 0.0), 1.0);
        assert_eq!(y_pad(1.0, 3.0), 0.1);
    }

    #[test]
    fn seeds_of_a_variant_make_one_band() {
        assert_eq!(group_of("all-seed12"), "all");
        assert_eq!(group_of("no-itm-seed0"), "no-itm");
        assert_eq!(group_of("all-seedless"), "all-seedless");
        assert_eq!(group_of("all-seed"), "all-seed");
        let runs = [run("a-seed1", &[1.0, 2.0]), run("b", &[5.0]), run("a-seed2", &[3.0, 4.0, 9.0])];
        let panel = Panel { title: "t", unit: "u", value: |m| m.loss_itc, smooth: false };
        let c = curves(&groups(&runs), &panel);
        assert_eq!(c.len(), 2);
        // Steps every seed recorded: mean line, min–max band.
        assert_eq!(c[0].line, vec![(1.0, 2.0), (2.0, 3.0)]);
        assert_eq!(c[0].band, Some((vec![(1.0, 1.0), (2.0, 2.0)], vec![(1.0, 3.0), (2.0, 4.0)])));
        assert_eq!((c[1].name.as_str(), c[1].band.is_none()), ("b", true));
        // Two runs of one name without seeds (other folders, other configs) are not grouped.
        assert_eq!(groups(&[run("b", &[1.0]), run("b", &[2.0])]).len(), 2);
        // A loss curve of a few steps is sparse: each point gets its min–max bar; a lone run none.
        assert_eq!(whiskers(&c[0]), vec![(1.0, 1.0, 2.0, 3.0), (2.0, 2.0, 3.0, 4.0)]);
        assert!(whiskers(&c[1]).is_empty());
        // A dense curve (a loss logged every step) keeps only its band.
        let long: Vec<f64> = (0..=MARKED_POINTS).map(|i| i as f64).collect();
        let dense = curves(&groups(&[run("d-seed0", &long), run("d-seed1", &long)]), &panel);
        assert!(dense[0].band.is_some() && whiskers(&dense[0]).is_empty());
        let table = seed_table(&runs).unwrap();
        assert!(table.contains("| a | 2 | 3.42 ± 2.71 |"), "{table}"); // ITC: last-steps means 1.5 and 16/3
        assert!(seed_table(&runs[1..2]).is_none());
    }
}
