//! Rollout worker: joins the learner, pulls the current weights, then loops: lease prompts,
//! generate with the KV cache, score on the reward server, submit the scored rollouts.
//!
//! New weights are fetched when a lease names a newer policy version, and swapped in between
//! generation batches. The learner and reward server may be unavailable for a while (a restart):
//! calls retry with bounded backoff. On SIGTERM/Ctrl-C a worker returns its unfinished lease and
//! exits cleanly.

use std::time::{Duration, Instant};

use rlhf_trainer::Kernels;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use rlhf_proto::v1 as pb;
use rlhf_proto::v1::learner_client::LearnerClient;
use rlhf_proto::v1::reward_model_client::RewardModelClient;
use rlhf_trainer::gpt2::Init;
use rlhf_trainer::wire::{WireDtype, to_f32};
use rlhf_trainer::{Generator, Gpt2, Gpt2Config, Heads, SamplingConfig};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::Instrument;

/// Errors that end a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("learner {url}: {status}")]
    Learner { url: String, status: Status },
    #[error("reward server {url}: {status}")]
    Reward { url: String, status: Status },
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("weights for policy version {version}: {message}")]
    Weights { version: u64, message: String },
    #[error("bad run settings from the learner: {0}")]
    Settings(String),
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
    /// Give up on a peer after it has been unavailable this long.
    pub patience: Duration,
    /// Fault injection for tests: wait this long after taking a lease.
    pub hold_lease: Duration,
}

fn channel(url: &str, timeout: Duration) -> Result<Channel, WorkerError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| WorkerError::Connect { url: url.into(), message: e.to_string() })?
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20);
    Ok(endpoint.connect_lazy())
}

/// Codes worth retrying: the peer is down or slow. A connection that breaks mid-call (a server
/// killed while answering) surfaces as `Unknown` or `Cancelled`; retrying is safe because scoring
/// is idempotent and every learner call is idempotent or protected by its lease.
fn retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled)
}

