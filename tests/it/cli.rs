//! `rlhf generate | logprobs | export | bench` on the fixture model, through the real binary.

use super::{assets, fixture, path_str, rlhf_err, rlhf_ok};

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect()
}

#[test]
fn generate_prints_one_json_object_per_prompt() {
    let model = fixture("lm");
    let stdout = rlhf_ok(&[
        "generate",
        "--model",
        path_str(&model),
        "--prompt",
        "This movie",
        "--prompt",
        "I hated every minute of it",
        "--max-new-tokens",
        "8",
        "--greedy",
        "--ignore-eos",
        "--format",
        "json",
    ]);
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["prompt"], "This movie");
    for line in &lines {
        assert_eq!(line["completion_ids"].as_array().unwrap().len(), 8);
        let logprobs = line["logprobs"].as_array().unwrap();
        assert_eq!(logprobs.len(), 8);
        assert!(logprobs.iter().all(|l| l.as_f64().unwrap() <= 0.0));
        assert!(!line["prompt_ids"].as_array().unwrap().is_empty());
        assert!(line["completion"].is_string());
    }
}

#[test]
fn sampling_with_a_seed_is_repeatable() {
    let model = fixture("lm");
    let args = |seed: &'static str| {
        vec![
            "generate",
            "--model",
            path_str(&model),
            "--prompt",
            "The plot",
            "--max-new-tokens",
            "12",
            "--temperature",
            "0.9",
            "--top-k",
            "50",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--format",
            "json",
        ]
    };
    let a = rlhf_ok(&args("5"));
    assert_eq!(a, rlhf_ok(&args("5")));
    assert_ne!(json_lines(&a)[0]["completion_ids"], json_lines(&rlhf_ok(&args("6")))[0]["completion_ids"]);
}

#[test]
fn logprobs_has_one_value_per_next_token() {
    let model = fixture("lm");
    let stdout = rlhf_ok(&["logprobs", "--model", path_str(&model), "--text", "A great film.", "--text", "Bad."]);
    for line in json_lines(&stdout) {
        let ids = line["ids"].as_array().unwrap().len();
        let logprobs = line["logprobs"].as_array().unwrap();
        assert_eq!(logprobs.len(), ids - 1);
        assert!(logprobs.iter().all(|l| l.as_f64().unwrap() <= 0.0));
    }
}

#[test]
fn an_exported_model_generates_exactly_like_the_original() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("exported");
    rlhf_ok(&["export", "--model", path_str(&fixture("lm")), "--out", path_str(&out)]);
    for file in
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    {
        assert!(out.join(file).is_file(), "{file} missing from the export");
    }
    let greedy = |dir: &std::path::Path| {
        rlhf_ok(&[
            "generate",
            "--model",
            path_str(dir),
            "--prompt",
            "Why",
            "--max-new-tokens",
            "10",
            "--greedy",
            "--format",
            "json",
        ])
    };
    assert_eq!(greedy(&fixture("lm")), greedy(&out));
    // A second export onto the same directory is refused.
    let err = rlhf_err(&["export", "--model", path_str(&fixture("lm")), "--out", path_str(&out)]);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let model = fixture("lm");
    let model = path_str(&model);
    let err = rlhf_err(&["generate", "--model", "./no/such/model", "--prompt", "x"]);
    assert!(err.contains("./no/such/model") && err.contains("no such file or directory"), "{err}");

    let err = rlhf_err(&["generate", "--model", model, "--prompt", "x", "--device", "cuda"]);
    if cfg!(feature = "cuda") {
        assert!(err.contains("--device cuda"), "{err}");
    } else {
        assert!(err.contains("without CUDA support"), "{err}");
    }
    let err = rlhf_err(&["generate", "--model", model, "--prompt", "x", "--device", "tpu"]);
    assert!(err.contains("expected cpu, cuda or cuda:N"), "{err}");

    let err = rlhf_err(&["generate", "--model", model, "--prompt", "x", "--temperature", "0"]);
    assert!(err.contains("temperature"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("lm").join("config.json"), tmp.path().join("config.json")).unwrap();
    let err = rlhf_err(&["generate", "--model", path_str(tmp.path()), "--prompt", "x"]);
    assert!(err.contains(path_str(tmp.path())) && err.contains("model.safetensors"), "{err}");
}

