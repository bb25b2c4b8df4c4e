//! A worker's settings (`rlhf worker --config worker.toml`; flags override the file).

use std::time::Duration;

use rlhf_trainer::validate::{Checked, InvalidSetting, finite_positive};
use serde::{Deserialize, Serialize};

use crate::WorkerOptions;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// The learner's address (host:port or http://host:port).
    pub learner: String,
    /// Reward server addresses; requests go round robin, and a failing server is skipped for a while (failover).
    pub reward: Vec<String>,
    /// A name for logs and lineage (default: `HOSTNAME:pid`, unique across containers, where
    /// every pid is 1).
    pub name: Option<String>,
    /// Seconds without progress (a peer unreachable, failing or refusing) before the worker gives up.
    pub patience_s: f64,
    /// Deadline of each call, in seconds.
    pub timeout_s: f64,
    /// Fault injection for tests: hold each lease this long before rolling it out.
    pub hold_lease_ms: u64,
    /// TLS for `https://` peers (`[tls]`: ca; client_cert + client_key for mutual TLS).
    pub tls: rlhf_secure::TlsConfig,
    /// Tokens (`[auth]`: token_file, else RLHF_TOKEN; reward_token_file for the reward servers).
    pub auth: rlhf_secure::AuthConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            learner: String::new(),
            reward: Vec::new(),
            name: None,
            patience_s: 60.0,
            timeout_s: 30.0,
            hold_lease_ms: 0,
            tls: Default::default(),
            auth: Default::default(),
        }
    }
}

impl WorkerConfig {
    pub fn validate(&self) -> Checked {
        if self.learner.is_empty() {
            return Err(InvalidSetting::new("learner", "the learner's address (--learner)", "nothing"));
        }
        if self.reward.is_empty() {
            return Err(InvalidSetting::new("reward", "at least one reward server address (--reward)", "none"));
        }
        self.tls.validate().map_err(|e| InvalidSetting::new("tls", &e.to_string(), "a partial [tls]"))?;
        finite_positive("patience_s", self.patience_s)?;
        finite_positive("timeout_s", self.timeout_s)
    }

    /// What [`crate::run`] takes: addresses as URLs, durations, and a name ([`default_name`] if
    /// unset).
    pub fn options(&self) -> WorkerOptions {
        WorkerOptions {
            learner: url(&self.learner),
            rewards: self.reward.iter().map(|r| url(r)).collect(),
            name: self.name.clone().unwrap_or_else(default_name),
            timeout: Duration::from_secs_f64(self.timeout_s),
            patience: Duration::from_secs_f64(self.patience_s),
            hold_lease: Duration::from_millis(self.hold_lease_ms),
            tls: self.tls.clone(),
            auth: self.auth.clone(),
        }
    }
}

rlhf_trainer::impl_validate!(WorkerConfig);

/// `host:port` as an `http://` URL; a URL is kept as it is.
pub fn url(addr: &str) -> String {
    if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") }
}

/// `HOSTNAME:pid`: the host name from `$HOSTNAME` (containers set it to the container's name)
/// or the kernel's, so workers in containers, where every pid is 1, still get unique names.
pub fn default_name() -> String {
    let from_kernel = || std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(from_kernel)
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_urls_and_settings_become_options() {
        let config = WorkerConfig {
            learner: "10.0.0.1:50051".into(),
            reward: vec!["http://rm:50052".into(), "rm2:7".into()],
            name: Some("w1".into()),
            patience_s: 2.5,
            hold_lease_ms: 40,
            ..Default::default()
        };
        config.validate().unwrap();
        let options = config.options();
        assert_eq!(options.learner, "http://10.0.0.1:50051");
        assert_eq!(options.rewards, ["http://rm:50052", "http://rm2:7"]);
        assert_eq!(
            (options.name.as_str(), options.patience, options.hold_lease),
            ("w1", Duration::from_millis(2500), Duration::from_millis(40))
        );
        let unnamed = WorkerConfig { name: None, ..config.clone() }.options();
        let (host, pid) = unnamed.name.rsplit_once(':').expect("HOSTNAME:pid");
        assert!(!host.is_empty() && pid == std::process::id().to_string(), "{}", unnamed.name);
    }

    #[test]
    fn a_worker_needs_a_learner_a_reward_server_and_positive_durations() {
        let ok = WorkerConfig { learner: "l:1".into(), reward: vec!["r:2".into()], ..Default::default() };
        for (config, field) in [
            (WorkerConfig { learner: String::new(), ..ok.clone() }, "learner"),
            (WorkerConfig { reward: Vec::new(), ..ok.clone() }, "reward"),
            (WorkerConfig { patience_s: 0.0, ..ok.clone() }, "patience_s"),
            (WorkerConfig { timeout_s: f64::NAN, ..ok.clone() }, "timeout_s"),
        ] {
            assert_eq!(config.validate().unwrap_err().field, field);
        }
    }
}
