//! Texts, labelled or not, in every format: JSONL, CSV, HF parquet, plain lines and the aclImdb
//! folder layout.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::lines::*;
use super::messages::{Part, text_or_messages};
use super::rows::{Columns, RowAt, is_tabular, read_rows};
use super::{DataError, Loaded, OnMalformed, TextExample};

/// Reads labelled text (columns `text` and `label`): see [`load_labelled`].
pub fn load_text(path: &Path, on_malformed: OnMalformed) -> Result<Loaded<TextExample>, DataError> {
    load_labelled(path, &Columns::default(), on_malformed)
}

/// Reads labelled text: a `.jsonl`, `.csv` or `.parquet` file (or shard set) with the columns
/// `columns.text` and `columns.label`, or an aclImdb folder (`dir/pos`, `dir/neg`, or
/// `dir/train/{pos,neg}`).
pub fn load_labelled(
    path: &Path,
    columns: &Columns,
    on_malformed: OnMalformed,
) -> Result<Loaded<TextExample>, DataError> {
    load_text_fields(path, &columns.text, Some(columns.label.as_str()), on_malformed)
}

/// Texts without labels (for SFT and prompts): every row layout of [`document_text`], plus
/// `.txt` files with one example per line and aclImdb folders. Labels read as 0.
pub fn load_unlabelled(
    path: &Path,
    columns: &Columns,
    on_malformed: OnMalformed,
) -> Result<Loaded<TextExample>, DataError> {
    if path.extension().is_some_and(|e| e == "txt") {
        let mut loaded = Loaded::new();
        for_each_line(path, |number, line| {
            let row =
                line.map(|l| TextExample { text: l.to_string(), label: 0 }).map_err(|_| too_long(path, number, "line"));
            loaded.push(row, on_malformed)
        })?;
        return loaded.finish(path);
    }
    if path.is_dir() {
        return load_aclimdb(path);
    }
    if !is_tabular(path) {
        return Err(DataError::UnknownFormat { path: path.to_path_buf() });
    }
    read_rows(path, &[], on_malformed, |row, at| Ok(TextExample { text: document_text(row, columns, at)?, label: 0 }))
}

/// A row's whole text, in TRL's layouts: the `text` column (language modelling); `prompt` +
/// `completion` (prompt-completion; either may be a conversation); or `messages` (a
/// conversation, flattened by [`super::messages`]).
pub fn document_text(row: &Value, columns: &Columns, at: RowAt) -> Result<String, DataError> {
    if row.get(&columns.text).is_some() {
        string_field(row, &columns.text, at.path, at.line)
    } else if row.get(&columns.prompt).is_some() && row.get(&columns.completion).is_some() {
        let prompt = text_or_messages(row, &columns.prompt, Part::Prompt, at)?;
        Ok(prompt + &text_or_messages(row, &columns.completion, Part::Completion, at)?)
    } else if row.get(&columns.messages).is_some() {
        text_or_messages(row, &columns.messages, Part::Whole, at)
    } else {
        Err(at.malformed(
            &columns.text,
            &format!(
                "a text column ({:?}), a prompt and a completion ({:?}, {:?}), or a conversation ({:?}); \
                 map other names with --text-column, --prompt-column, --completion-column or --messages-column",
                columns.text, columns.prompt, columns.completion, columns.messages
            ),
        ))
    }
}

/// Labelled text with the column names given; `label_field_name: None` reads no label (0).
pub fn load_text_fields(
    path: &Path,
    text_field: &str,
    label_field_name: Option<&str>,
    on_malformed: OnMalformed,
) -> Result<Loaded<TextExample>, DataError> {
    if path.is_dir() {
        return load_aclimdb(path);
    }
    if !is_tabular(path) {
        return Err(DataError::UnknownFormat { path: path.to_path_buf() });
    }
    let required: Vec<&str> = std::iter::once(text_field).chain(label_field_name).collect();
    read_rows(path, &required, on_malformed, |row, at| {
        let text = string_field(row, text_field, at.path, at.line)?;
        let label = match label_field_name {
            Some(field) => label_field(row, field, at.path, at.line)?,
            None => 0,
        };
        Ok(TextExample { text, label })
    })
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
