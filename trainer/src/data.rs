//! Datasets every command reads: labelled text, preference pairs, and RL prompts.
//!
//! Formats:
//! - labelled text: JSONL `{"text", "label"}`, HF `imdb` parquet, CSV with named columns, and the
//!   aclImdb folder layout (`<split>/pos/*.txt`, `<split>/neg/*.txt`);
//! - preference pairs: TRL's JSONL `{"prompt", "chosen", "rejected"}` (the prompt may be implicit:
//!   the common prefix of chosen and rejected), and OpenAI's summarize-from-feedback comparisons
//!   (`info.post`, `summaries[i].text`, `choice`);
//! - derived pairs for sentiment: a positive review chosen over a negative one;
//! - RL prompts: the first N tokens of reviews longer than 200 characters, N ~ U[min, max].
//!
//! A malformed row is an error naming the file, the line and the field, unless the caller asks to
//! skip and count such rows ([`OnMalformed::Skip`]).

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::TokenizerError;
use crate::tokenizer::Tokenizer;
use crate::validate::{Checked, InvalidSetting, at_least_one};

/// Errors reading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}:{line}: {field}: expected {expected}")]
    Malformed { path: PathBuf, line: usize, field: String, expected: String },
    #[error(
        "{path}: cannot tell the format (expected .jsonl, .csv, .parquet, or an aclImdb folder with pos/ and neg/)"
    )]
    UnknownFormat { path: PathBuf },
    #[error("{path}: no usable rows")]
    Empty { path: PathBuf },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// What to do with a malformed row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMalformed {
    /// Stop with an error naming the file, line and field.
    #[default]
    Error,
    /// Skip the row and count it.
    Skip,
}

/// A labelled text (label 1 = positive, 0 = negative for sentiment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextExample {
    pub text: String,
    pub label: i64,
}

/// A preference pair: `chosen` is preferred to `rejected` as a continuation of `prompt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

/// Rows read, plus how many malformed rows were skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<T> {
    pub rows: Vec<T>,
    pub skipped: usize,
}

impl<T> Loaded<T> {
    fn new() -> Self {
        Self { rows: Vec::new(), skipped: 0 }
    }

    /// Keeps a parsed row, or counts or returns its error as `on_malformed` says.
    fn push(&mut self, row: Result<T, DataError>, on_malformed: OnMalformed) -> Result<(), DataError> {
        match (row, on_malformed) {
            (Ok(row), _) => self.rows.push(row),
            (Err(_), OnMalformed::Skip) => self.skipped += 1,
            (Err(e), OnMalformed::Error) => return Err(e),
        }
        Ok(())
    }

