//! Checks on what workers submit. A worker is a peer on the network, and its rollouts are
//! untrusted input: every field is checked against the lease and the run before anything is
//! accepted, so one bad submission is refused (`INVALID_ARGUMENT`, naming the rollout and the
//! field) and can never reach the PPO update.

use std::collections::BTreeSet;

use rlhf_proto::v1 as pb;
use tonic::Status;

/// What a rollout of this run may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutLimits {
    /// The policy's vocabulary: every id must be below it.
    pub vocab_size: usize,
    /// The policy's context: query + response must fit.
    pub n_positions: usize,
    /// The sampling settings' `max_new_tokens`: no response is longer.
    pub max_new_tokens: usize,
}

/// Log-probs a little above 0 are rounding, not probability above 1.
pub const LOGPROB_SLACK: f32 = 1e-4;

/// The lease a submission claims to fulfil.
#[derive(Debug, Clone)]
pub struct LeaseClaim<'a> {
    pub lease_id: u64,
    pub worker_id: u64,
    pub policy_version: u64,
    pub prompts: &'a [u64],
}

fn invalid(rollout: &pb::Rollout, field: &str, expected: &str, got: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!(
        "rollout {} (prompt {}): {field}: expected {expected}, got {got}",
        rollout.rollout_id, rollout.prompt_index
    ))
}

