//! The coordinator's bookkeeping as a plain struct: the prompt queue, leases, the experience
//! buffer, the workers known to hold leases and the run's totals. Every method is synchronous and
//! takes the time it needs as an argument, so the rules of leasing can be tested without actors
//! or clocks.
//!
//! **Invariant:** no actor, no channel and no clock here; the coordinator actor owns one `Ledger`
//! and turns messages into calls on it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rlhf_proto::v1 as pb;
use rlhf_trainer::ppo::Rollout;
use rlhf_trainer::ppo::local::{insert_reward_stats, prompts_for};
use rlhf_trainer::train::Stats;
use tonic::Status;

use crate::accounting::{Accounting, Lineage};
use crate::config::LearnerConfig;
use crate::validation::{LeaseClaim, RolloutLimits, check_submission};

/// A worker the coordinator may lease prompts to.
struct WorkerInfo {
    name: String,
    /// Rollouts accepted from it this iteration.
    samples: usize,
    /// Its rollouts per second over the last finished iteration.
    samples_per_s: f64,
    /// The policy version whose weights it holds (its last lease request says).
    held_version: u64,
}

/// A published version on its way to the workers: those active when it was published that have
/// not yet acknowledged it (a lease request saying they hold it, sent right after downloading).
struct Broadcast {
    version: u64,
    published: Instant,
    waiting: BTreeSet<u64>,
    last_ack: Option<Instant>,
}

struct LeaseInfo {
    worker_id: u64,
    /// The policy version the lease was issued for (what its rollouts must be generated with).
    policy_version: u64,
    prompts: Vec<u64>,
    deadline: Instant,
}

/// How long the learner spent on an update, for the iteration's metrics.
#[derive(Debug, Clone, Copy)]
pub struct UpdateTiming {
    pub update_seconds: f64,
    /// Serialising the new weights into the buffer workers download.
    pub publish_seconds: f64,
    /// Size of the new weights' buffer.
    pub weight_bytes: usize,
}

pub struct Ledger {
    config: LearnerConfig,
    /// What a submitted rollout may hold.
    limits: RolloutLimits,
    prompts: Vec<Vec<u32>>,
    /// The policy version being trained (iteration `version` is the one being filled).
    version: u64,
    workers: BTreeMap<u64, WorkerInfo>,
    next_lease_id: u64,
    /// Leases issued per iteration (their number picks the sampling seed).
    leases_per_iteration: BTreeMap<u64, u64>,
    /// The newest iteration whose prompts were queued.
    queued_iteration: Option<u64>,
    /// Prompt indices not leased yet, in chunks of `lease_size`.
    pending: VecDeque<Vec<u64>>,
    leases: BTreeMap<u64, LeaseInfo>,
    buffer: BTreeMap<u64, (Lineage, Rollout)>,
    /// Totals before this learner started (from its checkpoint).
    prior: Accounting,
    /// This learner's totals, `prompts_accounted` aside (the size of `accounted`).
    totals: Accounting,
    /// Prompts this learner accepted rollouts for, each once.
    accounted: BTreeSet<u64>,
    iteration_started: Instant,
    /// Reward-server latencies reported with this iteration's accepted submissions.
    score_seconds: Vec<f64>,
    /// The newest published version, until every worker has acknowledged it.
    broadcast: Option<Broadcast>,
    /// The last finished broadcast's seconds from publication to the last acknowledgement (`time/weight_broadcast` in the next record closed).
    broadcast_seconds: Option<f64>,
}

impl Ledger {
    /// A ledger for a run at policy version `start_version` whose totals so far are `prior`;
    /// the first iteration's prompts are queued at once.
    pub fn new(
        config: LearnerConfig,
        limits: RolloutLimits,
        prompts: Vec<Vec<u32>>,
        start_version: u64,
        prior: Accounting,
    ) -> Self {
        let mut ledger = Self {
            config,
            limits,
            prompts,
            version: start_version,
            workers: BTreeMap::new(),
            next_lease_id: 1,
            leases_per_iteration: BTreeMap::new(),
            queued_iteration: start_version.checked_sub(1),
            pending: VecDeque::new(),
            leases: BTreeMap::new(),
            buffer: BTreeMap::new(),
            prior,
            totals: Accounting::default(),
            accounted: BTreeSet::new(),
            iteration_started: Instant::now(),
            score_seconds: Vec::new(),
            broadcast: None,
            broadcast_seconds: None,
        };
        ledger.start_iteration();
        ledger
    }

