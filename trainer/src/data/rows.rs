//! Rows of any tabular dataset file as JSON objects, so every format (JSONL, CSV, HF parquet)
//! offers every column layout, and the column names a user maps.
//!
//! - `.jsonl` / `.json`: one object per non-empty line;
//! - `.csv`: the header names the fields, every value is a string;
//! - `.parquet` (as the Hugging Face hub stores datasets): nested lists and structs (a
//!   conversation's `messages`) become JSON arrays and objects.
//!
//! A file named as one shard of a set (`train-00000-of-00003.parquet`, the hub's naming) brings
//! the whole set, in shard order; a missing shard is an error naming it. (To read one shard
//! alone, give it another name.)
//!
//! A conversation is a list, so it needs JSONL or parquet: a CSV cell is always a string, read
//! as text. A parquet binary (not UTF-8) column reads as no value, so a text field in one is an
//! error, as the old typed reader had it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::lines::*;
use super::{DataError, Loaded, OnMalformed};

/// Which column holds what: TRL's names by default, each one remappable (`--text-column`,
/// `--label-column`, `--prompt-column`, `--chosen-column`, `--rejected-column`,
/// `--completion-column`, `--messages-column`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Columns {
    pub text: String,
    pub label: String,
    pub prompt: String,
    pub completion: String,
    pub chosen: String,
    pub rejected: String,
    pub messages: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            text: "text".into(),
            label: "label".into(),
            prompt: "prompt".into(),
            completion: "completion".into(),
            chosen: "chosen".into(),
            rejected: "rejected".into(),
            messages: "messages".into(),
        }
    }
}

impl Columns {
    /// Whether the user renamed the prompt column: such a column must then be there, since a
    /// misspelt name would otherwise fall back unnoticed to an implicit prompt or a whole text.
    pub(super) fn prompt_is_named(&self) -> bool {
        self.prompt != Columns::default().prompt
    }
}

/// Where a row came from, for errors.
#[derive(Debug, Clone, Copy)]
pub struct RowAt<'a> {
    pub path: &'a Path,
    pub line: usize,
}

impl RowAt<'_> {
    pub(super) fn malformed(&self, field: &str, expected: &str) -> DataError {
        malformed(self.path, self.line, field, expected)
    }
}

/// Whether `path` is read by [`read_rows`].
pub(super) fn is_tabular(path: &Path) -> bool {
    matches!(extension(path).as_str(), "jsonl" | "json" | "csv" | "parquet")
}

fn extension(path: &Path) -> String {
    path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase()
}

/// Parses every row of `path` (and of its sibling shards) with `parse`, honouring `on_malformed`.
/// A CSV or parquet file without one of the `required` columns is refused whole (a JSONL row
/// lacking one is a malformed row).
pub(super) fn read_rows<T>(
    path: &Path,
    required: &[&str],
    on_malformed: OnMalformed,
    mut parse: impl FnMut(&Value, RowAt) -> Result<T, DataError>,
) -> Result<Loaded<T>, DataError> {
    let mut loaded = Loaded::new();
    for shard in shards(path)? {
        let mut each = |line: usize, row: Result<Value, DataError>| {
            let row = row.and_then(|value| parse(&value, RowAt { path: &shard, line }));
            loaded.push(row, on_malformed)
        };
        match extension(&shard).as_str() {
            "jsonl" | "json" => jsonl_rows(&shard, &mut each)?,
            "csv" => csv_rows(&shard, required, &mut each)?,
            "parquet" => parquet_rows(&shard, required, &mut each)?,
            _ => return Err(DataError::UnknownFormat { path: shard }),
        }
    }
    loaded.finish(path)
}

