//! The algorithms through the real binary, on real data (asset tier): the committed slice in
//! `tests/assets`, and for two tests the full assets (see [`super::full_assets`]):
//! SFT, reward models on IMDb and TL;DR, and `ppo --local`. Budgets are sized for CI (2 cores);
//! the figures observed when they were written are in the comments.

use super::{assets, fixture, full_assets, path_str, reward_scores, rlhf_err, rlhf_ok};

fn metrics(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn eval_results(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("eval_results.json")).unwrap()).unwrap()
}

#[test]
fn a_reward_model_on_imdb_pairs_beats_chance() {
    // 1,000 positive-over-negative pairs of 48-token review prefixes, the real GPT-2 tokenizer, a
    // tiny GPT-2 from scratch, 2 epochs: 70.6% on the 500 test pairs in ~26 s.
    let Some(full) = full_assets("a_reward_model_on_imdb_pairs_beats_chance") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rm");
    let imdb = full.join("imdb-sentiment");
    rlhf_ok(&[
        "reward",
        "train",
        "--init",
        "tiny",
        "--tokenizer",
        path_str(&assets().join("gpt2-tokenizer")),
        "--data",
        path_str(&imdb.join("train.jsonl")),
        "--eval-data",
        path_str(&imdb.join("test.jsonl")),
        "--truncate-tokens",
        "48",
        "--max-pairs",
        "1000",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--learning-rate",
        "1e-3",
        "--max-length",
        "48",
        "--out",
        path_str(&out),
    ]);
    let results = eval_results(&out);
    let accuracy = results["eval/accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.62, "test accuracy {accuracy}");
    assert!(metrics(&out).len() >= 2);
    // The directory is a reward model that `reward score` reads; praise outscores a pan.
    let stdout = rlhf_ok(&[
        "reward",
        "score",
        "--model",
        path_str(&out),
        "--text",
        "A wonderful, moving film with brilliant acting.",
        "--text",
        "Terrible, boring and stupid. The worst.",
    ]);
    let scores: Vec<f64> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["score"].as_f64().unwrap())
        .collect();
    assert!(scores[0] > scores[1], "{scores:?}");
}

#[test]
fn local_ppo_raises_the_lexicon_reward_with_bounded_kl() {
    // The fixture GPT-2 (384-token IMDb BPE), prompts cut from IMDb test reviews, the aclImdb
    // lexicon as reward, 30 iterations (~16 s), against a control run at learning rate 0 (the
    // same rollouts' seeds, a policy that never moves).
    // Observed: mean reward 0.01 -> 0.57 (first and last five iterations), 0.0 -> -0.04 at
    // learning rate 0; KL up to 14 nats per response.
    const KL_CAP: f64 = 18.0;
    let Some(full) = full_assets("local_ppo_raises_the_lexicon_reward_with_bounded_kl") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, learning_rate: &str| {
        let out = tmp.path().join(name);
        let learning_rate = format!("ppo.optim.learning_rate={learning_rate}");
        #[rustfmt::skip]
        rlhf_ok(&[
            "ppo", "--local", "--model", path_str(&fixture("lm")), "--lexicon", path_str(&full.join("imdb-lexicon")),
            "--prompts", path_str(&full.join("imdb-sentiment/test.jsonl")), "--out", path_str(&out),
            "--iterations", "30", "--batch-size", "64", "--set", &learning_rate, "--set", "ppo.mini_batch_size=32",
            "--set", "ppo.kl={fixed={value=0.01}}", "--set", "ppo.score_scaling=true", "--set", "ppo.score_norm=true",
            "--set", "sampling.max_new_tokens=12",
        ]);
        out
    };
    let (out, control) = (run("ppo", "1e-3"), run("control", "0"));
    let records = metrics(&out);
    assert_eq!(records.len(), 30);
    for key in [
        "objective/kl",
        "objective/kl_coef",
        "objective/entropy",
        "ppo/loss/policy",
        "ppo/loss/value",
        "ppo/loss/total",
        "ppo/policy/entropy",
        "ppo/policy/approxkl",
        "ppo/policy/policykl",
        "ppo/policy/clipfrac",
        "ppo/val/vpred",
        "ppo/val/error",
        "ppo/val/clipfrac",
        "ppo/val/var_explained",
        "ppo/returns/mean",
        "ppo/returns/var",
        "ppo/mean_scores",
        "ppo/mean_non_score_reward",
        "tokens/responses_len_mean",
        "env/reward_mean",
    ] {
        assert!(records[0][key].is_number(), "metrics lack {key}");
    }
    let reward = |r: &serde_json::Value| r["env/reward_mean"].as_f64().unwrap();
    let last5 = |records: &[serde_json::Value]| records[25..].iter().map(reward).sum::<f64>() / 5.0;
    let (first, last) = (records[..5].iter().map(reward).sum::<f64>() / 5.0, last5(&records));
    let control = metrics(&control);
    let unchanged = last5(&control);
    assert!(
        last > first + 0.3 && last > unchanged + 0.3,
        "mean reward {first} -> {last}; at learning rate 0: {unchanged}"
    );
    let kl = |r: &serde_json::Value| r["objective/kl"].as_f64().unwrap();
    assert!(control.iter().all(|r| kl(r).abs() < 1e-3), "a policy that never moved drifted from its reference");
    let max_kl = records.iter().map(kl).fold(0.0, f64::max);
    assert!(max_kl > 1.0 && max_kl < KL_CAP, "KL per response {max_kl}, cap {KL_CAP}");
    // The trained policy is an HF directory with TRL's value head beside it.
    assert!(out.join("model.safetensors").is_file() && out.join("value_head.safetensors").is_file());
    rlhf_ok(&["generate", "--model", path_str(&out), "--prompt", "This movie", "--max-new-tokens", "4"]);
    // Its report shows the curves and the resolved config.
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(report.matches("data:image/png;base64,").count(), 5);
    assert!(
        report.contains("ppo_config.toml") && report.contains("over 30 iterations"),
        "the report lacks the config or summary"
    );
}

