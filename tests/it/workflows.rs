//! The main job and the documented workflows, end to end through the real binary: `rlhf demo`
//! at a small size, and the README's IMDb and TL;DR commands on the committed data slice with the
//! real GPT-2 tokenizer and a tiny model.

use std::path::Path;

use super::{assets, path_str, rlhf, rlhf_err};

/// The demo at a size that runs in well under a minute.
const SMALL: &[&str] = &[
    "--set",
    "corpus.train_reviews=240",
    "--set",
    "corpus.test_reviews=40",
    "--set",
    "vocab_size=320",
    "--set",
    "sft.epochs=1",
    "--set",
    "reward.epochs=1",
    "--set",
    "ppo.iterations=3",
    "--set",
    "ppo.batch_size=16",
    "--set",
    "ppo.ppo.mini_batch_size=8",
    "--set",
    "runtime.lease_size=8",
    "--set",
    "eval.n_prompts=8",
    "--set",
    "eval.best_of=2",
];

fn demo(out: &Path, extra: &[&str]) -> (String, String) {
    let mut args = vec!["demo", "--out", path_str(out)];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    let output = rlhf(&args);
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned());
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
    let eval = read_json(&out.join("eval-positive/eval.json"));
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
    let eval = read_json(&out.join("eval-negative/eval.json"));
    assert!(eval["scorer"].as_str().unwrap().starts_with("negated(reward-model:"), "{}", eval["scorer"]);
}

#[test]
fn the_demo_runs_on_a_labelled_corpus_with_an_independent_judge() {
    // The committed slice of real IMDb reviews (train.jsonl and test.jsonl in one folder) and the
    // aclImdb lexicon as a judge PPO never saw; prompts are the first tokens of long reviews.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let corpus = assets().join("imdb-sentiment");
    let lexicon = assets().join("imdb-lexicon");
    #[rustfmt::skip]
    let extra = [
        "--corpus", path_str(&corpus), "--judge-lexicon", path_str(&lexicon), "--workers", "1",
        "--set", "ppo.prompts={min_chars=200,min_tokens=2,max_tokens=8,seed=0,whole=false}",
        "--set", "corpus.test_reviews=40",
    ];
    let (stdout, stderr) = demo(&out, &extra);
    for stage in 1..=6 {
        assert!(stderr.contains(&format!("[{stage}/6]")), "{stderr}");
    }
    // At most corpus.train_reviews (240) of the slice's 350, and 40 of its 300 test reviews.
    let rows = |split: &str| std::fs::read_to_string(out.join(format!("corpus/{split}.jsonl"))).unwrap();
    assert_eq!((rows("train").lines().count(), rows("test").lines().count()), (240, 40));
    let source = rows_of(&corpus.join("test.jsonl"));
    assert!(rows("test").lines().all(|l| source.contains(l)), "the test reviews come from the test split");
    assert!(stdout.contains("independent judge (lexicon:"), "{stdout}");
    let eval = read_json(&out.join("eval-positive/eval.json"));
    for policy in ["sft", "positive"] {
        assert!(eval["judge"]["policies"][policy]["mean"].is_number(), "{}", eval["judge"]);
        assert!(eval["samples"][0][policy]["judge"].is_number(), "{}", eval["samples"][0]);
    }
    let win = eval["judge"]["win_rate"]["a_over_b"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&win));
    let report = std::fs::read_to_string(out.join("ppo-positive/report.html")).unwrap();
    for needle in ["<th>reward mean</th>", "<th>judge mean (lexicon:", "never optimised", "Judge (lexicon:"] {
        assert!(report.contains(needle), "the report lacks {needle:?}");
    }
    assert!(
        report.contains("Reward hacking suspected") || report.contains("The independent judge moved with the reward")
    );

    // A misnamed corpus and an unlabelled one are refused by name, before any stage runs.
    let missing = tmp.path().join("no-such-corpus.jsonl");
    let err = rlhf_err(&["demo", "--out", path_str(&tmp.path().join("x")), "--corpus", path_str(&missing)]);
    assert!(err.contains("--corpus") && err.contains("no-such-corpus.jsonl"), "{err}");
    let unlabelled = tmp.path().join("unlabelled.jsonl");
    std::fs::write(&unlabelled, "{\"text\": \"a fine film, and long enough to be a review of its own\"}\n").unwrap();
    let err = rlhf_err(&["demo", "--out", path_str(&tmp.path().join("y")), "--corpus", path_str(&unlabelled)]);
    assert!(err.contains("unlabelled.jsonl:1: label"), "{err}");
    assert!(!tmp.path().join("y/tokenizer").exists(), "no stage after the corpus ran");
}

