//! Reward server: scores (query, response) token sequences with a [`Scorer`] (a reward-model
//! directory or a lexicon) over gRPC.
//!
//! Concurrent requests are batched dynamically: the first request waiting opens a batch that
//! closes when it holds `max_batch` sequences or `max_wait` has passed, and the scorer runs once on
//! a blocking thread. Several replicas can serve one run: workers take a list of addresses and
//! spread requests over it (see the README).
//!
//! **Invariant:** the server holds no run state; restarting it loses nothing.

pub mod config;
pub mod scorer;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;

use rlhf_proto::v1::reward_model_server::{RewardModel, RewardModelServer};
use rlhf_proto::v1::{ScoreRequest, ScoreResponse};
use rlhf_trainer::reward::scorer::Scorer;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

pub use config::RewardServerConfig;
pub use scorer::{BuildError, DEFAULT_SCORE_BATCH, ScorerSpec, build_scorer};

/// Dynamic batching settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_batch: 64, max_wait: Duration::from_millis(5) }
    }
}

/// What a request asks to score: token ids in the policy's vocabulary, or text.
#[derive(Clone)]
enum Input {
    Ids { queries: Vec<Vec<u32>>, responses: Vec<Vec<u32>> },
    Texts { queries: Vec<String>, responses: Vec<String> },
}

impl Input {
    fn len(&self) -> usize {
        match self {
            Self::Ids { queries, .. } => queries.len(),
            Self::Texts { queries, .. } => queries.len(),
        }
    }

    fn is_text(&self) -> bool {
        matches!(self, Self::Texts { .. })
    }

    /// Concatenates inputs of one kind.
    fn concat(inputs: &[&Input]) -> Input {
        match inputs[0] {
            Input::Ids { .. } => Input::Ids {
                queries: inputs
                    .iter()
                    .flat_map(|i| if let Input::Ids { queries, .. } = i { queries.clone() } else { vec![] })
                    .collect(),
                responses: inputs
                    .iter()
                    .flat_map(|i| if let Input::Ids { responses, .. } = i { responses.clone() } else { vec![] })
                    .collect(),
            },
            Input::Texts { .. } => Input::Texts {
                queries: inputs
                    .iter()
                    .flat_map(|i| if let Input::Texts { queries, .. } = i { queries.clone() } else { vec![] })
                    .collect(),
                responses: inputs
                    .iter()
                    .flat_map(|i| if let Input::Texts { responses, .. } = i { responses.clone() } else { vec![] })
                    .collect(),
            },
        }
    }
}

/// The most sequences one request may hold.
pub const MAX_SEQUENCES: usize = 4096;
/// The most token ids one sequence (query and response together) may hold.
pub const MAX_SEQUENCE_TOKENS: usize = 16_384;
/// The most bytes of text one sequence (query and response together) may hold.
pub const MAX_SEQUENCE_TEXT_BYTES: usize = 1 << 20;

/// Checks a request from an untrusted worker and turns it into scorer input: at most
/// [`MAX_SEQUENCES`] sequences, each with a non-empty response, ids below `vocab_size`, and at
/// most [`MAX_SEQUENCE_TOKENS`] ids or [`MAX_SEQUENCE_TEXT_BYTES`] of text. Text is scored when
/// every sequence carries it, ids otherwise. A refusal names the sequence and field.
fn check_request(request: ScoreRequest, vocab_size: usize) -> Result<Input, Status> {
    let sequences = request.sequences;
    if sequences.len() > MAX_SEQUENCES {
        return Err(Status::invalid_argument(format!(
            "sequences: expected at most {MAX_SEQUENCES}, got {}",
            sequences.len()
        )));
    }
    let texts = !sequences.is_empty() && sequences.iter().all(|s| !s.response_text.is_empty());
    for (i, s) in sequences.iter().enumerate() {
        let refuse = |field: &str, expected: String| {
            Err(Status::invalid_argument(format!("sequence {i}: {field}: expected {expected}")))
        };
        if texts {
            let bytes = s.query_text.len() + s.response_text.len();
            if bytes > MAX_SEQUENCE_TEXT_BYTES {
                return refuse(
                    "query_text + response_text",
                    format!("at most {MAX_SEQUENCE_TEXT_BYTES} bytes, got {bytes}"),
                );
            }
            continue;
        }
        if s.response.is_empty() {
            return refuse("response", "a non-empty response (ids, or text in every sequence)".into());
        }
        let tokens = s.query.len() + s.response.len();
        if tokens > MAX_SEQUENCE_TOKENS {
            return refuse("query + response", format!("at most {MAX_SEQUENCE_TOKENS} tokens, got {tokens}"));
        }
        for (field, ids) in [("query", &s.query), ("response", &s.response)] {
            if let Some(at) = ids.iter().position(|&id| id as usize >= vocab_size) {
                return refuse(&format!("{field}[{at}]"), format!("a token id below {vocab_size}, got {}", ids[at]));
            }
        }
    }
    Ok(if texts {
        let (queries, responses) = sequences.into_iter().map(|s| (s.query_text, s.response_text)).unzip();
        Input::Texts { queries, responses }
    } else {
        let (queries, responses) = sequences.into_iter().map(|s| (s.query, s.response)).unzip();
        Input::Ids { queries, responses }
    })
}