#[test]
fn local_ppo_with_a_separate_critic_from_the_reward_model() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |critic: &str| {
        let out = tmp.path().join(critic);
        rlhf_ok(&[
            "ppo",
            "--local",
            "--model",
            path_str(&fixture("lm")),
            "--reward-model",
            path_str(&fixture("reward")),
            "--critic",
            critic,
            "--prompts",
            path_str(&assets().join("imdb-sentiment/test.jsonl")),
            "--out",
            path_str(&out),
            "--iterations",
            "2",
            "--batch-size",
            "8",
        ]);
        out
    };
    let (out, shared) = (run("reward-model"), run("shared"));
    assert_eq!(metrics(&out).len(), 2);
    assert!(out.join("critic/model.safetensors").is_file() && !out.join("value_head.safetensors").exists());
    // The critic trained: the exported one scores texts differently from the reward model it
    // started as.
    let (before, after) = (reward_scores(&fixture("reward")), reward_scores(&out.join("critic")));
    assert!(
        before.iter().zip(&after).all(|(b, a)| (b - a).abs() > 1e-5),
        "the critic did not move: {before:?} {after:?}"
    );
    // The values came from the critic, not from a value head on the policy: same rollouts (same
    // seed, same policy before the first update), other value predictions.
    let (critic, shared) = (&metrics(&out)[0], &metrics(&shared)[0]);
    assert_eq!(critic["env/reward_mean"], shared["env/reward_mean"], "the first iteration's rollouts differ");
    let (a, b) = (critic["ppo/val/vpred"].as_f64().unwrap(), shared["ppo/val/vpred"].as_f64().unwrap());
    assert!((a - b).abs() > 1e-3, "value predictions {a} (critic) and {b} (shared head) agree");
}

