//! The learner's coordinator actor: the prompt stream, leases and the experience buffer. It is the
//! root of the learner's supervision tree, with one job per child: membership
//! ([`crate::membership`]: joins, heartbeats, expiry), the weight publisher
//! ([`crate::publisher`]) and the PPO learner ([`crate::ppo_learner`]: the model, updates,
//! checkpoints). If a child dies, the coordinator stops and the learner process exits with an
//! error: the run cannot go on without any of them.
//!
//! Runtime semantics (on-policy, `max_policy_lag = 0`):
//! - iteration `k` trains policy version `k`; its `batch_size` prompts (indices
//!   `k·batch .. (k+1)·batch` of the prompt stream) are split into leases of `lease_size`;
//! - a lease is owned by one worker until it submits, returns it, its deadline passes, or the worker
//!   expires; then its prompts go back to the front of the queue. A submission for a lease that is
//!   no longer owned is refused, so every prompt is accounted exactly once;
//! - when the buffer holds a rollout for every prompt of the iteration, the update runs; workers
//!   asking for work meanwhile are told to wait; then the new weights are published and iteration
//!   `k + 1` starts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rlhf_proto::v1 as pb;
use rlhf_trainer::AutodiffKernels;
use rlhf_trainer::ppo::local::{insert_reward_stats, prompts_for};
use rlhf_trainer::ppo::{PpoTrainer, Rollout};
use rlhf_trainer::train::Stats;
use tonic::Status;

use crate::config::LearnerConfig;
use crate::membership::{Membership, MembershipArgs, MembershipMsg, RunSettings};
use crate::ppo_learner::{PpoLearner, PpoLearnerArgs, PpoLearnerMsg, Updated};
use crate::publisher::{Publisher, PublisherMsg};
use crate::validation::{LeaseClaim, RolloutLimits, check_submission};
use crate::weights::WeightSnapshot;

/// Registered names of the children the gRPC service talks to.
pub const MEMBERSHIP: &str = "membership";
pub const PUBLISHER: &str = "publisher";

/// Messages the coordinator handles. RPC handlers send one per call and await the reply.
pub enum CoordinatorMsg {
    Lease {
        worker_id: u64,
        reply: RpcReplyPort<Result<pb::LeasePromptsResponse, Status>>,
    },
    Submit {
        request: pb::SubmitRolloutsRequest,
        score_seconds: f64,
        reply: RpcReplyPort<Result<u32, Status>>,
    },
    Return {
        worker_id: u64,
        lease_id: u64,
        reply: RpcReplyPort<Result<(), Status>>,
    },
    /// From membership: a worker joined (answered once it may take leases).
    WorkerJoined {
        worker_id: u64,
        name: String,
        reply: RpcReplyPort<()>,
    },
    /// From membership: a worker stopped heartbeating; its leases are re-issued.
    WorkerExpired {
        worker_id: u64,
    },
    /// Re-issue leases past their deadline (sent by a timer).
    Tick,
    /// The PPO learner finished an update.
    Updated(Updated),
}

/// Called after each iteration with its stats and the lineage of its rollouts.
pub type OnIteration = Box<dyn FnMut(usize, &Stats, &[Lineage]) + Send>;

/// Where one accepted rollout came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Lineage {
    pub rollout_id: u64,
    pub worker_id: u64,
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

pub struct CoordinatorArgs<B: AutodiffKernels> {
    pub config: LearnerConfig,
    pub trainer: PpoTrainer<B>,
    pub prompts: Vec<Vec<u32>>,
    pub sampling_json: String,
    pub model_config_json: String,
    /// The policy's tokenizer.json, sent to workers when they must send text (else empty).
    pub tokenizer_json: String,
    pub eos_id: u32,
    /// Called after each iteration with its stats.
    pub on_iteration: OnIteration,
    /// Called once with the trained trainer and the run's totals when the run is over.
    pub on_done: crate::ppo_learner::OnDone<B>,
    /// Writes learner checkpoints (every `runtime.checkpoint_every` versions).
    pub on_checkpoint: crate::ppo_learner::Checkpointer<B>,
    /// The policy version to start from (0, or a resumed checkpoint's).
    pub start_version: u64,
    /// The totals up to `start_version` (from the checkpoint; default for a new run).
    pub prior: Accounting,
}

