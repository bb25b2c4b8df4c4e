//! The worker's peers — the learner and the reward servers — and how it waits for them: every
//! call retried with jittered backoff ([`crate::retry`]), reward servers in failover rotation
//! ([`crate::reward`]), and a stop request ending any wait at once.

use std::future::Future;
use std::time::{Duration, Instant};

use rlhf_proto::v1 as pb;
use rlhf_proto::v1::learner_client::LearnerClient;
use rlhf_proto::v1::reward_model_client::RewardModelClient;
use rlhf_secure::{AttachToken, TlsConfig, TlsProblem, Token};
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::WorkerError;
use crate::retry::{Backoff, retryable, unknown_worker};
use crate::reward::{self, Rotation};

/// How often an HTTP/2 ping checks a connection to a peer, and how long its answer may take.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The learner as a worker calls it: its token on every call.
pub type Learner = LearnerClient<InterceptedService<Channel, AttachToken>>;
/// A reward server as a worker calls it.
pub type RewardServer = RewardModelClient<InterceptedService<Channel, AttachToken>>;

/// A client of the learner at `url` (`https://` speaks TLS with `tls`), sending `token`.
pub fn learner_client(
    url: &str,
    timeout: Duration,
    tls: &TlsConfig,
    token: Option<&Token>,
) -> Result<Learner, WorkerError> {
    Ok(LearnerClient::with_interceptor(channel(url, timeout, tls)?, AttachToken::new(token))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// A client of the reward server at `url`.
pub fn reward_client(
    url: &str,
    timeout: Duration,
    tls: &TlsConfig,
    token: Option<&Token>,
) -> Result<RewardServer, WorkerError> {
    Ok(RewardModelClient::with_interceptor(channel(url, timeout, tls)?, AttachToken::new(token)))
}

fn channel(url: &str, timeout: Duration, tls: &TlsConfig) -> Result<Channel, WorkerError> {
    let security = |error: rlhf_secure::SecureError| WorkerError::Security { url: url.into(), error };
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| WorkerError::Connect { url: url.into(), message: e.to_string() })?
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        // A peer cut off without a word (a network partition, a host gone) leaves a connection
        // that looks open: pings find it dead in seconds, and the next call connects afresh.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20);
    if let Some(config) = tls.client(url).map_err(security)? {
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| WorkerError::Connect { url: url.into(), message: format!("TLS: {e}") })?;
    }
    Ok(endpoint.connect_lazy())
}

/// What ended a stretch of work.
pub(crate) enum Flow {
    /// SIGTERM/Ctrl-C: the worker stops (its lease handed back).
    Stopped,
    /// The learner no longer knows this worker: join again.
    Rejoin,
    Failed(WorkerError),
}

impl From<WorkerError> for Flow {
    fn from(error: WorkerError) -> Self {
        Self::Failed(error)
    }
}

/// The worker's peers and how it waits for them.
pub(crate) struct Peers {
    pub(crate) learner: Learner,
    pub(crate) learner_url: String,
    pub(crate) rewards: Vec<(String, RewardServer)>,
    pub(crate) rotation: Rotation,
    pub(crate) backoff: Backoff,
    pub(crate) stop: watch::Receiver<bool>,
}