    /// The policy version being trained.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// True once every iteration has been trained.
    pub fn done(&self) -> bool {
        self.version as usize >= self.config.train.iterations
    }

    /// Workers that may take leases.
    pub fn n_workers(&self) -> usize {
        self.workers.len()
    }

    /// Queues the next iteration's prompts once the queue is empty, if the staleness bound allows:
    /// at most `max_policy_lag` iterations ahead of the version being trained (0: only the
    /// current one, strictly on-policy).
    fn maybe_queue_next(&mut self) {
        let next = self.queued_iteration.map_or(0, |i| i + 1);
        let iterations = self.config.train.iterations as u64;
        if !self.pending.is_empty() || next >= iterations || next > self.version + self.config.runtime.max_policy_lag {
            return;
        }
        let batch = self.config.train.batch_size as u64;
        let indices: Vec<u64> = (next * batch..(next + 1) * batch).collect();
        self.pending = indices.chunks(self.config.lease_size()).map(<[u64]>::to_vec).collect();
        self.queued_iteration = Some(next);
    }

    /// Resets the per-iteration counters when iteration `version` starts training.
    fn start_iteration(&mut self) {
        self.iteration_started = Instant::now();
        self.score_seconds.clear();
        for worker in self.workers.values_mut() {
            worker.samples = 0;
        }
        self.maybe_queue_next();
    }

    /// The whole run's totals (this learner's added to those it resumed from), counting the
    /// accounted prompts below `prompt_limit`.
    pub fn run_totals(&self, prompt_limit: usize) -> Accounting {
        let own = Accounting {
            prompts_accounted: self.accounted.range(..prompt_limit as u64).count(),
            ..self.totals.clone()
        };
        own.plus(&self.prior)
    }

    /// What a checkpoint of the next version covers: the prompts of every version up to it.
    pub fn totals_through_next_version(&self) -> Accounting {
        self.run_totals((self.version as usize + 1) * self.config.train.batch_size)
    }

    /// The rollouts of the iteration being trained, in prompt order, if all have arrived.
    pub fn complete_batch(&self) -> Option<Vec<Rollout>> {
        let batch = self.config.train.batch_size as u64;
        let range = self.version * batch..(self.version + 1) * batch;
        (self.buffer.range(range.clone()).count() as u64 == batch)
            .then(|| self.buffer.range(range).map(|(_, (_, rollout))| rollout.clone()).collect())
    }

    /// The prompt for a stream index: iteration `i` uses `prompts_for(prompts, batch, i)`, as the
    /// local loop does.
    fn prompt(&self, index: u64) -> Vec<u32> {
        let batch = self.config.train.batch_size;
        prompts_for(&self.prompts, batch, index as usize / batch)[index as usize % batch].clone()
    }

    /// Puts a lease's prompts back at the front of the queue.
    fn reissue(&mut self, lease_id: u64, why: &str) {
        if let Some(lease) = self.leases.remove(&lease_id) {
            let name = self.worker_name(lease.worker_id);
            tracing::warn!(lease_id, worker_id = lease.worker_id, worker = %name, prompts = lease.prompts.len(), "{why}; re-issuing its prompts");
            self.totals.leases_reissued += 1;
            self.pending.push_front(lease.prompts);
            metrics::counter!("rlhf_leases_reissued_total").increment(1);
            metrics::gauge!("rlhf_leases_outstanding").set(self.leases.len() as f64);
        }
    }