struct WorkerInfo {
    name: String,
    samples: usize,
}

struct LeaseInfo {
    worker_id: u64,
    /// The policy version the lease was issued for (what its rollouts must be generated with).
    policy_version: u64,
    prompts: Vec<u64>,
    deadline: Instant,
}

pub struct State<B: AutodiffKernels> {
    config: LearnerConfig,
    /// What a submitted rollout may hold.
    limits: RolloutLimits,
    prompts: Vec<Vec<u32>>,
    sampling_seed: u64,
    learner: Option<ActorRef<PpoLearnerMsg>>,
    membership: ActorRef<MembershipMsg>,
    publisher: ActorRef<PublisherMsg>,
    /// True while the PPO learner updates.
    updating: bool,
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
    score_seconds: Vec<f64>,
    done: bool,
    on_iteration: OnIteration,
    _backend: PhantomData<fn() -> B>,
}

impl<B: AutodiffKernels> State<B> {
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
    fn run_totals(&self, prompt_limit: usize) -> Accounting {
        let (prior, own) = (&self.prior, &self.totals);
        Accounting {
            prompts_accounted: prior.prompts_accounted + self.accounted.range(..prompt_limit as u64).count(),
            leases_issued: prior.leases_issued + own.leases_issued,
            leases_reissued: prior.leases_reissued + own.leases_reissued,
            workers_joined: prior.workers_joined + own.workers_joined,
            workers_expired: prior.workers_expired + own.workers_expired,
            submissions_refused: prior.submissions_refused + own.submissions_refused,
            resumes: prior.resumes + own.resumes,
        }
    }

    /// The rollouts of the iteration being trained, if all have arrived.
    fn complete_batch(&self) -> Option<Vec<u64>> {
        let batch = self.config.train.batch_size as u64;
        let range = self.version * batch..(self.version + 1) * batch;
        (self.buffer.range(range.clone()).count() as u64 == batch).then(|| range.collect())
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
            let name = self.workers.get(&lease.worker_id).map(|w| w.name.clone()).unwrap_or_default();
            tracing::warn!(lease_id, worker_id = lease.worker_id, worker = %name, prompts = lease.prompts.len(), "{why}; re-issuing its prompts");
            self.totals.leases_reissued += 1;
            self.pending.push_front(lease.prompts);
        }
    }
}

pub struct Coordinator<B>(PhantomData<fn() -> B>);