    /// Warns about skipped rows; no rows at all is an error.
    fn finish(self, path: &Path) -> Result<Self, DataError> {
        if self.skipped > 0 {
            tracing::warn!(path = %path.display(), skipped = self.skipped, "skipped malformed rows");
        }
        if self.rows.is_empty() {
            return Err(DataError::Empty { path: path.to_path_buf() });
        }
        Ok(self)
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |error| DataError::Io { path: path.to_path_buf(), error }
}

fn malformed(path: &Path, line: usize, field: &str, expected: &str) -> DataError {
    DataError::Malformed { path: path.to_path_buf(), line, field: field.to_string(), expected: expected.to_string() }
}

/// The most bytes one row (a JSONL or text line, a CSV field, a review file) may hold. Longer
/// rows are malformed (skippable with `--skip-malformed`) and are never held in memory whole:
/// tokenising a 50 MB line would take gigabytes.
pub const MAX_ROW_BYTES: usize = 1 << 20;

fn too_long(path: &Path, line: usize, field: &str) -> DataError {
    malformed(path, line, field, &format!("at most {MAX_ROW_BYTES} bytes (MAX_ROW_BYTES)"))
}

/// Calls `each(line_number, line)` for every non-empty line of `path` (split on '\n' only:
/// review texts may hold other Unicode line separators). A line over [`MAX_ROW_BYTES`] is read
/// past, not kept, and passed as `Err(length)`.
fn for_each_line(
    path: &Path,
    mut each: impl FnMut(usize, Result<&str, usize>) -> Result<(), DataError>,
) -> Result<(), DataError> {
    use std::io::{BufRead, Read};
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut reader = std::io::BufReader::new(file);
    let mut buffer = Vec::new();
    let mut number = 0;
    loop {
        buffer.clear();
        number += 1;
        let read =
            reader.by_ref().take(MAX_ROW_BYTES as u64 + 1).read_until(b'\n', &mut buffer).map_err(io_error(path))?;
        if read == 0 {
            return Ok(());
        }
        if buffer.len() > MAX_ROW_BYTES && buffer.last() != Some(&b'\n') {
            // Skip the rest of the line without keeping it.
            let mut length = buffer.len();
            loop {
                let chunk = reader.fill_buf().map_err(io_error(path))?;
                if chunk.is_empty() {
                    break;
                }
                match chunk.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        length += end;
                        reader.consume(end + 1);
                        break;
                    }
                    None => {
                        let n = chunk.len();
                        length += n;
                        reader.consume(n);
                    }
                }
            }
            each(number, Err(length))?;
            continue;
        }
        let line = String::from_utf8_lossy(&buffer);
        let line = line.trim_end_matches(['\n', '\r']);
        if !line.trim().is_empty() {
            each(number, Ok(line))?;
        }
    }
}

/// Parses each non-empty line of a JSONL file with `parse`, honouring `on_malformed`.
fn read_jsonl<T>(
    path: &Path,
    on_malformed: OnMalformed,
    mut parse: impl FnMut(&Value, usize) -> Result<T, DataError>,
) -> Result<Loaded<T>, DataError> {
    let mut loaded = Loaded::new();
    for_each_line(path, |number, line| {
        let row = match line {
            Err(_) => Err(too_long(path, number, "line")),
            Ok(line) => serde_json::from_str::<Value>(line)
                .map_err(|e| malformed(path, number, "line", &format!("a JSON object ({e})")))
                .and_then(|value| parse(&value, number)),
        };
        loaded.push(row, on_malformed)
    })?;
    loaded.finish(path)
}

/// A string field with some non-whitespace text (a preference pair's two sides).
fn non_empty_field(value: &Value, field: &str, path: &Path, line: usize) -> Result<String, DataError> {
    let text = string_field(value, field, path, line)?;
    if text.trim().is_empty() {
        return Err(malformed(path, line, field, "a non-empty string"));
    }
    Ok(text)
}

fn string_field(value: &Value, field: &str, path: &Path, line: usize) -> Result<String, DataError> {
    value.get(field).and_then(Value::as_str).map(str::to_string).ok_or_else(|| malformed(path, line, field, "a string"))
}

/// What a sentiment label may be.
const LABEL_EXPECTED: &str = "a sentiment label: 0 or 1, or neg/pos";

fn label_field(value: &Value, field: &str, path: &Path, line: usize) -> Result<i64, DataError> {
    let label = match value.get(field) {
        Some(Value::Number(n)) => n.as_i64().filter(|l| matches!(l, 0 | 1)),
        Some(Value::Bool(b)) => Some(*b as i64),
        Some(Value::String(s)) => parse_label(s),
        _ => None,
    };
    label.ok_or_else(|| malformed(path, line, field, LABEL_EXPECTED))
}

/// Labels written as text: 0 or 1, or pos/positive/neg/negative.
fn parse_label(text: &str) -> Option<i64> {
    match text.trim().to_ascii_lowercase().as_str() {
        "pos" | "positive" | "1" => Some(1),
        "neg" | "negative" | "0" => Some(0),
        _ => None,
    }
}