impl Peers {
    pub(crate) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits out one backoff delay after `status` from `peer`, or fails once patience is spent;
    /// a stop request ends the wait at once.
    pub(crate) async fn wait(&mut self, peer: &'static str, url: &str, status: &Status) -> Result<(), Flow> {
        let Some(delay) = self.backoff.next_delay() else {
            let seconds = self.backoff.since_progress().as_secs_f64();
            return Err(Flow::Failed(WorkerError::GaveUp {
                peer,
                url: url.to_string(),
                seconds,
                last: match tls_problem(status, url) {
                    Some(hint) => format!("{status} ({hint})"),
                    None => status.to_string(),
                },
            }));
        };
        metrics::counter!("rlhf_worker_backoffs_total").increment(1);
        match tls_problem(status, url) {
            Some(hint) => {
                tracing::warn!(peer, url, code = ?status.code(), retry_in_ms = delay.as_millis() as u64, %hint, "peer unavailable; backing off")
            }
            None => {
                tracing::warn!(peer, url, code = ?status.code(), retry_in_ms = delay.as_millis() as u64, "peer unavailable; backing off")
            }
        }
        if self.stopping() {
            return Err(Flow::Stopped);
        }
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = stop.changed() => Err(Flow::Stopped),
        }
    }

    fn learner_error(&self, status: Status) -> WorkerError {
        if status.code() == Code::Unimplemented {
            return WorkerError::WrongService {
                url: self.learner_url.clone(),
                service: "rlhf.v1.Learner",
                other: "reward server",
            };
        }
        WorkerError::Learner { url: self.learner_url.clone(), status }
    }

    /// Calls the learner until it answers, retrying what is worth retrying.
    pub(crate) async fn learner<T, F, Fut>(&mut self, mut call: F) -> Result<T, Flow>
    where
        F: FnMut(Learner) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        loop {
            match call(self.learner.clone()).await {
                Ok(value) => {
                    self.backoff.progress();
                    return Ok(value);
                }
                Err(status) if unknown_worker(&status) => return Err(Flow::Rejoin),
                Err(status) if let Some(problem) = definite_tls_problem(&status, &self.learner_url) => {
                    return Err(Flow::Failed(WorkerError::Tls {
                        peer: "learner",
                        url: self.learner_url.clone(),
                        problem,
                    }));
                }
                Err(status) if retryable(&status) => {
                    let url = self.learner_url.clone();
                    self.wait("learner", &url, &status).await?;
                }
                Err(status) => return Err(Flow::Failed(self.learner_error(status))),
            }
        }
    }

    /// Scores `sequences` on one of the reward servers: round robin, moving on to the next
    /// server when one fails, skipping one that keeps failing, and backing off once every server
    /// has failed in turn. A reply with the wrong number of scores, or a non-finite one, counts
    /// as a failure of that server (a peer is untrusted input).
    pub(crate) async fn score(&mut self, sequences: &[pb::Sequence]) -> Result<Vec<f32>, Flow> {
        let mut failed_in_a_row = 0;
        loop {
            let i = self.rotation.choose(Instant::now());
            let (url, mut client) = self.rewards[i].clone();
            let answer =
                client.score(pb::ScoreRequest { sequences: sequences.to_vec() }).await.map(|r| r.into_inner().scores);
            let status = match answer {
                Ok(scores) if scores.len() == sequences.len() && scores.iter().all(|s| s.is_finite()) => {
                    self.rotation.succeeded(i);
                    self.backoff.progress();
                    return Ok(scores);
                }
                Ok(scores) => {
                    let bad = scores.iter().filter(|s| !s.is_finite()).count();
                    tracing::error!(
                        url,
                        expected = sequences.len(),
                        got = scores.len(),
                        non_finite = bad,
                        "reward server answered with bad scores"
                    );
                    Status::unknown("bad scores")
                }
                Err(status) if status.code() == Code::Unimplemented => {
                    return Err(Flow::Failed(WorkerError::WrongService {
                        url,
                        service: "rlhf.v1.RewardModel",
                        other: "learner",
                    }));
                }
                Err(status) if let Some(problem) = definite_tls_problem(&status, &url) => {
                    return Err(Flow::Failed(WorkerError::Tls { peer: "reward server", url, problem }));
                }
                Err(status) if retryable(&status) => status,
                Err(status) => return Err(Flow::Failed(WorkerError::Reward { url, status })),
            };
            if self.rotation.failed(i, Instant::now()) {
                tracing::warn!(
                    url,
                    seconds = reward::SKIP_FOR.as_secs(),
                    "reward server keeps failing; skipping it for a while"
                );
            }
            failed_in_a_row += 1;
            if failed_in_a_row < self.rewards.len() {
                tracing::warn!(url, code = ?status.code(), "reward server failed; trying the next one");
                continue;
            }
            failed_in_a_row = 0;
            self.wait("reward server", &url, &status).await?;
        }
    }
}

/// The TLS problem behind a failed call to `url`, if any.
fn tls_problem(status: &Status, url: &str) -> Option<TlsProblem> {
    let source = std::error::Error::source(status)?;
    TlsProblem::find(source, !rlhf_secure::is_tls_url(url))
}

/// A TLS problem that retrying cannot fix (a certificate or CA mismatch, TLS against plain
/// text); a connection merely closed during the handshake may be a restart, so it is retried
/// (and named, as a hint, in the error if the worker gives up).
fn definite_tls_problem(status: &Status, url: &str) -> Option<TlsProblem> {
    tls_problem(status, url)
        .filter(|p| !matches!(p, TlsProblem::PeerWantsTls | TlsProblem::ClosedByTlsPeer) || !retryable(status))
}