impl<B> Default for Coordinator<B> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<B: AutodiffKernels> Actor for Coordinator<B> {
    type Msg = CoordinatorMsg;
    type State = State<B>;
    type Arguments = CoordinatorArgs<B>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let start_version = args.start_version;
        let model_limits = (args.trainer.policy.vocab_size(), args.trainer.policy.n_positions());
        let runtime = &args.config.runtime;
        let weights = WeightSnapshot::of(&args.trainer.policy.valid(), start_version, runtime.weights_dtype)?;
        let cell = myself.get_cell();
        let (publisher, _) = Actor::spawn_linked(Some(PUBLISHER.into()), Publisher, weights, cell.clone()).await?;
        let settings = RunSettings {
            sampling_json: args.sampling_json,
            model_config_json: args.model_config_json,
            tokenizer_json: args.tokenizer_json,
            eos_id: args.eos_id,
            heartbeat_interval_ms: runtime.heartbeat_interval_ms,
        };
        let membership_args = MembershipArgs {
            settings,
            heartbeat_timeout: Duration::from_secs_f64(runtime.heartbeat_timeout_s),
            coordinator: myself.clone(),
            start_version,
        };
        let (membership, _) =
            Actor::spawn_linked(Some(MEMBERSHIP.into()), Membership, membership_args, cell.clone()).await?;
        let learner_args = PpoLearnerArgs {
            trainer: args.trainer,
            coordinator: myself.clone(),
            total_optimizer_steps: args.config.train.total_optimizer_steps(),
            weights_dtype: runtime.weights_dtype,
            on_done: args.on_done,
            on_checkpoint: args.on_checkpoint,
            checkpoint_every: runtime.checkpoint_every,
        };
        let (learner, _) =
            Actor::spawn_linked(Some("ppo-learner".into()), PpoLearner::<B>::default(), learner_args, cell).await?;
        myself.send_interval(Duration::from_millis(200), || CoordinatorMsg::Tick);
        let sampling_seed = args.config.train.sampling.seed;
        let limits = RolloutLimits {
            vocab_size: model_limits.0,
            n_positions: model_limits.1,
            max_new_tokens: args.config.train.sampling.max_new_tokens,
        };
        let mut state = State {
            limits,
            config: args.config,
            prompts: args.prompts,
            sampling_seed,
            learner: Some(learner),
            membership,
            publisher,
            updating: false,
            version: start_version,
            workers: BTreeMap::new(),
            next_lease_id: 1,
            leases_per_iteration: BTreeMap::new(),
            queued_iteration: start_version.checked_sub(1),
            pending: VecDeque::new(),
            leases: BTreeMap::new(),
            buffer: BTreeMap::new(),
            totals: Accounting::default(),
            prior: args.prior,
            accounted: BTreeSet::new(),
            iteration_started: Instant::now(),
            score_seconds: Vec::new(),
            done: false,
            on_iteration: args.on_iteration,
            _backend: PhantomData,
        };
        state.start_iteration();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        crate::logged("coordinator", handle_message(myself, message, state).await)
    }

    /// Supervision policy: the run cannot go on without any child (membership, publisher, PPO
    /// learner), so a child's failure stops the coordinator (and the process exits with an error).
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(who, error) => {
                let name = who.get_name().unwrap_or_default();
                tracing::error!(actor = %name, %error, "a learner actor failed; stopping the run");
                state.learner = None;
                myself.stop(Some(format!("{name} failed: {error}")));
            }
            SupervisionEvent::ActorTerminated(who, _, reason) if !state.done => {
                let name = who.get_name().unwrap_or_default();
                tracing::error!(actor = %name, ?reason, "a learner actor stopped before the run ended");
                state.learner = None;
                myself.stop(Some(format!("{name} stopped")));
            }
            _ => {}
        }
        Ok(())
    }
}

async fn handle_message<B: AutodiffKernels>(
    _myself: ActorRef<CoordinatorMsg>,
    message: CoordinatorMsg,
    state: &mut State<B>,
) -> Result<(), ActorProcessingErr> {
    match message {
        CoordinatorMsg::WorkerJoined { worker_id, name, reply } => {
            state.totals.workers_joined += 1;
            state.workers.insert(worker_id, WorkerInfo { name, samples: 0 });
            let _ = reply.send(());
        }
        CoordinatorMsg::WorkerExpired { worker_id } => {
            state.totals.workers_expired += 1;
            let owned: Vec<u64> =
                state.leases.iter().filter(|(_, l)| l.worker_id == worker_id).map(|(&id, _)| id).collect();
            for lease_id in owned {
                state.reissue(lease_id, "lease of an expired worker");
            }
            state.workers.remove(&worker_id);
        }
        CoordinatorMsg::Lease { worker_id, reply } => {
            let _ = reply.send(lease(state, worker_id));
        }
        CoordinatorMsg::Submit { request, score_seconds, reply } => {
            let result = submit(state, request);
            if result.is_ok() {
                state.score_seconds.push(score_seconds);
            }
            let _ = reply.send(result);
            if !state.updating {
                start_update(state)?;
            }
        }
        CoordinatorMsg::Return { worker_id, lease_id, reply } => {
            let owned = state.leases.get(&lease_id).is_some_and(|l| l.worker_id == worker_id);
            if owned {
                state.reissue(lease_id, "lease returned by its worker");
            }
            let _ = reply.send(Ok(()));
        }
        CoordinatorMsg::Tick => expire(state),
        CoordinatorMsg::Updated(updated) => {
            finish_update(state, updated)?;
            if state.done {
                let totals = state.run_totals(usize::MAX);
                if let Some(learner) = &state.learner {
                    learner.send_message(PpoLearnerMsg::Finish(totals))?;
                }
            }
        }
    }
    Ok(())
}