#[test]
fn a_hub_name_fails_fast_offline_and_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["generate", "--model", "openai-community/gpt2", "--prompt", "x"])
        .env("HF_HOME", tmp.path()) // an empty cache
        .env("HF_ENDPOINT", "http://127.0.0.1:9") // nothing listens there: unreachable on any machine
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hub cannot be reached") && err.contains("pass the local path"), "{err}");
}

#[test]
fn bench_generate_prints_a_table() {
    let stdout = rlhf_ok(&[
        "bench",
        "generate",
        "--config",
        "nano",
        "--batch",
        "1,2",
        "--prompt-len",
        "4",
        "--new-tokens",
        "3",
        "--runs",
        "1",
    ]);
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| rlhf (cpu) | nano |")).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(stdout.contains("tokens/s"));
}

#[test]
fn parity_checks_run_from_the_binary() {
    let fixtures = super::root().join("trainer/fixtures");
    let stdout = rlhf_ok(&["parity", "--fixtures", path_str(&fixtures), "--device", "cpu"]);
    let rows: Vec<&str> =
        stdout.lines().filter(|l| l.starts_with("| gpt2: ") || l.starts_with("| ppo step: ")).collect();
    assert!(rows.len() >= 20, "{stdout}");
    assert!(rows.iter().all(|r| r.ends_with("| ok |")), "{stdout}");
    let err = rlhf_err(&["parity", "--fixtures", "/nonexistent/fixtures"]);
    assert!(err.contains("/nonexistent/fixtures/gpt2/reference.safetensors"), "{err}");
}

#[test]
fn bench_ppo_prints_the_split_of_an_iteration() {
    let stdout = rlhf_ok(&[
        "bench",
        "ppo",
        "--layers",
        "1",
        "--width",
        "32",
        "--heads",
        "2",
        "--batch",
        "6",
        "--mini-batch",
        "4",
        "--epochs",
        "2",
        "--query-tokens",
        "2..5",
        "--new-tokens",
        "3",
        "--no-eos-stop",
        "--iterations",
        "1",
    ]);
    let header = stdout.lines().find(|l| l.contains("samples/s")).expect("a header");
    for column in ["generate s", "old+ref logprobs s", "optimise s", "iteration s"] {
        assert!(header.contains(column), "{header}");
    }
    let row: Vec<&str> =
        stdout.lines().find(|l| l.starts_with("| rlhf (cpu) | 1x32x2 |")).expect("a row").split('|').collect();
    // | impl | size | batch | mini-batch | epochs | response tokens | samples/s | ...
    assert_eq!(row[3].trim(), "6");
    assert_eq!(row[6].trim(), "3.0", "--no-eos-stop keeps every response at --new-tokens");
    assert!(row[7].trim().parse::<f64>().unwrap() > 0.0, "samples/s: {stdout}");
    let err = rlhf_err(&["bench", "ppo", "--query-tokens", "8..2"]);
    assert!(err.contains("--query-tokens"), "{err}");
}

