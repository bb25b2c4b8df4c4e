//! The reward servers a worker scores on: requests go round robin, a server that fails moves the
//! request to the next one, and a server that keeps failing is skipped for a while.

use std::time::{Duration, Instant};

/// Consecutive failures after which a server is skipped.
pub const SKIP_AFTER_FAILURES: u32 = 3;
/// How long a failing server is skipped.
pub const SKIP_FOR: Duration = Duration::from_secs(10);

/// Which server to ask next: the bookkeeping of failover, separate from the calls.
#[derive(Debug, Clone)]
pub struct Rotation {
    next: usize,
    failures: Vec<u32>,
    skip_until: Vec<Option<Instant>>,
}

impl Rotation {
    pub fn new(servers: usize) -> Self {
        Self { next: 0, failures: vec![0; servers], skip_until: vec![None; servers] }
    }

    pub fn len(&self) -> usize {
        self.failures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.failures.is_empty()
    }

    /// The next server in round-robin order that is not being skipped at `now`; if every one
    /// is, the one whose skip ends first.
    pub fn choose(&mut self, now: Instant) -> usize {
        let n = self.len();
        let chosen = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| self.skip_until[i].is_none_or(|until| until <= now))
            .unwrap_or_else(|| (0..n).min_by_key(|&i| self.skip_until[i]).unwrap_or(0));
        self.next = (chosen + 1) % n;
        chosen
    }

    /// Server `i` answered.
    pub fn succeeded(&mut self, i: usize) {
        self.failures[i] = 0;
        self.skip_until[i] = None;
    }

    /// Server `i` failed at `now`; returns true when it starts being skipped.
    pub fn failed(&mut self, i: usize, now: Instant) -> bool {
        self.failures[i] += 1;
        if self.failures[i] >= SKIP_AFTER_FAILURES {
            self.skip_until[i] = Some(now + SKIP_FOR);
            self.failures[i] = 0;
            return true;
        }
        false
    }

    /// Whether server `i` is being skipped at `now`.
    pub fn skipped(&self, i: usize, now: Instant) -> bool {
        self.skip_until[i].is_some_and(|until| until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_go_round_robin() {
        let mut rotation = Rotation::new(3);
        let now = Instant::now();
        let order: Vec<usize> = (0..6).map(|_| rotation.choose(now)).collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_server_that_keeps_failing_is_skipped_for_a_while() {
        let mut rotation = Rotation::new(2);
        let now = Instant::now();
        assert_eq!(rotation.choose(now), 0);
        assert!(!rotation.failed(0, now));
        assert!(!rotation.failed(0, now));
        assert!(rotation.failed(0, now), "the third failure in a row starts the skip");
        assert!(rotation.skipped(0, now));
        // While 0 is skipped every request goes to 1.
        assert_eq!((0..4).map(|_| rotation.choose(now)).collect::<Vec<_>>(), vec![1, 1, 1, 1]);
        // After the skip, 0 is back in the rotation.
        let later = now + SKIP_FOR + Duration::from_millis(1);
        let order: Vec<usize> = (0..4).map(|_| rotation.choose(later)).collect();
        assert!(order.contains(&0) && order.contains(&1), "{order:?}");
    }

    #[test]
    fn with_every_server_skipped_the_first_to_return_is_tried() {
        let mut rotation = Rotation::new(2);
        let now = Instant::now();
        for _ in 0..SKIP_AFTER_FAILURES {
            rotation.failed(1, now);
        }
        for _ in 0..SKIP_AFTER_FAILURES {
            rotation.failed(0, now + Duration::from_secs(1));
        }
        assert_eq!(rotation.choose(now + Duration::from_secs(2)), 1);
        // A success clears a server's record.
        rotation.succeeded(1);
        assert!(!rotation.skipped(1, now));
    }
}
