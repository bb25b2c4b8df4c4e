//! The training curves: one PNG per figure under `plots/`, drawn with plotters from
//! `metrics.jsonl` (metric names: `trainer/METRICS.md`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use serde_json::Value;

/// One metrics.jsonl record per PPO iteration.
pub(super) type Record = BTreeMap<String, Value>;

pub(super) fn read_metrics(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))
        })
        .collect()
}

/// (iteration, value) points of one metric; missing and non-finite values are left out.
pub(super) fn series(records: &[Record], key: &str) -> Vec<(f64, f64)> {
    records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let x = r.get("step").and_then(Value::as_f64).unwrap_or((i + 1) as f64);
            let y = r.get(key)?.as_f64()?;
            y.is_finite().then_some((x, y))
        })
        .collect()
}

/// One line of a panel.
struct Line<'a> {
    label: &'a str,
    points: Vec<(f64, f64)>,
    color: RGBColor,
}

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);
const PURPLE: RGBColor = RGBColor(148, 103, 189);
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // DejaVu Sans ships with the binary (see src/report/fonts/LICENSE-DejaVu): no system fonts needed.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, include_bytes!("fonts/DejaVuSans.ttf"));
    });
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// One chart: lines, and optionally a shaded band (x, low, high) behind the first one.
fn panel(area: &Area, title: &str, x_desc: &str, lines: &[Line], band: &[(f64, f64, f64)]) -> anyhow::Result<()> {
    let plot_error = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {title:?}: {e:?}");
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let ys = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).chain(band.iter().flat_map(|b| [b.1, b.2]));
    let (x_min, x_max) = bounds(xs);
    let (y_min, y_max) = bounds(ys);
    let Some(((x_min, x_max), (y_min, y_max))) = x_min.zip(x_max).zip(y_min.zip(y_max)) else {
        area.titled(title, (FONT, 18))
            .map_err(plot_error)?
            .draw_text("no data", &(FONT, 14).into_text_style(area), (40, 40))
            .map_err(plot_error)?;
        return Ok(());
    };
    let pad = ((y_max - y_min) * 0.08).max(1e-6);
    let x_range = if x_max > x_min { x_min..x_max } else { x_min - 0.5..x_max + 0.5 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(x_range, (y_min - pad)..(y_max + pad))
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .light_line_style(RGBColor(246, 246, 246))
        .draw()
        .map_err(plot_error)?;
    if !band.is_empty() {
        let color = lines.first().map(|l| l.color).unwrap_or(BLUE);
        let outline: Vec<(f64, f64)> =
            band.iter().map(|b| (b.0, b.2)).chain(band.iter().rev().map(|b| (b.0, b.1))).collect();
        chart.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.18).filled()))).map_err(plot_error)?;
    }
    for line in lines {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(line.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        if line.points.len() <= 20 {
            // Sparse series (held-out evaluations) would be invisible as lines alone.
            chart.draw_series(line.points.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(plot_error)?;
        }
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

fn bounds(values: impl Iterator<Item = f64>) -> (Option<f64>, Option<f64>) {
    values.fold((None, None), |(lo, hi), v| {
        (Some(lo.map_or(v, |l: f64| l.min(v))), Some(hi.map_or(v, |h: f64| h.max(v))))
    })
}

/// A PNG of one or more panels side by side.
fn figure(path: &Path, x_desc: &str, panels: &[Panel]) -> anyhow::Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (1040, 320)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("drawing {}: {e:?}", path.display()))?;
    for (area, (title, lines, band)) in root.split_evenly((1, panels.len())).iter().zip(panels) {
        panel(area, title, x_desc, lines, band)?;
    }
    root.present().map_err(|e| anyhow::anyhow!("writing {}: {e:?}", path.display()))
}

fn line(records: &[Record], key: &'static str, color: RGBColor) -> Line<'static> {
    Line { label: key, points: series(records, key), color }
}

/// A panel's title, lines, and band behind the first line.
type Panel<'a> = (&'a str, Vec<Line<'a>>, Vec<(f64, f64, f64)>);

/// Whether the metrics are a PPO run's (else SFT or reward-model training steps).
pub(super) fn is_ppo(records: &[Record]) -> bool {
    records.iter().any(|r| r.contains_key("env/reward_mean"))
}

/// Draws the training curves into `dir/plots/`; returns (caption, file) pairs.
pub(super) fn draw_plots(records: &[Record], dir: &Path) -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots).with_context(|| format!("cannot create {}", plots.display()))?;
    let (x_desc, figures) =
        if is_ppo(records) { ("iteration", ppo_figures(records)) } else { ("step", training_figures(records)) };
    let mut written = Vec::new();
    for (caption, name, panels) in figures {
        let path = plots.join(name);
        figure(&path, x_desc, &panels)?;
        written.push((caption, path));
    }
    Ok(written)
}

