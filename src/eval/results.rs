//! What `rlhf eval` writes (`eval.json`), and what `rlhf report` and `rlhf demo` read back.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Mean, median and (Bessel-corrected) standard deviation of one quantity over prompts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub mean: f64,
    pub median: f64,
    pub std: f64,
}

impl Summary {
    pub fn of(xs: &[f32]) -> Self {
        let mut sorted: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len().max(1) as f64;
        let mean = sorted.iter().sum::<f64>() / n;
        let std = (sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        Self { mean, median: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0), std }
    }
}

/// One policy on the held-out prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyResults {
    pub reward: Summary,
    /// Σ_t (log π − log π_ref) over each sampled response (k1).
    pub kl_to_reference: Summary,
    /// In tokens.
    pub response_length: Summary,
}

/// The best of `n` samples per prompt from `policy`, by the scorer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestOfN {
    pub policy: String,
    pub n: usize,
    pub reward: Summary,
}

/// How often the judge preferred `a`'s response to `b`'s (ties count half).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WinRate {
    pub a: String,
    pub b: String,
    pub a_over_b: f64,
    pub judge: String,
}

/// One policy's response to a sample prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleResponse {
    pub response: String,
    pub reward: f32,
}

/// A prompt and every policy's response (keyed by policy name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub prompt: String,
    #[serde(flatten)]
    pub responses: BTreeMap<String, SampleResponse>,
}

/// `eval.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResults {
    /// The scorer's name.
    pub scorer: String,
    pub n_prompts: usize,
    /// The policies in the order they were given (`--policy` flags).
    pub order: Vec<String>,
    pub policies: BTreeMap<String, PolicyResults>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of_n: Option<BestOfN>,
    /// The first two policies, with two or more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub win_rate: Option<WinRate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Sample>,
}

impl EvalResults {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not an `rlhf eval` result", path.display()))
    }

    /// A policy's mean reward, if it was evaluated.
    pub fn mean_reward(&self, policy: &str) -> Option<f64> {
        self.policies.get(policy).map(|p| p.reward.mean)
    }
}