/// Reads labelled text: `.jsonl`, `.csv` (columns `text_field`, `label_field`), or an aclImdb
/// folder (`dir/pos`, `dir/neg`, or `dir/<split>/{pos,neg}` with `split` "train").
pub fn load_text(path: &Path, on_malformed: OnMalformed) -> Result<Loaded<TextExample>, DataError> {
    load_text_fields(path, "text", Some("label"), on_malformed)
}

/// Texts without labels (for SFT): the formats of [`load_text`] with the label ignored, plus
/// `.txt` files with one example per line. Labels read as 0.
pub fn load_unlabelled(path: &Path, on_malformed: OnMalformed) -> Result<Loaded<TextExample>, DataError> {
    if path.extension().is_some_and(|e| e == "txt") {
        let mut loaded = Loaded::new();
        for_each_line(path, |number, line| {
            let row =
                line.map(|l| TextExample { text: l.to_string(), label: 0 }).map_err(|_| too_long(path, number, "line"));
            loaded.push(row, on_malformed)
        })?;
        return loaded.finish(path);
    }
    load_text_fields(path, "text", None, on_malformed)
}

/// [`load_text`] with the column names given; `label_field_name: None` reads no label (0).
pub fn load_text_fields(
    path: &Path,
    text_field: &str,
    label_field_name: Option<&str>,
    on_malformed: OnMalformed,
) -> Result<Loaded<TextExample>, DataError> {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    if path.is_dir() {
        return load_aclimdb(path);
    }
    match extension.as_str() {
        "jsonl" | "json" => read_jsonl(path, on_malformed, |v, line| {
            let label = match label_field_name {
                Some(field) => label_field(v, field, path, line)?,
                None => 0,
            };
            Ok(TextExample { text: string_field(v, text_field, path, line)?, label })
        }),
        "csv" => load_csv(path, text_field, label_field_name, on_malformed),
        "parquet" => load_parquet(path, text_field, label_field_name, on_malformed),
        _ => Err(DataError::UnknownFormat { path: path.to_path_buf() }),
    }
}

fn load_csv(
    path: &Path,
    text_field: &str,
    label_field_name: Option<&str>,
    on_malformed: OnMalformed,
) -> Result<Loaded<TextExample>, DataError> {
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| malformed(path, 1, "header", &format!("a CSV header ({e})")))?;
    let headers = reader.headers().map_err(|e| malformed(path, 1, "header", &format!("a CSV header ({e})")))?.clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| malformed(path, 1, name, "a column of that name"))
    };
    let text_col = column(text_field)?;
    let label_col = label_field_name.map(column).transpose()?;
    let mut loaded = Loaded::new();
    for (index, record) in reader.records().enumerate() {
        let line = index + 2;
        let row = record.map_err(|e| malformed(path, line, "record", &format!("a CSV record ({e})"))).and_then(|r| {
            let text = r.get(text_col).ok_or_else(|| malformed(path, line, text_field, "a value"))?;
            if text.len() > MAX_ROW_BYTES {
                return Err(too_long(path, line, text_field));
            }
            let label = match (label_col, label_field_name) {
                (Some(col), Some(name)) => {
                    r.get(col).and_then(parse_label).ok_or_else(|| malformed(path, line, name, LABEL_EXPECTED))?
                }
                _ => 0,
            };
            let text = text.to_string();
            Ok(TextExample { text, label })
        });
        loaded.push(row, on_malformed)?;
    }
    loaded.finish(path)
}

/// Parquet as the Hugging Face hub serves datasets (`imdb`: `text` string, `label` int64). Rows
/// are numbered from 1 in errors.
/// How long the parquet reader may go without yielding a row before the file is refused. The
/// `parquet` crate (60.1) runs on without end on some corrupt files (fuzzing found one: two bytes
/// changed in `fixtures/data/imdb_sample.parquet`, kept as `fixtures/data/corrupt_spins.parquet`,
/// yields rows forever), so rows are read on a thread watched by this deadline, and never more
/// rows than the file's metadata declares.
pub const PARQUET_STALL: std::time::Duration = std::time::Duration::from_secs(10);

