//! What a worker takes from its peers, checked before use: the run settings in the learner's
//! `JoinResponse` and every lease. A learner is a peer on the network too; a bad message becomes
//! an error naming the field, never a panic in generation (fuzzed by
//! `fuzz/fuzz_targets/messages.rs`).

use rlhf_proto::v1 as pb;
use rlhf_trainer::error::TokenizerError;
use rlhf_trainer::validate::InvalidSetting;
use rlhf_trainer::{Gpt2Config, SamplingConfig, Tokenizer};

/// A learner's message a worker cannot run with, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum PeerInputError {
    #[error("{field}: {error}")]
    Json { field: &'static str, error: serde_json::Error },
    #[error("{field}: {error}")]
    Setting { field: &'static str, error: InvalidSetting },
    #[error("tokenizer_json: {error}")]
    Tokenizer { error: TokenizerError },
    #[error("eos_id: expected a token id below {vocab_size}, got {got}")]
    EosId { vocab_size: usize, got: u32 },
    #[error("lease {lease_id}: no prompts")]
    EmptyLease { lease_id: u64 },
    #[error("lease {lease_id} prompt {prompt_index}: ids: expected {expected}")]
    Prompt { lease_id: u64, prompt_index: u64, expected: String },
}

/// The run settings a worker joins with.
pub struct RunSettings {
    pub sampling: SamplingConfig,
    pub model_config: Gpt2Config,
    /// The policy's tokenizer, when the reward model needs text.
    pub text_tokenizer: Option<Tokenizer>,
    pub eos_id: u32,
}

impl RunSettings {
    /// Parses and validates the settings of a `JoinResponse`.
    pub fn from_join(joined: &pb::JoinResponse) -> Result<Self, PeerInputError> {
        let json = |field| move |error| PeerInputError::Json { field, error };
        let setting = |field| move |error| PeerInputError::Setting { field, error };
        let sampling: SamplingConfig = serde_json::from_str(&joined.sampling_json).map_err(json("sampling_json"))?;
        sampling.validate().map_err(setting("sampling_json"))?;
        let model_config: Gpt2Config =
            serde_json::from_str(&joined.model_config_json).map_err(json("model_config_json"))?;
        model_config.validate().map_err(setting("model_config_json"))?;
        if joined.eos_id as usize >= model_config.vocab_size {
            return Err(PeerInputError::EosId { vocab_size: model_config.vocab_size, got: joined.eos_id });
        }
        let text_tokenizer = if joined.tokenizer_json.is_empty() {
            None
        } else {
            let tokenizer = Tokenizer::from_json(&joined.tokenizer_json, joined.eos_id)
                .map_err(|error| PeerInputError::Tokenizer { error })?;
            Some(tokenizer)
        };
        Ok(Self { sampling, model_config, text_tokenizer, eos_id: joined.eos_id })
    }

    /// Checks that a lease's prompts can be rolled out: at least one, each non-empty, with ids in
    /// the vocabulary and room for `max_new_tokens` in the context.
    pub fn check_lease(&self, lease: &pb::Lease) -> Result<(), PeerInputError> {
        let (vocab, context) = (self.model_config.vocab_size, self.model_config.n_positions);
        let room = context.saturating_sub(self.sampling.max_new_tokens);
        if lease.prompts.is_empty() {
            return Err(PeerInputError::EmptyLease { lease_id: lease.lease_id });
        }
        for prompt in &lease.prompts {
            let refuse = |expected: String| {
                Err(PeerInputError::Prompt { lease_id: lease.lease_id, prompt_index: prompt.prompt_index, expected })
            };
            if prompt.ids.is_empty() || prompt.ids.len() > room {
                return refuse(format!(
                    "1 to {room} ids (context {context} less max_new_tokens), got {}",
                    prompt.ids.len()
                ));
            }
            if let Some(&id) = prompt.ids.iter().find(|&&id| id as usize >= vocab) {
                return refuse(format!("token ids below {vocab}, got {id}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join() -> pb::JoinResponse {
        pb::JoinResponse {
            worker_id: 1,
            sampling_json: serde_json::to_string(&SamplingConfig { max_new_tokens: 8, ..Default::default() }).unwrap(),
            model_config_json: serde_json::to_string(&Gpt2Config::new(100, 32, 8, 1, 2)).unwrap(),
            eos_id: 99,
            ..Default::default()
        }
    }

    #[test]
    fn settings_and_leases_from_a_learner_are_checked() {
        let settings = RunSettings::from_join(&join()).unwrap();
        let lease = |ids: Vec<u32>| pb::Lease {
            lease_id: 7,
            prompts: vec![pb::Prompt { prompt_index: 3, ids }],
            ..Default::default()
        };
        settings.check_lease(&lease(vec![1, 2, 3])).unwrap();
        assert!(settings.check_lease(&lease(vec![1, 100])).unwrap_err().to_string().contains("below 100, got 100"));
        assert!(settings.check_lease(&lease(vec![1; 25])).unwrap_err().to_string().contains("1 to 24 ids"));
        assert!(settings.check_lease(&lease(vec![])).unwrap_err().to_string().contains("prompt 3"));

        let mut bad = join();
        bad.eos_id = 100;
        assert!(RunSettings::from_join(&bad).err().unwrap().to_string().contains("eos_id"));
        bad = join();
        bad.sampling_json = r#"{"temperature": -1}"#.into();
        assert!(RunSettings::from_join(&bad).err().unwrap().to_string().contains("sampling_json"));
        bad = join();
        bad.model_config_json = "{".into();
        assert!(RunSettings::from_join(&bad).err().unwrap().to_string().contains("model_config_json"));
    }
}
