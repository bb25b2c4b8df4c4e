//! Preference pairs: TRL's standard and conversational layouts, summarize-from-feedback comparisons, and derived sentiment
//! pairs.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tokenizer::Tokenizer;

use super::messages::{Part, split_shared_turns, text_or_messages};
use super::prompts::clean_review;
use super::rows::{Columns, read_rows};
use super::{DataError, Loaded, OnMalformed, PreferencePair, TextExample};

/// Reads TRL's preference data (JSONL, CSV or parquet; column names from `columns`): `chosen`
/// and `rejected` (strings, or conversations: the assistant's turns), and `prompt` (a string or
/// a conversation, see [`super::messages`]). Without a prompt column, the prompt is implicit, as
/// in TRL: for two conversations, the turns both start with; for strings, the longest common
/// prefix of `chosen` and `rejected` (cut back to a whitespace boundary).
pub fn load_preferences(
    path: &Path,
    columns: &Columns,
    on_malformed: OnMalformed,
) -> Result<Loaded<PreferencePair>, DataError> {
    let named_prompt = columns.prompt_is_named();
    let mut required = vec![columns.chosen.as_str(), columns.rejected.as_str()];
    if named_prompt {
        required.push(&columns.prompt);
    }
    read_rows(path, &required, on_malformed, |v, at| {
        let prompt = match v.get(&columns.prompt) {
            None | Some(Value::Null) if named_prompt => return Err(at.malformed(&columns.prompt, "a prompt")),
            None | Some(Value::Null) => None,
            Some(_) => Some(text_or_messages(v, &columns.prompt, Part::Prompt, at)?),
        };
        // Two whole conversations: split at the turns they share, as TRL does.
        if let (None, Some(Value::Array(chosen)), Some(Value::Array(rejected))) =
            (&prompt, v.get(&columns.chosen), v.get(&columns.rejected))
            && let Some((prompt, chosen, rejected)) =
                split_shared_turns(chosen, rejected, (&columns.chosen, &columns.rejected), at)?
        {
            return Ok(PreferencePair { prompt, chosen, rejected });
        }
        let part = if prompt.is_some() { Part::Completion } else { Part::Whole };
        let side = |field: &str| {
            let text = text_or_messages(v, field, part, at)?;
            if text.trim().is_empty() { Err(at.malformed(field, "a non-empty string")) } else { Ok(text) }
        };
        let (chosen, rejected) = (side(&columns.chosen)?, side(&columns.rejected)?);
        Ok(match prompt {
            Some(prompt) => PreferencePair { prompt, chosen, rejected },
            None => split_implicit_prompt(&chosen, &rejected),
        })
    })
}

pub(super) fn split_implicit_prompt(chosen: &str, rejected: &str) -> PreferencePair {
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

/// Reads OpenAI summarize-from-feedback comparisons (JSONL, or parquet with the same nested
/// fields): the chosen summary is
/// `summaries[choice].text`, the prompt is [`tldr_prompt`] of `info`.
pub fn load_comparisons(path: &Path, on_malformed: OnMalformed) -> Result<Loaded<PreferencePair>, DataError> {
    read_rows(path, &[], on_malformed, |v, at| {
        let info = v.get("info").ok_or_else(|| at.malformed("info", "an object"))?;
        let post = info.get("post").and_then(Value::as_str).ok_or_else(|| at.malformed("info.post", "a string"))?;
        let title = info.get("title").and_then(Value::as_str).unwrap_or_default();
        let subreddit = info.get("subreddit").and_then(Value::as_str).unwrap_or_default();
        let summaries = v.get("summaries").and_then(Value::as_array).filter(|s| s.len() == 2);
        let summaries = summaries.ok_or_else(|| at.malformed("summaries", "an array of two summaries"))?;
        let text = |i: usize| {
            summaries[i]
                .get("text")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| at.malformed(&format!("summaries[{i}].text"), "a string"))
        };
        let choice = v.get("choice").and_then(Value::as_u64).filter(|&c| c < 2);
        let choice = choice.ok_or_else(|| at.malformed("choice", "0 or 1"))? as usize;
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