fn rows_of(path: &Path) -> String {
    // The corpus stage rewrites rows as {"text","label"}: compare on that form.
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            serde_json::json!({"text": v["text"], "label": v["label"]}).to_string() + "\n"
        })
        .collect()
}

#[test]
fn the_demo_rejects_unknown_settings_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let stderr = rlhf_err(&["demo", "--out", path_str(tmp.path()), "--set", "ppo.iteratons=3"]);
    assert!(stderr.contains("iteratons"), "{stderr}");
    assert!(!tmp.path().join("corpus").exists(), "nothing runs on a bad config");
}

fn write(path: &Path, text: &str) -> std::path::PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// The README's IMDb recipe (SFT → reward model → PPO happy and pessimistic → eval → report) at
/// a tiny size: the real GPT-2 tokenizer, a `tiny` GPT-2, a few dozen reviews, two iterations.
#[test]
fn the_imdb_workflow_runs_as_documented_on_the_asset_data() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |name: &str| tmp.path().join(name);
    let tokenizer = assets().join("gpt2-tokenizer");
    let (train, test) = (assets().join("imdb-sentiment/train.jsonl"), assets().join("imdb-sentiment/test.jsonl"));
    #[rustfmt::skip]
    super::rlhf_ok(&[
        "sft", "--init", "tiny", "--tokenizer", path_str(&tokenizer), "--data", path_str(&train), "--max-examples", "48",
        "--max-length", "32", "--batch-size", "8", "--out", path_str(&t("sft")),
    ]);
    #[rustfmt::skip]
    super::rlhf_ok(&[
        "reward", "train", "--model", path_str(&t("sft")), "--data", path_str(&train), "--eval-data", path_str(&test),
        "--format", "sentiment", "--truncate-tokens", "32", "--max-pairs", "64", "--max-length", "32", "--normalize",
        "--out", path_str(&t("rm")),
    ]);
    let config = write(
        &t("happy.toml"),
        &format!(
            "model = {:?}\nprompts = {:?}\nout = {:?}\n[reward]\nmodel = {:?}\n[train]\niterations = 2\nbatch_size = 16\n\
             [train.sampling]\nmax_new_tokens = 8\n[train.ppo]\nmini_batch_size = 8\n[runtime]\nlease_size = 8\n",
            t("sft"),
            train,
            t("happy"),
            t("rm")
        ),
    );
    super::rlhf_ok(&["run", "--config", path_str(&config), "--workers", "2"]);
    let pessimistic_out = format!("out={}", path_str(&t("pessimistic")));
    super::rlhf_ok(&[
        "run",
        "--config",
        path_str(&config),
        "--workers",
        "2",
        "--set",
        &pessimistic_out,
        "--set",
        "reward.negate=true",
    ]);
    #[rustfmt::skip]
    super::rlhf_ok(&[
        "eval", "--policy", &format!("sft={}", path_str(&t("sft"))), "--policy", &format!("happy={}", path_str(&t("happy"))),
        "--policy", &format!("pessimistic={}", path_str(&t("pessimistic"))), "--prompts", path_str(&test),
        "--reward-model", path_str(&t("rm")), "--n-prompts", "8", "--best-of", "2", "--max-new-tokens", "8",
        "--samples", "8", "--out", path_str(&t("eval.json")),
    ]);
    let report = super::rlhf_ok(&[
        "report",
        "--run",
        path_str(&t("happy")),
        "--eval",
        path_str(&t("eval.json")),
        "--reward-model",
        path_str(&t("rm")),
    ]);
    assert_eq!(report.trim(), path_str(&t("happy").join("report.html")));

    let eval = read_json(&t("eval.json"));
    assert_eq!(eval["order"], serde_json::json!(["sft", "happy", "pessimistic"]));
    for name in ["sft", "happy", "pessimistic"] {
        assert!(eval["policies"][name]["reward"]["mean"].as_f64().unwrap().is_finite(), "{name}");
    }
    assert!(
        eval["policies"]["sft"]["kl_to_reference"]["mean"].as_f64().unwrap().abs() < 1e-3,
        "the reference is the first policy"
    );
    assert_consistent(&eval, 8);
    assert!(read_json(&t("rm/eval_results.json"))["eval/accuracy"].as_f64().is_some());
    // SFT and reward-model runs get their own report: losses, the held-out metric, the optimizer.
    for (run, needle) in [("sft", "final eval/perplexity"), ("rm", "final eval/accuracy")] {
        let html = std::fs::read_to_string(t(run).join("report.html")).unwrap();
        assert_eq!(html.matches("data:image/png;base64,").count(), 2, "{run}");
        assert!(html.contains(needle), "{run}'s report lacks {needle:?}");
    }
    // Both runs start from the same policy, seed and prompts, so their first rollouts are the same
    // and the pessimistic run's reward server must score them with the opposite sign.
    let first_reward = |run: &str| {
        let line = std::fs::read_to_string(t(run).join("metrics.jsonl")).unwrap().lines().next().unwrap().to_string();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["env/reward_mean"].as_f64().unwrap()
    };
    let (happy, pessimistic) = (first_reward("happy"), first_reward("pessimistic"));
    assert!(happy.abs() > 1e-3 && (happy + pessimistic).abs() < 1e-4, "happy {happy}, pessimistic {pessimistic}");
    for run in ["happy", "pessimistic"] {
        assert_eq!(std::fs::read_to_string(t(run).join("metrics.jsonl")).unwrap().lines().count(), 2, "{run}");
        assert!(t(run).join("model.safetensors").is_file() && t(run).join("report.html").is_file(), "{run}");
    }
    let html = std::fs::read_to_string(t("happy/report.html")).unwrap();
    assert!(html.contains("Before and after") && html.contains("pessimistic") && html.contains("eval/accuracy"));
}

