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
    // A quoted field over two lines: errors name the record's own line.
    std::fs::write(&csv, "text,label\n\"two\nlines\",0\nodd,-1\n").unwrap();
    let err = load_text(&csv, OnMalformed::Error).unwrap_err().to_string();
    assert!(err.contains("labels.csv:4: label"), "{err}");
    let prefs = dir.path().join("prefs.jsonl");
    std::fs::write(&prefs, "{\"prompt\": \"p\", \"chosen\": \"  \", \"rejected\": \"no\"}\n").unwrap();
    let err = load_preferences(&prefs, &Columns::default(), OnMalformed::Error).unwrap_err().to_string();
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
    let loaded = load_unlabelled(&txt, &Columns::default(), OnMalformed::Skip).unwrap();
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
    let loaded = load_preferences(&path, &Columns::default(), OnMalformed::Error).unwrap();
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
    let prompts = load_prompt_texts(&path, &Columns::default(), OnMalformed::Error).unwrap().rows;
    let distinct: std::collections::HashSet<&str> = pairs.iter().map(|p| p.prompt.as_str()).collect();
    assert_eq!(prompts.len(), distinct.len(), "one prompt per distinct post");
    let sft = load_sft_texts(&path, &Columns::default(), OnMalformed::Error).unwrap().rows;
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

/// Writes a parquet file (the hub's layout: UTF-8 string columns, an int64 label) with the
/// `parquet` crate's writer.
fn write_parquet(path: &Path, strings: &[(&str, &[&str])], labels: Option<&[i64]>) {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::writer::SerializedFileWriter;
    let mut fields: Vec<String> =
        strings.iter().map(|(name, _)| format!("REQUIRED BYTE_ARRAY {name} (UTF8);")).collect();
    if labels.is_some() {
        fields.push("REQUIRED INT64 label;".into());
    }
    let schema =
        parquet::schema::parser::parse_message_type(&format!("message rows {{ {} }}", fields.join(" "))).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, std::sync::Arc::new(schema), Default::default()).unwrap();
    let mut group = writer.next_row_group().unwrap();
    for (_, values) in strings {
        let mut column = group.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = values.iter().map(|v| ByteArray::from(*v)).collect();
        column.typed::<ByteArrayType>().write_batch(&values, None, None).unwrap();
        column.close().unwrap();
    }
    if let Some(labels) = labels {
        let mut column = group.next_column().unwrap().unwrap();
        column.typed::<Int64Type>().write_batch(labels, None, None).unwrap();
        column.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

fn texts(loaded: Loaded<TextExample>) -> Vec<String> {
    loaded.rows.into_iter().map(|r| r.text).collect()
}

#[test]
fn prompt_completion_rows_are_sft_texts_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("pc.jsonl");
    std::fs::write(&jsonl, "{\"prompt\": \"The film\", \"completion\": \" was fine.\"}\n").unwrap();
    let csv = dir.path().join("pc.csv");
    std::fs::write(&csv, "prompt,completion\nThe film, was fine.\n").unwrap();
    let parquet = dir.path().join("pc.parquet");
    write_parquet(&parquet, &[("prompt", &["The film"]), ("completion", &[" was fine."])], None);
    for path in [&jsonl, &csv, &parquet] {
        let loaded = load_sft_texts(path, &Columns::default(), OnMalformed::Error).unwrap();
        assert_eq!(texts(loaded), vec!["The film was fine."], "{}", path.display());
    }
    // A row with none of the layouts names what was expected and the flags.
    let other = dir.path().join("other.jsonl");
    std::fs::write(&other, "{\"body\": \"x\"}\n").unwrap();
    let err = load_sft_texts(&other, &Columns::default(), OnMalformed::Error).unwrap_err().to_string();
    assert!(err.contains("other.jsonl:1: text: expected a text column") && err.contains("--text-column"), "{err}");
}

