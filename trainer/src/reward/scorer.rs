//! Scorers turn (query, response) token ids into one number each: a reward-model directory, a
//! word lexicon, or either with the sign flipped (the "pessimistic" target).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::kernels::Kernels;

use crate::error::{InputError, TokenizerError};
use crate::infer::scoring::score;
use crate::model::gpt2::Gpt2;
use crate::tokenizer::Tokenizer;

/// Errors while scoring.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("cannot read lexicon {path}: {message}")]
    Lexicon { path: PathBuf, message: String },
}

/// Scores (query, response) pairs given as the policy's token ids. `Send`, so a server can run
/// it on a blocking thread.
pub trait Scorer: Send {
    fn score(&mut self, queries: &[Vec<u32>], responses: &[Vec<u32>]) -> Result<Vec<f32>, ScoreError>;
    /// Scores (query, response) pairs given as text, tokenised with the scorer's own tokenizer.
    fn score_texts(&mut self, queries: &[String], responses: &[String]) -> Result<Vec<f32>, ScoreError>;
    /// Identifies the scorer in logs and results.
    fn name(&self) -> String;
    /// Token ids [`Scorer::score`] accepts are below this (the vocabulary they index).
    fn vocab_size(&self) -> usize;
}

/// A reward model (a GPT-2 with a score head).
pub struct RewardModelScorer<B: Kernels> {
    pub model: Gpt2<B>,
    /// The reward model's tokenizer.
    pub tokenizer: Tokenizer,
    /// The policy's tokenizer when it differs from the reward model's: texts are decoded with it
    /// and re-encoded with the reward model's. `None`: ids are passed through.
    pub policy_tokenizer: Option<Tokenizer>,
    pub batch_size: usize,
    pub device: B::Device,
    pub label: String,
}

impl<B: Kernels> RewardModelScorer<B> {
    /// Scores token rows in batches. Rows longer than the model's context keep their last
    /// `n_positions` tokens: the response, at the end, is what is being judged.
    fn score_rows(&self, mut rows: Vec<Vec<u32>>) -> Result<Vec<f32>, ScoreError> {
        let limit = self.model.n_positions();
        for row in rows.iter_mut().filter(|r| r.len() > limit) {
            row.drain(..row.len() - limit);
        }
        let mut scores = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(self.batch_size.max(1)) {
            let scored = score(&self.model, chunk, self.tokenizer.pad_id(), 1.0, false, &self.device)?;
            let rows = scored.scores.ok_or(InputError::MissingHead { head: "score" })?;
            scores.extend(rows.into_iter().map(|s| s[0]));
        }
        Ok(scores)
    }
}

impl<B: Kernels> Scorer for RewardModelScorer<B> {
    fn score(&mut self, queries: &[Vec<u32>], responses: &[Vec<u32>]) -> Result<Vec<f32>, ScoreError> {
        let rows: Vec<Vec<u32>> = match &self.policy_tokenizer {
            None => queries.iter().zip(responses).map(|(q, r)| [q.as_slice(), r].concat()).collect(),
            Some(policy) => queries
                .iter()
                .zip(responses)
                .map(|(q, r)| self.tokenizer.encode(&policy.decode(&[q.as_slice(), r].concat())?))
                .collect::<Result<_, TokenizerError>>()?,
        };
        self.score_rows(rows)
    }

    fn score_texts(&mut self, queries: &[String], responses: &[String]) -> Result<Vec<f32>, ScoreError> {
        let rows: Vec<Vec<u32>> = queries
            .iter()
            .zip(responses)
            .map(|(q, r)| self.tokenizer.encode(&format!("{q}{r}")))
            .collect::<Result<_, _>>()?;
        self.score_rows(rows)
    }

    fn name(&self) -> String {
        format!("reward-model:{}", self.label)
    }

    fn vocab_size(&self) -> usize {
        match &self.policy_tokenizer {
            None => self.model.vocab_size(),
            Some(policy) => policy.vocab_size(),
        }
    }
}

/// Word weights, such as aclImdb's per-word expected ratings.
#[derive(Debug, Clone)]
pub struct Lexicon {
    weights: HashMap<String, f32>,
    path: PathBuf,
}

