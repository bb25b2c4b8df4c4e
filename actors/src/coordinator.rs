//! The learner's coordinator actor: the prompt stream, leases and the experience buffer (kept in
//! a [`Ledger`], plain bookkeeping without actors). It is the root of the learner's supervision
//! tree, with one job per child: membership ([`crate::membership`]: joins, heartbeats, expiry),
//! the weight publisher ([`crate::publisher`]) and the PPO learner ([`crate::ppo_learner`]: the
//! model, updates, checkpoints). If a child dies, the coordinator stops and the learner process
//! exits with an error: the run cannot go on without any of them.
//!
//! Children know nothing of this module: each reports through its own event type
//! ([`MembershipEvent`], [`LearnerEvent`]) on a [`DerivedActorRef`](ractor::DerivedActorRef) of
//! the coordinator, so a child can send only its events, and the coordinator turns them into its
//! own messages.
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

pub mod ledger;

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rlhf_proto::v1 as pb;
use rlhf_trainer::AutodiffKernels;
use rlhf_trainer::ppo::PpoTrainer;
use rlhf_trainer::train::Stats;
use tonic::Status;

pub use crate::accounting::{Accounting, Lineage};
use crate::config::LearnerConfig;
use crate::membership::{Membership, MembershipArgs, MembershipEvent, MembershipMsg, RunSettings};
use crate::ppo_learner::{LearnerEvent, PpoLearner, PpoLearnerArgs, PpoLearnerMsg, Updated};
use crate::publisher::{Publisher, PublisherMsg};
use crate::validation::RolloutLimits;
use crate::weights::WeightSnapshot;
use ledger::{Ledger, UpdateTiming};

/// Registered names of the children the gRPC service talks to.
pub const MEMBERSHIP: &str = "membership";
pub const PUBLISHER: &str = "publisher";
pub const PPO_LEARNER: &str = "ppo-learner";

/// Messages the coordinator handles. RPC handlers send one per call and await the reply;
/// children's events arrive wrapped in `Membership` and `Learner`.
pub enum CoordinatorMsg {
    /// `held_version`: the weights the worker holds (for `rlhf status`).
    Lease {
        worker_id: u64,
        held_version: u64,
        reply: RpcReplyPort<Result<pb::LeasePromptsResponse, Status>>,
    },
    /// The run's state, for `rlhf status` (membership fills in addresses and heartbeats).
    Status {
        reply: RpcReplyPort<pb::StatusResponse>,
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
    /// Re-issue leases past their deadline (sent by a timer).
    Tick,
    /// From membership: a worker joined or expired.
    Membership(MembershipEvent),
    /// From the PPO learner: an update finished.
    Learner(LearnerEvent),
}

impl From<MembershipEvent> for CoordinatorMsg {
    fn from(event: MembershipEvent) -> Self {
        Self::Membership(event)
    }
}

/// Gives an undelivered event back to its sender (what [`ActorRef::get_derived`] needs).
impl TryFrom<CoordinatorMsg> for MembershipEvent {
    type Error = CoordinatorMsg;

    fn try_from(message: CoordinatorMsg) -> Result<Self, Self::Error> {
        match message {
            CoordinatorMsg::Membership(event) => Ok(event),
            other => Err(other),
        }
    }
}

impl From<LearnerEvent> for CoordinatorMsg {
    fn from(event: LearnerEvent) -> Self {
        Self::Learner(event)
    }
}

impl TryFrom<CoordinatorMsg> for LearnerEvent {
    type Error = CoordinatorMsg;

