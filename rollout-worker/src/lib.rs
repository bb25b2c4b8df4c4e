//! Rollout worker: joins the learner, pulls the current weights, then loops: lease prompts,
//! generate with the KV cache, score on a reward server, submit the scored rollouts.
//!
//! New weights are fetched when a lease names a newer policy version, and swapped in between
//! generation batches. Peers may be unavailable for a while (a restart): every call retries
//! with bounded, jittered backoff ([`retry`]), and the worker gives up only after `patience`
//! without progress. A learner that no longer knows the worker (it restarted) is joined again
//! under a new id, dropping the unfinished lease. A reward server that fails hands the request to
//! the next one ([`reward`]). On SIGTERM/Ctrl-C a worker returns its unfinished lease and exits
//! cleanly, also while it is waiting for a peer.

pub mod config;
pub mod peer_input;
mod peers;
pub mod retry;
pub mod reward;
pub mod weights;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rlhf_proto::v1 as pb;
use rlhf_trainer::Kernels;
use rlhf_trainer::{Generator, Gpt2, Gpt2Config, SamplingConfig};
use tokio::sync::watch;
use tonic::{Code, Status};
use tracing::Instrument;

use crate::peer_input::RunSettings;
use crate::peers::{Flow, Peers};
pub use crate::peers::{Learner, RewardServer, learner_client, reward_client};
use crate::retry::{Backoff, unknown_worker};
use crate::reward::Rotation;

pub use config::WorkerConfig;