fn load_parquet(
    path: &Path,
    text_field: &str,
    label_field_name: Option<&str>,
    on_malformed: OnMalformed,
) -> Result<Loaded<TextExample>, DataError> {
    let (sender, rows) = std::sync::mpsc::sync_channel(256);
    let (owned_path, text_field_owned, label_owned) =
        (path.to_path_buf(), text_field.to_string(), label_field_name.map(str::to_string));
    // On a stall the reader thread is left behind (nothing can stop it); the command fails.
    std::thread::spawn(move || read_parquet_rows(&owned_path, &text_field_owned, label_owned.as_deref(), sender));
    let mut loaded = Loaded::new();
    loop {
        match rows.recv_timeout(PARQUET_STALL) {
            Ok(Ok(None)) => break,
            Ok(Ok(Some(row))) => loaded.push(row, on_malformed)?,
            Ok(Err(fatal)) => return Err(fatal),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // The reader panicked (the parquet crate does on some corrupt files).
                return Err(malformed(
                    path,
                    loaded.rows.len() + loaded.skipped + 1,
                    "file",
                    "a parquet file the reader can decode",
                ));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let seconds = PARQUET_STALL.as_secs();
                let row = loaded.rows.len() + loaded.skipped + 1;
                return Err(malformed(
                    path,
                    row,
                    "file",
                    &format!("a parquet file the reader can get through (no row for {seconds} s)"),
                ));
            }
        }
    }
    loaded.finish(path)
}

/// A parquet row, as `Ok(Some(Ok(row)))` or a malformed row `Ok(Some(Err))`; `Ok(None)` at the
/// end; `Err` when the file cannot be read at all.
type ParquetRow = Result<Option<Result<TextExample, DataError>>, DataError>;

fn read_parquet_rows(
    path: &Path,
    text_field: &str,
    label_field_name: Option<&str>,
    rows: std::sync::mpsc::SyncSender<ParquetRow>,
) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let opened = (|| {
        let file = std::fs::File::open(path).map_err(io_error(path))?;
        let reader = SerializedFileReader::new(file)
            .map_err(|e| malformed(path, 0, "file", &format!("a parquet file ({e})")))?;
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let column = |name: &str| {
            schema
                .columns()
                .iter()
                .position(|c| c.name() == name)
                .ok_or_else(|| malformed(path, 0, name, "a column of that name"))
        };
        let text_col = column(text_field)?;
        let label_col = label_field_name.map(column).transpose()?;
        Ok((reader, text_col, label_col))
    })();
    let (reader, text_col, label_col) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            let _ = rows.send(Err(e));
            return;
        }
    };
    let iter = match reader.get_row_iter(None) {
        Ok(iter) => iter,
        Err(e) => {
            let _ = rows.send(Err(malformed(path, 0, "file", &format!("readable rows ({e})"))));
            return;
        }
    };
    // Corrupt files can make the row iterator run on past the rows the file holds.
    let declared = usize::try_from(reader.metadata().file_metadata().num_rows()).unwrap_or(0);
    for (index, row) in iter.enumerate() {
        let line = index + 1;
        if index >= declared {
            let _ = rows.send(Err(malformed(
                path,
                line,
                "file",
                &format!("no more rows than its metadata declares ({declared})"),
            )));
            return;
        }
        let row = row.map_err(|e| malformed(path, line, "row", &format!("a readable row ({e})"))).and_then(|row| {
            let text = row.get_string(text_col).map_err(|_| malformed(path, line, text_field, "a string"))?;
            if text.len() > MAX_ROW_BYTES {
                return Err(too_long(path, line, text_field));
            }
            let text = text.clone();
            let label = match (label_col, label_field_name) {
                (Some(col), Some(name)) => row
                    .get_long(col)
                    .or_else(|_| row.get_int(col).map(i64::from))
                    .ok()
                    .filter(|l| matches!(l, 0 | 1))
                    .ok_or_else(|| malformed(path, line, name, LABEL_EXPECTED))?,
                _ => 0,
            };
            Ok(TextExample { text, label })
        });
        if rows.send(Ok(Some(row))).is_err() {
            return;
        }
    }
    let _ = rows.send(Ok(None));
}