impl Lexicon {
    /// Reads a directory with `imdb.vocab` + `imdbEr.txt` (line i of one weights line i of the
    /// other), or a file of `word weight` lines (whitespace or tab separated).
    pub fn load(path: &Path) -> Result<Self, ScoreError> {
        let error = |p: &Path, message: String| ScoreError::Lexicon { path: p.to_path_buf(), message };
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| error(p, e.to_string()));
        let mut weights = HashMap::new();
        if path.is_dir() {
            let (vocab_path, er_path) = (path.join("imdb.vocab"), path.join("imdbEr.txt"));
            let (vocab, er) = (read(&vocab_path)?, read(&er_path)?);
            let (words, values): (Vec<&str>, Vec<&str>) = (vocab.lines().collect(), er.lines().collect());
            if words.len() != values.len() {
                return Err(error(
                    path,
                    format!("imdb.vocab has {} lines but imdbEr.txt {}", words.len(), values.len()),
                ));
            }
            for (i, (word, value)) in words.iter().zip(&values).enumerate() {
                let weight = value
                    .trim()
                    .parse::<f32>()
                    .map_err(|_| error(&er_path, format!("line {}: expected a number, got {value:?}", i + 1)))?;
                weights.insert(word.trim().to_string(), weight);
            }
        } else {
            for (i, line) in read(path)?.lines().enumerate() {
                let mut parts = line.split_whitespace();
                let (Some(word), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
                    if line.trim().is_empty() {
                        continue;
                    }
                    return Err(error(path, format!("line {}: expected `word weight`", i + 1)));
                };
                let weight = value
                    .parse::<f32>()
                    .map_err(|_| error(path, format!("line {}: expected a number, got {value:?}", i + 1)))?;
                weights.insert(word.to_lowercase(), weight);
            }
        }
        if weights.is_empty() {
            return Err(error(path, "no entries".into()));
        }
        Ok(Self { weights, path: path.to_path_buf() })
    }

    /// Mean weight of the text's words that the lexicon knows (0 when none): lower-cased, HTML
    /// breaks removed, words are runs of `[a-z0-9']` and `!`/`?` stand alone.
    pub fn score_text(&self, text: &str) -> f32 {
        let text = text.to_lowercase().replace("<br />", " ");
        let mut words = Vec::new();
        let mut current = String::new();
        for c in text.chars() {
            if c.is_ascii_alphanumeric() || c == '\'' {
                current.push(c);
            } else {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
                if c == '!' || c == '?' {
                    words.push(c.to_string());
                }
            }
        }
        if !current.is_empty() {
            words.push(current);
        }
        let matched: Vec<f32> = words.iter().filter_map(|w| self.weights.get(w).copied()).collect();
        if matched.is_empty() { 0.0 } else { matched.iter().sum::<f32>() / matched.len() as f32 }
    }
}

/// Scores responses (not queries) with a [`Lexicon`].
pub struct LexiconScorer {
    pub lexicon: Lexicon,
    /// Decodes the policy's token ids.
    pub tokenizer: Tokenizer,
}

impl Scorer for LexiconScorer {
    fn score(&mut self, _queries: &[Vec<u32>], responses: &[Vec<u32>]) -> Result<Vec<f32>, ScoreError> {
        responses.iter().map(|r| Ok(self.lexicon.score_text(&self.tokenizer.decode(r)?))).collect()
    }

    fn score_texts(&mut self, _queries: &[String], responses: &[String]) -> Result<Vec<f32>, ScoreError> {
        Ok(responses.iter().map(|r| self.lexicon.score_text(r)).collect())
    }

    fn name(&self) -> String {
        format!("lexicon:{}", self.lexicon.path.display())
    }

    fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }
}

/// Flips the sign of another scorer (train towards negative sentiment).
pub struct Negated(pub Box<dyn Scorer>);

impl Scorer for Negated {
    fn score(&mut self, queries: &[Vec<u32>], responses: &[Vec<u32>]) -> Result<Vec<f32>, ScoreError> {
        Ok(self.0.score(queries, responses)?.into_iter().map(|s| -s).collect())
    }

    fn score_texts(&mut self, queries: &[String], responses: &[String]) -> Result<Vec<f32>, ScoreError> {
        Ok(self.0.score_texts(queries, responses)?.into_iter().map(|s| -s).collect())
    }

    fn name(&self) -> String {
        format!("negated({})", self.0.name())
    }

    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_imdb_lexicon_separates_praise_from_pans() {
        let lexicon = Lexicon::load(&crate::testutil::assets().join("imdb-lexicon")).unwrap();
        let good = lexicon.score_text("A wonderful, beautiful film. Excellent acting!");
        let bad = lexicon.score_text("The worst movie ever. Awful, boring and stupid.");
        assert!(good > 0.0 && bad < 0.0 && good > bad, "{good} vs {bad}");
        assert_eq!(lexicon.score_text("zzzqqq"), 0.0);
    }

    #[test]
    fn a_bad_lexicon_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("words.tsv");
        std::fs::write(&path, "good 1.0\nbad minus-one\n").unwrap();
        let err = Lexicon::load(&path).unwrap_err().to_string();
        assert!(err.contains("words.tsv") && err.contains("line 2"), "{err}");
    }
}