    /// The run's state for `rlhf status`: its progress and, per worker, the weights it holds, its
    /// rate and its lease (membership adds addresses and heartbeats).
    pub fn status(&self) -> pb::StatusResponse {
        let batch = self.config.train.batch_size;
        let workers = self
            .workers
            .iter()
            .map(|(&worker_id, info)| {
                let lease = self.leases.iter().find(|(_, l)| l.worker_id == worker_id);
                pb::WorkerStatus {
                    worker_id,
                    name: info.name.clone(),
                    policy_version: info.held_version,
                    samples_per_s: info.samples_per_s,
                    lease_id: lease.map(|(&id, _)| id).unwrap_or(0),
                    lease_prompts: lease.map(|(_, l)| l.prompts.len() as u32).unwrap_or(0),
                    ..Default::default()
                }
            })
            .collect();
        pb::StatusResponse {
            policy_version: self.version,
            iterations: self.config.train.iterations as u64,
            prompts_done: self.run_totals(self.config.train.iterations * batch).prompts_accounted as u64,
            prompts_leased: self.leases.values().map(|l| l.prompts.len() as u64).sum(),
            prompts_total: (self.config.train.iterations * batch) as u64,
            done: self.done(),
            workers,
        }
    }

    /// A worker's name (`--name`); empty for one that is not known (any more).
    fn worker_name(&self, worker_id: u64) -> String {
        self.workers.get(&worker_id).map(|w| w.name.clone()).unwrap_or_default()
    }

    /// A worker joined: it may take leases from now on.
    pub fn worker_joined(&mut self, worker_id: u64, name: String) {
        self.totals.workers_joined += 1;
        metrics::counter!("rlhf_workers_joined_total").increment(1);
        self.workers.insert(worker_id, WorkerInfo { name, samples: 0, samples_per_s: 0.0, held_version: 0 });
    }

    /// A worker stopped heartbeating: its leases are re-issued and it may take no more.
    pub fn worker_expired(&mut self, worker_id: u64) {
        self.totals.workers_expired += 1;
        metrics::counter!("rlhf_workers_expired_total").increment(1);
        let owned: Vec<u64> = self.leases.iter().filter(|(_, l)| l.worker_id == worker_id).map(|(&id, _)| id).collect();
        for lease_id in owned {
            self.reissue(lease_id, "lease of an expired worker");
        }
        self.workers.remove(&worker_id);
        // The broadcast no longer waits for it.
        if let Some(broadcast) = &mut self.broadcast {
            broadcast.waiting.remove(&worker_id);
            self.maybe_finish_broadcast();
        }
    }

    /// A worker says it holds `held_version` (`u64::MAX`: no weights yet) at `now`.
    fn acknowledge(&mut self, worker_id: u64, held_version: u64, now: Instant) {
        if let Some(broadcast) = &mut self.broadcast
            && held_version != u64::MAX
            && held_version >= broadcast.version
            && broadcast.waiting.remove(&worker_id)
        {
            broadcast.last_ack = Some(now);
            self.maybe_finish_broadcast();
        }
    }

    /// Ends the broadcast once no worker is left to acknowledge it. If every worker it waited for
    /// expired instead, nothing is measured.
    fn maybe_finish_broadcast(&mut self) {
        if self.broadcast.as_ref().is_some_and(|b| b.waiting.is_empty())
            && let Some(broadcast) = self.broadcast.take()
            && let Some(last) = broadcast.last_ack
        {
            let seconds = last.saturating_duration_since(broadcast.published).as_secs_f64();
            metrics::gauge!("rlhf_time_weight_broadcast").set(seconds);
            self.broadcast_seconds = Some(seconds);
        }
    }

    /// A worker hands a lease back (it is stopping): its prompts are re-issued. A lease the worker
    /// does not own is left alone.
    pub fn return_lease(&mut self, worker_id: u64, lease_id: u64) {
        if self.leases.get(&lease_id).is_some_and(|l| l.worker_id == worker_id) {
            self.reissue(lease_id, "lease returned by its worker");
        }
    }