/// The README's TL;DR recipe at a tiny size: SFT on post + preferred summary, a reward model from
/// the human comparisons, PPO on "post + TL;DR:" prompts, then best-of-n and a win rate.
#[test]
fn the_tldr_workflow_runs_as_documented_on_the_asset_comparisons() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |name: &str| tmp.path().join(name);
    let tokenizer = assets().join("gpt2-tokenizer");
    let comparisons = assets().join("tldr-comparisons/comparisons_batch13_first500.jsonl");
    #[rustfmt::skip]
    super::rlhf_ok(&[
        "sft", "--init", "tiny", "--tokenizer", path_str(&tokenizer), "--data", path_str(&comparisons), "--max-examples", "24",
        "--max-length", "48", "--batch-size", "8", "--out", path_str(&t("sft")),
    ]);
    #[rustfmt::skip]
    super::rlhf_ok(&[
        "reward", "train", "--model", path_str(&t("sft")), "--data", path_str(&comparisons), "--format", "comparisons",
        "--max-pairs", "48", "--max-length", "96", "--out", path_str(&t("rm")),
    ]);
    let config = write(
        &t("ppo.toml"),
        &format!(
            "model = {:?}\nprompts = {:?}\nout = {:?}\n[reward]\nmodel = {:?}\n[train]\niterations = 2\nbatch_size = 8\n\
             [train.sampling]\nmax_new_tokens = 12\n[train.prompts]\nwhole = true\nmax_tokens = 64\nmin_chars = 0\nmin_tokens = 1\nseed = 0\n\
             [train.ppo]\nmini_batch_size = 8\n",
            t("sft"),
            comparisons,
            t("ppo"),
            t("rm")
        ),
    );
    super::rlhf_ok(&["run", "--config", path_str(&config), "--workers", "2"]);
    #[rustfmt::skip]
    super::rlhf_ok(&[
        "eval", "--policy", &format!("ppo={}", path_str(&t("ppo"))), "--policy", &format!("sft={}", path_str(&t("sft"))),
        "--reference", path_str(&t("sft")), "--prompts", path_str(&comparisons), "--whole-prompts", "64", "--min-chars", "0",
        "--reward-model", path_str(&t("rm")), "--n-prompts", "6", "--best-of", "2", "--max-new-tokens", "12",
        "--samples", "6", "--out", path_str(&t("eval.json")),
    ]);
    let eval = read_json(&t("eval.json"));
    assert_eq!(eval["n_prompts"], 6);
    let prompt = eval["samples"][0]["prompt"].as_str().unwrap();
    assert!(prompt.ends_with("TL;DR:"), "prompts are posts ending in TL;DR: {prompt:?}");
    assert_eq!(eval["best_of_n"]["n"], 2);
    assert_consistent(&eval, 6);
    assert!(eval["win_rate"]["judge"].as_str().unwrap().contains("rm"), "the judge is recorded: {}", eval["win_rate"]);
    let rm = read_json(&t("rm/eval_results.json"));
    assert!((0.0..=1.0).contains(&rm["eval/accuracy"].as_f64().unwrap()));
}