/// aclImdb layout: `pos/*.txt` and `neg/*.txt` under `dir` (or under `dir/train`).
fn load_aclimdb(dir: &Path) -> Result<Loaded<TextExample>, DataError> {
    let root = if dir.join("pos").is_dir() { dir.to_path_buf() } else { dir.join("train") };
    if !root.join("pos").is_dir() || !root.join("neg").is_dir() {
        return Err(DataError::UnknownFormat { path: dir.to_path_buf() });
    }
    let mut rows = Vec::new();
    for (sub, label) in [("pos", 1), ("neg", 0)] {
        let folder = root.join(sub);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .map_err(io_error(&folder))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        for file in files {
            let size = std::fs::metadata(&file).map_err(io_error(&file))?.len();
            if size > MAX_ROW_BYTES as u64 {
                return Err(too_long(&file, 1, "review"));
            }
            let text = std::fs::read_to_string(&file).map_err(io_error(&file))?;
            rows.push(TextExample { text, label });
        }
    }
    if rows.is_empty() {
        return Err(DataError::Empty { path: dir.to_path_buf() });
    }
    Ok(Loaded { rows, skipped: 0 })
}

/// Reads TRL's preference JSONL. Without a `prompt` field, the prompt is the longest common
/// prefix of `chosen` and `rejected` (cut back to a whitespace boundary), as TRL's implicit prompt.
pub fn load_preferences(path: &Path, on_malformed: OnMalformed) -> Result<Loaded<PreferencePair>, DataError> {
    read_jsonl(path, on_malformed, |v, line| {
        let chosen = non_empty_field(v, "chosen", path, line)?;
        let rejected = non_empty_field(v, "rejected", path, line)?;
        match v.get("prompt") {
            Some(Value::String(prompt)) => Ok(PreferencePair { prompt: prompt.clone(), chosen, rejected }),
            Some(_) => Err(malformed(path, line, "prompt", "a string")),
            None => Ok(split_implicit_prompt(&chosen, &rejected)),
        }
    })
}

fn split_implicit_prompt(chosen: &str, rejected: &str) -> PreferencePair {
    let mut common = chosen.char_indices().zip(rejected.chars()).take_while(|((_, a), b)| a == b).count();
    let chars: Vec<(usize, char)> = chosen.char_indices().collect();
    // Cut back to the last whitespace so the prompt ends on a word boundary.
    while common > 0 && !chars[common - 1].1.is_whitespace() {
        common -= 1;
    }
    let byte = chars.get(common).map(|(i, _)| *i).unwrap_or(chosen.len());
    let rejected_byte = rejected.char_indices().nth(common).map(|(i, _)| i).unwrap_or(rejected.len());
    PreferencePair {
        prompt: chosen[..byte].to_string(),
        chosen: chosen[byte..].to_string(),
        rejected: rejected[rejected_byte..].to_string(),
    }
}

/// The TL;DR prompt of a summarize-from-feedback post (the format of Stiennon et al.).
pub fn tldr_prompt(subreddit: &str, title: &str, post: &str) -> String {
    format!("SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:")
}