#[test]
fn sft_writes_a_model_metrics_and_checkpoints_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sft");
    let args_for = |out: &std::path::Path, learning_rate: &'static str, flag: Option<&'static str>| {
        let mut args = vec![
            "sft",
            "--model",
            path_str(&fixture("lm")).to_string().leak(),
            "--data",
            path_str(&assets().join("imdb-sentiment/test.jsonl")).to_string().leak(),
            "--max-examples",
            "96",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--learning-rate",
            learning_rate,
            "--max-length",
            "32",
            "--set",
            "checkpoint_every=3",
            "--out",
            path_str(out).to_string().leak(),
        ];
        args.extend(flag);
        args
    };
    let args = |flag| args_for(&out, "3e-3", flag);
    rlhf_ok(&args(None));
    let records = metrics(&out);
    let loss = |r: &serde_json::Value| r["train/loss"].as_f64().unwrap();
    assert!(loss(records.last().unwrap()) < loss(&records[0]), "training loss did not fall");
    assert!(eval_results(&out)["eval/perplexity"].as_f64().unwrap().is_finite());
    assert!(out.join("checkpoints/step-3/optimizer_params.json").is_file());
    assert!(out.join("config.json").is_file() && out.join("sft_config.toml").is_file());
    // A second run without --resume refuses to overwrite; with it, it picks up the last checkpoint.
    let err = rlhf_err(&args(None));
    assert!(err.contains("already holds a run") && err.contains("--resume") && err.contains("--overwrite"), "{err}");
    // As if the first run had died after step 12 with its last checkpoint at step 6: a resumed
    // run continues from step 6, and its metrics read as one run (no step twice).
    let steps = |out: &std::path::Path| metrics(out).iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>();
    let total = steps(&out).len() as u64;
    assert!(total >= 9, "{:?}", steps(&out));
    for late in (7..=total).filter(|s| s % 3 == 0) {
        std::fs::remove_dir_all(out.join(format!("checkpoints/step-{late}"))).unwrap();
    }
    rlhf_ok(&args(Some("--resume")));
    assert_eq!(steps(&out), (1..=total).collect::<Vec<_>>(), "records duplicated after --resume");
    let resumed = (std::fs::read(out.join("model.safetensors")).unwrap(), eval_results(&out));
    // --overwrite starts over: an uninterrupted run, which the resumed one matches (a resume that
    // ignored the checkpoint, or restarted at step 0, would not).
    rlhf_ok(&args(Some("--overwrite")));
    assert_eq!(steps(&out), (1..=total).collect::<Vec<_>>());
    let perplexity = |r: &serde_json::Value| r["eval/perplexity"].as_f64().unwrap();
    let (trained, resumed_perplexity) = (perplexity(&eval_results(&out)), perplexity(&resumed.1));
    assert!((trained - resumed_perplexity).abs() <= 1e-4 * trained, "{resumed_perplexity} resumed, {trained} not");
    assert!(resumed.0 == std::fs::read(out.join("model.safetensors")).unwrap(), "the resumed weights differ");
    // Held-out perplexity fell: the same run at learning rate 0 measures the untrained model.
    let control = tmp.path().join("control");
    rlhf_ok(&args_for(&control, "0", None));
    let untrained = perplexity(&eval_results(&control));
    assert!(trained < untrained * 0.9, "held-out perplexity {trained}, untrained {untrained}");
}

#[test]
fn a_tldr_reward_model_trains_on_openai_comparisons() {
    // 64 human comparisons, evaluated on the same pairs: the loss falls and the model ranks most
    // of them the way the labellers did (far above chance); then its rewards are normalised.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tldr");
    let comparisons = assets().join("tldr-comparisons/comparisons_batch13_first500.jsonl");
    rlhf_ok(&[
        "reward",
        "train",
        "--model",
        path_str(&fixture("reward")),
        "--format",
        "comparisons",
        "--data",
        path_str(&comparisons),
        "--eval-data",
        path_str(&comparisons),
        "--max-pairs",
        "64",
        "--epochs",
        "4",
        "--batch-size",
        "16",
        "--learning-rate",
        "1e-3",
        "--max-length",
        "60",
        "--out",
        path_str(&out),
        "--normalize",
    ]);
    let records = metrics(&out);
    assert_eq!(records.len(), 16, "four epochs of four steps");
    let loss = |epoch: &[serde_json::Value]| epoch.iter().map(|r| r["train/loss"].as_f64().unwrap()).sum::<f64>() / 4.0;
    let (first, last) = (loss(&records[..4]), loss(&records[12..]));
    assert!(last < first * 0.7, "mean training loss over an epoch {first} -> {last}");
    let results = eval_results(&out);
    let value = |key: &str| results[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {results}"));
    assert!(value("eval/accuracy") >= 0.75, "{results}");
    assert!(value("normalization/mean_after").abs() < 0.05, "{results}");
    assert!((value("normalization/std_after") - 1.0).abs() < 0.05, "{results}");
}

#[test]
fn training_commands_reject_bad_input_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\", \"label\": 1}\n{\"label\": 0}\n").unwrap();
    let out = tmp.path().join("rm");
    let err = rlhf_err(&[
        "reward",
        "train",
        "--model",
        path_str(&fixture("reward")),
        "--data",
        path_str(&bad),
        "--out",
        path_str(&out),
    ]);
    assert!(err.contains("bad.jsonl:2: text: expected a string"), "{err}");
    assert!(!out.join("config.json").exists(), "no partial model on failure");

    let err = rlhf_err(&[
        "sft",
        "--model",
        path_str(&fixture("lm")),
        "--data",
        path_str(&bad),
        "--out",
        path_str(&out),
        "--set",
        "optim.learning_rat=1",
    ]);
    assert!(err.contains("learning_rat"), "{err}");

    let err = rlhf_err(&["ppo", "--model", path_str(&fixture("lm")), "--lexicon", "x", "--prompts", "y", "--out", "z"]);
    assert!(err.contains("--local"), "{err}");
}