/// Errors that end a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("learner {url}: {status}")]
    Learner { url: String, status: Status },
    #[error("reward server {url}: {status}")]
    Reward { url: String, status: Status },
    #[error("{url} does not serve {service} (is it the {other}?)")]
    WrongService { url: String, service: &'static str, other: &'static str },
    #[error("gave up on the {peer} at {url}: no progress for {seconds:.0} s (--patience-s); last error: {last}")]
    GaveUp { peer: &'static str, url: String, seconds: f64, last: String },
    #[error("{peer} at {url}: {problem}")]
    Tls { peer: &'static str, url: String, problem: rlhf_secure::TlsProblem },
    #[error("{url}: {error}")]
    Security { url: String, error: rlhf_secure::SecureError },
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("weights for policy version {version}: {status}")]
    Download { version: u64, status: Status },
    #[error("weights for policy version {version}: {error}")]
    Weights { version: u64, error: weights::WeightsError },
    #[error("bad message from the learner: {0}")]
    Peer(#[from] peer_input::PeerInputError),
    #[error("generation stopped: {0}")]
    GenerationTask(tokio::task::JoinError),
    #[error("no reward server address")]
    NoRewardServer,
    #[error(transparent)]
    Input(#[from] rlhf_trainer::error::InputError),
}

/// Where to connect and what to run as.
pub struct WorkerOptions {
    pub learner: String,
    pub rewards: Vec<String>,
    pub name: String,
    /// Per-call deadline.
    pub timeout: Duration,
    /// Give up on a peer after this long without progress.
    pub patience: Duration,
    /// Fault injection for tests: wait this long after taking a lease.
    pub hold_lease: Duration,
    /// TLS for `https://` peers.
    pub tls: rlhf_secure::TlsConfig,
    /// Tokens for the learner and the reward servers.
    pub auth: rlhf_secure::AuthConfig,
}

/// Downloads one weights version, checks length and CRC, and returns it as an fp32 safetensors
/// buffer (bf16 on the wire is widened).
pub async fn download_weights(client: &mut Learner, version: u64) -> Result<Vec<u8>, WorkerError> {
    let download = |status| WorkerError::Download { version, status };
    let bad = |error| WorkerError::Weights { version, error };
    let request = pb::GetWeightsRequest { policy_version: version };
    let mut stream = client.get_weights(request).await.map_err(download)?.into_inner();
    let mut assembler = weights::Assembler::new(version);
    while let Some(chunk) = stream.message().await.map_err(download)? {
        assembler.push(&chunk).map_err(bad)?;
    }
    assembler.finish().map_err(bad)
}

/// Fetches one weights version and builds the model from it.
async fn fetch_weights<B: Kernels>(
    client: &mut Learner,
    version: u64,
    config: &Gpt2Config,
    device: &B::Device,
) -> Result<Gpt2<B>, WorkerError> {
    let bad = |error| WorkerError::Weights { version, error };
    let bytes = download_weights(client, version).await?;
    weights::model_from_safetensors::<B>(bytes, config, device).map_err(bad)
}

/// Stops the heartbeat task when the session that started it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a worker until the learner says the run is done (`Ok`), or `stop` fires (returns the
/// lease in hand, then `Ok`).
pub async fn run<B: Kernels>(
    options: WorkerOptions,
    device: B::Device,
    stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let auth = &options.auth;
    fn security(url: &str) -> impl FnOnce(rlhf_secure::SecureError) -> WorkerError + '_ {
        move |error| WorkerError::Security { url: url.to_string(), error }
    }
    // Tokens go only over TLS, unless plain text is allowed explicitly (with a warning).
    let token = auth.token().map_err(security(&options.learner))?;
    let token = auth.for_peer(token, &options.learner).map_err(security(&options.learner))?;
    let learner = learner_client(&options.learner, options.timeout, &options.tls, token.as_ref())?;
    let reward_token = auth.reward_token().map_err(security(&options.learner))?;
    let rewards: Vec<(String, RewardServer)> = options
        .rewards
        .iter()
        .map(|url| {
            let token = auth.for_peer(reward_token.clone(), url).map_err(security(url))?;
            Ok((url.clone(), reward_client(url, options.timeout, &options.tls, token.as_ref())?))
        })
        .collect::<Result<_, WorkerError>>()?;
    if rewards.is_empty() {
        return Err(WorkerError::NoRewardServer);
    }
    // Jitter differs between workers (their pids), so they do not retry in lockstep.
    let seed = std::process::id() as u64;
    let mut peers = Peers {
        learner,
        learner_url: options.learner.clone(),
        rotation: Rotation::new(rewards.len()),
        rewards,
        backoff: Backoff::new(options.patience, seed ^ 0x9e37_79b9_7f4a_7c15),
        stop,
    };
    // Kept across sessions: after a learner restart the weights of a version are still good.
    let mut model: Option<(u64, Generator<B>)> = None;
    loop {
        match session::<B>(&mut peers, &options, &device, &mut model).await {
            Ok(()) | Err(Flow::Stopped) => return Ok(()),
            Err(Flow::Rejoin) => {
                tracing::warn!(worker = %options.name, "the learner no longer knows this worker (it restarted, or expired the worker); joining again");
            }
            Err(Flow::Failed(error)) => return Err(error),
        }
    }
}

/// One membership of the learner: join, then lease, roll out, score and submit until the run is
/// done, the worker stops, or the learner forgets it.
async fn session<B: Kernels>(
    peers: &mut Peers,
    options: &WorkerOptions,
    device: &B::Device,
    model: &mut Option<(u64, Generator<B>)>,
) -> Result<(), Flow> {
    let name = options.name.clone();
    let joined = peers
        .learner(|mut learner| {
            let name = name.clone();
            async move { learner.join(pb::JoinRequest { name }).await.map(|r| r.into_inner()) }
        })
        .await?;
    let worker_id = joined.worker_id;
    let settings = RunSettings::from_join(&joined).map_err(|e| Flow::Failed(e.into()))?;
    tracing::info!(worker_id, worker = %name, "joined the learner");

    // Heartbeats run beside the main loop; one answered "unknown" means the learner forgot us.
    let forgotten = Arc::new(AtomicBool::new(false));
    let _heartbeat = {
        let mut learner = peers.learner.clone();
        let forgotten = forgotten.clone();
        let interval = Duration::from_millis(joined.heartbeat_interval_ms.clamp(100, 60_000));
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                match learner.heartbeat(pb::HeartbeatRequest { worker_id }).await {
                    Err(status) if unknown_worker(&status) => forgotten.store(true, Ordering::Relaxed),
                    Err(status) => tracing::debug!(code = ?status.code(), "heartbeat failed"),
                    Ok(_) => {}
                }
            }
        }))
    };

    let mut next_rollout_id = worker_id << 40;
    loop {
        if peers.stopping() {
            return Err(Flow::Stopped);
        }
        if forgotten.load(Ordering::Relaxed) {
            return Err(Flow::Rejoin);
        }
        // Keep up with published versions even between leases, so every live worker holds every
        // version (and a lease never waits for a download it could have done earlier).
        let current = peers
            .learner(
                |mut l| async move { l.heartbeat(pb::HeartbeatRequest { worker_id }).await.map(|r| r.into_inner()) },
            )
            .await?;
        if current.done {
            return Ok(());
        }
        if model.as_ref().map(|(v, _)| *v) != Some(current.policy_version) {
            match fetch_weights::<B>(&mut peers.learner, current.policy_version, &settings.model_config, device).await {
                Ok(fresh) => {
                    tracing::info!(worker_id, policy_version = current.policy_version, "loaded weights");
                    metrics::gauge!("rlhf_worker_policy_version").set(current.policy_version as f64);
                    *model = Some((current.policy_version, Generator::new(fresh)));
                }
                // The version moved on while we asked, or the learner is restarting: the next
                // round tries again.
                Err(e) => tracing::debug!(error = %e, "weights not fetched"),
            }
        }
        let held = model.as_ref().map(|(v, _)| *v).unwrap_or(u64::MAX);
        let reply = peers
            .learner(|mut l| async move {
                l.lease_prompts(pb::LeasePromptsRequest { worker_id, policy_version: held })
                    .await
                    .map(|r| r.into_inner())
            })
            .await?;
        let lease = match reply.reply {
            Some(pb::lease_prompts_response::Reply::Lease(lease)) => lease,
            Some(pb::lease_prompts_response::Reply::WaitMs(ms)) => {
                tokio::time::sleep(Duration::from_millis(ms.min(5_000))).await;
                continue;
            }
            Some(pb::lease_prompts_response::Reply::Done(_)) | None => return Ok(()),
        };
        if let Err(e) = settings.check_lease(&lease) {
            return Err(Flow::Failed(e.into()));
        }
        let outcome =
            roll_out::<B>(peers, options, device, model, &lease, worker_id, &settings, &mut next_rollout_id).await;
        match outcome {
            Ok(()) => {}
            Err(Flow::Stopped) => {
                // Give the prompts back so another worker rolls them out; one try, no waiting.
                let request = pb::ReturnLeaseRequest { worker_id, lease_id: lease.lease_id };
                match peers.learner.clone().return_lease(request).await {
                    Ok(_) => tracing::info!(worker_id, lease_id = lease.lease_id, "returned the lease before stopping"),
                    Err(status) => {
                        tracing::warn!(worker_id, lease_id = lease.lease_id, %status, "could not return the lease before stopping; it will expire")
                    }
                }
                return Err(Flow::Stopped);
            }
            Err(other) => return Err(other),
        }
    }
}

