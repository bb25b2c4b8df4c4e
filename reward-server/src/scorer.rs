//! The one place a scorer is built from settings: a reward-model directory (or hub id) or a
//! lexicon, optionally negated. The reward server, `rlhf ppo --local`, `rlhf eval` and best-of-n
//! all build theirs here.

use std::path::{Path, PathBuf};

use rlhf_trainer::error::{CheckpointError, HubError, TokenizerError};
use rlhf_trainer::model::hf;
use rlhf_trainer::reward::scorer::{Lexicon, LexiconScorer, Negated, RewardModelScorer, ScoreError, Scorer};
use rlhf_trainer::{Kernels, Tokenizer, hub};

/// Rows per reward-model forward pass when the caller has no batch size of its own.
pub const DEFAULT_SCORE_BATCH: usize = 32;

/// What to score with.
pub struct ScorerSpec<'a> {
    /// A reward-model directory or hub id.
    pub model: Option<&'a str>,
    /// A lexicon file or aclImdb folder.
    pub lexicon: Option<&'a Path>,
    /// The tokenizer of the ids the scorer will read (the policy's). A lexicon decodes with it;
    /// a reward model with another vocabulary decodes with it and re-encodes the text. `None`
    /// for a reward model: ids are in its own vocabulary (a reward server whose workers send
    /// text or the model's own ids).
    pub tokenizer: Option<&'a Tokenizer>,
    /// Flip the sign of every score.
    pub negate: bool,
    /// Rows per reward-model forward pass.
    pub batch_size: usize,
}

/// Why a scorer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("set a reward model or a lexicon")]
    Neither,
    #[error("either a reward model or a lexicon, not both")]
    Both,
    #[error("a lexicon needs the policy's tokenizer, to read the token ids it scores")]
    LexiconWithoutTokenizer,
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("loading reward model {dir}: {error}")]
    Load { dir: PathBuf, error: Box<CheckpointError> },
    #[error("{dir} is not a reward model (it has no score head)")]
    NotARewardModel { dir: PathBuf },
    #[error(
        "{dir}: the tokenizer has {tokens} tokens but the model's vocabulary has {model_vocab} (vocab_size in config.json); they must come from the same model"
    )]
    VocabMismatch { dir: PathBuf, tokens: usize, model_vocab: usize },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Lexicon(#[from] ScoreError),
}

/// Builds the scorer `spec` describes on `device`.
pub fn build_scorer<B: Kernels>(spec: &ScorerSpec, device: &B::Device) -> Result<Box<dyn Scorer>, BuildError> {
    let scorer: Box<dyn Scorer> = match (spec.model, spec.lexicon) {
        (Some(_), Some(_)) => return Err(BuildError::Both),
        (None, None) => return Err(BuildError::Neither),
        (Some(name), None) => {
            let dir = hub::resolve(name)?;
            let (config, model) = hf::load::<B>(&dir, device)
                .map_err(|error| BuildError::Load { dir: dir.clone(), error: Box::new(error) })?;
            if model.score.is_none() {
                return Err(BuildError::NotARewardModel { dir });
            }
            let tokenizer = Tokenizer::load(&dir)?;
            let (tokens, model_vocab) = (tokenizer.vocab_size(), config.vocab_size);
            if tokens > model_vocab {
                return Err(BuildError::VocabMismatch { dir, tokens, model_vocab });
            }
            let same = |policy: &Tokenizer| {
                policy.vocab_size() == tokenizer.vocab_size() && policy.eos_id() == tokenizer.eos_id()
            };
            let policy_tokenizer = spec.tokenizer.filter(|policy| !same(policy)).cloned();
            Box::new(RewardModelScorer {
                model,
                tokenizer,
                policy_tokenizer,
                batch_size: spec.batch_size,
                device: device.clone(),
                label: dir.display().to_string(),
            })
        }
        (None, Some(path)) => {
            let tokenizer = spec.tokenizer.ok_or(BuildError::LexiconWithoutTokenizer)?.clone();
            Box::new(LexiconScorer { lexicon: Lexicon::load(path)?, tokenizer })
        }
    };
    Ok(if spec.negate { Box::new(Negated(scorer)) } else { scorer })
}