fn lease<B: AutodiffKernels>(state: &mut State<B>, worker_id: u64) -> Result<pb::LeasePromptsResponse, Status> {
    use pb::lease_prompts_response::Reply;
    if !state.workers.contains_key(&worker_id) {
        return Err(Status::not_found(format!("worker {worker_id} is unknown or expired; join again")));
    }
    if state.done {
        return Ok(pb::LeasePromptsResponse { reply: Some(Reply::Done(true)) });
    }
    state.maybe_queue_next();
    let Some(prompts) = state.pending.pop_front() else {
        return Ok(pb::LeasePromptsResponse { reply: Some(Reply::WaitMs(50)) });
    };
    let lease_id = state.next_lease_id;
    state.next_lease_id += 1;
    // The first lease of an iteration uses the local loop's seed, so one worker repeats
    // `ppo --local` exactly; later leases get their own streams.
    let iteration = prompts[0] / state.config.train.batch_size as u64;
    let issued = state.leases_per_iteration.entry(iteration).or_default();
    let seed = state.sampling_seed.wrapping_add(iteration).wrapping_add(*issued << 32);
    *issued += 1;
    state.totals.leases_issued += 1;
    let deadline = Instant::now() + Duration::from_secs_f64(state.config.runtime.lease_timeout_s);
    let wire_prompts = prompts.iter().map(|&i| pb::Prompt { prompt_index: i, ids: state.prompt(i) }).collect();
    state.leases.insert(lease_id, LeaseInfo { worker_id, policy_version: state.version, prompts, deadline });
    let deadline_ms = (state.config.runtime.lease_timeout_s * 1000.0) as u64;
    Ok(pb::LeasePromptsResponse {
        reply: Some(Reply::Lease(pb::Lease {
            lease_id,
            policy_version: state.version,
            prompts: wire_prompts,
            seed,
            deadline_ms,
        })),
    })
}

