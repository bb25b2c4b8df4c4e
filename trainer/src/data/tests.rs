use super::*;
use crate::Tokenizer;
use crate::testutil::assets;

fn gpt2_tokenizer() -> Tokenizer {
    Tokenizer::load(&assets().join("gpt2-tokenizer")).unwrap()
}

#[test]
fn imdb_jsonl_loads_balanced() {
    // The committed slice: the first 150 reviews of each label of the 1,000-review test split.
    let loaded = load_text(&assets().join("imdb-sentiment/test.jsonl"), OnMalformed::Error).unwrap();
    assert_eq!(loaded.rows.len(), 300);
    assert_eq!(loaded.rows.iter().filter(|r| r.label == 1).count(), 150);
}

#[test]
fn malformed_rows_are_named_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, "{\"text\": \"good\", \"label\": 1}\n{\"text\": 3, \"label\": 0}\nnot json\n").unwrap();
    let err = load_text(&path, OnMalformed::Error).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl:2: text: expected a string"), "{err}");
    let loaded = load_text(&path, OnMalformed::Skip).unwrap();
    assert_eq!((loaded.rows.len(), loaded.skipped), (1, 2));
}

#[test]
fn labels_other_than_0_and_1_and_empty_pair_sides_are_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels.jsonl");
    std::fs::write(&path, "{\"text\": \"good\", \"label\": 1}\n{\"text\": \"odd\", \"label\": 2}\n").unwrap();
    let err = load_text(&path, OnMalformed::Error).unwrap_err().to_string();
    assert!(err.contains("labels.jsonl:2: label: expected a sentiment label: 0 or 1"), "{err}");
    let csv = dir.path().join("labels.csv");
    std::fs::write(&csv, "text,label\nfine,0\nodd,-1\n").unwrap();
    let err = load_text(&csv, OnMalformed::Error).unwrap_err().to_string();
    assert!(err.contains("labels.csv:3: label"), "{err}");
    let prefs = dir.path().join("prefs.jsonl");
    std::fs::write(&prefs, "{\"prompt\": \"p\", \"chosen\": \"  \", \"rejected\": \"no\"}\n").unwrap();
    let err = load_preferences(&prefs, OnMalformed::Error).unwrap_err().to_string();
    assert!(err.contains("prefs.jsonl:1: chosen: expected a non-empty string"), "{err}");
}

#[test]
fn a_row_over_the_size_cap_is_malformed_and_never_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.jsonl");
    let huge = "x".repeat(MAX_ROW_BYTES + 10);
    let text = format!(
        "{{\"text\": \"ok\", \"label\": 1}}\n{{\"text\": \"{huge}\", \"label\": 0}}\n{{\"text\": \"ok too\", \"label\": 0}}\n"
    );
    std::fs::write(&path, text).unwrap();
    let err = load_text(&path, OnMalformed::Error).unwrap_err().to_string();
    assert!(err.contains("huge.jsonl:2: line: expected at most 1048576 bytes"), "{err}");
    let loaded = load_text(&path, OnMalformed::Skip).unwrap();
    assert_eq!(loaded.rows.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(), vec!["ok", "ok too"]);
    assert_eq!(loaded.skipped, 1);
    let txt = dir.path().join("huge.txt");
    std::fs::write(&txt, format!("first\n{huge}\nlast")).unwrap();
    let loaded = load_unlabelled(&txt, OnMalformed::Skip).unwrap();
    assert_eq!(loaded.rows.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(), vec!["first", "last"]);
}

#[test]
fn csv_and_aclimdb_layouts_load() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("reviews.csv");
    std::fs::write(&csv, "review,sentiment\n\"Great, really\",positive\nAwful,negative\n").unwrap();
    let loaded = load_text_fields(&csv, "review", Some("sentiment"), OnMalformed::Error).unwrap();
    assert_eq!(
        loaded.rows,
        vec![TextExample { text: "Great, really".into(), label: 1 }, TextExample { text: "Awful".into(), label: 0 }]
    );
    let err = load_text(&csv, OnMalformed::Error).unwrap_err().to_string();
    assert!(err.contains("reviews.csv:1: text: expected a column"), "{err}");

    let acl = dir.path().join("aclImdb");
    for (sub, text) in [("train/pos", "loved it"), ("train/neg", "hated it")] {
        std::fs::create_dir_all(acl.join(sub)).unwrap();
        std::fs::write(acl.join(sub).join("0_9.txt"), text).unwrap();
    }
    let loaded = load_text(&acl, OnMalformed::Error).unwrap();
    assert_eq!(loaded.rows.len(), 2);
    assert_eq!(loaded.rows[0], TextExample { text: "loved it".into(), label: 1 });
}

#[test]
fn a_parquet_file_whose_reader_runs_on_is_refused_in_bounded_time() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/data/corrupt_spins.parquet");
    let started = std::time::Instant::now();
    let err = load_text(&path, OnMalformed::Skip).unwrap_err().to_string();
    assert!(started.elapsed() < PARQUET_STALL * 2, "took {:?}", started.elapsed());
    assert!(err.contains("corrupt_spins.parquet") && err.contains("metadata declares (8)"), "{err}");
}

