//! The leasing rules on a tiny run: 4 prompts per iteration, leases of 2 (unless a test says
//! otherwise), two workers. Time is passed in, so deadlines pass without sleeping.

use std::collections::BTreeSet;

use tonic::Code;

use super::*;

const LIMITS: RolloutLimits = RolloutLimits { vocab_size: 100, n_positions: 64, max_new_tokens: 8 };
const SEED: u64 = 1000;
const LEASE_TIMEOUT: Duration = Duration::from_secs(10);

fn config(batch_size: usize, lease_size: usize, iterations: usize, max_policy_lag: u64) -> LearnerConfig {
    let mut config = LearnerConfig::default();
    config.train.batch_size = batch_size;
    config.train.iterations = iterations;
    config.train.sampling.seed = SEED;
    config.runtime.lease_size = lease_size;
    config.runtime.lease_timeout_s = LEASE_TIMEOUT.as_secs_f64();
    config.runtime.max_policy_lag = max_policy_lag;
    config
}

/// A ledger for `config` with two workers (ids 1 and 2) joined.
fn ledger_with(config: LearnerConfig) -> Ledger {
    let prompts = (0..6).map(|i| vec![10 + i, 20 + i]).collect();
    let mut ledger = Ledger::new(config, LIMITS, prompts, 0, Accounting::default());
    ledger.worker_joined(1, "one".into());
    ledger.worker_joined(2, "two".into());
    ledger
}

fn ledger() -> Ledger {
    ledger_with(config(4, 2, 3, 0))
}

/// Asks for a lease and expects one.
fn lease(ledger: &mut Ledger, worker_id: u64, now: Instant) -> pb::Lease {
    match ledger.lease(worker_id, 0, now).unwrap().reply {
        Some(pb::lease_prompts_response::Reply::Lease(lease)) => lease,
        other => panic!("expected a lease, got {other:?}"),
    }
}

fn indices(lease: &pb::Lease) -> Vec<u64> {
    lease.prompts.iter().map(|p| p.prompt_index).collect()
}

/// An honest submission of `lease` by `worker_id`.
fn submission(lease: &pb::Lease, worker_id: u64) -> pb::SubmitRolloutsRequest {
    let rollouts = lease
        .prompts
        .iter()
        .map(|prompt| pb::Rollout {
            rollout_id: 100 + prompt.prompt_index,
            worker_id,
            lease_id: lease.lease_id,
            policy_version: lease.policy_version,
            prompt_index: prompt.prompt_index,
            query: prompt.ids.clone(),
            response: vec![3, 4],
            logprobs: vec![-1.0, -0.5],
            score: prompt.prompt_index as f32,
        })
        .collect();
    pb::SubmitRolloutsRequest { worker_id, lease_id: lease.lease_id, rollouts, score_seconds: 0.01 }
}

fn submit(ledger: &mut Ledger, lease: &pb::Lease, worker_id: u64) -> Result<u32, Status> {
    ledger.submit(submission(lease, worker_id), 0.01)
}

fn totals(ledger: &Ledger) -> Accounting {
    ledger.run_totals(usize::MAX)
}

fn timing() -> UpdateTiming {
    UpdateTiming { update_seconds: 0.0, publish_seconds: 0.0, weight_bytes: 8 }
}