/// Reads OpenAI summarize-from-feedback comparisons: the chosen summary is
/// `summaries[choice].text`, the prompt is [`tldr_prompt`] of `info`.
pub fn load_comparisons(path: &Path, on_malformed: OnMalformed) -> Result<Loaded<PreferencePair>, DataError> {
    read_jsonl(path, on_malformed, |v, line| {
        let info = v.get("info").ok_or_else(|| malformed(path, line, "info", "an object"))?;
        let post =
            info.get("post").and_then(Value::as_str).ok_or_else(|| malformed(path, line, "info.post", "a string"))?;
        let title = info.get("title").and_then(Value::as_str).unwrap_or_default();
        let subreddit = info.get("subreddit").and_then(Value::as_str).unwrap_or_default();
        let summaries = v.get("summaries").and_then(Value::as_array).filter(|s| s.len() == 2);
        let summaries = summaries.ok_or_else(|| malformed(path, line, "summaries", "an array of two summaries"))?;
        let text = |i: usize| {
            summaries[i]
                .get("text")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| malformed(path, line, &format!("summaries[{i}].text"), "a string"))
        };
        let choice = v.get("choice").and_then(Value::as_u64).filter(|&c| c < 2);
        let choice = choice.ok_or_else(|| malformed(path, line, "choice", "0 or 1"))? as usize;
        Ok(PreferencePair {
            prompt: tldr_prompt(subreddit, title, post),
            chosen: text(choice)?,
            rejected: text(1 - choice)?,
        })
    })
}

/// How to cut reviews for derived sentiment pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairTruncation {
    /// Keep whole reviews.
    Whole,
    /// Keep the first N tokens of each review.
    Tokens(usize),
}

/// Sentiment pairs (the seeds' recipe): each pair's chosen text is a review with label
/// `preferred_label`, its rejected text one with the other label; empty prompt. Reviews are
/// shuffled with `seed` and paired in order, so the count is that of the smaller class.
pub fn sentiment_pairs(
    examples: &[TextExample],
    preferred_label: i64,
    truncation: PairTruncation,
    tokenizer: &Tokenizer,
    seed: u64,
) -> Result<Vec<PreferencePair>, DataError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut preferred: Vec<&TextExample> = examples.iter().filter(|e| e.label == preferred_label).collect();
    let mut other: Vec<&TextExample> = examples.iter().filter(|e| e.label != preferred_label).collect();
    preferred.shuffle(&mut rng);
    other.shuffle(&mut rng);
    let cut = |text: &str| -> Result<String, DataError> {
        match truncation {
            PairTruncation::Whole => Ok(clean_review(text)),
            PairTruncation::Tokens(n) => Ok(tokenizer.decode(&tokenizer.encode_prefix(&clean_review(text), n)?)?),
        }
    };
    preferred
        .iter()
        .zip(&other)
        .map(|(p, o)| Ok(PreferencePair { prompt: String::new(), chosen: cut(&p.text)?, rejected: cut(&o.text)? }))
        .collect()
}

/// IMDb reviews carry HTML line breaks; they become spaces.
pub fn clean_review(text: &str) -> String {
    text.replace("<br />", " ").replace("<br/>", " ")
}

/// RL prompt settings: the seeds' recipe (reviews longer than `min_chars`; the first N tokens,
/// N uniform in `[min_tokens, max_tokens]`, drawn per sample with `seed`), or with `whole` each
/// text as it is (TL;DR prompts ending in "TL;DR:"), keeping its last `max_tokens` tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptConfig {
    pub min_chars: usize,
    pub min_tokens: usize,
    pub max_tokens: usize,
    pub seed: u64,
    #[serde(default)]
    pub whole: bool,
}

impl PromptConfig {
    pub fn validate(&self) -> Checked {
        at_least_one("max_tokens", self.max_tokens)?;
        if !self.whole {
            at_least_one("min_tokens", self.min_tokens)?;
            if self.min_tokens > self.max_tokens {
                return Err(InvalidSetting::new(
                    "min_tokens",
                    &format!("at most max_tokens ({})", self.max_tokens),
                    self.min_tokens,
                ));
            }
        }
        Ok(())
    }
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self { min_chars: 200, min_tokens: 2, max_tokens: 8, seed: 0, whole: false }
    }
}

