//! `report.html` for a run directory: the training curves as PNGs (drawn with plotters into
//! `plots/`, and embedded as data URIs so the HTML file stands alone), and for PPO runs the
//! evaluation's before/after table with sample generations, the reward model's accuracy and the
//! resolved config. Every training command writes one when it finishes (PPO runs without the
//! evaluation); `rlhf report` rewrites it with an eval JSON and a reward model, as `rlhf demo` does.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use clap::Args;
use plotters::prelude::*;
use serde_json::Value;

#[derive(Args)]
pub struct ReportArgs {
    /// A run directory (holds metrics.jsonl: PPO, SFT or reward-model training).
    #[arg(long)]
    run: PathBuf,
    /// `rlhf eval --out` JSON: the before/after table and samples.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// The reward model's directory (its eval_results.json gives the accuracy).
    #[arg(long)]
    reward_model: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let mut inputs = Inputs::from_run_dir(&args.run)?;
    if let Some(path) = &args.eval {
        inputs.eval = Some(read_json(path)?);
    }
    if let Some(dir) = &args.reward_model {
        inputs.reward_model = Some(reward_model_results(dir)?);
    }
    let path = write(&args.run, &inputs)?;
    println!("{}", path.display());
    Ok(())
}

/// Writes a run directory's own report (curves and configs) when a training command finishes.
/// A failure is logged, not returned: the run's results are saved already.
pub fn write_for_run(dir: &Path) {
    match Inputs::from_run_dir(dir).and_then(|inputs| write(dir, &inputs)) {
        Ok(path) => tracing::info!(report = %path.display(), "report written"),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot write the report"),
    }
}

/// What goes into a report besides the run directory's metrics.
#[derive(Default)]
pub struct Inputs {
    pub title: String,
    /// `rlhf eval` output.
    pub eval: Option<Value>,
    /// The reward model's directory and its eval_results.json.
    pub reward_model: Option<(PathBuf, BTreeMap<String, f64>)>,
    /// (name, TOML text) of every resolved config that made the run.
    pub configs: Vec<(String, String)>,
}

impl Inputs {
    /// The title and the configs found in a run directory.
    pub fn from_run_dir(dir: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            dir.join("metrics.jsonl").is_file(),
            "{} has no metrics.jsonl: is it a run directory?",
            dir.display()
        );
        let configs: Vec<(String, String)> =
            ["learner_config.toml", "ppo_config.toml", "sft_config.toml", "reward_config.toml"]
                .iter()
                .filter_map(|name| std::fs::read_to_string(dir.join(name)).ok().map(|text| (name.to_string(), text)))
                .collect();
        let what = match configs.first().map(|(name, _)| name.as_str()) {
            Some("sft_config.toml") => "SFT run",
            Some("reward_config.toml") => "Reward-model run",
            _ => "PPO run",
        };
        Ok(Self { title: format!("{what} {}", dir.display()), configs, ..Default::default() })
    }
}

pub fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// A reward model directory's eval_results.json.
pub fn reward_model_results(dir: &Path) -> anyhow::Result<(PathBuf, BTreeMap<String, f64>)> {
    let path = dir.join("eval_results.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let results =
        serde_json::from_str(&text).with_context(|| format!("{}: expected an object of numbers", path.display()))?;
    Ok((dir.to_path_buf(), results))
}

/// One metrics.jsonl record per PPO iteration.
type Record = BTreeMap<String, Value>;

fn read_metrics(path: &Path) -> anyhow::Result<Vec<Record>> {
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
fn series(records: &[Record], key: &str) -> Vec<(f64, f64)> {
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
        // DejaVu Sans ships with the binary (see src/fonts/LICENSE-DejaVu): no system fonts needed.
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
fn is_ppo(records: &[Record]) -> bool {
    records.iter().any(|r| r.contains_key("env/reward_mean"))
}

/// Draws the training curves into `dir/plots/`; returns (caption, file) pairs.
fn draw_plots(records: &[Record], dir: &Path) -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
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
                ("weight sync (s)", vec![line(records, "time/weight_sync", PURPLE)], vec![]),
                ("PPO update (s)", vec![line(records, "time/update", ORANGE)], vec![]),
            ],
        ),
    ]
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn number(value: Option<&Value>) -> String {
    match value.and_then(Value::as_f64) {
        Some(x) => format!("{x:.3}"),
        None => "–".into(),
    }
}

/// The first and last value of a metric.
fn first_last(records: &[Record], key: &str) -> Option<(f64, f64)> {
    let points = series(records, key);
    Some((points.first()?.1, points.last()?.1))
}