#[test]
fn a_lease_past_its_deadline_is_reissued_and_its_late_submission_refused() {
    let mut ledger = ledger();
    let start = Instant::now();
    let first = lease(&mut ledger, 1, start);
    let second = lease(&mut ledger, 2, start);
    assert_eq!((indices(&first), indices(&second)), (vec![0, 1], vec![2, 3]));
    assert_eq!(first.deadline_ms, 10_000);

    // Before the deadline nothing moves; the queue is empty until the iteration is trained.
    ledger.expire(start + LEASE_TIMEOUT - Duration::from_millis(1));
    assert_eq!(totals(&ledger).leases_reissued, 0);
    assert!(matches!(ledger.lease(2, 0, start).unwrap().reply, Some(pb::lease_prompts_response::Reply::WaitMs(_))));

    // Only the first lease's deadline passes: its prompts are leased again, under a new id.
    submit(&mut ledger, &second, 2).unwrap();
    let later = start + LEASE_TIMEOUT + Duration::from_millis(1);
    ledger.expire(later);
    assert_eq!(totals(&ledger).leases_reissued, 1);
    let again = lease(&mut ledger, 2, later);
    assert_eq!(indices(&again), vec![0, 1]);
    assert_ne!(again.lease_id, first.lease_id);
    assert_eq!(again.policy_version, 0);

    // The late worker's rollouts are refused: the prompts now belong to the new lease.
    let late = submit(&mut ledger, &first, 1).unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{}", late.message());
    assert!(ledger.complete_batch().is_none());
    assert_eq!(submit(&mut ledger, &again, 2).unwrap(), 2);
    let batch = ledger.complete_batch().expect("every prompt of iteration 0 is in");
    assert_eq!(batch.iter().map(|r| r.score).collect::<Vec<_>>(), vec![0.0, 1.0, 2.0, 3.0]);
    let totals = totals(&ledger);
    assert_eq!((totals.prompts_accounted, totals.leases_issued, totals.leases_reissued), (4, 3, 1));
}

#[test]
fn a_worker_expiring_mid_lease_has_its_prompts_reissued() {
    let mut ledger = ledger();
    let now = Instant::now();
    let lost = lease(&mut ledger, 1, now);
    let kept = lease(&mut ledger, 2, now);

    ledger.worker_expired(1);
    let after = totals(&ledger);
    assert_eq!((after.workers_joined, after.workers_expired, after.leases_reissued), (2, 1, 1));
    assert_eq!(ledger.n_workers(), 1);
    // The expired worker must join again before it gets work; its old lease is gone.
    assert_eq!(ledger.lease(1, 0, now).unwrap_err().code(), Code::NotFound);
    assert_eq!(submit(&mut ledger, &lost, 1).unwrap_err().code(), Code::FailedPrecondition);

    // The other worker's lease is untouched, and it picks up the lost prompts.
    let reissued = lease(&mut ledger, 2, now);
    assert_eq!(indices(&reissued), indices(&lost));
    submit(&mut ledger, &kept, 2).unwrap();
    submit(&mut ledger, &reissued, 2).unwrap();
    assert_eq!(ledger.complete_batch().map(|batch| batch.len()), Some(4));
}

#[test]
fn a_submission_with_a_wrong_field_is_refused_and_the_lease_kept() {
    let mut ledger = ledger();
    let now = Instant::now();
    let held = lease(&mut ledger, 1, now);
    let mut stale = submission(&held, 1);
    stale.rollouts[0].policy_version = held.policy_version + 1;
    let status = ledger.submit(stale, 0.01).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("policy_version"), "{}", status.message());
    // Another worker may not submit it either.
    assert_eq!(submit(&mut ledger, &held, 2).unwrap_err().code(), Code::FailedPrecondition);
    let after = totals(&ledger);
    assert_eq!((after.submissions_refused, after.prompts_accounted, after.leases_reissued), (2, 0, 0));
    // Nothing was accepted, and the owner can still submit the lease honestly.
    assert_eq!(submit(&mut ledger, &held, 1).unwrap(), 2);
    assert_eq!(totals(&ledger).prompts_accounted, 2);
    // Once accepted, the lease is closed: a second submission is refused.
    assert_eq!(submit(&mut ledger, &held, 1).unwrap_err().code(), Code::FailedPrecondition);
}