    fn try_from(message: CoordinatorMsg) -> Result<Self, Self::Error> {
        match message {
            CoordinatorMsg::Learner(event) => Ok(event),
            other => Err(other),
        }
    }
}

/// Called after each iteration with its stats and the lineage of its rollouts.
pub type OnIteration = Box<dyn FnMut(usize, &Stats, &[Lineage]) + Send>;

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

pub struct State<B: AutodiffKernels> {
    /// Leases, the buffer and the run's totals.
    ledger: Ledger,
    learner: Option<ActorRef<PpoLearnerMsg<B>>>,
    membership: ActorRef<MembershipMsg>,
    publisher: ActorRef<PublisherMsg>,
    /// True while the PPO learner updates.
    updating: bool,
    on_iteration: OnIteration,
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
        let limits = RolloutLimits {
            vocab_size: args.trainer.policy.vocab_size(),
            n_positions: args.trainer.policy.n_positions(),
            max_new_tokens: args.config.train.sampling.max_new_tokens,
        };
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
            parent: myself.get_derived::<MembershipEvent>(),
            start_version,
            max_workers: runtime.max_workers,
            first_worker_id: crate::membership::first_worker_id(start_version > 0 || args.prior.resumes > 0),
        };
        let (membership, _) =
            Actor::spawn_linked(Some(MEMBERSHIP.into()), Membership, membership_args, cell.clone()).await?;
        let learner_args = PpoLearnerArgs {
            trainer: args.trainer,
            parent: myself.get_derived::<LearnerEvent>(),
            total_optimizer_steps: args.config.train.total_optimizer_steps(),
            weights_dtype: runtime.weights_dtype,
            on_done: args.on_done,
            on_checkpoint: args.on_checkpoint,
            checkpoint_every: runtime.checkpoint_every,
            start_version,
        };
        let (learner, _) =
            Actor::spawn_linked(Some(PPO_LEARNER.into()), PpoLearner::<B>::default(), learner_args, cell).await?;
        myself.send_interval(Duration::from_millis(200), || CoordinatorMsg::Tick);
        Ok(State {
            ledger: Ledger::new(args.config, limits, args.prompts, start_version, args.prior),
            learner: Some(learner),
            membership,
            publisher,
            updating: false,
            on_iteration: args.on_iteration,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        crate::logged("coordinator", handle_message(message, state))
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
            SupervisionEvent::ActorTerminated(who, _, reason) if !state.ledger.done() => {
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

fn handle_message<B: AutodiffKernels>(message: CoordinatorMsg, state: &mut State<B>) -> Result<(), ActorProcessingErr> {
    match message {
        CoordinatorMsg::Membership(MembershipEvent::WorkerJoined { worker_id, name, reply }) => {
            state.ledger.worker_joined(worker_id, name);
            let _ = reply.send(());
        }
        CoordinatorMsg::Membership(MembershipEvent::WorkerExpired { worker_id }) => {
            state.ledger.worker_expired(worker_id);
        }
        CoordinatorMsg::Lease { worker_id, held_version, reply } => {
            let _ = reply.send(state.ledger.lease(worker_id, held_version, Instant::now()));
        }
        CoordinatorMsg::Status { reply } => {
            let _ = reply.send(state.ledger.status());
        }
        CoordinatorMsg::Submit { request, score_seconds, reply } => {
            let _ = reply.send(state.ledger.submit(request, score_seconds));
            if !state.updating {
                start_update(state)?;
            }
        }
        CoordinatorMsg::Return { worker_id, lease_id, reply } => {
            state.ledger.return_lease(worker_id, lease_id);
            let _ = reply.send(Ok(()));
        }
        CoordinatorMsg::Tick => state.ledger.expire(Instant::now()),
        CoordinatorMsg::Learner(LearnerEvent::Updated(updated)) => {
            finish_update(state, updated)?;
            if state.ledger.done() {
                let totals = state.ledger.run_totals(usize::MAX);
                if let Some(learner) = &state.learner {
                    learner.send_message(PpoLearnerMsg::EndRun(totals))?;
                }
            }
        }
    }
    Ok(())
}

/// Starts the update of the iteration being trained if all its rollouts are in.
fn start_update<B: AutodiffKernels>(state: &mut State<B>) -> Result<(), ActorProcessingErr> {
    let Some(rollouts) = state.ledger.complete_batch() else {
        return Ok(());
    };
    let totals = state.ledger.totals_through_next_version();
    let learner = state.learner.as_ref().ok_or("the PPO learner is gone")?;
    let next_version = state.ledger.version() + 1;
    learner.send_message(PpoLearnerMsg::Update { rollouts, next_version, totals })?;
    state.updating = true;
    Ok(())
}

fn finish_update<B: AutodiffKernels>(state: &mut State<B>, result: Updated) -> Result<(), ActorProcessingErr> {
    state.updating = false;
    let mut stats = result.stats?;
    let weights = result.weights?;
    let timing = UpdateTiming {
        update_seconds: result.update_seconds,
        publish_seconds: result.publish_seconds,
        weight_bytes: weights.bytes.len(),
    };
    let lineage = state.ledger.close_iteration(&mut stats, timing);
    let iteration = state.ledger.version() as usize;
    log_iteration(&stats, iteration + 1, weights.version, state.ledger.n_workers());
    record_metrics(&stats, iteration + 1, weights.version, &state.ledger);
    (state.on_iteration)(iteration, &stats, &lineage);
    let version = weights.version;
    state.ledger.advance(version, Instant::now());
    state.publisher.send_message(PublisherMsg::Publish(weights))?;
    let done = state.ledger.done();
    state.membership.send_message(MembershipMsg::Progress { version, done })?;
    if done {
        tracing::info!(iterations = version, "run finished");
    } else {
        // With max_policy_lag > 0 the next batch may already be complete.
        start_update(state)?;
    }
    Ok(())
}

/// A shared handle the gRPC service uses.
pub type CoordinatorRef = ActorRef<CoordinatorMsg>;

/// "iteration done", with the record's metrics as typed fields under their documented names
/// (numbers stay numbers in `--log-format json`; a metric missing from the record is NaN, JSON
/// null). A tracing event holds at most 32 fields: these are the 29 a run is watched by; the
/// whole record, per-worker rates included, is in `metrics.jsonl` and on `/metrics`.
fn log_iteration(stats: &Stats, iteration: usize, version: u64, workers: usize) {
    let m = |name: &str| stats.get(name).copied().unwrap_or(f64::NAN);
    tracing::info!(
        iteration,
        policy_version = version,
        workers,
        "env/reward_mean" = m("env/reward_mean"),
        "env/reward_std" = m("env/reward_std"),
        "objective/kl" = m("objective/kl"),
        "objective/kl_coef" = m("objective/kl_coef"),
        "objective/entropy" = m("objective/entropy"),
        "ppo/loss/total" = m("ppo/loss/total"),
        "ppo/loss/policy" = m("ppo/loss/policy"),
        "ppo/loss/value" = m("ppo/loss/value"),
        "ppo/policy/clipfrac" = m("ppo/policy/clipfrac"),
        "ppo/policy/approxkl" = m("ppo/policy/approxkl"),
        "ppo/val/clipfrac" = m("ppo/val/clipfrac"),
        "ppo/val/var_explained" = m("ppo/val/var_explained"),
        "ppo/grad_norm" = m("ppo/grad_norm"),
        "ppo/learning_rate" = m("ppo/learning_rate"),
        "ppo/mean_scores" = m("ppo/mean_scores"),
        "tokens/responses_len_mean" = m("tokens/responses_len_mean"),
        "samples_per_s" = m("samples_per_s"),
        "time/update" = m("time/update"),
        "time/rollout_wait" = m("time/rollout_wait"),
        "time/weight_serialize" = m("time/weight_serialize"),
        "time/weight_broadcast" = m("time/weight_broadcast"),
        "weights/bytes" = m("weights/bytes"),
        "staleness/mean" = m("staleness/mean"),
        "staleness/max" = m("staleness/max"),
        "reward_server/latency_p50" = m("reward_server/latency_p50"),
        "reward_server/latency_p99" = m("reward_server/latency_p99"),
        "iteration done"
    );
}

/// The iteration's record as Prometheus gauges (`rlhf_` + the metric's name with every character
/// that is not a letter or digit as `_`: `env/reward_mean` is `rlhf_env_reward_mean`), and the
/// run's state beside it.
fn record_metrics(stats: &Stats, iteration: usize, version: u64, ledger: &Ledger) {
    for (name, value) in stats.iter() {
        metrics::gauge!(prometheus_name(name)).set(*value);
    }
    metrics::gauge!("rlhf_iteration").set(iteration as f64);
    metrics::gauge!("rlhf_policy_version").set(version as f64);
    metrics::gauge!("rlhf_workers_active").set(ledger.n_workers() as f64);
}

/// A metric's Prometheus name: `rlhf_` + `name` with every other character than a letter or
/// digit as `_`.
pub fn prometheus_name(name: &str) -> String {
    let body: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("rlhf_{body}")
}