/// Checks `request` against the lease it names and the run's limits; `prompt(i)` is the
/// prompt the learner leased as stream index `i`.
pub fn check_submission(
    request: &pb::SubmitRolloutsRequest,
    lease: &LeaseClaim<'_>,
    limits: &RolloutLimits,
    prompt: impl Fn(u64) -> Vec<u32>,
) -> Result<(), Status> {
    if lease.worker_id != request.worker_id {
        return Err(Status::failed_precondition(format!("lease {} belongs to another worker", request.lease_id)));
    }
    let expected: BTreeSet<u64> = lease.prompts.iter().copied().collect();
    let got: BTreeSet<u64> = request.rollouts.iter().map(|r| r.prompt_index).collect();
    if expected != got || request.rollouts.len() != expected.len() {
        return Err(Status::invalid_argument(format!(
            "lease {}: rollouts must cover exactly its {} prompts, once each (got {} rollouts for {} distinct prompts)",
            request.lease_id,
            expected.len(),
            request.rollouts.len(),
            got.len()
        )));
    }
    if !request.score_seconds.is_finite() || request.score_seconds < 0.0 {
        return Err(Status::invalid_argument(format!(
            "lease {}: score_seconds: expected a finite number ≥ 0, got {}",
            request.lease_id, request.score_seconds
        )));
    }
    for r in &request.rollouts {
        if r.worker_id != request.worker_id {
            return Err(invalid(
                r,
                "worker_id",
                &format!("the submitting worker's id {}", request.worker_id),
                r.worker_id,
            ));
        }
        if r.lease_id != request.lease_id {
            return Err(invalid(r, "lease_id", &format!("the submitted lease {}", request.lease_id), r.lease_id));
        }
        if r.policy_version != lease.policy_version {
            return Err(invalid(
                r,
                "policy_version",
                &format!("the lease's version {}", lease.policy_version),
                r.policy_version,
            ));
        }
        if r.query != prompt(r.prompt_index) {
            return Err(invalid(
                r,
                "query",
                &format!("the ids of prompt {}", r.prompt_index),
                format!("{} other ids", r.query.len()),
            ));
        }
        if r.response.is_empty() || r.response.len() > limits.max_new_tokens {
            let expected = format!("1 to {} tokens (max_new_tokens)", limits.max_new_tokens);
            return Err(invalid(r, "response", &expected, format!("{} tokens", r.response.len())));
        }
        if r.query.len() + r.response.len() > limits.n_positions {
            let expected = format!("query + response within the model's {} positions", limits.n_positions);
            return Err(invalid(r, "response", &expected, format!("{} + {} tokens", r.query.len(), r.response.len())));
        }
        if let Some((j, id)) = r.response.iter().enumerate().find(|(_, id)| **id as usize >= limits.vocab_size) {
            return Err(invalid(r, &format!("response[{j}]"), &format!("a token id below {}", limits.vocab_size), id));
        }
        if r.logprobs.len() != r.response.len() {
            let expected = format!("one per response token ({})", r.response.len());
            return Err(invalid(r, "logprobs", &expected, r.logprobs.len()));
        }
        if let Some((j, lp)) = r.logprobs.iter().enumerate().find(|(_, lp)| !(lp.is_finite() && **lp <= LOGPROB_SLACK))
        {
            return Err(invalid(r, &format!("logprobs[{j}]"), "a finite log-probability ≤ 0", lp));
        }
        if !r.score.is_finite() {
            return Err(invalid(r, "score", "a finite number", r.score));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RolloutLimits = RolloutLimits { vocab_size: 100, n_positions: 32, max_new_tokens: 8 };

    fn prompt(index: u64) -> Vec<u32> {
        vec![1, 2, index as u32]
    }

    fn rollout(prompt_index: u64) -> pb::Rollout {
        pb::Rollout {
            rollout_id: 10 + prompt_index,
            worker_id: 7,
            lease_id: 3,
            policy_version: 5,
            prompt_index,
            query: prompt(prompt_index),
            response: vec![4, 5, 6],
            logprobs: vec![-1.0, -0.5, -2.0],
            score: 0.5,
        }
    }

    fn request(rollouts: Vec<pb::Rollout>) -> pb::SubmitRolloutsRequest {
        pb::SubmitRolloutsRequest { worker_id: 7, lease_id: 3, rollouts, score_seconds: 0.01 }
    }

    const PROMPTS: [u64; 2] = [40, 41];
    const LEASE: LeaseClaim<'static> = LeaseClaim { lease_id: 3, worker_id: 7, policy_version: 5, prompts: &PROMPTS };

    fn check(edit: impl FnOnce(&mut pb::Rollout)) -> Result<(), Status> {
        let mut first = rollout(40);
        edit(&mut first);
        check_submission(&request(vec![first, rollout(41)]), &LEASE, &LIMITS, prompt)
    }

    #[test]
    fn an_honest_submission_passes() {
        check(|_| {}).unwrap();
    }

    /// One change to an honest rollout.
    type Edit = Box<dyn FnOnce(&mut pb::Rollout)>;

    #[test]
    fn every_bad_field_is_refused_and_named() {
        let cases: Vec<(&str, Edit)> = vec![
            ("response[1]: expected a token id below 100, got 100", Box::new(|r| r.response[1] = 100)),
            ("response[0]: expected a token id below 100, got 4294967295", Box::new(|r| r.response[0] = u32::MAX)),
            ("logprobs[0]: expected a finite log-probability ≤ 0, got 3", Box::new(|r| r.logprobs[0] = 3.0)),
            (
                "logprobs[2]: expected a finite log-probability ≤ 0, got -inf",
                Box::new(|r| r.logprobs[2] = f32::NEG_INFINITY),
            ),
            ("logprobs[1]: expected a finite log-probability ≤ 0, got NaN", Box::new(|r| r.logprobs[1] = f32::NAN)),
            ("logprobs: expected one per response token (3), got 2", Box::new(|r| r.logprobs.truncate(2))),
            (
                "response: expected 1 to 8 tokens (max_new_tokens), got 100000 tokens",
                Box::new(|r| {
                    r.response = vec![1; 100_000];
                    r.logprobs = vec![-1.0; 100_000];
                }),
            ),
            (
                "response: expected 1 to 8 tokens (max_new_tokens), got 0 tokens",
                Box::new(|r| {
                    r.response.clear();
                    r.logprobs.clear();
                }),
            ),
            ("score: expected a finite number, got NaN", Box::new(|r| r.score = f32::NAN)),
            ("score: expected a finite number, got inf", Box::new(|r| r.score = f32::INFINITY)),
            ("policy_version: expected the lease's version 5, got 4", Box::new(|r| r.policy_version = 4)),
            ("worker_id: expected the submitting worker's id 7, got 8", Box::new(|r| r.worker_id = 8)),
            ("lease_id: expected the submitted lease 3, got 4", Box::new(|r| r.lease_id = 4)),
            ("query: expected the ids of prompt 40", Box::new(|r| r.query.push(9))),
        ];
        for (message, edit) in cases {
            let status = check(edit).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{message}");
            assert!(status.message().contains("rollout 50 (prompt 40)"), "{}", status.message());
            assert!(status.message().contains(message), "{} does not contain {message}", status.message());
        }
    }

    #[test]
    fn the_lease_must_be_covered_exactly_and_by_its_owner() {
        // A prompt twice, one missing.
        let status = check_submission(&request(vec![rollout(40), rollout(40)]), &LEASE, &LIMITS, prompt).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        // A prompt of another lease.
        let status = check_submission(&request(vec![rollout(40), rollout(99)]), &LEASE, &LIMITS, prompt).unwrap_err();
        assert!(status.message().contains("cover exactly its 2 prompts"), "{}", status.message());
        // Another worker's lease.
        let mut other = request(vec![rollout(40), rollout(41)]);
        other.worker_id = 8;
        let status = check_submission(&other, &LEASE, &LIMITS, prompt).unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        // Context: 3 query tokens + 8 new ones must fit 10 positions.
        let tight = RolloutLimits { n_positions: 10, ..LIMITS };
        let mut long = request(vec![rollout(40), rollout(41)]);
        long.rollouts[1].response = vec![1; 8];
        long.rollouts[1].logprobs = vec![-1.0; 8];
        let status = check_submission(&long, &LEASE, &tight, prompt).unwrap_err();
        assert!(status.message().contains("within the model's 10 positions, got 3 + 8 tokens"), "{}", status.message());
    }
}
