//! Runtime paths end to end, each through real processes: a lease that runs past its deadline, a
//! worker that stops on SIGTERM and hands its lease back, and a reward server that batches
//! requests from several clients and routes every score back to the request it came from.

use super::*;

fn accounting(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("accounting.json")).unwrap()).unwrap()
}

#[test]
fn a_lease_past_its_deadline_is_reissued_and_its_late_submission_refused() {
    // The slow worker keeps heartbeating but sits on every lease for 3 s; leases are due in 1 s.
    // Its first lease is re-issued by deadline (not by heartbeat: no worker expires) and its late
    // submission refused; then a fast worker joins and finishes the run with every prompt once.
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 2, 16, 4, "lease_timeout_s = 1.0\n");
    // A generous heartbeat timeout, so that a loaded machine cannot expire the slow worker: its
    // leases must go by their deadline.
    let text =
        std::fs::read_to_string(&config).unwrap().replace("heartbeat_timeout_s = 1.5", "heartbeat_timeout_s = 10.0");
    assert!(text.contains("heartbeat_timeout_s = 10.0"));
    std::fs::write(&config, text).unwrap();
    let (mut learner, addr) = start(tmp.path(), "learner", &["learner", "--config", path_str(&config)], true);
    let (_reward, reward) = reward_server(tmp.path(), "reward", "127.0.0.1:0");
    let slow_args = ["worker", "--learner", &addr, "--reward", &reward, "--name", "slow", "--hold-lease-ms", "3000"];
    let (slow, _) = start(tmp.path(), "slow", &slow_args, false);
    wait_for("the slow worker's late submission", Duration::from_secs(60), &[&learner, &slow], || {
        slow.log().contains("rollouts refused")
    });
    let late = slow.log();
    assert!(late.contains("is unknown, expired or already submitted"), "{late}");
    assert!(learner.log().contains("lease deadline passed") && learner.log().contains("worker=slow"));
    let (fast, _) = start(tmp.path(), "fast", &["worker", "--learner", &addr, "--reward", &reward], false);
    let status = learner.wait(Duration::from_secs(120));
    assert!(status.success(), "learner failed:\n{}\nfast worker:\n{}", learner.log(), fast.log());
    let out = tmp.path().join("out");
    assert_accounted_once(&out, 2, 16);
    let accounting = accounting(&out);
    assert!(accounting["leases_reissued"].as_u64().unwrap() >= 1, "{accounting}");
    assert_eq!(accounting["workers_expired"], 0, "a lease went by heartbeat, not by deadline: {accounting}");
}

#[test]
fn a_worker_stopped_by_sigterm_returns_its_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 2, 16, 4, "lease_timeout_s = 600.0\n");
    let (mut learner, addr) = start(tmp.path(), "learner", &["learner", "--config", path_str(&config)], true);
    let (_reward, reward) = reward_server(tmp.path(), "reward", "127.0.0.1:0");
    let held = ["worker", "--learner", &addr, "--reward", &reward, "--name", "leaving", "--hold-lease-ms", "600000"];
    let (mut leaving, _) = start_with_env(tmp.path(), "leaving", &held, false, &[("RUST_LOG", DEBUG_WORKER_LOG)]);
    wait_for("the leaving worker's lease", Duration::from_secs(60), &[&learner, &leaving], || {
        leaving.log().contains("lease received")
    });
    // SAFETY: kill(2) on a child of this test.
    unsafe { libc::kill(leaving.child.id() as i32, libc::SIGTERM) };
    let status = leaving.wait(Duration::from_secs(30));
    assert!(status.success(), "a worker stopped by SIGTERM exits 0:\n{}", leaving.log());
    assert!(leaving.log().contains("returned the lease before stopping"), "{}", leaving.log());
    wait_for("the returned lease", Duration::from_secs(10), &[&learner], || {
        learner.log().contains("lease returned by its worker")
    });
    // The lease's deadline is ten minutes away: only its return lets another worker take it.
    let (_worker, _) = start(tmp.path(), "worker", &["worker", "--learner", &addr, "--reward", &reward], false);
    let status = learner.wait(Duration::from_secs(120));
    assert!(status.success(), "learner failed:\n{}", learner.log());
    let out = tmp.path().join("out");
    assert_accounted_once(&out, 2, 16);
    assert!(accounting(&out)["leases_reissued"].as_u64().unwrap() >= 1);
}

#[test]
fn a_reward_server_batches_requests_and_routes_every_score_back() {
    // Eight clients at once, each with its own texts, into one reward server that waits up to
    // 300 ms to batch them: every client gets the scores of its own texts, in its order, as
    // `rlhf reward score` gives them one by one (the reward server tokenises the text itself, as
    // with `reward.retokenize`).
    use rlhf_proto::v1::reward_model_client::RewardModelClient;
    use rlhf_proto::v1::{ScoreRequest, Sequence};
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("reward");
    let server = ["reward-server", "--model", path_str(&model), "--listen", "127.0.0.1:0", "--max-wait-ms", "300"];
    let (reward, addr) = start_with_env(tmp.path(), "reward", &server, true, &[("RUST_LOG", DEBUG_REWARD_LOG)]);
    let words = ["a great film", "awful", "the plot was dull", "wonderful acting", "I laughed", "boring", "fine"];
    let clients: Vec<Vec<(String, String)>> = (0..8)
        .map(|c| (0..=c % 3).map(|i| ("Review: ".to_string(), words[(c + 2 * i) % words.len()].to_string())).collect())
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let replies: Vec<Vec<f32>> = runtime.block_on(async {
        let requests = clients.iter().map(|texts| {
            let addr = addr.clone();
            let sequences = texts
                .iter()
                .map(|(q, r)| Sequence { query_text: q.clone(), response_text: r.clone(), ..Default::default() })
                .collect();
            async move {
                let mut client = RewardModelClient::connect(format!("http://{addr}")).await.expect("connects");
                client.score(ScoreRequest { sequences }).await.expect("scored").into_inner().scores
            }
        });
        futures_join_all(requests).await
    });
    let log = reward.log();
    assert!(
        log.lines().any(|l| l.contains("scored batch") && !l.contains("requests=1 ")),
        "no two requests were batched together:\n{log}"
    );
    // `rlhf reward score` on every distinct text, in a batch of their own.
    let mut args = vec!["reward", "score", "--model", path_str(&model), "--prompt", "Review: "];
    for word in words {
        args.extend_from_slice(&["--text", word]);
    }
    let stdout = super::super::rlhf_ok(&args);
    let want: Vec<f64> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["score"].as_f64().unwrap())
        .collect();
    assert_eq!(want.len(), words.len());
    for (texts, scores) in clients.iter().zip(&replies) {
        assert_eq!(texts.len(), scores.len());
        for ((_, text), &got) in texts.iter().zip(scores) {
            let want = want[words.iter().position(|w| w == text).unwrap()];
            assert!((want - got as f64).abs() < 1e-4, "{text:?}: reward server {got}, rlhf reward score {want}");
        }
    }
}

/// Runs the futures concurrently on the current runtime and returns their outputs in order.
async fn futures_join_all<T: Send + 'static>(
    futures: impl IntoIterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("a client task panicked"));
    }
    out
}
