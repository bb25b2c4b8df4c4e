//! What a training step reports: named statistics, and the progress callback every loop calls.

use std::collections::BTreeMap;

/// Statistics of one step, keyed by TRL's names (`ppo/loss/policy`, `objective/kl`, ...). The
/// names and their meanings are listed in `trainer/METRICS.md`.
pub type Stats = BTreeMap<String, f64>;

/// One report from a training loop, after each optimizer step.
pub struct Progress<'a> {
    pub step: usize,
    pub total: usize,
    pub metrics: &'a Stats,
}
