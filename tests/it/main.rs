//! The one integration-test binary: drives the real `rlhf` executable and checks the workspace's
//! architecture rules.

mod architecture;
mod cli;
mod learning;
mod runtime;
mod workflows;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The committed slice of real data (`tests/assets/`, see its README): the GPT-2 tokenizer, a
/// few hundred IMDb reviews per split, the IMDb lexicon and 100 TL;DR comparisons.
pub fn assets() -> PathBuf {
    root().join("tests/assets")
}

/// The full real data for the few tests that need more than the slice: `RLHF_ASSETS`, or
/// `../shared/assets` beside the clone. `None` (the test then returns early) after one printed
/// line naming the test, when neither exists.
pub fn full_assets(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("RLHF_ASSETS").map(PathBuf::from).unwrap_or_else(|| root().join("../shared/assets"));
    if dir.is_dir() {
        return Some(dir);
    }
    // Straight to stderr: the test harness captures `println!`/`eprintln!` of passing tests.
    let line = format!("skipped {test}: it needs the full assets (set RLHF_ASSETS, or put them at ../shared/assets)\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    None
}

/// The fixture GPT-2 written by `trainer/fixtures/make_gpt2_fixtures.py`.
pub fn fixture(name: &str) -> PathBuf {
    root().join("trainer/fixtures/gpt2").join(name)
}

/// Runs `rlhf` with `args` and returns its output (whatever the exit status).
pub fn rlhf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("HF_HUB_OFFLINE", "0")
        .output()
        .expect("the rlhf binary runs")
}

/// Runs `rlhf` and returns stdout, failing the test with stderr if it did not succeed.
pub fn rlhf_ok(args: &[&str]) -> String {
    let out = rlhf(args);
    assert!(out.status.success(), "rlhf {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs `rlhf` expecting failure; returns stderr.
pub fn rlhf_err(args: &[&str]) -> String {
    let out = rlhf(args);
    assert!(!out.status.success(), "rlhf {args:?} unexpectedly succeeded");
    String::from_utf8(out.stderr).expect("utf-8 output")
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `rlhf reward score --model MODEL` on two short texts: one score each.
pub fn reward_scores(model: &Path) -> Vec<f64> {
    let stdout = rlhf_ok(&["reward", "score", "--model", path_str(model), "--text", "a great film", "--text", "awful"]);
    stdout.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["score"].as_f64().unwrap()).collect()
}