/// Decodes one `ScoreRequest` from raw bytes and checks it, as the service does; for the fuzz
/// target (`fuzz/fuzz_targets/messages.rs`) and its CI smoke test. `Ok(n)`: n sequences accepted.
pub fn decode_and_check(bytes: &[u8], vocab_size: usize) -> Result<usize, RequestError> {
    let request = <ScoreRequest as rlhf_proto::prost::Message>::decode(bytes)?;
    check_request(request, vocab_size).map(|input| input.len()).map_err(RequestError::Refused)
}

/// Why [`decode_and_check`] turned bytes down.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("not a ScoreRequest: {0}")]
    Decode(#[from] rlhf_proto::prost::DecodeError),
    #[error("refused: {}", .0.message())]
    Refused(Status),
}

/// One request waiting for its scores.
struct Job {
    input: Input,
    reply: oneshot::Sender<Result<Vec<f32>, Status>>,
}

struct Service {
    jobs: mpsc::Sender<Job>,
    scorer_name: String,
    /// Ids in requests must be below this.
    vocab_size: usize,
}

#[tonic::async_trait]
impl RewardModel for Service {
    async fn score(&self, request: Request<ScoreRequest>) -> Result<Response<ScoreResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        // Text, when every sequence carries it, is tokenised by the scorer's own tokenizer.
        let input = check_request(request.into_inner(), self.vocab_size).inspect_err(|status| {
            tracing::warn!(peer, error = %status.message(), "score request refused");
        })?;
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { input, reply }).await.map_err(|_| Status::unavailable("scorer stopped"))?;
        let scores = answer.await.map_err(|_| Status::unavailable("scorer stopped"))??;
        Ok(Response::new(ScoreResponse { scores, scorer: self.scorer_name.clone() }))
    }
}

/// Collects jobs into batches and scores them on a blocking thread, ids and texts apart.
async fn batcher(mut scorer: Box<dyn Scorer>, mut jobs: mpsc::Receiver<Job>, config: BatchConfig) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        let mut size = batch[0].input.len();
        let deadline = tokio::time::Instant::now() + config.max_wait;
        while size < config.max_batch {
            match tokio::time::timeout_at(deadline, jobs.recv()).await {
                Ok(Some(job)) => {
                    size += job.input.len();
                    batch.push(job);
                }
                _ => break,
            }
        }
        let (texts, ids): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| j.input.is_text());
        for group in [ids, texts] {
            if !group.is_empty() {
                scorer = score_group(scorer, group).await;
            }
        }
    }
}

/// Scores one batch of same-kind jobs and answers each; hands the scorer back.
async fn score_group(scorer: Box<dyn Scorer>, group: Vec<Job>) -> Box<dyn Scorer> {
    let input = Input::concat(&group.iter().map(|j| &j.input).collect::<Vec<_>>());
    let input_len = input.len();
    let started = Instant::now();
    let (scorer, result) = tokio::task::spawn_blocking(move || {
        let mut scorer = scorer;
        // A scorer that panics fails this batch, not the server.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &input {
            Input::Ids { queries, responses } => scorer.score(queries, responses).map_err(|e| e.to_string()),
            Input::Texts { queries, responses } => scorer.score_texts(queries, responses).map_err(|e| e.to_string()),
        }))
        .unwrap_or_else(|panic| Err(format!("the scorer panicked: {}", panic_message(&*panic))));
        (scorer, result)
    })
    .await
    .expect("the scoring thread does not panic");
    let seconds = started.elapsed().as_secs_f64();
    tracing::debug!(requests = group.len(), seconds, "scored batch");
    metrics::counter!("rlhf_reward_requests_total").increment(group.len() as u64);
    metrics::counter!("rlhf_reward_sequences_total").increment(input_len as u64);
    metrics::histogram!("rlhf_reward_batch_size").record(input_len as f64);
    metrics::histogram!("rlhf_reward_latency_seconds").record(seconds);
    match result {
        Ok(scores) if scores.len() != input_len => {
            tracing::error!(expected = input_len, got = scores.len(), "the scorer returned the wrong number of scores");
            for job in group {
                let _ = job.reply.send(Err(Status::internal("the scorer returned the wrong number of scores")));
            }
        }
        Ok(scores) => {
            let mut offset = 0;
            for job in group {
                let n = job.input.len();
                let _ = job.reply.send(Ok(scores[offset..offset + n].to_vec()));
                offset += n;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "scoring failed");
            for job in group {
                let _ = job.reply.send(Err(Status::invalid_argument(e.to_string())));
            }
        }
    }
    scorer
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into())
}

/// Serves `scorer` on `listener` until `shutdown` resolves. Prints nothing; the caller reports
/// the bound address.
/// `security` says how the port is secured (TLS, the token every scoring call must carry) and
/// where plain-text health goes.
pub async fn serve(
    scorer: Box<dyn Scorer>,
    listener: tokio::net::TcpListener,
    config: BatchConfig,
    mut security: rlhf_secure::ServerSecurity,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (scorer_name, vocab_size) = (scorer.name(), scorer.vocab_size());
    let (jobs, receiver) = mpsc::channel(1024);
    tokio::spawn(batcher(scorer, receiver, config));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RewardModelServer<Service>>().await;
    security.spawn_health(&health, std::future::pending());
    let service = RewardModelServer::new(Service { jobs, scorer_name, vocab_size }).max_decoding_message_size(64 << 20);
    let service = InterceptedService::new(service, security.token_check("rlhf.v1.RewardModel"));
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), tls = security.tls(), "reward server listening");
    security
        .builder()?
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// Why the reward server stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Security(#[from] rlhf_secure::SecureError),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// Binds `addr` (port 0 allowed) and returns the listener with its real address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests;
