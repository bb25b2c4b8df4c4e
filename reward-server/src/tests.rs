//! The batcher and the request checks, without a network: jobs go straight into the batching
//! loop, and a scorer that records its calls stands in for a model.

use std::sync::{Arc, Mutex};

use rlhf_trainer::reward::scorer::ScoreError;

use super::*;

/// Scores each sequence with its first query id; records the size of every call; panics on a
/// query that starts with 666.
struct Recording {
    calls: Arc<Mutex<Vec<usize>>>,
}

impl Scorer for Recording {
    fn score(&mut self, queries: &[Vec<u32>], _responses: &[Vec<u32>]) -> Result<Vec<f32>, ScoreError> {
        self.calls.lock().unwrap().push(queries.len());
        assert!(queries.iter().all(|q| q[0] != 666), "poisoned query");
        Ok(queries.iter().map(|q| q[0] as f32).collect())
    }

    fn score_texts(&mut self, queries: &[String], _responses: &[String]) -> Result<Vec<f32>, ScoreError> {
        self.calls.lock().unwrap().push(queries.len());
        Ok(queries.iter().map(|q| q.len() as f32).collect())
    }

    fn name(&self) -> String {
        "recording".into()
    }

    fn vocab_size(&self) -> usize {
        1000
    }
}

fn ids(first: &[u32]) -> Input {
    Input::Ids { queries: first.iter().map(|&q| vec![q, 1]).collect(), responses: vec![vec![2]; first.len()] }
}

/// Starts the batching loop; returns its job queue and the scorer's call log.
fn start(config: BatchConfig) -> (mpsc::Sender<Job>, Arc<Mutex<Vec<usize>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (jobs, receiver) = mpsc::channel(64);
    tokio::spawn(batcher(Box::new(Recording { calls: calls.clone() }), receiver, config));
    (jobs, calls)
}

async fn submit(jobs: &mpsc::Sender<Job>, input: Input) -> oneshot::Receiver<Result<Vec<f32>, Status>> {
    let (reply, answer) = oneshot::channel();
    jobs.send(Job { input, reply }).await.unwrap();
    answer
}

#[tokio::test]
async fn concurrent_requests_share_one_call_and_each_gets_its_own_scores() {
    let (jobs, calls) = start(BatchConfig { max_batch: 64, max_wait: Duration::from_millis(200) });
    let a = submit(&jobs, ids(&[1, 2, 3])).await;
    let b = submit(&jobs, ids(&[4])).await;
    let c = submit(&jobs, ids(&[5, 6])).await;
    assert_eq!(a.await.unwrap().unwrap(), [1.0, 2.0, 3.0]);
    assert_eq!(b.await.unwrap().unwrap(), [4.0]);
    assert_eq!(c.await.unwrap().unwrap(), [5.0, 6.0]);
    assert_eq!(*calls.lock().unwrap(), [6], "one scorer call for the three requests");
}

#[tokio::test]
async fn a_full_batch_closes_without_waiting_and_the_rest_waits_for_the_next() {
    let (jobs, calls) = start(BatchConfig { max_batch: 4, max_wait: Duration::from_secs(30) });
    let started = std::time::Instant::now();
    let a = submit(&jobs, ids(&[1, 2])).await;
    let b = submit(&jobs, ids(&[3, 4])).await;
    assert_eq!(a.await.unwrap().unwrap(), [1.0, 2.0]);
    assert_eq!(b.await.unwrap().unwrap(), [3.0, 4.0]);
    assert!(started.elapsed() < Duration::from_secs(10), "a full batch does not wait for max_wait");
    assert_eq!(*calls.lock().unwrap(), [4]);
}

#[tokio::test]
async fn ids_and_texts_are_scored_apart_and_a_panicking_batch_fails_alone() {
    let (jobs, calls) = start(BatchConfig { max_batch: 64, max_wait: Duration::from_millis(200) });
    let text = Input::Texts { queries: vec!["abc".into()], responses: vec!["d".into()] };
    let (a, b) = (submit(&jobs, ids(&[7])).await, submit(&jobs, text).await);
    assert_eq!(a.await.unwrap().unwrap(), [7.0]);
    assert_eq!(b.await.unwrap().unwrap(), [3.0]);
    assert_eq!(*calls.lock().unwrap(), [1, 1], "ids and texts in separate calls");
    let poisoned = submit(&jobs, ids(&[666])).await.await.unwrap().unwrap_err();
    assert!(poisoned.message().contains("panicked"), "{}", poisoned.message());
    assert_eq!(submit(&jobs, ids(&[8])).await.await.unwrap().unwrap(), [8.0], "the server scores on");
}

#[test]
fn requests_are_checked_field_by_field() {
    use rlhf_proto::v1::Sequence;
    let seq = |query: Vec<u32>, response: Vec<u32>| Sequence { query, response, ..Default::default() };
    let request = |sequences| ScoreRequest { sequences };
    assert_eq!(check_request(request(vec![seq(vec![1], vec![2])]), 10).unwrap().len(), 1);
    let refused = |r, vocab| check_request(r, vocab).err().unwrap().message().to_string();
    assert!(refused(request(vec![seq(vec![1], vec![])]), 10).contains("sequence 0: response"));
    assert!(refused(request(vec![seq(vec![1], vec![2]), seq(vec![10], vec![2])]), 10).contains("sequence 1: query[0]"));
    let long = seq(vec![1; MAX_SEQUENCE_TOKENS], vec![2]);
    assert!(refused(request(vec![long]), 10).contains("query + response"));
    let many = vec![seq(vec![1], vec![2]); MAX_SEQUENCES + 1];
    assert!(refused(request(many), 10).contains("sequences: expected at most"));
}