/// Retries `call` with bounded exponential backoff while the peer is unavailable.
async fn with_backoff<T, F, Fut>(patience: Duration, what: &str, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        match call().await {
            Err(status) if retryable(&status) && started.elapsed() < patience => {
                tracing::warn!(peer = what, code = ?status.code(), retry_in_ms = delay.as_millis() as u64, "peer unavailable; backing off");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// Downloads one weights version, checks length and CRC, and returns it as an fp32 safetensors
/// buffer (bf16 on the wire is widened).
pub async fn download_weights(client: &mut LearnerClient<Channel>, version: u64) -> Result<Vec<u8>, WorkerError> {
    let bad = |message: String| WorkerError::Weights { version, message };
    let mut stream = client
        .get_weights(pb::GetWeightsRequest { policy_version: version })
        .await
        .map_err(|status| bad(status.to_string()))?
        .into_inner();
    let (mut bytes, mut crc32, mut total, mut dtype) = (Vec::new(), 0, 0u64, WireDtype::F32);
    while let Some(chunk) = stream.message().await.map_err(|status| bad(status.to_string()))? {
        if chunk.offset == 0 {
            total = chunk.total_bytes;
            crc32 = chunk.crc32;
            dtype = WireDtype::parse(&chunk.dtype).ok_or_else(|| bad(format!("unknown dtype {:?}", chunk.dtype)))?;
            bytes.reserve(total as usize);
        }
        if chunk.policy_version != version || chunk.offset != bytes.len() as u64 {
            return Err(bad(format!("chunk at offset {} out of order", chunk.offset)));
        }
        bytes.extend_from_slice(&chunk.data);
    }
    if bytes.len() as u64 != total || crc32fast::hash(&bytes) != crc32 {
        return Err(bad(format!("checksum or length mismatch ({} of {total} bytes)", bytes.len())));
    }
    match dtype {
        WireDtype::F32 => Ok(bytes),
        WireDtype::Bf16 => to_f32(&bytes).map_err(bad),
    }
}

/// Fetches one weights version and builds the model from it.
async fn fetch_weights<B: Kernels>(
    client: &mut LearnerClient<Channel>,
    version: u64,
    config: &Gpt2Config,
    device: &B::Device,
) -> Result<Gpt2<B>, WorkerError> {
    let bad = |message: String| WorkerError::Weights { version, message };
    let bytes = download_weights(client, version).await?;
    let mut model = config.init_with::<B>(Heads::Lm, &mut Init::Zeros, device);
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let result = model.load_from(&mut store).map_err(|e| bad(e.to_string()))?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        return Err(bad(format!("{} tensors missing, {} errors", result.missing.len(), result.errors.len())));
    }
    Ok(model)
}

/// Runs a worker until the learner says the run is done (`Ok`) or `stop` fires (returns the
/// lease in hand, then `Ok`).
pub async fn run<B: Kernels>(
    options: WorkerOptions,
    device: B::Device,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let learner_error = |status: Status| WorkerError::Learner { url: options.learner.clone(), status };
    let mut learner = LearnerClient::new(channel(&options.learner, options.timeout)?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let rewards: Vec<RewardModelClient<Channel>> = options
        .rewards
        .iter()
        .map(|url| Ok(RewardModelClient::new(channel(url, options.timeout)?)))
        .collect::<Result<_, WorkerError>>()?;
    if rewards.is_empty() {
        return Err(WorkerError::Settings("no reward server address".into()));
    }

    let name = options.name.clone();
    let joined = with_backoff(options.patience, "learner", || {
        let mut learner = learner.clone();
        let name = name.clone();
        async move { learner.join(pb::JoinRequest { name }).await.map(|r| r.into_inner()) }
    })
    .await
    .map_err(learner_error)?;
    let worker_id = joined.worker_id;
    let sampling: SamplingConfig = serde_json::from_str(&joined.sampling_json).map_err(|e| WorkerError::Settings(e.to_string()))?;
    let model_config: Gpt2Config =
        serde_json::from_str(&joined.model_config_json).map_err(|e| WorkerError::Settings(e.to_string()))?;
    let text_tokenizer = if joined.tokenizer_json.is_empty() {
        None
    } else {
        Some(rlhf_trainer::Tokenizer::from_json(&joined.tokenizer_json, joined.eos_id).map_err(|e| WorkerError::Settings(e.to_string()))?)
    };
    tracing::info!(worker_id, "joined the learner");

    // Heartbeats run beside the main loop.
    let heartbeat = {
        let mut learner = learner.clone();
        let interval = Duration::from_millis(joined.heartbeat_interval_ms.max(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if let Err(status) = learner.heartbeat(pb::HeartbeatRequest { worker_id }).await {
                    tracing::debug!(code = ?status.code(), "heartbeat failed");
                }
            }
        })
    };

    let mut model: Option<(u64, Generator<B>)> = None;
    let mut next_reward = 0usize;
    let mut next_rollout_id = worker_id << 40;
    let result = loop {
        if *stop.borrow() {
            break Ok(());
        }
        // Keep up with published versions even between leases, so every live worker holds every
        // version (and a lease never waits for a download it could have done earlier).
        let current = with_backoff(options.patience, "learner", || {
            let mut learner = learner.clone();
            async move { learner.heartbeat(pb::HeartbeatRequest { worker_id }).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(learner_error)?;
        if current.done {
            break Ok(());
        }
        if model.as_ref().map(|(v, _)| *v) != Some(current.policy_version) {
            match fetch_weights::<B>(&mut learner, current.policy_version, &model_config, &device).await {
                Ok(fresh) => {
                    tracing::info!(worker_id, policy_version = current.policy_version, "loaded weights");
                    model = Some((current.policy_version, Generator::new(fresh)));
                }
                // The version moved on while we asked: the next round fetches the newer one.
                Err(e) => tracing::debug!(error = %e, "weights not fetched"),
            }
        }
        let held = model.as_ref().map(|(v, _)| *v).unwrap_or(u64::MAX);
        let reply = with_backoff(options.patience, "learner", || {
            let mut learner = learner.clone();
            async move { learner.lease_prompts(pb::LeasePromptsRequest { worker_id, policy_version: held }).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(learner_error)?;
        let lease = match reply.reply {
            Some(pb::lease_prompts_response::Reply::Lease(lease)) => lease,
            Some(pb::lease_prompts_response::Reply::WaitMs(ms)) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                continue;
            }
            Some(pb::lease_prompts_response::Reply::Done(_)) | None => break Ok(()),
        };
        tracing::info!(worker_id, lease_id = lease.lease_id, policy_version = lease.policy_version, prompts = lease.prompts.len(), "lease received");
        if !options.hold_lease.is_zero() {
            let mut stop = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(options.hold_lease) => {}
                _ = stop.changed() => {}
            }
        }
        // Swap in new weights between generation batches.
        if model.as_ref().map(|(v, _)| *v) != Some(lease.policy_version) {
            let started = Instant::now();
            let fresh = fetch_weights::<B>(&mut learner, lease.policy_version, &model_config, &device).await?;
            tracing::info!(worker_id, policy_version = lease.policy_version, seconds = started.elapsed().as_secs_f64(), "loaded weights");
            model = Some((lease.policy_version, Generator::new(fresh)));
        }
        let (_, policy) = model.as_ref().expect("loaded above");
        let queries: Vec<Vec<u32>> = lease.prompts.iter().map(|p| p.ids.clone()).collect();
        let lease_sampling = SamplingConfig { seed: lease.seed, ..sampling.clone() };
        let generation = {
            let (policy, queries, device, eos) = (policy.clone(), queries.clone(), device.clone(), joined.eos_id);
            let span = tracing::info_span!("rollout", worker_id, lease_id = lease.lease_id, policy_version = lease.policy_version);
            tokio::task::spawn_blocking(move || span.in_scope(|| policy.generate(&queries, eos, &lease_sampling, &device)))
                .await
                .expect("generation does not panic")?
        };
        if *stop.borrow() {
            // Stopping mid-lease: give the prompts back so another worker rolls them out.
            let request = pb::ReturnLeaseRequest { worker_id, lease_id: lease.lease_id };
            if let Err(status) = learner.return_lease(request).await {
                tracing::warn!(%status, "could not return the lease; it will expire");
            }
            tracing::info!(lease_id = lease.lease_id, "returned the lease before stopping");
            break Ok(());
        }
        // Score on one of the reward servers, round robin.
        let sequences: Vec<pb::Sequence> = queries
            .iter()
            .zip(&generation.completion_ids)
            .map(|(q, r)| {
                // Text too when the reward model tokenises differently (the learner sent a tokenizer).
                let (query_text, response_text) = match &text_tokenizer {
                    Some(t) => (t.decode(q).unwrap_or_default(), t.decode(r).unwrap_or_default()),
                    None => (String::new(), String::new()),
                };
                pb::Sequence { query: q.clone(), response: r.clone(), query_text, response_text }
            })
            .collect();
        let started = Instant::now();
        let url = options.rewards[next_reward % rewards.len()].clone();
        let client = rewards[next_reward % rewards.len()].clone();
        next_reward += 1;
        let scores = with_backoff(options.patience, "reward server", || {
            let mut client = client.clone();
            let sequences = sequences.clone();
            async move { client.score(pb::ScoreRequest { sequences }).await.map(|r| r.into_inner().scores) }
        })
        .instrument(tracing::info_span!("score", worker_id, lease_id = lease.lease_id, policy_version = lease.policy_version))
        .await
        .map_err(|status| WorkerError::Reward { url, status })?;
        let score_seconds = started.elapsed().as_secs_f64();
        let rollouts: Vec<pb::Rollout> = lease
            .prompts
            .iter()
            .zip(generation.completion_ids)
            .zip(generation.logprobs)
            .zip(scores)
            .map(|(((prompt, response), logprobs), score)| {
                next_rollout_id += 1;
                pb::Rollout {
                    rollout_id: next_rollout_id,
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
        match learner.submit_rollouts(request).await {
            Ok(reply) => tracing::debug!(
                worker_id,
                lease_id = lease.lease_id,
                policy_version = lease.policy_version,
                accepted = reply.into_inner().accepted,
                "rollouts submitted"
            ),
            // The lease expired while we worked: its prompts went to someone else.
            Err(status) if status.code() == Code::FailedPrecondition => {
                tracing::warn!(worker_id, lease_id = lease.lease_id, %status, "rollouts refused")
            }
            Err(status) => break Err(learner_error(status)),
        }
    };
    heartbeat.abort();
    result
}

