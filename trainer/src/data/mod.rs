//! Datasets every command reads: labelled text, preference pairs, and RL prompts.
//!
//! Files: JSONL, CSV and parquet (one file, or a hub shard set `train-0000i-of-0000n.parquet`),
//! each row read as a JSON object, so every layout below works in every format, with
//! TRL's column names by default and each one remappable ([`Columns`]). Plus plain `.txt` lines
//! and the aclImdb folder layout (`<split>/pos/*.txt`, `<split>/neg/*.txt`).
//!
//! Layouts:
//! - labelled text: `{"text", "label"}`;
//! - texts for SFT (TRL's): `text` (language modelling), `prompt` + `completion`, or `messages`
//!   (a conversation, flattened with the plain template of [`messages`]);
//! - preference pairs: TRL's `{"prompt", "chosen", "rejected"}` (strings or conversations; the
//!   prompt may be implicit: the common prefix of chosen and rejected), and OpenAI's
//!   summarize-from-feedback comparisons (`info.post`, `summaries[i].text`, `choice`);
//! - prompts (TRL's prompt-only): `prompt`, a string or a conversation;
//! - derived pairs for sentiment: a positive review chosen over a negative one;
//! - RL prompts: the first N tokens of reviews longer than 200 characters, N ~ U[min, max].
//!
//! A malformed row is an error naming the file, the line and the field, unless the caller asks to
//! skip and count such rows ([`OnMalformed::Skip`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::TokenizerError;

pub mod corpus;
mod lines;
mod messages;
mod pairs;
mod prompts;
mod rows;
#[cfg(test)]
mod tests;
mod text;

pub use lines::MAX_ROW_BYTES;
pub use pairs::{PairTruncation, load_comparisons, load_preferences, sentiment_pairs, tldr_prompt};
pub use prompts::{PromptConfig, clean_review, is_comparisons, load_prompt_texts, load_sft_texts, rl_prompts};
pub use rows::{Columns, PARQUET_STALL, shards};
pub use text::{load_labelled, load_text, load_text_fields, load_unlabelled};

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
    #[error("{path}: missing: the set has {of} shards and each must be present")]
    MissingShard { path: PathBuf, of: usize },
    #[error("{first} and {second} are the same shard of a set; keep one")]
    AmbiguousShard { first: PathBuf, second: PathBuf },
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
