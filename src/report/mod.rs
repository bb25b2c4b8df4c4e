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

use crate::eval::EvalResults;

mod plots;

use plots::{Record, draw_plots, is_ppo, read_metrics, series};

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
        inputs.eval = Some(EvalResults::read(path)?);
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
    pub eval: Option<EvalResults>,
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

/// A reward model directory's eval_results.json.
pub fn reward_model_results(dir: &Path) -> anyhow::Result<(PathBuf, BTreeMap<String, f64>)> {
    let path = dir.join("eval_results.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let results =
        serde_json::from_str(&text).with_context(|| format!("{}: expected an object of numbers", path.display()))?;
    Ok((dir.to_path_buf(), results))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Three decimals; a dash for a missing (non-finite) number.
fn number(x: f64) -> String {
    if x.is_finite() { format!("{x:.3}") } else { "–".into() }
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
.warn{{background:#fdecea;padding:8px 12px;border-radius:6px}}\
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
    if let Some(eval) = &inputs.eval
        && let [first, second, ..] = eval.order.as_slice()
        && let (Some(a), Some(b)) = (eval.mean_reward(first), eval.mean_reward(second))
    {
        summary.push(format!("held-out reward {} {a:.3} → {} {b:.3}", escape(first), escape(second)));
        if let (Some(a), Some(b)) = (eval.mean_judge(first), eval.mean_judge(second)) {
            summary.push(format!("independent judge {a:.3} → {b:.3}"));
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

fn eval_section(html: &mut String, eval: &EvalResults) {
    let negated = if eval.negated { " (negated: the objective)" } else { "" };
    let _ = write!(
        html,
        "<h2>Before and after: held-out prompts</h2><p>{} prompts, rewards from {}{negated}</p><table><tr><th>policy</th>\
<th>reward mean</th><th>median</th><th>std</th><th>KL to reference</th><th>response length</th>",
        eval.n_prompts,
        escape(&eval.scorer)
    );
    if let Some(judge) = &eval.judge {
        let _ = write!(html, "<th>judge mean ({}, never optimised)</th>", escape(&judge.judge));
    }
    html.push_str("</tr>");
    for (name, p) in eval.order.iter().filter_map(|name| Some((name, eval.policies.get(name)?))) {
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
            escape(name),
            number(p.reward.mean),
            number(p.reward.median),
            number(p.reward.std),
            number(p.kl_to_reference.mean),
            number(p.response_length.mean),
        );
        if eval.judge.is_some() {
            let _ = write!(html, "<td class=\"n\">{}</td>", number(eval.mean_judge(name).unwrap_or(f64::NAN)));
        }
        html.push_str("</tr>");
    }
    if let Some(best) = &eval.best_of_n {
        let judge = if eval.judge.is_some() { "<td>–</td>" } else { "" };
        let _ = write!(
            html,
            "<tr><td>best-of-{} ({})</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>–</td><td>–</td>{judge}</tr>",
            best.n,
            escape(&best.policy),
            number(best.reward.mean),
            number(best.reward.median),
            number(best.reward.std),
        );
    }
    html.push_str("</table>");
    if let (Some(judge), [before, after, ..]) = (&eval.judge, eval.order.as_slice()) {
        if let Some(win) = &judge.win_rate {
            let _ = write!(
                html,
                "<p>Judge ({}): win rate of <b>{}</b> over <b>{}</b>: <b>{}</b></p>",
                escape(&judge.judge),
                escape(&win.b),
                escape(&win.a),
                number(1.0 - win.a_over_b)
            );
        }
        match eval.reward_hacking_suspected(before, after) {
            Some(true) => {
                let _ = write!(
                    html,
                    "<p class=\"warn\"><b>Reward hacking suspected</b>: {} raised the reward over {} but the independent judge did not follow.</p>",
                    escape(after),
                    escape(before)
                );
            }
            Some(false) => {
                let _ = write!(
                    html,
                    "<p>The independent judge moved with the reward from {} to {}.</p>",
                    escape(before),
                    escape(after)
                );
            }
            None => {}
        }
    }
    if let Some(win) = &eval.win_rate {
        let _ = write!(
            html,
            "<p>Win rate of <b>{b}</b> over <b>{a}</b>: <b>{}</b> ({a} over {b}: {}; ties count half; judge: {})</p>",
            number(1.0 - win.a_over_b),
            number(win.a_over_b),
            escape(&win.judge),
            a = escape(&win.a),
            b = escape(&win.b),
        );
    }
    if !eval.samples.is_empty() {
        html.push_str("<h3>Samples</h3><table><tr><th>prompt</th>");
        for name in &eval.order {
            let _ = write!(html, "<th>{}</th>", escape(name));
        }
        html.push_str("</tr>");
        for sample in &eval.samples {
            let _ = write!(html, "<tr><td>{}</td>", escape(&sample.prompt));
            for name in &eval.order {
                let (response, reward, judge) = match sample.responses.get(name) {
                    Some(r) => (r.response.as_str(), number(r.reward as f64), r.judge),
                    None => ("", number(f64::NAN), None),
                };
                let judge = judge.map(|j| format!(", judge {}", number(j as f64))).unwrap_or_default();
                let _ = write!(html, "<td>{}<br><small>reward {reward}{judge}</small></td>", escape(response));
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
        let summary = |mean| crate::eval::Summary { mean, median: mean, std: 0.0 };
        let policy = |mean| crate::eval::PolicyResults {
            reward: summary(mean),
            kl_to_reference: summary(0.0),
            response_length: summary(3.0),
        };
        let response = |text: &str, reward| crate::eval::SampleResponse { response: text.into(), reward, judge: None };
        inputs.eval = Some(EvalResults {
            scorer: "rm".into(),
            n_prompts: 2,
            order: vec!["sft".into(), "happy".into()],
            policies: [("sft".to_string(), policy(-0.5)), ("happy".to_string(), policy(1.5))].into(),
            best_of_n: None,
            win_rate: Some(crate::eval::WinRate {
                a: "sft".into(),
                b: "happy".into(),
                a_over_b: 0.25,
                judge: "rm".into(),
            }),
            samples: vec![crate::eval::Sample {
                prompt: "<b>x</b>".into(),
                responses: [("sft".to_string(), response("meh", -0.5)), ("happy".to_string(), response("great", 1.5))]
                    .into(),
            }],
            negated: false,
            judge: None,
        });
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