/// An eval with every prompt among its samples: the reward judge's win rate is what the
/// per-sample rewards say (ties half), each policy's mean reward is its samples' mean, and
/// best-of-n, which includes the first policy's own sample, never scores below it.
fn assert_consistent(eval: &serde_json::Value, n_prompts: usize) {
    let samples = eval["samples"].as_array().unwrap();
    assert_eq!(samples.len(), n_prompts, "every prompt is a sample");
    let order: Vec<&str> = eval["order"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let reward = |s: &serde_json::Value, policy: &str| s[policy]["reward"].as_f64().unwrap();
    let wins: f64 = samples
        .iter()
        .map(|s| match reward(s, order[0]).total_cmp(&reward(s, order[1])) {
            std::cmp::Ordering::Greater => 1.0,
            std::cmp::Ordering::Less => 0.0,
            std::cmp::Ordering::Equal => 0.5,
        })
        .sum();
    let win = eval["win_rate"]["a_over_b"].as_f64().unwrap();
    assert_eq!((eval["win_rate"]["a"].as_str(), eval["win_rate"]["b"].as_str()), (Some(order[0]), Some(order[1])));
    assert!((win - wins / n_prompts as f64).abs() < 1e-9, "win rate {win}, per-sample rewards give {wins}/{n_prompts}");
    for policy in &order {
        let mean = samples.iter().map(|s| reward(s, policy)).sum::<f64>() / n_prompts as f64;
        let reported = eval["policies"][policy]["reward"]["mean"].as_f64().unwrap();
        assert!((mean - reported).abs() < 1e-4 * mean.abs().max(1.0), "{policy}: {reported} vs samples {mean}");
    }
    let best = &eval["best_of_n"]["reward"];
    let base = &eval["policies"][order[0]]["reward"];
    for stat in ["mean", "median"] {
        assert!(best[stat].as_f64().unwrap() >= base[stat].as_f64().unwrap(), "best-of-n {stat} below its policy's");
    }
}