/// `path`, or every shard of the set it belongs to: `<stem>-00001-of-00003.<ext>`, the hub's
/// naming, where older uploads add a fingerprint (`<stem>-00001-of-00003-<hash>.<ext>`).
pub fn shards(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    let Some(set) = ShardName::parse(path) else {
        return Ok(vec![path.to_path_buf()]);
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // The set's shards in the folder, by index.
    let mut siblings: Vec<(usize, String)> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let shard = ShardName::parse(Path::new(&name))?;
            (shard.stem == set.stem && shard.of == set.of && shard.ext == set.ext).then_some((shard.index, name))
        })
        .collect();
    siblings.sort();
    (0..set.of)
        .map(|index| {
            let found: Vec<&String> = siblings.iter().filter(|(i, _)| *i == index).map(|(_, name)| name).collect();
            match found.as_slice() {
                [one] => Ok(dir.join(one)),
                [] => Err(DataError::MissingShard {
                    path: dir.join(format!("{}-{index:05}-of-{:05}.{}", set.stem, set.of, set.ext)),
                    of: set.of,
                }),
                [first, second, ..] => {
                    Err(DataError::AmbiguousShard { first: dir.join(first), second: dir.join(second) })
                }
            }
        })
        .collect()
}

/// The parts of a shard's file name.
#[derive(Debug, PartialEq)]
struct ShardName {
    stem: String,
    index: usize,
    of: usize,
    ext: String,
}

impl ShardName {
    fn parse(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?;
        let (rest, tail) = name.rsplit_once("-of-")?;
        let (stem, index) = rest.rsplit_once('-')?;
        let (of, after) = (tail.get(..5)?, tail.get(5..)?);
        let ext = match after.strip_prefix('.') {
            Some(ext) => ext,
            None => after.strip_prefix('-')?.split_once('.')?.1,
        };
        let number =
            |s: &str| (s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten();
        let (index, of): (usize, usize) = (number(index)?, number(of)?);
        (!stem.is_empty() && index < of).then(|| Self { stem: stem.into(), index, of, ext: ext.into() })
    }
}

type Each<'a> = dyn FnMut(usize, Result<Value, DataError>) -> Result<(), DataError> + 'a;

fn jsonl_rows(path: &Path, each: &mut Each) -> Result<(), DataError> {
    for_each_line(path, |number, line| {
        let row = match line {
            Err(_) => Err(too_long(path, number, "line")),
            Ok(line) => match serde_json::from_str::<Value>(line) {
                Ok(value @ Value::Object(_)) => Ok(value),
                Ok(_) => Err(malformed(path, number, "line", "a JSON object")),
                Err(e) => Err(malformed(path, number, "line", &format!("a JSON object ({e})"))),
            },
        };
        each(number, row)
    })
}

/// A column `required` that is not among `names` (line 1 is the CSV header; 0 the parquet schema).
fn check_columns<'a>(
    path: &Path,
    line: usize,
    names: impl Iterator<Item = &'a str> + Clone,
    required: &[&str],
) -> Result<(), DataError> {
    match required.iter().find(|r| !names.clone().any(|n| n == **r)) {
        Some(missing) => Err(malformed(path, line, missing, "a column of that name")),
        None => Ok(()),
    }
}

fn csv_rows(path: &Path, required: &[&str], each: &mut Each) -> Result<(), DataError> {
    let header_error = |e: csv::Error| malformed(path, 1, "header", &format!("a CSV header ({e})"));
    let mut reader = csv::Reader::from_path(path).map_err(header_error)?;
    let headers = reader.headers().map_err(header_error)?.clone();
    check_columns(path, 1, headers.iter(), required)?;
    let mut line = 1;
    for record in reader.records() {
        // The record's own first line: quoted fields may span several.
        line = match &record {
            Ok(r) => r.position().map_or(line + 1, |p| p.line() as usize),
            Err(e) => e.position().map_or(line + 1, |p| p.line() as usize),
        };
        let row = record.map_err(|e| malformed(path, line, "record", &format!("a CSV record ({e})"))).and_then(|r| {
            let mut object = Map::new();
            for (name, value) in headers.iter().zip(r.iter()) {
                if value.len() > MAX_ROW_BYTES {
                    return Err(too_long(path, line, name));
                }
                // A repeated column name: the first column of that name counts.
                object.entry(name.to_string()).or_insert_with(|| Value::String(value.to_string()));
            }
            Ok(Value::Object(object))
        });
        each(line, row)?;
    }
    Ok(())
}

