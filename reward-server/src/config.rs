//! A reward server's settings (`rlhf reward-server --config reward-server.toml`; flags override
//! the file).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rlhf_trainer::validate::{Checked, InvalidSetting, at_least_one};
use serde::{Deserialize, Serialize};

use crate::BatchConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardServerConfig {
    /// Reward-model directory (or hub id).
    pub model: Option<String>,
    /// Lexicon file or aclImdb folder (needs `tokenizer`).
    pub lexicon: Option<PathBuf>,
    /// The policy's tokenizer (lexicon scoring decodes responses with it).
    pub tokenizer: Option<PathBuf>,
    /// Flip the sign of every score (train towards negative).
    pub negate: bool,
    pub listen: SocketAddr,
    /// A plain-text port serving only the gRPC health service, for probes that carry neither
    /// client certificates nor tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_listen: Option<SocketAddr>,
    /// TLS on the server's port (`[tls]`: cert, key; ca + require_client_cert for mutual TLS).
    pub tls: rlhf_secure::TlsConfig,
    /// The token clients must send (`[auth]`: token_file, else RLHF_TOKEN).
    pub auth: rlhf_secure::AuthConfig,
    /// Dynamic batching: largest batch, and how long the first request waits for company.
    pub max_batch: usize,
    pub max_wait_ms: u64,
}

impl Default for RewardServerConfig {
    fn default() -> Self {
        Self {
            model: None,
            lexicon: None,
            tokenizer: None,
            negate: false,
            listen: "127.0.0.1:0".parse().expect("a valid address"),
            health_listen: None,
            tls: Default::default(),
            auth: Default::default(),
            max_batch: 64,
            max_wait_ms: 5,
        }
    }
}

impl RewardServerConfig {
    pub fn validate(&self) -> Checked {
        self.tls.validate().map_err(|e| InvalidSetting::new("tls", &e.to_string(), "a partial [tls]"))?;
        match (&self.model, &self.lexicon, &self.tokenizer) {
            (Some(_), Some(_), _) => {
                return Err(InvalidSetting::new("model", "either model or lexicon, not both", "both"));
            }
            (None, None, _) => {
                return Err(InvalidSetting::new("model", "a reward-model directory (or set lexicon)", "neither"));
            }
            (None, Some(_), None) => {
                return Err(InvalidSetting::new(
                    "tokenizer",
                    "the policy's tokenizer, to read a lexicon's token ids",
                    "nothing",
                ));
            }
            _ => {}
        }
        at_least_one("max_batch", self.max_batch)
    }

    pub fn batching(&self) -> BatchConfig {
        BatchConfig { max_batch: self.max_batch, max_wait: Duration::from_millis(self.max_wait_ms) }
    }
}

rlhf_trainer::impl_validate!(RewardServerConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_scores_with_exactly_one_of_model_and_lexicon() {
        let lexicon = RewardServerConfig {
            lexicon: Some("imdb.vocab".into()),
            tokenizer: Some("tok".into()),
            ..Default::default()
        };
        lexicon.validate().unwrap();
        RewardServerConfig { model: Some("rm".into()), ..Default::default() }.validate().unwrap();
        for (config, field) in [
            (RewardServerConfig::default(), "model"),
            (RewardServerConfig { model: Some("rm".into()), ..lexicon.clone() }, "model"),
            (RewardServerConfig { tokenizer: None, ..lexicon.clone() }, "tokenizer"),
            (RewardServerConfig { max_batch: 0, ..lexicon.clone() }, "max_batch"),
        ] {
            assert_eq!(config.validate().unwrap_err().field, field);
        }
        let batching = lexicon.batching();
        assert_eq!((batching.max_batch, batching.max_wait), (64, Duration::from_millis(5)));
    }
}
