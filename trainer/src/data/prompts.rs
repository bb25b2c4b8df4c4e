//! RL prompts and SFT texts: which texts a stage reads, and how prompts are cut from them.

use std::path::Path;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tokenizer::Tokenizer;
use crate::validate::{Checked, InvalidSetting, at_least_one};

use super::messages::{Part, text_or_messages};
use super::pairs::*;
use super::rows::{Columns, is_tabular, read_rows};
use super::text::*;
use super::{DataError, Loaded, OnMalformed, TextExample};

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

crate::impl_validate!(PromptConfig);

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

/// Texts to cut RL prompts from: TRL's prompt-only rows (a `prompt` column, a string or a
/// conversation ending in `Assistant:`), any text dataset of [`load_unlabelled`], or
/// comparisons, whose distinct posts become TL;DR prompts ([`tldr_prompt`]).
pub fn load_prompt_texts(
    path: &Path,
    columns: &Columns,
    on_malformed: OnMalformed,
) -> Result<Loaded<TextExample>, DataError> {
    if is_comparisons(path) {
        let loaded = load_comparisons(path, on_malformed)?;
        let mut seen = std::collections::HashSet::new();
        let rows = loaded
            .rows
            .into_iter()
            .filter(|p| seen.insert(p.prompt.clone()))
            .map(|p| TextExample { text: p.prompt, label: 0 })
            .collect();
        return Ok(Loaded { rows, skipped: loaded.skipped });
    }
    if !is_tabular(path) {
        return load_unlabelled(path, columns, on_malformed);
    }
    let named_prompt = columns.prompt_is_named();
    let required: &[&str] = if named_prompt { &[&columns.prompt] } else { &[] };
    read_rows(path, required, on_malformed, |row, at| {
        let text = if row.get(&columns.prompt).is_some() || named_prompt {
            text_or_messages(row, &columns.prompt, Part::Prompt, at)?
        } else {
            document_text(row, columns, at)?
        };
        Ok(TextExample { text, label: 0 })
    })
}

/// SFT texts: any text dataset of [`load_unlabelled`] (text, prompt + completion, or
/// conversations), or comparisons, where each row gives its TL;DR prompt followed by the
/// human-preferred summary.
pub fn load_sft_texts(
    path: &Path,
    columns: &Columns,
    on_malformed: OnMalformed,
) -> Result<Loaded<TextExample>, DataError> {
    if !is_comparisons(path) {
        return load_unlabelled(path, columns, on_malformed);
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
    let short = examples.iter().filter(|e| e.text.chars().count() <= config.min_chars).count();
    if short > 0 {
        // Prompt datasets (TRL's prompt-only rows) usually want min_chars = 0 and whole = true.
        tracing::warn!(
            dropped = short,
            of = examples.len(),
            min_chars = config.min_chars,
            "texts not longer than prompts.min_chars give no prompt"
        );
    }
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