/// How long the parquet reader may go without yielding a row before the file is refused. The
/// `parquet` crate (60.1) runs on without end on some corrupt files (fuzzing found one: two bytes
/// changed in `fixtures/data/imdb_sample.parquet`, kept as `fixtures/data/corrupt_spins.parquet`,
/// yields rows forever), so rows are read on a thread watched by this deadline, and never more
/// rows than the file's metadata declares.
pub const PARQUET_STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// A parquet row (`Ok(Some(Ok(row)))`, or a malformed one), `Ok(None)` at the end, or `Err` when
/// the file cannot be read at all.
type ParquetRow = Result<Option<Result<Value, DataError>>, DataError>;

fn parquet_rows(path: &Path, required: &[&str], each: &mut Each) -> Result<(), DataError> {
    let (sender, rows) = std::sync::mpsc::sync_channel(256);
    let (owned, required) = (path.to_path_buf(), required.iter().map(|r| r.to_string()).collect());
    // On a stall the reader thread is left behind (nothing can stop it); the command fails.
    std::thread::spawn(move || read_parquet(&owned, required, sender));
    let mut line = 0;
    loop {
        line += 1;
        match rows.recv_timeout(PARQUET_STALL) {
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(row))) => each(line, row)?,
            Ok(Err(fatal)) => return Err(fatal),
            // The reader panicked (the parquet crate does on some corrupt files).
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(malformed(path, line, "file", "a parquet file the reader can decode"));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let seconds = PARQUET_STALL.as_secs();
                let expected = format!("a parquet file the reader can get through (no row for {seconds} s)");
                return Err(malformed(path, line, "file", &expected));
            }
        }
    }
}

fn read_parquet(path: &Path, required: Vec<String>, rows: std::sync::mpsc::SyncSender<ParquetRow>) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let opened = std::fs::File::open(path)
        .map_err(io_error(path))
        .and_then(|file| {
            SerializedFileReader::new(file).map_err(|e| malformed(path, 0, "file", &format!("a parquet file ({e})")))
        })
        .and_then(|reader| {
            let metadata = reader.metadata().file_metadata();
            let names = metadata.schema_descr().root_schema().get_fields().iter().map(|f| f.name());
            let required: Vec<&str> = required.iter().map(String::as_str).collect();
            check_columns(path, 0, names, &required)?;
            let declared = usize::try_from(metadata.num_rows()).unwrap_or(0);
            Ok((reader.into_iter(), declared))
        });
    let (iter, declared) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            let _ = rows.send(Err(e));
            return;
        }
    };
    for (index, row) in iter.enumerate() {
        let line = index + 1;
        // Corrupt files can make the row iterator run on past the rows the file holds.
        if index >= declared {
            let expected = format!("no more rows than its metadata declares ({declared})");
            let _ = rows.send(Err(malformed(path, line, "file", &expected)));
            return;
        }
        let row = row.map_err(|e| malformed(path, line, "row", &format!("a readable row ({e})"))).and_then(|row| {
            let mut object = Map::new();
            for (name, field) in row.get_column_iter() {
                // Binary data is no text (to_json_value would give base64).
                let value = match field {
                    parquet::record::Field::Bytes(_) => Value::Null,
                    other => other.to_json_value(),
                };
                if text_bytes(&value) > MAX_ROW_BYTES {
                    return Err(too_long(path, line, name));
                }
                object.entry(name.clone()).or_insert(value);
            }
            Ok(Value::Object(object))
        });
        if rows.send(Ok(Some(row))).is_err() {
            return;
        }
    }
    let _ = rows.send(Ok(None));
}

/// The bytes of text a JSON value holds.
fn text_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(text_bytes).sum(),
        Value::Object(fields) => fields.iter().map(|(k, v)| k.len() + text_bytes(v)).sum(),
        _ => 0,
    }
}
