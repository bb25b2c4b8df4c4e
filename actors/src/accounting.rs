//! Plain data the learner's actors share and the binary writes to the run directory: the run's
//! totals and the lineage of each accepted rollout.
//!
//! **Invariant:** no actor lives here, so every actor module may depend on this one and none on
//! another's parent.

/// Where one accepted rollout came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lineage {
    pub rollout_id: u64,
    /// The learner's number for the worker: unique within one learner process, not across its
    /// restarts.
    pub worker_id: u64,
    /// The worker's name (`--name`, by default `HOSTNAME:pid`): unique across the whole run.
    pub worker: String,
    pub lease_id: u64,
    pub policy_version: u64,
    pub prompt_index: u64,
}

/// The run's totals: written beside every learner checkpoint (covering the versions it holds),
/// carried over by a resumed learner, and written as `accounting.json` when the run ends.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Accounting {
    /// Prompts trained on, each exactly once.
    pub prompts_accounted: usize,
    pub leases_issued: u64,
    pub leases_reissued: u64,
    pub workers_joined: u64,
    pub workers_expired: u64,
    /// Rollouts refused because they failed validation.
    pub submissions_refused: u64,
    /// Times the learner resumed from a checkpoint.
    pub resumes: u64,
}

impl Accounting {
    /// These totals added to `prior`'s (a resumed learner's own on top of its checkpoint's).
    pub fn plus(&self, prior: &Accounting) -> Accounting {
        Accounting {
            prompts_accounted: prior.prompts_accounted + self.prompts_accounted,
            leases_issued: prior.leases_issued + self.leases_issued,
            leases_reissued: prior.leases_reissued + self.leases_reissued,
            workers_joined: prior.workers_joined + self.workers_joined,
            workers_expired: prior.workers_expired + self.workers_expired,
            submissions_refused: prior.submissions_refused + self.submissions_refused,
            resumes: prior.resumes + self.resumes,
        }
    }
}
