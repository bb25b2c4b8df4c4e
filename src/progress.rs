//! What training commands show and keep: a progress bar on stderr, and one JSON object per step
//! or iteration in `metrics.jsonl`.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rlhf_trainer::train::Stats;

/// Appends metrics records to a JSONL file.
pub struct MetricsFile(File);

impl MetricsFile {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self(file))
    }

    pub fn write(&mut self, step: usize, stats: &Stats) -> anyhow::Result<()> {
        let mut record = serde_json::Map::new();
        record.insert("step".into(), step.into());
        for (key, value) in stats {
            record.insert(key.clone(), serde_json::json!(value));
        }
        append_line(&mut self.0, &serde_json::Value::Object(record).to_string()).context("writing metrics")
    }
}

/// Appends `line` and its newline in one `write`, so that a reader polling the file (`rlhf run`'s
/// progress, a test) sees whole lines only, never a record cut where a formatter flushed.
pub fn append_line(file: &mut File, line: &str) -> std::io::Result<()> {
    file.write_all(format!("{line}\n").as_bytes())
}

/// A bar that shows the step count and a few named metrics.
pub fn bar(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// `key=value` pairs for the bar's message.
pub fn summary(stats: &Stats, keys: &[&str]) -> String {
    keys.iter().filter_map(|k| stats.get(*k).map(|v| format!("{k}={v:.4}"))).collect::<Vec<_>>().join(" ")
}
