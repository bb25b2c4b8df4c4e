//! When to retry a call, and how long to wait: bounded exponential backoff with jitter, and a
//! patience that counts time without progress (not per call), so a worker survives a peer's
//! restart but gives up on one that is gone.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::{Code, Status};

/// Codes worth retrying: the peer is down or slow. A connection that breaks mid-call (a server
/// killed while answering) surfaces as `Unknown` or `Cancelled`; retrying is safe because scoring
/// is idempotent and every learner call is idempotent or protected by its lease.
pub fn retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled)
}

/// A learner that answers `NotFound` to a worker's id no longer knows it (it restarted, or the
/// worker was expired): the worker must join again.
pub fn unknown_worker(status: &Status) -> bool {
    status.code() == Code::NotFound
}

/// Bounded, jittered exponential backoff under a patience budget.
#[derive(Debug)]
pub struct Backoff {
    patience: Duration,
    initial: Duration,
    max: Duration,
    delay: Duration,
    last_progress: Instant,
    rng: StdRng,
}

impl Backoff {
    /// Delays start at 50 ms and double up to 2 s; each is drawn uniformly from ±50% of the
    /// nominal delay, so many workers do not retry in lockstep. `seed` picks the jitter stream.
    pub fn new(patience: Duration, seed: u64) -> Self {
        let initial = Duration::from_millis(50);
        Self {
            patience,
            initial,
            max: Duration::from_secs(2),
            delay: initial,
            last_progress: Instant::now(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// A call succeeded: the patience budget and the delay start over.
    pub fn progress(&mut self) {
        self.last_progress = Instant::now();
        self.delay = self.initial;
    }

    /// How long ago the last call succeeded.
    pub fn since_progress(&self) -> Duration {
        self.last_progress.elapsed()
    }

    /// The wait before the next try, or `None` once `patience` has passed without progress.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.since_progress() >= self.patience {
            return None;
        }
        let nominal = self.delay;
        self.delay = (self.delay * 2).min(self.max);
        Some(nominal.mul_f64(self.rng.random_range(0.5..1.5)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_and_stop_at_the_cap() {
        let mut backoff = Backoff::new(Duration::from_secs(60), 1);
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay().unwrap()).collect();
        let nominal = [50, 100, 200, 400, 800, 1600, 2000, 2000, 2000, 2000];
        for (delay, nominal) in delays.iter().zip(nominal) {
            let nominal = Duration::from_millis(nominal);
            assert!(*delay >= nominal / 2 && *delay < nominal * 3 / 2, "{delay:?} not within ±50% of {nominal:?}");
        }
        // Two workers with different seeds do not wait in lockstep.
        let mut other = Backoff::new(Duration::from_secs(60), 2);
        let theirs: Vec<Duration> = (0..10).map(|_| other.next_delay().unwrap()).collect();
        assert_ne!(delays, theirs);
        // Progress starts the sequence over.
        backoff.progress();
        assert!(backoff.next_delay().unwrap() < Duration::from_millis(75));
    }

    #[test]
    fn patience_counts_time_without_progress() {
        let mut backoff = Backoff::new(Duration::from_millis(30), 0);
        assert!(backoff.next_delay().is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(backoff.next_delay().is_none(), "patience spent");
        backoff.progress();
        assert!(backoff.next_delay().is_some(), "progress restores it");
    }

    #[test]
    fn codes_are_classified() {
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Unknown, Code::Cancelled] {
            assert!(retryable(&Status::new(code, "")));
        }
        for code in [Code::InvalidArgument, Code::FailedPrecondition, Code::NotFound, Code::Unimplemented] {
            assert!(!retryable(&Status::new(code, "")));
        }
        assert!(unknown_worker(&Status::not_found("worker 3 is unknown or expired; join again")));
    }
}