type Figure<'a> = (&'static str, &'static str, Vec<Panel<'a>>);

/// SFT and reward-model training: losses, the held-out metric, the optimizer.
fn training_figures(records: &[Record]) -> Vec<Figure<'static>> {
    let held_out = if records.iter().any(|r| r.contains_key("eval/accuracy")) {
        ("accuracy", vec![line(records, "train/accuracy", ORANGE), line(records, "eval/accuracy", GREEN)])
    } else {
        ("held-out perplexity", vec![line(records, "eval/perplexity", GREEN)])
    };
    vec![
        (
            "Loss on the training batches and on the held-out set",
            "loss.png",
            vec![
                ("loss", vec![line(records, "train/loss", BLUE), line(records, "eval/loss", RED)], vec![]),
                (held_out.0, held_out.1, vec![]),
            ],
        ),
        (
            "Optimizer: learning rate and gradient norm",
            "optimizer.png",
            vec![
                ("learning rate", vec![line(records, "train/learning_rate", PURPLE)], vec![]),
                ("gradient norm", vec![line(records, "train/grad_norm", ORANGE)], vec![]),
            ],
        ),
    ]
}

fn ppo_figures(records: &[Record]) -> Vec<Figure<'static>> {
    let mean = series(records, "env/reward_mean");
    let std: BTreeMap<u64, f64> =
        series(records, "env/reward_std").into_iter().map(|(x, y)| (x.to_bits(), y)).collect();
    let band: Vec<(f64, f64, f64)> =
        mean.iter().filter_map(|&(x, m)| std.get(&x.to_bits()).map(|s| (x, m - s, m + s))).collect();
    vec![
        (
            "Reward per iteration: mean ± std of the rollouts' scores",
            "reward.png",
            vec![(
                "reward (mean ± std)",
                vec![Line { label: "env/reward_mean", points: mean.clone(), color: BLUE }],
                band,
            )],
        ),
        (
            "KL to the reference model (nats per response) and the KL coefficient",
            "kl.png",
            vec![
                ("KL to reference", vec![line(records, "objective/kl", RED)], vec![]),
                ("KL coefficient", vec![line(records, "objective/kl_coef", PURPLE)], vec![]),
            ],
        ),
        (
            "Losses",
            "loss.png",
            vec![
                ("policy loss", vec![line(records, "ppo/loss/policy", BLUE)], vec![]),
                ("value loss", vec![line(records, "ppo/loss/value", ORANGE)], vec![]),
            ],
        ),
        (
            "Entropy of the policy and the fraction of clipped ratios",
            "entropy_clipfrac.png",
            vec![
                ("entropy", vec![line(records, "objective/entropy", GREEN)], vec![]),
                (
                    "clip fraction",
                    vec![line(records, "ppo/policy/clipfrac", RED), line(records, "ppo/val/clipfrac", ORANGE)],
                    vec![],
                ),
            ],
        ),
        (
            "Throughput and the time to broadcast new weights to the workers",
            "throughput.png",
            vec![
                ("samples per second", vec![line(records, "samples_per_s", BLUE)], vec![]),
                (
                    "weights: serialise, broadcast (s)",
                    vec![line(records, "time/weight_serialize", PURPLE), line(records, "time/weight_broadcast", GREEN)],
                    vec![],
                ),
                ("PPO update (s)", vec![line(records, "time/update", ORANGE)], vec![]),
            ],
        ),
    ]
}
