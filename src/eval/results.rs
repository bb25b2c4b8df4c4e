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
    /// The independent judge's score, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<f32>,
}

/// An independent judge (`rlhf eval --judge-lexicon`): a scorer that PPO never optimised, run on
/// the same responses as the reward. Its scores are never negated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeResults {
    /// The judge's name.
    pub judge: String,
    /// Each policy's judge scores.
    pub policies: BTreeMap<String, Summary>,
    /// The first two policies under the judge, in the objective's direction (a lower judge score
    /// is better when the reward is negated); ties count half.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub win_rate: Option<WinRate>,
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
    /// The reward's sign was flipped (`--negate`): the policies were trained to lower the score.
    #[serde(default)]
    pub negated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeResults>,
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

    /// A policy's mean judge score, if there is a judge.
    pub fn mean_judge(&self, policy: &str) -> Option<f64> {
        self.judge.as_ref()?.policies.get(policy).map(|s| s.mean)
    }

    /// Whether `after` looks like reward hacking relative to `before`: its reward (the objective)
    /// rose, but the independent judge did not move the same way. `None` without a judge.
    pub fn reward_hacking_suspected(&self, before: &str, after: &str) -> Option<bool> {
        let reward_gain = self.mean_reward(after)? - self.mean_reward(before)?;
        let direction = if self.negated { -1.0 } else { 1.0 };
        let judge_gain = direction * (self.mean_judge(after)? - self.mean_judge(before)?);
        Some(reward_gain > 0.0 && judge_gain <= 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(rewards: [f64; 2], judged: [f64; 2], negated: bool) -> EvalResults {
        let summary = |mean| Summary { mean, median: mean, std: 0.0 };
        let policy = |mean| PolicyResults {
            reward: summary(mean),
            kl_to_reference: summary(0.0),
            response_length: summary(1.0),
        };
        EvalResults {
            scorer: "rm".into(),
            n_prompts: 1,
            order: vec!["sft".into(), "ppo".into()],
            policies: [("sft".into(), policy(rewards[0])), ("ppo".into(), policy(rewards[1]))].into(),
            best_of_n: None,
            win_rate: None,
            samples: Vec::new(),
            negated,
            judge: Some(JudgeResults {
                judge: "lexicon".into(),
                policies: [("sft".into(), summary(judged[0])), ("ppo".into(), summary(judged[1]))].into(),
                win_rate: None,
            }),
        }
    }

    #[test]
    fn reward_hacking_is_suspected_when_the_judge_does_not_follow_the_reward() {
        let suspected =
            |rewards, judged, negated| results(rewards, judged, negated).reward_hacking_suspected("sft", "ppo");
        assert_eq!(suspected([0.0, 1.0], [0.1, 0.3], false), Some(false), "both rose");
        assert_eq!(suspected([0.0, 1.0], [0.1, 0.1], false), Some(true), "the judge stayed put");
        assert_eq!(suspected([0.0, 1.0], [0.1, -0.2], false), Some(true), "the judge fell");
        // Negated: the objective rose (the scores are already negated), the raw judge must fall.
        assert_eq!(suspected([0.0, 1.0], [0.1, -0.2], true), Some(false));
        assert_eq!(suspected([0.0, 1.0], [0.1, 0.3], true), Some(true));
        assert_eq!(suspected([1.0, 0.0], [0.1, -0.2], false), Some(false), "no reward gain, nothing to suspect");
        let mut no_judge = results([0.0, 1.0], [0.0, 0.0], false);
        no_judge.judge = None;
        assert_eq!(no_judge.reward_hacking_suspected("sft", "ppo"), None);
    }
}