#[test]
fn conversations_are_flattened_with_the_documented_template() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.jsonl");
    let rows = [
        r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Good film?"}, {"role": "assistant", "content": "Yes."}]}"#,
        r#"{"prompt": [{"role": "user", "content": "Good film?"}], "completion": [{"role": "assistant", "content": "Yes."}]}"#,
    ];
    std::fs::write(&path, rows.join("\n")).unwrap();
    let loaded = texts(load_sft_texts(&path, &Columns::default(), OnMalformed::Error).unwrap());
    assert_eq!(loaded[0], "System: Be brief.\nUser: Good film?\nAssistant: Yes.\n");
    // Prompt + completion is the text of the whole conversation.
    assert_eq!(loaded[1], "User: Good film?\nAssistant: Yes.\n");
    // A conversational prompt ends where the assistant's turn begins; a conversation without a
    // prompt column is a text to cut prompts from, like any text.
    let prompts = texts(load_prompt_texts(&path, &Columns::default(), OnMalformed::Error).unwrap());
    assert_eq!(prompts, vec![loaded[0].as_str(), "User: Good film?\nAssistant:"]);

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 3}]}"#)
        .unwrap();
    let err = load_sft_texts(&bad, &Columns::default(), OnMalformed::Error).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl:1: messages[1].content: expected a string"), "{err}");
}

#[test]
fn prompt_only_rows_are_prompts_and_text_rows_still_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompts.jsonl");
    std::fs::write(&path, "{\"prompt\": \"Write a review:\"}\n{\"text\": \"A review to cut.\"}\n").unwrap();
    let prompts = texts(load_prompt_texts(&path, &Columns::default(), OnMalformed::Error).unwrap());
    assert_eq!(prompts, vec!["Write a review:", "A review to cut."]);
}

#[test]
fn conversational_and_parquet_preference_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat_prefs.jsonl");
    let rows = [
        r#"{"prompt": [{"role": "user", "content": "Good film?"}], "chosen": [{"role": "assistant", "content": "Yes!"}], "rejected": [{"role": "assistant", "content": "No."}]}"#,
        r#"{"chosen": [{"role": "user", "content": "Good film?"}, {"role": "assistant", "content": "Yes!"}], "rejected": [{"role": "user", "content": "Good film?"}, {"role": "assistant", "content": "No."}]}"#,
    ];
    std::fs::write(&path, rows.join("\n")).unwrap();
    let pairs = load_preferences(&path, &Columns::default(), OnMalformed::Error).unwrap().rows;
    let want = PreferencePair {
        prompt: "User: Good film?\nAssistant:".into(),
        chosen: " Yes!\n".into(),
        rejected: " No.\n".into(),
    };
    assert_eq!(pairs[0], want);
    // An implicit prompt: the turns both conversations share, split as the explicit one.
    assert_eq!(pairs[1], want);

    // `--format trl` on a hub dataset reads its parquet.
    let parquet = dir.path().join("train-00000-of-00001.parquet");
    write_parquet(&parquet, &[("prompt", &["Q:"]), ("chosen", &[" yes"]), ("rejected", &[" no"])], None);
    let pairs = load_preferences(&parquet, &Columns::default(), OnMalformed::Error).unwrap().rows;
    assert_eq!(pairs, vec![PreferencePair { prompt: "Q:".into(), chosen: " yes".into(), rejected: " no".into() }]);
    write_parquet(&parquet, &[("prompt", &["Q:"]), ("chosen", &[" yes"])], None);
    let err = load_preferences(&parquet, &Columns::default(), OnMalformed::Skip).unwrap_err().to_string();
    assert!(err.contains("train-00000-of-00001.parquet:0: rejected: expected a column of that name"), "{err}");
}

#[test]
fn column_names_can_be_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let columns = Columns {
        text: "review".into(),
        label: "stars".into(),
        prompt: "question".into(),
        chosen: "good".into(),
        rejected: "bad".into(),
        ..Columns::default()
    };
    let labelled = dir.path().join("reviews.csv");
    std::fs::write(&labelled, "review,stars\nLoved it,pos\nHated it,neg\n").unwrap();
    let rows = load_labelled(&labelled, &columns, OnMalformed::Error).unwrap().rows;
    assert_eq!(rows[1], TextExample { text: "Hated it".into(), label: 0 });
    let err = load_labelled(&labelled, &Columns::default(), OnMalformed::Error).unwrap_err().to_string();
    assert!(err.contains("reviews.csv:1: text: expected a column of that name"), "{err}");

    let prefs = dir.path().join("prefs.jsonl");
    std::fs::write(&prefs, "{\"question\": \"Q:\", \"good\": \" yes\", \"bad\": \" no\"}\n").unwrap();
    let pairs = load_preferences(&prefs, &columns, OnMalformed::Error).unwrap().rows;
    assert_eq!(pairs[0], PreferencePair { prompt: "Q:".into(), chosen: " yes".into(), rejected: " no".into() });
    let err = load_preferences(&prefs, &Columns::default(), OnMalformed::Error).unwrap_err().to_string();
    assert!(err.contains("prefs.jsonl:1: chosen: expected a string or a list"), "{err}");
    // A prompt column named by the user must be there, not silently replaced by an implicit one.
    let misspelt = Columns { prompt: "questoin".into(), ..columns.clone() };
    let err = load_preferences(&prefs, &misspelt, OnMalformed::Error).unwrap_err().to_string();
    assert!(err.contains("prefs.jsonl:1: questoin: expected a prompt"), "{err}");

    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"question\": \"Why?\"}\n").unwrap();
    assert_eq!(texts(load_prompt_texts(&prompts, &columns, OnMalformed::Error).unwrap()), vec!["Why?"]);
    let sft = dir.path().join("sft.jsonl");
    std::fs::write(&sft, "{\"review\": \"Fine.\"}\n").unwrap();
    assert_eq!(texts(load_sft_texts(&sft, &columns, OnMalformed::Error).unwrap()), vec!["Fine."]);
}