    /// Re-issues every lease whose deadline is before `now`.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self.leases.iter().filter(|(_, l)| now > l.deadline).map(|(&id, _)| id).collect();
        for lease_id in late {
            self.reissue(lease_id, "lease deadline passed");
        }
    }

    /// Answers a worker asking for work at `now`: the next lease, "wait", or "done".
    pub fn lease(
        &mut self,
        worker_id: u64,
        held_version: u64,
        now: Instant,
    ) -> Result<pb::LeasePromptsResponse, Status> {
        use pb::lease_prompts_response::Reply;
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return Err(Status::not_found(format!("worker {worker_id} is unknown or expired; join again")));
        };
        worker.held_version = held_version;
        self.acknowledge(worker_id, held_version, now);
        if self.done() {
            return Ok(pb::LeasePromptsResponse { reply: Some(Reply::Done(true)) });
        }
        self.maybe_queue_next();
        let Some(prompts) = self.pending.pop_front() else {
            return Ok(pb::LeasePromptsResponse { reply: Some(Reply::WaitMs(50)) });
        };
        let lease_id = self.next_lease_id;
        self.next_lease_id += 1;
        // The first lease of an iteration uses the local loop's seed, so one worker repeats
        // `ppo --local` exactly; later leases get their own streams.
        let iteration = prompts[0] / self.config.train.batch_size as u64;
        let issued = self.leases_per_iteration.entry(iteration).or_default();
        let seed = self.config.train.sampling.seed.wrapping_add(iteration).wrapping_add(*issued << 32);
        *issued += 1;
        self.totals.leases_issued += 1;
        let deadline = now + Duration::from_secs_f64(self.config.runtime.lease_timeout_s);
        let wire_prompts = prompts.iter().map(|&i| pb::Prompt { prompt_index: i, ids: self.prompt(i) }).collect();
        self.leases.insert(lease_id, LeaseInfo { worker_id, policy_version: self.version, prompts, deadline });
        metrics::counter!("rlhf_leases_issued_total").increment(1);
        metrics::gauge!("rlhf_leases_outstanding").set(self.leases.len() as f64);
        let deadline_ms = (self.config.runtime.lease_timeout_s * 1000.0) as u64;
        Ok(pb::LeasePromptsResponse {
            reply: Some(Reply::Lease(pb::Lease {
                lease_id,
                policy_version: self.version,
                prompts: wire_prompts,
                seed,
                deadline_ms,
            })),
        })
    }

    /// Accepts a lease's rollouts into the buffer (every field checked first) and returns how
    /// many; `score_seconds` is the reward server's latency for them. A submission for a lease
    /// that is not owned any more, or whose policy version is too stale, is refused.
    pub fn submit(&mut self, request: pb::SubmitRolloutsRequest, score_seconds: f64) -> Result<u32, Status> {
        let Some(lease) = self.leases.get(&request.lease_id) else {
            return Err(Status::failed_precondition(format!(
                "lease {} is unknown, expired or already submitted; its prompts were re-issued",
                request.lease_id
            )));
        };
        let claim = LeaseClaim {
            lease_id: request.lease_id,
            worker_id: lease.worker_id,
            policy_version: lease.policy_version,
            prompts: &lease.prompts,
        };
        // Every field, before anything is accepted. The lease stays valid: the worker may submit
        // again, or the lease expires and its prompts are re-issued.
        if let Err(status) = check_submission(&request, &claim, &self.limits, |i| self.prompt(i)) {
            tracing::warn!(worker_id = request.worker_id, lease_id = request.lease_id, error = %status.message(), "submission refused");
            self.totals.submissions_refused += 1;
            metrics::counter!("rlhf_submissions_refused_total").increment(1);
            return Err(status);
        }
        let lag = self.config.runtime.max_policy_lag;
        let version = lease.policy_version;
        let worker = self.worker_name(lease.worker_id);
        if version > self.version || self.version - version > lag {
            // Too stale to train on: drop it and roll the prompts out again with fresh weights.
            let message = format!(
                "lease {} was rolled out with policy version {version}, but the learner is at {} (max_policy_lag {lag})",
                request.lease_id, self.version
            );
            self.reissue(request.lease_id, "rollouts too stale");
            return Err(Status::failed_precondition(message));
        }
        self.leases.remove(&request.lease_id);
        let n = request.rollouts.len() as u32;
        metrics::gauge!("rlhf_leases_outstanding").set(self.leases.len() as f64);
        metrics::counter!("rlhf_rollouts_accepted_total").increment(n as u64);
        for r in request.rollouts {
            // Exactly once: a prompt is accounted when its lease is accepted, never again.
            assert!(self.accounted.insert(r.prompt_index), "prompt {} accounted twice", r.prompt_index);
            tracing::debug!(
                rollout_id = r.rollout_id,
                worker_id = r.worker_id,
                policy_version = r.policy_version,
                "rollout accepted"
            );
            let lineage = Lineage {
                rollout_id: r.rollout_id,
                worker_id: r.worker_id,
                worker: worker.clone(),
                lease_id: request.lease_id,
                policy_version: r.policy_version,
                prompt_index: r.prompt_index,
            };
            let rollout = Rollout { query: r.query, response: r.response, logprobs: r.logprobs, score: r.score };
            self.buffer.insert(r.prompt_index, (lineage, rollout));
        }
        if let Some(worker) = self.workers.get_mut(&request.worker_id) {
            worker.samples += n as usize;
        }
        self.score_seconds.push(score_seconds);
        Ok(n)
    }

    /// Takes the trained iteration's rollouts out of the buffer (later iterations' stay, with
    /// `max_policy_lag > 0`), adds the runtime's metrics to the update's `stats`, and returns the
    /// rollouts' lineage.
    pub fn close_iteration(&mut self, stats: &mut Stats, timing: UpdateTiming) -> Vec<Lineage> {
        let rollout_wait =
            self.iteration_started.elapsed().as_secs_f64() - timing.update_seconds - timing.publish_seconds;
        let batch = self.config.train.batch_size as u64;
        let trained: Vec<(Lineage, Rollout)> =
            (self.version * batch..(self.version + 1) * batch).filter_map(|i| self.buffer.remove(&i)).collect();
        let n = trained.len() as f64;
        insert_reward_stats(stats, trained.iter().map(|(_, r)| r.score));
        stats.insert("time/rollout_wait".into(), rollout_wait.max(0.0));
        stats.insert("time/update".into(), timing.update_seconds);
        stats.insert("time/weight_serialize".into(), timing.publish_seconds);
        // How long the newest weights whose broadcast finished since the last record (usually
        // those this iteration was rolled out with) took to reach every worker.
        if let Some(seconds) = self.broadcast_seconds.take() {
            stats.insert("time/weight_broadcast".into(), seconds);
        }
        stats.insert("weights/bytes".into(), timing.weight_bytes as f64);
        // Policy versions between generating a rollout and training on it.
        let staleness: Vec<f64> = trained.iter().map(|(l, _)| (self.version - l.policy_version) as f64).collect();
        stats.insert("staleness/mean".into(), staleness.iter().sum::<f64>() / n);
        stats.insert("staleness/max".into(), staleness.iter().copied().fold(0.0, f64::max));
        stats.insert("workers/active".into(), self.workers.len() as f64);
        let elapsed = self.iteration_started.elapsed().as_secs_f64().max(1e-9);
        stats.insert("samples_per_s".into(), n / elapsed);
        for (id, worker) in &mut self.workers {
            worker.samples_per_s = worker.samples as f64 / elapsed;
            stats.insert(format!("workers/{id}/samples_per_s"), worker.samples_per_s);
        }
        let mut latencies = self.score_seconds.clone();
        latencies.sort_by(f64::total_cmp);
        if !latencies.is_empty() {
            let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
            stats.insert("reward_server/latency_p50".into(), pick(0.5));
            stats.insert("reward_server/latency_p99".into(), pick(0.99));
        }
        trained.into_iter().map(|(lineage, _)| lineage).collect()
    }

    /// Moves on to `version`, published at `now`; unless the run is done, its iteration starts
    /// and the broadcast of its weights to the active workers is timed.
    pub fn advance(&mut self, version: u64, now: Instant) {
        self.version = version;
        if !self.done() {
            let waiting: BTreeSet<u64> = self.workers.keys().copied().collect();
            self.broadcast =
                (!waiting.is_empty()).then_some(Broadcast { version, published: now, waiting, last_ack: None });
            self.start_iteration();
        }
    }
}

#[cfg(test)]
mod tests;
