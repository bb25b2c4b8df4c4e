//! The PPO learner actor: owns the policy, its value head, the frozen reference and the optimizer
//! (a [`PpoTrainer`]). It runs each update on a blocking thread, serialises the new weights, and
//! reports back to its parent (the coordinator) as a [`LearnerEvent`]; at the end of the run it
//! hands the trainer to `on_done`.

use std::time::Instant;

use burn::module::AutodiffModule;
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};
use rlhf_trainer::AutodiffKernels;
use rlhf_trainer::error::{CheckpointError, TrainError};
use rlhf_trainer::model::wire::WireDtype;
use rlhf_trainer::ppo::{PpoTrainer, Rollout};
use rlhf_trainer::train::Stats;

use crate::accounting::Accounting;
use crate::weights::{SnapshotError, WeightSnapshot};

pub enum PpoLearnerMsg<B: AutodiffKernels> {
    /// Train on one iteration's rollouts, then publish `next_version`.
    /// `totals` are the run's up to `next_version`, written with its checkpoint.
    Update { rollouts: Vec<Rollout>, next_version: u64, totals: Accounting },
    /// Internal: the update thread hands the trainer back with what the update produced; the
    /// actor writes a checkpoint if one is due and reports [`LearnerEvent::Updated`]. (Boxed:
    /// a trainer is kilobytes of tensor handles, and every message is as large as the largest.)
    StepDone { trainer: Box<PpoTrainer<B>>, updated: Updated },
    /// The run is over: hand the trainer and the run's final totals to `on_done`.
    EndRun(Accounting),
    /// The process was asked to stop (SIGTERM): finish the update that is running, if any, start
    /// no other, and checkpoint the newest version unless it is checkpointed already. Replies
    /// with the version written (`None`: nothing new to write).
    Stop(StopReply),
}

/// Where [`PpoLearnerMsg::Stop`] answers: the version checkpointed, if any, or why it failed.
pub type StopReply = RpcReplyPort<Result<Option<u64>, String>>;

/// What the PPO learner tells its parent.
pub enum LearnerEvent {
    /// An update finished (or failed): its stats and the new version's weights.
    Updated(Updated),
}

/// What an update reports to the coordinator.
pub struct Updated {
    pub stats: Result<Stats, TrainError>,
    pub weights: Result<WeightSnapshot, SnapshotError>,
    pub update_seconds: f64,
    pub publish_seconds: f64,
}

pub struct PpoLearnerArgs<B: AutodiffKernels> {
    pub trainer: PpoTrainer<B>,
    /// Where updates are reported (the coordinator).
    pub parent: DerivedActorRef<LearnerEvent>,
    pub total_optimizer_steps: usize,
    pub weights_dtype: WireDtype,
    pub on_done: OnDone<B>,
    /// Writes a checkpoint of the trainer at a policy version.
    pub on_checkpoint: Checkpointer<B>,
    /// Checkpoint every this many versions (0: never).
    pub checkpoint_every: u64,
    /// The version the run starts from (a resumed run's checkpoint).
    pub start_version: u64,
}

/// Called once with the trained trainer and the run's totals when the run is over; an error (the
/// trained model could not be written) fails the run.
pub type OnDone<B> = Box<dyn FnOnce(PpoTrainer<B>, Accounting) -> Result<(), String> + Send>;

/// Writes a checkpoint of the trainer at a policy version, with the run's totals up to it.
pub type Checkpointer<B> = Box<dyn FnMut(&PpoTrainer<B>, u64, &Accounting) -> Result<(), CheckpointError> + Send>;

pub struct PpoLearnerState<B: AutodiffKernels> {
    /// `None` while an update runs on its thread.
    trainer: Option<PpoTrainer<B>>,
    parent: DerivedActorRef<LearnerEvent>,
    total_optimizer_steps: usize,
    weights_dtype: WireDtype,
    on_done: Option<OnDone<B>>,
    on_checkpoint: Checkpointer<B>,
    checkpoint_every: u64,
    /// The run's totals up to the version being trained, for its checkpoint.
    totals: Accounting,
    /// The newest version trained (or the one the run started from).
    version: u64,
    /// The newest version with a checkpoint on disk.
    checkpointed: u64,
    /// Set by [`PpoLearnerMsg::Stop`]: no update starts any more; the reply waits for the one
    /// that is running.
    stopping: Option<Option<StopReply>>,
}

pub struct PpoLearner<B>(std::marker::PhantomData<fn() -> B>);