/// One lease: weights, generation, scores, submission.
#[allow(clippy::too_many_arguments)]
async fn roll_out<B: Kernels>(
    peers: &mut Peers,
    options: &WorkerOptions,
    device: &B::Device,
    model: &mut Option<(u64, Generator<B>)>,
    lease: &pb::Lease,
    worker_id: u64,
    settings: &RunSettings,
    next_rollout_id: &mut u64,
) -> Result<(), Flow> {
    // Per lease at debug: 16 workers must not drown the learner's lines in `rlhf run`.
    tracing::debug!(
        worker_id,
        lease_id = lease.lease_id,
        policy_version = lease.policy_version,
        prompts = lease.prompts.len(),
        "lease received"
    );
    if !options.hold_lease.is_zero() {
        let mut stop = peers.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(options.hold_lease) => {}
            _ = stop.changed() => {}
        }
    }
    // Swap in new weights between generation batches.
    while model.as_ref().map(|(v, _)| *v) != Some(lease.policy_version) {
        if peers.stopping() {
            return Err(Flow::Stopped);
        }
        let started = Instant::now();
        match fetch_weights::<B>(&mut peers.learner, lease.policy_version, &settings.model_config, device).await {
            Ok(fresh) => {
                tracing::info!(
                    worker_id,
                    policy_version = lease.policy_version,
                    seconds = started.elapsed().as_secs_f64(),
                    "loaded weights"
                );
                metrics::gauge!("rlhf_worker_policy_version").set(lease.policy_version as f64);
                *model = Some((lease.policy_version, Generator::new(fresh)));
                peers.backoff.progress();
            }
            Err(WorkerError::Download { status, .. }) if status.message().contains("not available") => {
                // The learner moved to a newer version: this lease is stale, drop it.
                tracing::warn!(
                    worker_id,
                    lease_id = lease.lease_id,
                    "the lease's weights are gone; dropping the lease"
                );
                return Ok(());
            }
            Err(e) => {
                let url = peers.learner_url.clone();
                peers.wait("learner", &url, &Status::unavailable(e.to_string())).await?;
            }
        }
    }
    let (_, policy) = model.as_ref().expect("the loop above loads the lease's weights");
    let queries: Vec<Vec<u32>> = lease.prompts.iter().map(|p| p.ids.clone()).collect();
    let (lease_sampling, eos_id) = (SamplingConfig { seed: lease.seed, ..settings.sampling.clone() }, settings.eos_id);
    let generated = Instant::now();
    let generation = {
        let (policy, queries, device) = (policy.clone(), queries.clone(), device.clone());
        let span =
            tracing::info_span!("rollout", worker_id, lease_id = lease.lease_id, policy_version = lease.policy_version);
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| policy.generate(&queries, eos_id, &lease_sampling, &device))
        })
        .await
        .map_err(|e| Flow::Failed(WorkerError::GenerationTask(e)))?
        .map_err(|e| Flow::Failed(e.into()))?
    };
    let tokens: usize = generation.completion_ids.iter().map(Vec::len).sum();
    metrics::gauge!("rlhf_worker_tokens_per_second").set(tokens as f64 / generated.elapsed().as_secs_f64().max(1e-9));
    metrics::counter!("rlhf_worker_tokens_total").increment(tokens as u64);
    if peers.stopping() {
        return Err(Flow::Stopped);
    }
    let sequences: Vec<pb::Sequence> = queries
        .iter()
        .zip(&generation.completion_ids)
        .map(|(q, r)| {
            // Text too when the reward model tokenises differently (the learner sent a tokenizer).
            let (query_text, response_text) = match &settings.text_tokenizer {
                Some(t) => (t.decode(q).unwrap_or_default(), t.decode(r).unwrap_or_default()),
                None => (String::new(), String::new()),
            };
            pb::Sequence { query: q.clone(), response: r.clone(), query_text, response_text }
        })
        .collect();
    let started = Instant::now();
    let scores = peers
        .score(&sequences)
        .instrument(tracing::info_span!(
            "score",
            worker_id,
            lease_id = lease.lease_id,
            policy_version = lease.policy_version
        ))
        .await?;
    let score_seconds = started.elapsed().as_secs_f64();
    let rollouts: Vec<pb::Rollout> = lease
        .prompts
        .iter()
        .zip(generation.completion_ids)
        .zip(generation.logprobs)
        .zip(scores)
        .map(|(((prompt, response), logprobs), score)| {
            *next_rollout_id += 1;
            pb::Rollout {
                rollout_id: *next_rollout_id,
                worker_id,
                lease_id: lease.lease_id,
                policy_version: lease.policy_version,
                prompt_index: prompt.prompt_index,
                query: prompt.ids.clone(),
                response,
                logprobs,
                score,
            }
        })
        .collect();
    let request = pb::SubmitRolloutsRequest { worker_id, lease_id: lease.lease_id, rollouts, score_seconds };
    let submitted = peers
        .learner(|mut l| {
            let request = request.clone();
            async move { l.submit_rollouts(request).await.map(|r| r.into_inner()) }
        })
        .await;
    match submitted {
        Ok(reply) => {
            metrics::counter!("rlhf_worker_rollouts_submitted_total").increment(reply.accepted as u64);
            tracing::debug!(worker_id, lease_id = lease.lease_id, accepted = reply.accepted, "rollouts submitted")
        }
        // The lease expired while we worked (its prompts went to someone else), or the
        // learner refused the rollouts: the learner re-issues the prompts either way.
        Err(Flow::Failed(WorkerError::Learner { status, .. })) if status.code() == Code::FailedPrecondition => {
            tracing::warn!(worker_id, lease_id = lease.lease_id, %status, "rollouts refused")
        }
        Err(Flow::Failed(WorkerError::Learner { status, .. })) if status.code() == Code::InvalidArgument => {
            tracing::error!(worker_id, lease_id = lease.lease_id, %status, "the learner found the rollouts invalid")
        }
        Err(other) => return Err(other),
    }
    Ok(())
}