/// Whether `path` holds OpenAI summarize-from-feedback comparisons (JSONL rows with `info` and
/// `summaries`), judged by its first row.
pub fn is_comparisons(path: &Path) -> bool {
    use std::io::BufRead;
    if !path.extension().is_some_and(|e| e == "jsonl" || e == "json") {
        return false;
    }
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let first = std::io::BufReader::new(file).lines().map_while(Result::ok).find(|l| !l.trim().is_empty());
    first
        .and_then(|l| serde_json::from_str::<Value>(&l).ok())
        .is_some_and(|v| v.get("info").is_some() && v.get("summaries").is_some())
}

/// Texts to cut RL prompts from: any text dataset of [`load_unlabelled`], or comparisons, whose
/// distinct posts become TL;DR prompts ([`tldr_prompt`]).
pub fn load_prompt_texts(path: &Path, on_malformed: OnMalformed) -> Result<Loaded<TextExample>, DataError> {
    if !is_comparisons(path) {
        return load_unlabelled(path, on_malformed);
    }
    let loaded = load_comparisons(path, on_malformed)?;
    let mut seen = std::collections::HashSet::new();
    let rows = loaded
        .rows
        .into_iter()
        .filter(|p| seen.insert(p.prompt.clone()))
        .map(|p| TextExample { text: p.prompt, label: 0 })
        .collect();
    Ok(Loaded { rows, skipped: loaded.skipped })
}

/// SFT texts: any text dataset of [`load_unlabelled`], or comparisons, where each row gives its
/// TL;DR prompt followed by the human-preferred summary.
pub fn load_sft_texts(path: &Path, on_malformed: OnMalformed) -> Result<Loaded<TextExample>, DataError> {
    if !is_comparisons(path) {
        return load_unlabelled(path, on_malformed);
    }
    let loaded = load_comparisons(path, on_malformed)?;
    let rows =
        loaded.rows.into_iter().map(|p| TextExample { text: format!("{}{}", p.prompt, p.chosen), label: 0 }).collect();
    Ok(Loaded { rows, skipped: loaded.skipped })
}

/// Token-id prompts from reviews.
pub fn rl_prompts(
    examples: &[TextExample],
    tokenizer: &Tokenizer,
    config: &PromptConfig,
) -> Result<Vec<Vec<u32>>, DataError> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut prompts = Vec::new();
    for example in examples.iter().filter(|e| e.text.chars().count() > config.min_chars) {
        let text = clean_review(&example.text);
        // Review prompts are a review's first tokens: never tokenise more than those.
        let ids = if config.whole {
            tokenizer.encode(&text)?
        } else {
            tokenizer.encode_prefix(&text, config.max_tokens.max(config.min_tokens))?
        };
        if config.whole {
            let keep = if config.max_tokens == 0 { ids.len() } else { config.max_tokens.min(ids.len()) };
            if keep > 0 {
                prompts.push(ids[ids.len() - keep..].to_vec());
            }
            continue;
        }
        let n = rng.random_range(config.min_tokens..=config.max_tokens.max(config.min_tokens)).min(ids.len());
        if n > 0 {
            prompts.push(ids[..n].to_vec());
        }
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assets() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/assets")
    }

    fn gpt2_tokenizer() -> Tokenizer {
        Tokenizer::load(&assets().join("gpt2-tokenizer")).unwrap()
    }

    #[test]
    fn imdb_jsonl_loads_balanced() {
        let loaded = load_text(&assets().join("imdb-sentiment/test.jsonl"), OnMalformed::Error).unwrap();
        assert_eq!(loaded.rows.len(), 1000);
        assert_eq!(loaded.rows.iter().filter(|r| r.label == 1).count(), 500);
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
            vec![
                TextExample { text: "Great, really".into(), label: 1 },
                TextExample { text: "Awful".into(), label: 0 }
            ]
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
        assert_eq!(loaded.rows.len(), 500);
        let first = &loaded.rows[0];
        assert!(first.prompt.starts_with("SUBREDDIT: r/") && first.prompt.ends_with("\nTL;DR:"));
        assert_ne!(first.chosen, first.rejected);
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
}