#[test]
fn rollouts_staler_than_max_policy_lag_are_refused_and_their_prompts_reissued() {
    let mut ledger = ledger_with(config(2, 2, 3, 0));
    let now = Instant::now();
    let held = lease(&mut ledger, 1, now);
    // The learner moved on while the lease was out (which the queue never allows on its own:
    // this is the guard behind it).
    ledger.advance(1, Instant::now());
    let status = submit(&mut ledger, &held, 1).unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("max_policy_lag 0"), "{}", status.message());
    assert_eq!(totals(&ledger).leases_reissued, 1);
    // Its prompts go out again first, with the current version.
    let again = lease(&mut ledger, 2, now);
    assert_eq!((indices(&again), again.policy_version), (indices(&held), 1));
}

#[test]
fn a_lease_is_returned_only_by_its_owner() {
    let mut ledger = ledger();
    let now = Instant::now();
    let held = lease(&mut ledger, 1, now);
    ledger.return_lease(2, held.lease_id);
    assert_eq!(totals(&ledger).leases_reissued, 0);
    ledger.return_lease(1, held.lease_id);
    assert_eq!(totals(&ledger).leases_reissued, 1);
    assert_eq!(indices(&lease(&mut ledger, 2, now)), indices(&held));
}

#[test]
fn iterations_train_every_prompt_once_then_the_run_is_done() {
    let mut ledger = ledger_with(config(4, 3, 2, 0));
    let now = Instant::now();
    for version in 0..2u64 {
        let first = lease(&mut ledger, 1, now);
        let second = lease(&mut ledger, 2, now);
        let base = version * 4;
        assert_eq!((indices(&first), indices(&second)), (vec![base, base + 1, base + 2], vec![base + 3]));
        // The first lease of an iteration repeats the local loop's seed; later ones get their own.
        assert_eq!((first.seed, second.seed), (SEED + version, SEED + version + (1 << 32)));
        submit(&mut ledger, &second, 2).unwrap();
        assert!(ledger.complete_batch().is_none());
        submit(&mut ledger, &first, 1).unwrap();
        assert_eq!(ledger.complete_batch().map(|batch| batch.len()), Some(4));
        // What the checkpoint of the next version covers.
        assert_eq!(ledger.totals_through_next_version().prompts_accounted, 4 * (version as usize + 1));
        // While the update runs, workers wait (strictly on-policy).
        assert!(matches!(ledger.lease(1, 0, now).unwrap().reply, Some(pb::lease_prompts_response::Reply::WaitMs(_))));

        let mut stats = Stats::new();
        let lineage = ledger.close_iteration(&mut stats, timing());
        assert_eq!(lineage.iter().map(|l| l.prompt_index).collect::<Vec<_>>(), (base..base + 4).collect::<Vec<_>>());
        assert_eq!(lineage[0].lease_id, first.lease_id);
        assert_eq!(stats["env/reward_mean"], base as f64 + 1.5);
        assert_eq!((stats["staleness/max"], stats["workers/active"]), (0.0, 2.0));
        assert_eq!(stats["reward_server/latency_p50"], 0.01);
        assert!(ledger.complete_batch().is_none(), "trained rollouts leave the buffer");
        ledger.advance(version + 1, now);
    }
    assert!(ledger.done());
    assert_eq!(ledger.lease(1, 0, now).unwrap().reply, Some(pb::lease_prompts_response::Reply::Done(true)));
    let totals = totals(&ledger);
    assert_eq!((totals.prompts_accounted, totals.leases_issued, totals.leases_reissued), (8, 4, 0));
}