impl<B> Default for PpoLearner<B> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<B: AutodiffKernels> Actor for PpoLearner<B> {
    type Msg = PpoLearnerMsg<B>;
    type State = PpoLearnerState<B>;
    type Arguments = PpoLearnerArgs<B>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(PpoLearnerState {
            trainer: Some(args.trainer),
            parent: args.parent,
            total_optimizer_steps: args.total_optimizer_steps,
            weights_dtype: args.weights_dtype,
            on_done: Some(args.on_done),
            on_checkpoint: args.on_checkpoint,
            checkpoint_every: args.checkpoint_every,
            totals: Accounting::default(),
            version: args.start_version,
            checkpointed: args.start_version,
            stopping: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        crate::logged("ppo-learner", handle_message(myself, message, state).await)
    }
}

/// Writes a checkpoint of `trainer` at the newest version (file IO on this actor's thread:
/// nothing else runs here meanwhile).
fn write_checkpoint<B: AutodiffKernels>(
    state: &mut PpoLearnerState<B>,
    trainer: &PpoTrainer<B>,
) -> Result<u64, String> {
    let version = state.version;
    match tokio::task::block_in_place(|| (state.on_checkpoint)(trainer, version, &state.totals)) {
        Ok(()) => {
            tracing::info!(policy_version = version, "checkpoint written");
            state.checkpointed = version;
            Ok(version)
        }
        Err(e) => {
            tracing::error!(policy_version = version, error = %e, "checkpoint failed");
            Err(format!("checkpoint of version {version} failed: {e}"))
        }
    }
}

/// Checkpoints the newest version unless it is on disk already (for [`PpoLearnerMsg::Stop`]).
fn checkpoint_newest<B: AutodiffKernels>(state: &mut PpoLearnerState<B>) -> Result<Option<u64>, String> {
    if state.version == state.checkpointed {
        return Ok(None);
    }
    let trainer = state.trainer.take().ok_or("no trainer to checkpoint")?;
    let written = write_checkpoint(state, &trainer);
    state.trainer = Some(trainer);
    written.map(Some)
}

async fn handle_message<B: AutodiffKernels>(
    myself: ActorRef<PpoLearnerMsg<B>>,
    message: PpoLearnerMsg<B>,
    state: &mut PpoLearnerState<B>,
) -> Result<(), ActorProcessingErr> {
    match message {
        PpoLearnerMsg::Update { rollouts, next_version, totals } => {
            if state.stopping.is_some() {
                tracing::info!(policy_version = next_version, "stopping: update not started");
                return Ok(());
            }
            state.totals = totals;
            let mut trainer = state.trainer.take().ok_or("an update is already running")?;
            let (total_steps, dtype) = (state.total_optimizer_steps, state.weights_dtype);
            let iteration =
                tracing::info_span!("iteration", iteration = next_version, policy_version = next_version - 1);
            tokio::task::spawn_blocking(move || {
                let _iteration = iteration.enter();
                let started = Instant::now();
                let stats = tracing::info_span!("update", rollouts = rollouts.len())
                    .in_scope(|| trainer.step(&rollouts, total_steps));
                let update_seconds = started.elapsed().as_secs_f64();
                let started = Instant::now();
                let weights = tracing::info_span!("weight_sync", policy_version = next_version)
                    .in_scope(|| WeightSnapshot::of(&trainer.policy.valid(), next_version, dtype));
                let publish_seconds = started.elapsed().as_secs_f64();
                let updated = Updated { stats, weights, update_seconds, publish_seconds };
                let _ = myself.send_message(PpoLearnerMsg::StepDone { trainer: Box::new(trainer), updated });
            });
        }
        PpoLearnerMsg::StepDone { trainer, updated } => {
            if let Ok(weights) = &updated.weights {
                state.version = weights.version;
                // A checkpoint that cannot be written stops the run (the process exits with the
                // error): going on would leave nothing to resume from, silently.
                if state.checkpoint_every > 0 && state.version.is_multiple_of(state.checkpoint_every) {
                    write_checkpoint(state, &trainer)?;
                }
            }
            state.trainer = Some(*trainer);
            // The coordinator hears of the update before a stop is acknowledged: the stop drains
            // its queue, so the version's record and lineage are written before the process exits
            // (a checkpoint of a version whose record was lost would leave a gap on resume).
            state.parent.send_message(LearnerEvent::Updated(updated))?;
            if let Some(reply) = state.stopping.as_mut().and_then(Option::take) {
                let _ = reply.send(checkpoint_newest(state));
            }
        }
        PpoLearnerMsg::Stop(reply) => {
            if state.trainer.is_some() {
                state.stopping = Some(None);
                let _ = reply.send(checkpoint_newest(state));
            } else {
                tracing::info!(policy_version = state.version + 1, "stopping: finishing the running update first");
                state.stopping = Some(Some(reply));
            }
        }
        PpoLearnerMsg::EndRun(totals) => {
            let trainer = state.trainer.take().ok_or("the run ended during an update")?;
            if let Some(on_done) = state.on_done.take() {
                on_done(trainer, totals)?;
            }
        }
    }
    Ok(())
}