#[test]
fn a_binary_parquet_column_is_no_text() {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::writer::SerializedFileWriter;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("with_images.parquet");
    // A hub layout with an image column: BYTE_ARRAY without the UTF8 annotation.
    let schema = "message rows { REQUIRED BYTE_ARRAY text (UTF8); REQUIRED BYTE_ARRAY image; REQUIRED INT64 label; }";
    let schema = std::sync::Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
    let mut writer =
        SerializedFileWriter::new(std::fs::File::create(&path).unwrap(), schema, Default::default()).unwrap();
    let mut group = writer.next_row_group().unwrap();
    for values in [
        [ByteArray::from("A fine film."), ByteArray::from("A dull one.")],
        [ByteArray::from(vec![0x89, b'P', b'N', b'G']), ByteArray::from(vec![0xff, 0xd8, 0xff])],
    ] {
        let mut column = group.next_column().unwrap().unwrap();
        column.typed::<ByteArrayType>().write_batch(&values, None, None).unwrap();
        column.close().unwrap();
    }
    let mut column = group.next_column().unwrap().unwrap();
    column.typed::<Int64Type>().write_batch(&[1, 0], None, None).unwrap();
    column.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();

    // The binary column does not stop the text from loading...
    let rows = load_labelled(&path, &Columns::default(), OnMalformed::Error).unwrap().rows;
    assert_eq!(rows[1], TextExample { text: "A dull one.".into(), label: 0 });
    // ...and is never read as text (no base64 of the image bytes).
    let images = Columns { text: "image".into(), ..Columns::default() };
    let err = load_labelled(&path, &images, OnMalformed::Error).unwrap_err().to_string();
    assert!(err.contains("with_images.parquet:1: image: expected"), "{err}");
}

#[test]
fn every_shard_of_a_hub_set_is_read() {
    let dir = tempfile::tempdir().unwrap();
    // The hub's names, one with a fingerprint as older uploads have.
    let first = dir.path().join("train-00000-of-00003.parquet");
    write_parquet(&first, &[("text", &["one", "two"])], Some(&[1, 0]));
    write_parquet(&dir.path().join("train-00001-of-00003-5f3a9c.parquet"), &[("text", &["three"])], Some(&[1]));
    write_parquet(&dir.path().join("test-00000-of-00001.parquet"), &[("text", &["held out"])], Some(&[0]));
    let third = dir.path().join("train-00002-of-00003.parquet");
    let err = load_text(&first, OnMalformed::Error).unwrap_err().to_string();
    assert!(err.contains("train-00002-of-00003.parquet: missing: the set has 3 shards"), "{err}");
    write_parquet(&third, &[("text", &["four"])], Some(&[0]));
    let rows = load_text(&first, OnMalformed::Error).unwrap().rows;
    assert_eq!(rows.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(), vec!["one", "two", "three", "four"]);
    assert_eq!(rows.iter().map(|r| r.label).collect::<Vec<_>>(), vec![1, 0, 1, 0]);
    // Any shard names the set; a file outside one is read alone.
    assert_eq!(load_text(&third, OnMalformed::Error).unwrap().rows.len(), 4);
    assert_eq!(shards(&dir.path().join("test-00000-of-00001.parquet")).unwrap().len(), 1);
    assert_eq!(shards(Path::new("train.parquet")).unwrap(), vec![PathBuf::from("train.parquet")]);
}