#[test]
fn every_deploy_config_loads() {
    for entry in std::fs::read_dir(super::root().join("deploy")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path.file_stem().unwrap().to_str().unwrap();
            let (role, expect) = match name {
                "worker" => ("worker", "patience_s"),
                "reward-server" => ("reward-server", "max_batch"),
                name if name.starts_with("demo") => ("demo", "[ppo.prompts]"),
                _ => ("learner", "[train.ppo]"),
            };
            let stdout = rlhf_ok(&[role, "--config", path_str(&path), "--check"]);
            assert!(stdout.contains(expect), "{}: {stdout}", path.display());
        }
    }
    // The Compose learner's config (its paths are the containers').
    let compose = super::root().join("deploy/compose/learner.toml");
    let stdout = rlhf_ok(&["learner", "--config", path_str(&compose), "--check"]);
    assert!(stdout.contains("listen = \"0.0.0.0:7000\""), "{stdout}");
    // `ppo.temperature` is the sampler's, not a setting of its own: setting it is refused by name.
    let learner = super::root().join("deploy/learner.toml");
    let err = rlhf_err(&["learner", "--config", path_str(&learner), "--set", "train.ppo.temperature=0.7", "--check"]);
    assert!(err.contains("temperature"), "{err}");
    // The learner's address can live in its config (`--listen` overrides it).
    let stdout = rlhf_ok(&["learner", "--config", path_str(&learner), "--set", "listen=\"0.0.0.0:7000\"", "--check"]);
    assert!(stdout.contains("listen = \"0.0.0.0:7000\""), "{stdout}");
    // A separate critic starts from the reward model, so it needs one that reads the policy's tokens.
    let critic = ["--set", "train.critic=reward-model"];
    let stdout = rlhf_ok(&["learner", "--config", path_str(&learner), critic[0], critic[1], "--check"]);
    assert!(stdout.contains("critic = \"reward-model\""), "{stdout}");
    let err = rlhf_err(&[
        "learner",
        "--config",
        path_str(&learner),
        critic[0],
        critic[1],
        "--set",
        "reward.retokenize=true",
        "--check",
    ]);
    assert!(err.contains("train.critic") && err.contains("shared"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let lexicon = tmp.path().join("lexicon.toml");
    let text =
        "model = \"m\"\nprompts = \"p\"\nout = \"o\"\n[reward]\nlexicon = \"l\"\n[train]\ncritic = \"reward-model\"\n";
    std::fs::write(&lexicon, text).unwrap();
    let err = rlhf_err(&["learner", "--config", path_str(&lexicon), "--check"]);
    assert!(err.contains("train.critic") && err.contains("reward.model"), "{err}");
    // A misspelt key is named.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "model = \"m\"\nprompts = \"p\"\nout = \"o\"\n[train]\nbatch_sise = 3\n").unwrap();
    let err = rlhf_err(&["learner", "--config", path_str(&bad), "--check"]);
    assert!(err.contains("batch_sise") && err.contains("bad.toml"), "{err}");
}

#[test]
fn eval_compares_policies_with_a_reward_and_a_command_judge() {
    let lm = format!("ref={}", path_str(&fixture("lm")));
    let same = format!("same={}", path_str(&fixture("lm")));
    let lexicon = super::assets().join("imdb-lexicon");
    let prompts = super::assets().join("imdb-sentiment/test.jsonl");
    let base = [
        "eval",
        "--policy",
        &lm,
        "--policy",
        &same,
        "--prompts",
        path_str(&prompts),
        "--n-prompts",
        "8",
        "--lexicon",
        path_str(&lexicon),
        "--max-new-tokens",
        "6",
    ];
    let report: serde_json::Value = serde_json::from_str(&rlhf_ok(&[&base[..], &["--best-of", "2"]].concat())).unwrap();
    // The same model twice: no KL to the reference, identical samples, every comparison a tie.
    assert!(report["policies"]["same"]["kl_to_reference"]["mean"].as_f64().unwrap().abs() < 1e-4);
    assert_eq!(report["win_rate"]["a_over_b"], 0.5);
    assert!(report["win_rate"]["judge"].as_str().unwrap().starts_with("lexicon:"));
    assert_eq!(report["best_of_n"]["n"], 2);
    assert!(report["best_of_n"]["reward"]["mean"].as_f64().unwrap().is_finite());
    let report: serde_json::Value =
        serde_json::from_str(&rlhf_ok(&[&base[..], &["--judge", "command:cat > /dev/null; echo a"]].concat())).unwrap();
    assert_eq!(report["win_rate"]["a_over_b"], 1.0);
    let err = rlhf_err(&[&base[..], &["--judge", "command:echo maybe"]].concat());
    assert!(err.contains("expected a, b or tie"), "{err}");

    // Two different policies (the fixture and a few SFT steps from it): the win rate is the
    // share of prompts where the first one's reward is higher (ties half).
    let tmp = tempfile::tempdir().unwrap();
    let tuned = tmp.path().join("tuned");
    rlhf_ok(&[
        "sft",
        "--model",
        path_str(&fixture("lm")),
        "--data",
        path_str(&prompts),
        "--max-examples",
        "32",
        "--batch-size",
        "8",
        "--learning-rate",
        "1e-2",
        "--max-length",
        "24",
        "--out",
        path_str(&tuned),
    ]);
    let other = format!("tuned={}", path_str(&tuned));
    let mut args = base.to_vec();
    args[4] = &other;
    let report: serde_json::Value = serde_json::from_str(&rlhf_ok(&[&args[..], &["--samples", "8"]].concat())).unwrap();
    let samples = report["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 8);
    let verdicts: f64 = samples
        .iter()
        .map(|s| {
            let (a, b) = (s["ref"]["reward"].as_f64().unwrap(), s["tuned"]["reward"].as_f64().unwrap());
            if a > b {
                1.0
            } else if a < b {
                0.0
            } else {
                0.5
            }
        })
        .sum();
    assert_eq!(report["win_rate"]["a_over_b"].as_f64().unwrap(), verdicts / 8.0, "{report}");
    let responses = |name: &str| samples.iter().map(|s| s[name]["response"].clone()).collect::<Vec<_>>();
    assert_ne!(responses("ref"), responses("tuned"), "the two policies must differ for this to test anything");
}

#[test]
fn an_os_error_is_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("a.jsonl");
    std::fs::write(&data, "{\"text\": \"A film.\", \"label\": 1}\n").unwrap();
    let err = rlhf_err(&["sft", "--data", path_str(&data), "--out", "/proc/rlhf-cannot-be-here/out"]);
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    let err = rlhf_err(&["sft", "--data", "/nonexistent/rows.jsonl", "--out", path_str(&tmp.path().join("out"))]);
    assert!(err.matches("nonexistent").count() == 1 && err.matches("o such file").count() == 1, "{err}");
}

#[test]
fn trl_datasets_column_flags_and_run_directories_through_the_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let lm = fixture("lm");
    // Preference pairs under other column names, prompts as conversations.
    let prefs = tmp.path().join("prefs.jsonl");
    let rows: Vec<String> = (0..8)
        .map(|i| {
            serde_json::json!({
                "question": [{"role": "user", "content": format!("Was film {i} good?")}],
                "good": [{"role": "assistant", "content": "It was wonderful and moving."}],
                "bad": [{"role": "assistant", "content": "It was dull."}],
            })
            .to_string()
        })
        .collect();
    std::fs::write(&prefs, rows.join("\n")).unwrap();
    let rm = tmp.path().join("rm");
    let reward = |extra: &[&str]| -> (bool, String) {
        let mut args = vec!["reward", "train", "--model", path_str(&lm), "--data", path_str(&prefs), "--format", "trl"];
        args.extend_from_slice(&["--epochs", "1", "--batch-size", "4", "--out", path_str(&rm)]);
        args.extend_from_slice(extra);
        let out = crate::rlhf(&args);
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // TRL's names are the default: these rows have none of them.
    let (ok, err) = reward(&[]);
    assert!(!ok && err.contains("prefs.jsonl:1: chosen: expected a string or a list"), "{err}");
    let columns = ["--prompt-column", "question", "--chosen-column", "good", "--rejected-column", "bad"];
    let (ok, err) = reward(&columns);
    assert!(ok, "{err}");
    assert!(rm.join("model.safetensors").is_file() && rm.join("metrics.jsonl").is_file());
    // The run directory now holds a run: refused, then cleared with --overwrite.
    let (ok, err) = reward(&columns);
    assert!(!ok && err.contains("already holds a run") && err.contains("--overwrite"), "{err}");
    let mut overwrite = columns.to_vec();
    overwrite.push("--overwrite");
    let (ok, err) = reward(&overwrite);
    assert!(ok, "{err}");

    // SFT on conversations and on prompt-completion rows, with a mapped column.
    let chat = tmp.path().join("chat.jsonl");
    let turns = r#"{"dialog": [{"role": "user", "content": "Say something nice."}, {"role": "assistant", "content": "What a lovely film."}]}"#;
    std::fs::write(&chat, [turns; 8].join("\n")).unwrap();
    let sft = tmp.path().join("sft");
    let sft_args = ["sft", "--model", path_str(&lm), "--data", path_str(&chat), "--epochs", "1", "--batch-size", "4"];
    let mut args = sft_args.to_vec();
    args.extend_from_slice(&["--messages-column", "dialog", "--out", path_str(&sft)]);
    rlhf_ok(&args);
    assert!(sft.join("model.safetensors").is_file());

    // PPO refuses a directory that holds a run before loading anything.
    let err = rlhf_err(&[
        "ppo",
        "--local",
        "--model",
        path_str(&lm),
        "--lexicon",
        path_str(&assets().join("imdb-lexicon")),
        "--prompts",
        path_str(&chat),
        "--out",
        path_str(&sft),
    ]);
    assert!(err.contains("already holds a run"), "{err}");

    // Another architecture is named, not a serde error.
    let llama = tmp.path().join("llama");
    std::fs::create_dir_all(&llama).unwrap();
    std::fs::write(llama.join("config.json"), r#"{"model_type": "llama", "hidden_size": 64, "vocab_size": 100}"#)
        .unwrap();
    let err = rlhf_err(&["generate", "--model", path_str(&llama), "--prompt", "hi", "--max-new-tokens", "2"]);
    assert!(err.contains("only GPT-2-family models are supported (got model_type llama)"), "{err}");
}
