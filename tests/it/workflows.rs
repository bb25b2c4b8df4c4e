//! The main job and the documented workflows, end to end through the real binary: `rlhf demo`
//! at a small size, and the README's IMDb and TL;DR commands on `../shared/assets` with the
//! real GPT-2 tokenizer and a tiny model.

use std::path::Path;

use super::{path_str, rlhf, rlhf_err};

/// The demo at a size that runs in well under a minute.
const SMALL: &[&str] = &[
    "--set", "corpus.train_reviews=240", "--set", "corpus.test_reviews=40", "--set", "vocab_size=320",
    "--set", "sft.epochs=1", "--set", "reward.epochs=1", "--set", "ppo.iterations=3", "--set", "ppo.batch_size=16",
    "--set", "ppo.ppo.mini_batch_size=8", "--set", "runtime.lease_size=8", "--set", "eval.n_prompts=8",
    "--set", "eval.best_of=2",
];

fn demo(out: &Path, extra: &[&str]) -> (String, String) {
    let mut args = vec!["demo", "--out", path_str(out)];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    let output = rlhf(&args);
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned());
    assert!(output.status.success(), "rlhf demo failed:\n{stderr}");
    (stdout, stderr)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn the_demo_runs_every_stage_writes_a_report_and_reuses_finished_stages() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let (stdout, stderr) = demo(&out, &[]);
    for stage in 1..=6 {
        assert!(stderr.contains(&format!("[{stage}/6]")) && !stderr.contains("done already"), "{stderr}");
    }
    assert!(stdout.contains("reward (reward-model score) on 8 held-out prompts: sft"), "{stdout}");
    assert!(stdout.contains("reward model test accuracy"), "{stdout}");

    // Every stage's output, produced by the real commands.
    let tokenizer = read_json(&out.join("tokenizer/tokenizer.json"));
    assert!(tokenizer["model"]["vocab"].as_object().unwrap().len() <= 320);
    let sft_config = read_json(&out.join("sft/config.json"));
    assert_eq!(sft_config["n_embd"], 64, "the tiny preset");
    let accuracy = read_json(&out.join("reward-model/eval_results.json"))["eval/accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    let ppo = out.join("ppo-positive");
    let metrics = std::fs::read_to_string(ppo.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);
    assert_eq!(read_json(&ppo.join("accounting.json"))["workers_joined"], 2, "two worker processes joined the learner");
    let eval = read_json(&ppo.join("eval.json"));
    assert_eq!(eval["order"], serde_json::json!(["sft", "positive"]));
    assert_eq!(eval["best_of_n"]["n"], 2);
    let report = std::fs::read_to_string(ppo.join("report.html")).unwrap();
    assert_eq!(report.matches("data:image/png;base64,").count(), 5);
    for needle in ["Before and after", "Reward model", "eval/accuracy", "demo_config.toml", "learner_config.toml"] {
        assert!(report.contains(needle), "the report lacks {needle:?}");
    }

    // A second run reuses every stage.
    let before = std::fs::read_to_string(ppo.join("metrics.jsonl")).unwrap();
    let (_, stderr) = demo(&out, &[]);
    assert_eq!(stderr.matches("done already").count(), 6, "{stderr}");
    assert_eq!(std::fs::read_to_string(ppo.join("metrics.jsonl")).unwrap(), before);

    // The pessimistic reviewer reuses corpus, tokenizer, SFT and reward model, and negates the reward.
    let (stdout, stderr) = demo(&out, &["--target", "negative", "--set", "ppo.iterations=2"]);
    assert_eq!(stderr.matches("done already").count(), 4, "{stderr}");
    assert!(stdout.contains("negated reward-model score"), "{stdout}");
    let learner = std::fs::read_to_string(out.join("ppo-negative/learner_config.toml")).unwrap();
    assert!(learner.contains("negate = true"), "{learner}");
    assert_eq!(std::fs::read_to_string(out.join("ppo-negative/metrics.jsonl")).unwrap().lines().count(), 2);
}

#[test]
fn the_demo_rejects_unknown_settings_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let stderr = rlhf_err(&["demo", "--out", path_str(tmp.path()), "--set", "ppo.iteratons=3"]);
    assert!(stderr.contains("iteratons"), "{stderr}");
    assert!(!tmp.path().join("corpus").exists(), "nothing runs on a bad config");
}