/// Writes `dir/report.html` (and `dir/plots/*.png`); returns the HTML file's path.
pub fn write(dir: &Path, inputs: &Inputs) -> anyhow::Result<PathBuf> {
    let records = read_metrics(&dir.join("metrics.jsonl"))?;
    let plots = draw_plots(&records, dir)?;
    let mut html = String::new();
    let title = escape(&inputs.title);
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>\
body{{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222}}\
table{{border-collapse:collapse;margin:8px 0 20px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}\
th{{background:#f3f3f3}}td.n{{text-align:right;font-variant-numeric:tabular-nums}}img{{max-width:100%;border:1px solid #eee}}\
pre{{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:12px}}.summary{{font-size:17px;background:#eef6ee;padding:10px 14px;border-radius:6px}}\
</style></head><body><h1>{title}</h1>"
    );

    // The headline: reward before → after, KL, RM accuracy.
    let mut summary = Vec::new();
    if let Some((first, last)) = first_last(&records, "env/reward_mean") {
        summary.push(format!("training reward {first:.3} → {last:.3} over {} iterations", records.len()));
    }
    if !is_ppo(&records) {
        if let Some((first, last)) = first_last(&records, "train/loss") {
            summary.push(format!("training loss {first:.3} → {last:.3} over {} steps", records.len()));
        }
        for key in ["eval/loss", "eval/perplexity", "eval/accuracy"] {
            if let Some((_, last)) = first_last(&records, key) {
                summary.push(format!("final {key} {last:.3}"));
            }
        }
    }
    if let Some((_, kl)) = first_last(&records, "objective/kl") {
        summary.push(format!("final KL to the reference {kl:.2} nats"));
    }
    if let Some(eval) = &inputs.eval {
        let order = policy_order(eval);
        if order.len() >= 2 {
            let reward = |name: &str| eval["policies"][name]["reward"]["mean"].as_f64();
            if let (Some(a), Some(b)) = (reward(&order[0]), reward(&order[1])) {
                summary.push(format!("held-out reward {} {a:.3} → {} {b:.3}", escape(&order[0]), escape(&order[1])));
            }
        }
    }
    if let Some(accuracy) = inputs.reward_model.as_ref().and_then(|(_, results)| results.get("eval/accuracy")) {
        summary.push(format!("reward model test accuracy {:.1}%", accuracy * 100.0));
    }
    if !summary.is_empty() {
        let _ = write!(html, "<p class=\"summary\">{}</p>", summary.join(" · "));
    }

    if let Some(eval) = &inputs.eval {
        eval_section(&mut html, eval);
    }

    html.push_str("<h2>Training curves</h2>");
    for (caption, path) in &plots {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let data = base64::engine::general_purpose::STANDARD.encode(bytes);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("plot.png");
        let _ = write!(html, "<h3>{}</h3><img alt=\"{name}\" src=\"data:image/png;base64,{data}\">", escape(caption));
    }

    if let Some((rm_dir, results)) = &inputs.reward_model {
        let _ = write!(
            html,
            "<h2>Reward model</h2><p>{}</p><table><tr><th>metric</th><th>value</th></tr>",
            escape(&rm_dir.display().to_string())
        );
        for (key, value) in results {
            let _ = write!(html, "<tr><td>{}</td><td class=\"n\">{value:.4}</td></tr>", escape(key));
        }
        html.push_str("</table>");
    }

    html.push_str("<h2>Resolved configuration</h2>");
    for (name, text) in &inputs.configs {
        let _ = write!(html, "<h3>{}</h3><pre>{}</pre>", escape(name), escape(text));
    }
    html.push_str("</body></html>\n");

    // Written whole, then renamed: no half-written report is ever left behind.
    let path = dir.join("report.html");
    let partial = dir.join("report.html.partial");
    std::fs::write(&partial, html).with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The evaluated policies in the order they were given to `rlhf eval`.
fn policy_order(eval: &Value) -> Vec<String> {
    match eval["order"].as_array() {
        Some(names) => names.iter().filter_map(|n| n.as_str().map(str::to_string)).collect(),
        None => eval["policies"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default(),
    }
}

fn eval_section(html: &mut String, eval: &Value) {
    let order = policy_order(eval);
    let _ = write!(
        html,
        "<h2>Before and after: held-out prompts</h2><p>{} prompts, rewards from {}</p><table><tr><th>policy</th>\
<th>reward mean</th><th>median</th><th>std</th><th>KL to reference</th><th>response length</th></tr>",
        eval["n_prompts"],
        escape(eval["scorer"].as_str().unwrap_or("?"))
    );
    for name in &order {
        let p = &eval["policies"][name];
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(name),
            number(p["reward"].get("mean")),
            number(p["reward"].get("median")),
            number(p["reward"].get("std")),
            number(p["kl_to_reference"].get("mean")),
            number(p["response_length"].get("mean")),
        );
    }
    if let Some(best) = eval.get("best_of_n") {
        let _ = write!(
            html,
            "<tr><td>best-of-{} ({})</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>–</td><td>–</td></tr>",
            best["n"],
            escape(best["policy"].as_str().unwrap_or("?")),
            number(best["reward"].get("mean")),
            number(best["reward"].get("median")),
            number(best["reward"].get("std")),
        );
    }
    html.push_str("</table>");
    if let Some(win) = eval.get("win_rate") {
        let _ = write!(
            html,
            "<p>Win rate of <b>{b}</b> over <b>{a}</b>: <b>{}</b> ({a} over {b}: {}; ties count half; judge: {})</p>",
            number(win["a_over_b"].as_f64().map(|x| Value::from(1.0 - x)).as_ref()),
            number(win.get("a_over_b")),
            escape(win["judge"].as_str().unwrap_or("?")),
            a = escape(win["a"].as_str().unwrap_or("?")),
            b = escape(win["b"].as_str().unwrap_or("?")),
        );
    }
    if let Some(samples) = eval["samples"].as_array() {
        html.push_str("<h3>Samples</h3><table><tr><th>prompt</th>");
        for name in &order {
            let _ = write!(html, "<th>{}</th>", escape(name));
        }
        html.push_str("</tr>");
        for sample in samples {
            let _ = write!(html, "<tr><td>{}</td>", escape(sample["prompt"].as_str().unwrap_or("")));
            for name in &order {
                let s = &sample[name.as_str()];
                let _ = write!(
                    html,
                    "<td>{}<br><small>reward {}</small></td>",
                    escape(s["response"].as_str().unwrap_or("")),
                    number(s.get("reward"))
                );
            }
            html.push_str("</tr>");
        }
        html.push_str("</table>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_dir(metrics: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metrics.jsonl"), metrics).unwrap();
        std::fs::write(dir.path().join("learner_config.toml"), "model = \"<sft>\"\n").unwrap();
        dir
    }

    #[test]
    fn a_report_embeds_every_plot_and_escapes_text() {
        let metrics: String = (1..=5)
            .map(|i| {
                format!(
                    "{{\"step\":{i},\"env/reward_mean\":{},\"env/reward_std\":0.5,\"objective/kl\":{},\"objective/kl_coef\":0.1,\"ppo/loss/value\":null}}\n",
                    i as f64 * 0.2,
                    i as f64
                )
            })
            .collect();
        let dir = run_dir(&metrics);
        let mut inputs = Inputs::from_run_dir(dir.path()).unwrap();
        inputs.eval = Some(serde_json::json!({
            "scorer": "rm", "n_prompts": 2, "order": ["sft", "happy"],
            "policies": {"sft": {"reward": {"mean": -0.5}}, "happy": {"reward": {"mean": 1.5}}},
            "win_rate": {"a": "sft", "b": "happy", "a_over_b": 0.25, "judge": "rm"},
            "samples": [{"prompt": "<b>x</b>", "sft": {"response": "meh", "reward": -0.5}, "happy": {"response": "great", "reward": 1.5}}],
        }));
        let path = write(dir.path(), &inputs).unwrap();
        let html = std::fs::read_to_string(&path).unwrap();
        for name in ["reward", "kl", "loss", "entropy_clipfrac", "throughput"] {
            let png = std::fs::read(dir.path().join("plots").join(format!("{name}.png"))).unwrap();
            assert_eq!(&png[..4], b"\x89PNG", "{name}.png");
        }
        assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 5);
        assert!(html.contains("training reward 0.200 → 1.000 over 5 iterations"), "{html}");
        assert!(html.contains("held-out reward sft -0.500 → happy 1.500"));
        assert!(html.contains("Win rate of <b>happy</b> over <b>sft</b>: <b>0.750</b>"));
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;") && !html.contains("<b>x</b>"));
        assert!(html.contains("model = &quot;&lt;sft&gt;&quot;"));
        assert!(!dir.path().join("report.html.partial").exists());
    }

    #[test]
    fn a_training_run_gets_loss_and_held_out_curves() {
        let metrics = "{\"step\":1,\"train/loss\":0.7,\"train/learning_rate\":1e-4}\n{\"step\":2,\"train/loss\":0.5,\"eval/loss\":0.6,\"eval/accuracy\":0.8}\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metrics.jsonl"), metrics).unwrap();
        std::fs::write(dir.path().join("reward_config.toml"), "epochs = 1\n").unwrap();
        let inputs = Inputs::from_run_dir(dir.path()).unwrap();
        assert!(inputs.title.starts_with("Reward-model run"), "{}", inputs.title);
        let html = std::fs::read_to_string(write(dir.path(), &inputs).unwrap()).unwrap();
        assert!(
            html.contains("training loss 0.700 → 0.500 over 2 steps") && html.contains("final eval/accuracy 0.800"),
            "{html}"
        );
        assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 2);
        assert!(dir.path().join("plots/optimizer.png").is_file());
    }

    #[test]
    fn bad_metrics_are_named_and_leave_no_report() {
        let dir = run_dir("{\"step\":1}\nnot json\n");
        let error = write(dir.path(), &Inputs::default()).unwrap_err();
        assert!(format!("{error:#}").contains("metrics.jsonl:2"), "{error:#}");
        assert!(!dir.path().join("report.html").exists());
        let empty = tempfile::tempdir().unwrap();
        let error = Inputs::from_run_dir(empty.path()).err().expect("no metrics.jsonl");
        assert!(error.to_string().contains("has no metrics.jsonl"), "{error}");
    }
}