fn submit<B: AutodiffKernels>(state: &mut State<B>, request: pb::SubmitRolloutsRequest) -> Result<u32, Status> {
    let Some(lease) = state.leases.get(&request.lease_id) else {
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
    if let Err(status) = check_submission(&request, &claim, &state.limits, |i| state.prompt(i)) {
        tracing::warn!(worker_id = request.worker_id, lease_id = request.lease_id, error = %status.message(), "submission refused");
        state.totals.submissions_refused += 1;
        return Err(status);
    }
    let lag = state.config.runtime.max_policy_lag;
    let version = lease.policy_version;
    if version > state.version || state.version - version > lag {
        // Too stale to train on: drop it and roll the prompts out again with fresh weights.
        let message = format!(
            "lease {} was rolled out with policy version {version}, but the learner is at {} (max_policy_lag {lag})",
            request.lease_id, state.version
        );
        state.reissue(request.lease_id, "rollouts too stale");
        return Err(Status::failed_precondition(message));
    }
    state.leases.remove(&request.lease_id);
    let n = request.rollouts.len() as u32;
    for r in request.rollouts {
        // Exactly once: a prompt is accounted when its lease is accepted, never again.
        assert!(state.accounted.insert(r.prompt_index), "prompt {} accounted twice", r.prompt_index);
        tracing::debug!(
            rollout_id = r.rollout_id,
            worker_id = r.worker_id,
            policy_version = r.policy_version,
            "rollout accepted"
        );
        let lineage = Lineage {
            rollout_id: r.rollout_id,
            worker_id: r.worker_id,
            lease_id: request.lease_id,
            policy_version: r.policy_version,
            prompt_index: r.prompt_index,
        };
        let rollout = Rollout { query: r.query, response: r.response, logprobs: r.logprobs, score: r.score };
        state.buffer.insert(r.prompt_index, (lineage, rollout));
    }
    if let Some(worker) = state.workers.get_mut(&request.worker_id) {
        worker.samples += n as usize;
    }
    Ok(n)
}

fn expire<B: AutodiffKernels>(state: &mut State<B>) {
    let now = Instant::now();
    let late: Vec<u64> = state.leases.iter().filter(|(_, l)| now > l.deadline).map(|(&id, _)| id).collect();
    for lease_id in late {
        state.reissue(lease_id, "lease deadline passed");
    }
}

/// Starts the update of the iteration being trained if all its rollouts are in.
fn start_update<B: AutodiffKernels>(state: &mut State<B>) -> Result<(), ActorProcessingErr> {
    let Some(indices) = state.complete_batch() else {
        return Ok(());
    };
    let rollouts: Vec<Rollout> = indices.iter().map(|i| state.buffer[i].1.clone()).collect();
    // What a checkpoint of the next version covers: the prompts of every version up to it.
    let totals = state.run_totals((state.version as usize + 1) * state.config.train.batch_size);
    let learner = state.learner.as_ref().ok_or("the PPO learner is gone")?;
    learner.send_message(PpoLearnerMsg::Update { rollouts, next_version: state.version + 1, totals })?;
    state.updating = true;
    Ok(())
}

fn finish_update<B: AutodiffKernels>(state: &mut State<B>, result: Updated) -> Result<(), ActorProcessingErr> {
    let rollout_wait = state.iteration_started.elapsed().as_secs_f64() - result.update_seconds - result.publish_seconds;
    state.updating = false;
    let mut stats = result.stats?;
    let weights = result.weights?;
    // This iteration's rollouts leave the buffer; later iterations' (max_policy_lag > 0) stay.
    let batch = state.config.train.batch_size as u64;
    let trained: Vec<(Lineage, Rollout)> =
        (state.version * batch..(state.version + 1) * batch).filter_map(|i| state.buffer.remove(&i)).collect();
    let n = trained.len() as f64;
    insert_reward_stats(&mut stats, trained.iter().map(|(_, r)| r.score));
    let mean = stats["env/reward_mean"];
    stats.insert("time/rollout_wait".into(), rollout_wait.max(0.0));
    stats.insert("time/update".into(), result.update_seconds);
    stats.insert("time/weight_sync".into(), result.publish_seconds);
    stats.insert("weights/bytes".into(), weights.bytes.len() as f64);
    // Policy versions between generating a rollout and training on it.
    let staleness: Vec<f64> = trained.iter().map(|(l, _)| (state.version - l.policy_version) as f64).collect();
    stats.insert("staleness/mean".into(), staleness.iter().sum::<f64>() / n);
    stats.insert("staleness/max".into(), staleness.iter().copied().fold(0.0, f64::max));
    stats.insert("workers/active".into(), state.workers.len() as f64);
    let elapsed = state.iteration_started.elapsed().as_secs_f64().max(1e-9);
    stats.insert("samples_per_s".into(), n / elapsed);
    for (id, worker) in &state.workers {
        stats.insert(format!("workers/{id}/samples_per_s"), worker.samples as f64 / elapsed);
    }
    let mut latencies = state.score_seconds.clone();
    latencies.sort_by(f64::total_cmp);
    if !latencies.is_empty() {
        let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        stats.insert("reward_server/latency_p50".into(), pick(0.5));
        stats.insert("reward_server/latency_p99".into(), pick(0.99));
    }
    let iteration = state.version as usize;
    tracing::info!(
        iteration = iteration + 1,
        policy_version = weights.version,
        reward = format!("{mean:.4}"),
        kl = format!("{:.4}", stats["objective/kl"]),
        workers = state.workers.len(),
        "iteration done"
    );
    let lineage: Vec<Lineage> = trained.into_iter().map(|(l, _)| l).collect();
    (state.on_iteration)(iteration, &stats, &lineage);
    state.version = weights.version;
    state.publisher.send_message(PublisherMsg::Publish(weights))?;
    state.done = state.version as usize >= state.config.train.iterations;
    state.membership.send_message(MembershipMsg::Progress { version: state.version, done: state.done })?;
    if state.done {
        tracing::info!(iterations = state.version, "run finished");
    } else {
        state.start_iteration();
        // With max_policy_lag > 0 the next batch may already be complete.
        start_update(state)?;
    }
    Ok(())
}

/// A shared handle the gRPC service uses.
pub type CoordinatorRef = ActorRef<CoordinatorMsg>;
