//! `qformer report`: one PNG with a panel per curve (each loss term, learning rate, temperature,
//! held-out retrieval) with several runs overlaid, and a markdown summary table. Reads only the
//! runs' `metrics.jsonl`, so it works on finished, running and resumed runs alike.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::train::metrics::{MetricsLog, StepMetrics};
use crate::util::error::{Error, Result};

/// Embedded so that plots render the same without system fonts (assets/README.md).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
pub const PLOT_FILE: &str = "report.png";
pub const SUMMARY_FILE: &str = "report.md";
/// Loss curves are drawn as a running mean over this many steps.
const SMOOTH: usize = 10;

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
            return Err(Error::file(dir.join(crate::train::checkpoint::METRICS_FILE), "no steps recorded"));
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

const PANELS: [Panel; 10] = [
    Panel { title: "total loss", unit: "nats", value: |m| Some(m.loss), smooth: true },
    Panel { title: "ITC loss", unit: "nats", value: |m| m.loss_itc, smooth: true },
    Panel { title: "ITM loss", unit: "nats", value: |m| m.loss_itm, smooth: true },
    Panel { title: "ITG loss", unit: "nats per token", value: |m| m.loss_itg, smooth: true },
    Panel { title: "learning rate", unit: "lr", value: |m| Some(m.lr), smooth: false },
    Panel { title: "temperature", unit: "τ", value: |m| Some(m.temp), smooth: false },
    Panel { title: "held-out i2t R@1 (ITC)", unit: "%", value: |m| m.retrieval.map(|r| r.i2t_r1), smooth: false },
    Panel { title: "held-out t2i R@1 (ITC)", unit: "%", value: |m| m.retrieval.map(|r| r.t2i_r1), smooth: false },
    Panel { title: "held-out i2t R@1 (ITM re-ranked)", unit: "%", value: |m| m.evaluation.as_ref().map(|e| e.itm.i2t_r1), smooth: false },
    Panel { title: "held-out t2i R@1 (ITM re-ranked)", unit: "%", value: |m| m.evaluation.as_ref().map(|e| e.itm.t2i_r1), smooth: false },
];

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

/// How many x labels to ask for so that they fall on whole steps (at most 6).
fn step_ticks(x_max: f64) -> usize {
    (x_max.round() as usize).clamp(1, 6)
}

/// An axis label with as many decimals as the axis range needs.
fn label(v: f64, range: f64) -> String {
    // A tick at zero computed with rounding error (-2.7e-20) reads as 0.
    let v = if v.abs() < range * 1e-9 { 0.0 } else { v };
    if v != 0.0 && v.abs() < 1e-3 {
        return format!("{v:.1e}");
    }
    let digits = (2.0 - range.max(1e-12).log10().floor()).clamp(0.0, 6.0) as usize;
    format!("{v:.digits$}")
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::file(path, format!("cannot draw the plot: {e}"))
}

/// Draws every panel that some run has data for into one PNG.
fn draw(runs: &[Run], path: &Path) -> Result<()> {
    // Registering again replaces the font: harmless across calls.
    register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| plot_error(path, "the embedded font is invalid"))?;
    let panels: Vec<(&Panel, Vec<Series>)> = PANELS
        .iter()
        .map(|p| (p, runs.iter().map(|r| series(r, p)).collect::<Vec<_>>()))
        .filter(|(_, s)| s.iter().any(|pts| !pts.is_empty()))
        .collect();
    let cols = panels.len().div_ceil(2).max(1);
    let root = BitMapBackend::new(path, (420 * cols as u32, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let areas = root.split_evenly((2, cols));
    for ((panel, data), area) in panels.iter().zip(areas.iter()) {
        let points = data.iter().flatten();
        let (x_max, y_min, y_max) =
            points.fold((1f64, f64::INFINITY, f64::NEG_INFINITY), |(x, lo, hi), p| (x.max(p.0), lo.min(p.1), hi.max(p.1)));
        let pad = ((y_max - y_min) * 0.05).max(y_max.abs() * 1e-3).max(1e-9);
        let title = if panel.smooth { format!("{} ({SMOOTH}-step running mean)", panel.title) } else { panel.title.to_string() };
        // Room above the data for the legend, so it never covers the last points.
        let legend_room = (y_max - y_min + 2.0 * pad) * 0.12 * runs.len() as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, (y_min - pad)..(y_max + pad + legend_room))
            .map_err(|e| plot_error(path, e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(panel.unit)
            .label_style(("sans-serif", 12))
            .x_label_formatter(&|v| format!("{}", v.round() as i64))
            .x_labels(step_ticks(x_max))
            .y_label_formatter(&|v| label(*v, y_max - y_min + 2.0 * pad))
            .draw()
            .map_err(|e| plot_error(path, e))?;
        for (i, (run, pts)) in runs.iter().zip(data).enumerate() {
            if pts.is_empty() {
                continue;
            }
            let color = Palette99::pick(i).to_rgba();
            let style = ShapeStyle::from(color).stroke_width(2);
            let drawn = chart.draw_series(LineSeries::new(pts.iter().copied(), style)).map_err(|e| plot_error(path, e))?;
            drawn.label(run.name.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
            if pts.len() <= 30 {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| plot_error(path, e))?;
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

/// The markdown summary: final losses (mean of the last steps) and the last held-out figures.
pub fn summary(runs: &[Run]) -> String {
    let cell = |v: Option<f64>, digits: usize| v.map_or("–".to_string(), |v| format!("{v:.digits$}"));
    let mut md = format!(
        "| run | steps | loss | ITC | ITM | ITG | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | re-ranked i2t R@1 | re-ranked t2i R@1 |\n|{}\n",
        "---|".repeat(14)
    );
    for run in runs {
        let r = run.steps.iter().rev().find_map(|m| m.retrieval);
        let e = run.steps.iter().rev().find_map(|m| m.evaluation.as_ref());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.name,
            run.steps.last().map_or(0, |m| m.step),
            cell(tail_mean(run, |m| Some(m.loss)), 3),
            cell(tail_mean(run, |m| m.loss_itc), 3),
            cell(tail_mean(run, |m| m.loss_itm), 3),
            cell(tail_mean(run, |m| m.loss_itg), 3),
            cell(r.map(|r| r.i2t_r1), 1),
            cell(r.map(|r| r.i2t_r5), 1),
            cell(r.map(|r| r.i2t_r10), 1),
            cell(r.map(|r| r.t2i_r1), 1),
            cell(r.map(|r| r.t2i_r5), 1),
            cell(r.map(|r| r.t2i_r10), 1),
            cell(e.map(|e| e.itm.i2t_r1), 1),
            cell(e.map(|e| e.itm.t2i_r1), 1),
        );
    }
    md + &format!("\nLosses: mean of the last {SMOOTH} steps. Retrieval: the last held-out evaluation, percent.\n")
}

/// Writes `report.png` and `report.md` for `run_dirs` into `out`.
pub fn write(run_dirs: &[PathBuf], out: &Path) -> Result<(PathBuf, PathBuf)> {
    let runs = run_dirs.iter().map(|d| Run::load(d)).collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let (png, md) = (out.join(PLOT_FILE), out.join(SUMMARY_FILE));
    draw(&runs, &png)?;
    let text = format!("# Training report\n\n![curves]({PLOT_FILE})\n\n{}", summary(&runs));
    std::fs::write(&md, text).map_err(|e| Error::io(&md, e))?;
    Ok((png, md))
}
