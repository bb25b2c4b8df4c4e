//! The learner's config: what to train (the local loop's [`LocalConfig`]) and how the runtime
//! behaves (leases, heartbeats, staleness).

use std::path::PathBuf;

use rlhf_trainer::ppo::CriticKind;
use rlhf_trainer::ppo::local::LocalConfig;
use rlhf_trainer::validate::{Checked, InvalidSetting, at_least_one, finite_positive, section};
use serde::{Deserialize, Serialize};

/// Where rewards come from (the reward server's source; `rlhf run` starts it from this).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardSource {
    /// A reward-model directory.
    pub model: Option<String>,
    /// A lexicon (file or aclImdb folder).
    pub lexicon: Option<PathBuf>,
    /// Train towards negative scores.
    pub negate: bool,
    /// The reward model uses another tokenizer than the policy: workers send text too, and the
    /// reward server tokenises it with its own tokenizer.
    pub retokenize: bool,
}

/// Runtime behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Prompts per lease (0: the whole iteration's batch in one lease).
    pub lease_size: usize,
    /// A lease not submitted within this many seconds is re-issued.
    pub lease_timeout_s: f64,
    /// A worker silent for this long is expired and its leases re-issued.
    pub heartbeat_timeout_s: f64,
    pub heartbeat_interval_ms: u64,
    /// How many policy versions a rollout may lag the version it trains: 0 is strictly
    /// on-policy (TRL); k lets workers roll out up to k iterations ahead while the learner
    /// updates. With k > 0 the PPO ratio is taken against the rollouts' behaviour log-probs, and
    /// rollouts staler than k are dropped and their prompts rolled out again.
    pub max_policy_lag: u64,
    /// Element type of weights on the wire: "f32" (exact) or "bf16" (half the bytes).
    pub weights_dtype: rlhf_trainer::model::wire::WireDtype,
    /// Write a learner checkpoint every this many policy versions (0: only the final policy).
    pub checkpoint_every: u64,
    /// Live workers at most; more joins are refused (a flood of joins cannot exhaust memory).
    pub max_workers: usize,
    /// Learner checkpoints kept: older ones are deleted once a newer one is written whole (a
    /// GPT-2 learner checkpoint is ~1.5 GB). 0 keeps every one.
    pub checkpoint_keep: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            lease_size: 0,
            lease_timeout_s: 120.0,
            heartbeat_timeout_s: 10.0,
            heartbeat_interval_ms: 1000,
            max_policy_lag: 0,
            weights_dtype: Default::default(),
            checkpoint_every: 0,
            max_workers: 1024,
            checkpoint_keep: 3,
        }
    }
}

/// The whole learner (and `rlhf run`) config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnerConfig {
    /// Policy to start from: a model directory or hub id.
    pub model: String,
    /// Texts to cut prompts from (TRL's prompt-only rows, or any text dataset).
    pub prompts: PathBuf,
    /// Which column of `prompts` holds what (`[columns]`: prompt, text, messages...; TRL's
    /// names by default).
    pub columns: rlhf_trainer::data::Columns,
    /// Run directory: metrics.jsonl, the resolved config, the trained policy.
    pub out: PathBuf,
    /// Address the learner serves on (`--listen` overrides it; default 127.0.0.1:0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    /// A plain-text port serving only the gRPC health service, for probes that carry neither
    /// client certificates nor tokens (`--health-listen`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_listen: Option<std::net::SocketAddr>,
    /// TLS on the learner's port (`[tls]`: cert, key; ca + require_client_cert for mutual TLS).
    pub tls: rlhf_secure::TlsConfig,
    /// The token workers must send (`[auth]`: token_file, else RLHF_TOKEN).
    pub auth: rlhf_secure::AuthConfig,
    pub reward: RewardSource,
    pub train: LocalConfig,
    pub runtime: RuntimeConfig,
}

impl RuntimeConfig {
    /// Checks every setting (see [`rlhf_trainer::validate`]).
    pub fn validate(&self) -> Checked {
        finite_positive("lease_timeout_s", self.lease_timeout_s)?;
        finite_positive("heartbeat_timeout_s", self.heartbeat_timeout_s)?;
        at_least_one("heartbeat_interval_ms", self.heartbeat_interval_ms as usize)?;
        at_least_one("max_workers", self.max_workers)?;
        if self.heartbeat_interval_ms as f64 >= self.heartbeat_timeout_s * 1000.0 {
            return Err(InvalidSetting::new(
                "heartbeat_interval_ms",
                &format!("less than heartbeat_timeout_s ({} s)", self.heartbeat_timeout_s),
                self.heartbeat_interval_ms,
            ));
        }
        Ok(())
    }
}

impl RewardSource {
    pub fn validate(&self) -> Checked {
        match (&self.model, &self.lexicon) {
            (Some(_), Some(_)) => Err(InvalidSetting::new("model", "either model or lexicon, not both", "both")),
            (None, None) => Err(InvalidSetting::new("model", "a reward-model directory (or set lexicon)", "neither")),
            _ => Ok(()),
        }
    }
}

impl LearnerConfig {
    /// Checks every setting (see [`rlhf_trainer::validate`]), sections included.
    pub fn validate(&self) -> Checked {
        if self.model.is_empty() {
            return Err(InvalidSetting::new("model", "a policy directory (or hub id)", "nothing"));
        }
        if self.prompts.as_os_str().is_empty() {
            return Err(InvalidSetting::new("prompts", "a dataset path (or hub id)", "nothing"));
        }
        if self.out.as_os_str().is_empty() {
            return Err(InvalidSetting::new("out", "a run directory", "nothing"));
        }
        self.tls.validate().map_err(|e| InvalidSetting::new("tls", &e.to_string(), "a partial [tls]"))?;
        section("reward", self.reward.validate())?;
        section("train", self.train.validate())?;
        if self.train.critic == CriticKind::RewardModel {
            // The critic starts from the reward model and reads the policy's tokens.
            let expected = "\"shared\" unless reward.model is a reward model with the policy's tokenizer \
                            (a separate critic starts from it)";
            if self.reward.model.is_none() || self.reward.retokenize {
                return Err(InvalidSetting::new("train.critic", expected, "\"reward-model\""));
            }
        }
        section("runtime", self.runtime.validate())
    }

    pub fn lease_size(&self) -> usize {
        if self.runtime.lease_size == 0 {
            self.train.batch_size
        } else {
            self.runtime.lease_size.min(self.train.batch_size)
        }
    }
}

rlhf_trainer::impl_validate!(RuntimeConfig, RewardSource, LearnerConfig);