#[test]
fn max_policy_lag_lets_workers_lease_that_many_iterations_ahead() {
    let mut ledger = ledger_with(config(2, 2, 4, 1));
    let now = Instant::now();
    let current = lease(&mut ledger, 1, now);
    let ahead = lease(&mut ledger, 2, now);
    assert_eq!((indices(&current), indices(&ahead)), (vec![0, 1], vec![2, 3]));
    assert_eq!((current.policy_version, ahead.policy_version), (0, 0));
    assert!(matches!(ledger.lease(1, 0, now).unwrap().reply, Some(pb::lease_prompts_response::Reply::WaitMs(_))));
    // Rollouts one version stale are still trained on, and counted as such.
    submit(&mut ledger, &current, 1).unwrap();
    submit(&mut ledger, &ahead, 2).unwrap();
    ledger.close_iteration(&mut Stats::new(), timing());
    ledger.advance(1, Instant::now());
    assert_eq!(ledger.complete_batch().map(|batch| batch.len()), Some(2), "iteration 1 is already complete");
    let mut stats = Stats::new();
    ledger.close_iteration(&mut stats, timing());
    assert_eq!(stats["staleness/max"], 1.0);
}

#[test]
fn a_resumed_ledger_adds_its_totals_to_the_checkpoints() {
    let prior = Accounting { prompts_accounted: 8, leases_issued: 5, resumes: 1, ..Accounting::default() };
    let prompts = (0..6).map(|i| vec![10 + i, 20 + i]).collect();
    let mut ledger = Ledger::new(config(4, 4, 3, 0), LIMITS, prompts, 2, prior);
    ledger.worker_joined(7, "seven".into());
    let held = lease(&mut ledger, 7, Instant::now());
    // Version 2 starts at prompt 8 of the stream.
    assert_eq!(indices(&held), vec![8, 9, 10, 11]);
    assert_eq!(held.seed, SEED + 2);
    submit(&mut ledger, &held, 7).unwrap();
    let totals = totals(&ledger);
    assert_eq!((totals.prompts_accounted, totals.leases_issued, totals.workers_joined, totals.resumes), (12, 6, 1, 1));
    let accounted: BTreeSet<u64> = ledger.accounted.iter().copied().collect();
    assert_eq!(accounted, (8..12).collect());
}

#[test]
fn the_broadcast_lasts_until_the_last_active_worker_holds_the_new_version() {
    let mut ledger = ledger_with(config(2, 2, 3, 0));
    ledger.worker_joined(3, "three".into());
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let held = lease(&mut ledger, 1, t0);
    submit(&mut ledger, &held, 1).unwrap();
    let mut stats = Stats::new();
    ledger.close_iteration(&mut stats, timing());
    assert!(!stats.contains_key("time/weight_broadcast"), "version 0 was never broadcast");
    assert!(stats.contains_key("time/weight_serialize"));
    ledger.advance(1, ms(0));
    // Worker 1 has version 1 by 200 ms (and gets its lease); worker 2 still holds version 0 at
    // 300 ms and has version 1 at 500 ms; a worker joining after the publication is not waited
    // for; worker 3 expires without acknowledging, so the broadcast waits no longer.
    let next = match ledger.lease(1, 1, ms(200)).unwrap().reply {
        Some(pb::lease_prompts_response::Reply::Lease(lease)) => lease,
        other => panic!("expected a lease, got {other:?}"),
    };
    ledger.lease(2, 0, ms(300)).unwrap();
    ledger.lease(2, u64::MAX, ms(350)).unwrap();
    ledger.lease(2, 1, ms(500)).unwrap();
    ledger.worker_joined(4, "four".into());
    ledger.lease(1, 1, ms(900)).unwrap();
    assert!(ledger.broadcast.is_some(), "worker 3 has not acknowledged yet");
    ledger.worker_expired(3);
    submit(&mut ledger, &next, 1).unwrap();
    let mut stats = Stats::new();
    ledger.close_iteration(&mut stats, timing());
    assert_eq!(stats["time/weight_broadcast"], 0.5);
    // Only the workers that acknowledged: if every one expires, nothing is measured.
    ledger.advance(2, ms(2000));
    ledger.worker_expired(1);
    ledger.worker_expired(2);
    ledger.worker_expired(4);
    assert!(ledger.broadcast.is_none() && ledger.broadcast_seconds.is_none());
}