#[test]
fn hf_imdb_parquet_loads_like_the_jsonl() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/data/imdb_sample.parquet");
    let parquet = load_text(&path, OnMalformed::Error).unwrap().rows;
    let jsonl = load_text(&assets().join("imdb-sentiment/test.jsonl"), OnMalformed::Error).unwrap().rows;
    assert_eq!(parquet, jsonl[..8]);
    let err = load_text_fields(&path, "review", None, OnMalformed::Error).unwrap_err().to_string();
    assert!(err.contains("imdb_sample.parquet") && err.contains("review"), "{err}");
}

#[test]
fn preference_pairs_with_explicit_and_implicit_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prefs.jsonl");
    std::fs::write(
        &path,
        "{\"prompt\": \"Q: hi\", \"chosen\": \" hello\", \"rejected\": \" go away\"}\n{\"chosen\": \"The film was great\", \"rejected\": \"The film was bad\"}\n",
    )
    .unwrap();
    let loaded = load_preferences(&path, OnMalformed::Error).unwrap();
    assert_eq!(loaded.rows[0].prompt, "Q: hi");
    assert_eq!(
        loaded.rows[1],
        PreferencePair { prompt: "The film was ".into(), chosen: "great".into(), rejected: "bad".into() }
    );
}

#[test]
fn tldr_comparisons_load_with_the_chosen_summary() {
    let loaded =
        load_comparisons(&assets().join("tldr-comparisons/comparisons_batch13_first500.jsonl"), OnMalformed::Error)
            .unwrap();
    assert_eq!(loaded.rows.len(), 100, "the committed slice keeps the first 100 comparisons");
    let first = &loaded.rows[0];
    assert!(first.prompt.starts_with("SUBREDDIT: r/") && first.prompt.ends_with("\nTL;DR:"));
    assert_ne!(first.chosen, first.rejected);
    // Against the raw lines: chosen is `summaries[choice].text`, rejected the other one.
    let text = std::fs::read_to_string(assets().join("tldr-comparisons/comparisons_batch13_first500.jsonl")).unwrap();
    let mut by_choice = [0, 0];
    for (line, row) in text.lines().zip(&loaded.rows) {
        let raw: serde_json::Value = serde_json::from_str(line).unwrap();
        let choice = raw["choice"].as_u64().unwrap() as usize;
        let summary = |i: usize| raw["summaries"][i]["text"].as_str().unwrap().to_string();
        assert_eq!((&row.chosen, &row.rejected), (&summary(choice), &summary(1 - choice)));
        by_choice[choice] += 1;
    }
    assert!(by_choice[0] > 0 && by_choice[1] > 0, "both choices occur: {by_choice:?}");
}

#[test]
fn comparisons_give_tldr_prompts_and_sft_texts() {
    let path = assets().join("tldr-comparisons/comparisons_batch13_first500.jsonl");
    assert!(is_comparisons(&path));
    assert!(!is_comparisons(&assets().join("imdb-sentiment/test.jsonl")));
    let pairs = load_comparisons(&path, OnMalformed::Error).unwrap().rows;
    let prompts = load_prompt_texts(&path, OnMalformed::Error).unwrap().rows;
    let distinct: std::collections::HashSet<&str> = pairs.iter().map(|p| p.prompt.as_str()).collect();
    assert_eq!(prompts.len(), distinct.len(), "one prompt per distinct post");
    let sft = load_sft_texts(&path, OnMalformed::Error).unwrap().rows;
    assert_eq!(sft[0].text, format!("{}{}", pairs[0].prompt, pairs[0].chosen));

    // Whole prompts keep their end, so every prompt still asks for the summary.
    let tokenizer = gpt2_tokenizer();
    let config = PromptConfig { min_chars: 0, max_tokens: 64, whole: true, ..Default::default() };
    let ids = rl_prompts(&prompts[..20], &tokenizer, &config).unwrap();
    let tldr = tokenizer.encode("\nTL;DR:").unwrap();
    assert_eq!(ids.len(), 20);
    assert!(ids.iter().all(|p| p.len() <= 64 && p.ends_with(&tldr)));
}

#[test]
fn sentiment_pairs_and_prompts_follow_the_recipe() {
    let loaded = load_text(&assets().join("imdb-sentiment/test.jsonl"), OnMalformed::Error).unwrap();
    let tokenizer = gpt2_tokenizer();
    let pairs = sentiment_pairs(&loaded.rows[..100], 1, PairTruncation::Tokens(16), &tokenizer, 0).unwrap();
    assert!(pairs.len() >= 40, "{}", pairs.len());
    assert!(pairs.iter().all(|p| tokenizer.encode(&p.chosen).unwrap().len() <= 17));
    let config = PromptConfig::default();
    let prompts = rl_prompts(&loaded.rows[..50], &tokenizer, &config).unwrap();
    assert!(!prompts.is_empty() && prompts.iter().all(|p| (2..=8).contains(&p.len())));
    assert_eq!(prompts, rl_prompts(&loaded.rows[..50], &tokenizer, &config).unwrap());
    let lengths: std::collections::BTreeSet<usize> = prompts.iter().map(Vec::len).collect();
    assert!(lengths.len() > 3, "lengths should vary: {lengths:?}");
}
