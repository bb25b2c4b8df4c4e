//! Peers that send what they should not: a hostile worker, bad score requests, a worker pointed
//! at the wrong service.

use super::*;

/// A client written from the `.proto` files alone, playing a hostile worker.
mod client {
    use rlhf_proto::v1 as pb;
    use rlhf_proto::v1::learner_client::LearnerClient;
    use tonic::transport::Channel;

    pub async fn client(addr: &str) -> LearnerClient<Channel> {
        LearnerClient::connect(format!("http://{addr}")).await.expect("the learner accepts connections")
    }

    /// Joins and waits for a lease.
    pub async fn join_and_lease(learner: &mut LearnerClient<Channel>) -> (u64, pb::Lease) {
        let worker_id = learner.join(pb::JoinRequest { name: "hostile".into() }).await.unwrap().into_inner().worker_id;
        loop {
            let reply = learner
                .lease_prompts(pb::LeasePromptsRequest { worker_id, policy_version: 0 })
                .await
                .unwrap()
                .into_inner();
            match reply.reply {
                Some(pb::lease_prompts_response::Reply::Lease(lease)) => return (worker_id, lease),
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    /// Well-formed rollouts for `lease` (what an honest worker would send).
    pub fn honest(worker_id: u64, lease: &pb::Lease) -> pb::SubmitRolloutsRequest {
        let rollouts = lease
            .prompts
            .iter()
            .enumerate()
            .map(|(i, p)| pb::Rollout {
                rollout_id: 1000 + i as u64,
                worker_id,
                lease_id: lease.lease_id,
                policy_version: lease.policy_version,
                prompt_index: p.prompt_index,
                query: p.ids.clone(),
                response: vec![5, 6, 7],
                logprobs: vec![-1.0, -2.0, -0.5],
                score: 0.25,
            })
            .collect();
        pb::SubmitRolloutsRequest { worker_id, lease_id: lease.lease_id, rollouts, score_seconds: 0.01 }
    }
}

#[test]
fn a_hostile_worker_is_refused_field_by_field_and_the_run_completes() {
    let tmp = tempfile::tempdir().unwrap();
    // Neither the lease nor the worker expires while the cases run on a loaded machine (a lease
    // re-issued mid-way would turn the later refusals into FailedPrecondition); the lease is
    // returned after them.
    let config = config(tmp.path(), 2, 8, 4, "lease_timeout_s = 600.0\n");
    let text =
        std::fs::read_to_string(&config).unwrap().replace("heartbeat_timeout_s = 1.5", "heartbeat_timeout_s = 30");
    std::fs::write(&config, text).unwrap();
    let (mut learner, addr) = start(tmp.path(), "learner", &["learner", "--config", path_str(&config)], true);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refusals: Vec<(String, String)> = runtime.block_on(async {
        let mut client = client::client(&addr).await;
        let (worker_id, lease) = client::join_and_lease(&mut client).await;
        let honest = client::honest(worker_id, &lease);
        type Edit = Box<dyn Fn(&mut rlhf_proto::v1::SubmitRolloutsRequest)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("response[0]: expected a token id below 384", Box::new(|r| r.rollouts[0].response[0] = 384)),
            ("response[1]: expected a token id below 384", Box::new(|r| r.rollouts[1].response[1] = u32::MAX)),
            (
                "logprobs[0]: expected a finite log-probability ≤ 0, got 3",
                Box::new(|r| r.rollouts[0].logprobs[0] = 3.0),
            ),
            (
                "logprobs[2]: expected a finite log-probability ≤ 0, got -inf",
                Box::new(|r| r.rollouts[2].logprobs[2] = f32::NEG_INFINITY),
            ),
            (
                "response: expected 1 to 8 tokens (max_new_tokens), got 100000 tokens",
                Box::new(|r| {
                    r.rollouts[0].response = vec![1; 100_000];
                    r.rollouts[0].logprobs = vec![-1.0; 100_000];
                }),
            ),
            (
                "logprobs: expected one per response token",
                Box::new(|r| r.rollouts[1].logprobs.pop().map(|_| ()).unwrap_or(())),
            ),
            ("score: expected a finite number, got NaN", Box::new(|r| r.rollouts[3].score = f32::NAN)),
            ("policy_version: expected the lease's version", Box::new(|r| r.rollouts[0].policy_version += 7)),
            ("rollouts must cover exactly its 4 prompts", Box::new(|r| r.rollouts[1].prompt_index = 999_999)),
            (
                "rollouts must cover exactly its 4 prompts",
                Box::new(|r| {
                    let first = r.rollouts[0].clone();
                    r.rollouts[1] = first;
                }),
            ),
            ("query: expected the ids of prompt", Box::new(|r| r.rollouts[2].query.push(1))),
            ("worker_id: expected the submitting worker's id", Box::new(|r| r.rollouts[0].worker_id += 1)),
        ];
        let mut refusals = Vec::new();
        for (expected, edit) in cases {
            let mut request = honest.clone();
            edit(&mut request);
            let status = client.submit_rollouts(request).await.expect_err(expected);
            refusals.push((expected.to_string(), format!("{:?}: {}", status.code(), status.message())));
            // The learner keeps serving.
            client.heartbeat(rlhf_proto::v1::HeartbeatRequest { worker_id }).await.expect("the learner is still up");
        }
        // Another worker's lease is not ours to fill.
        let mut stolen = honest.clone();
        stolen.worker_id += 100;
        let status = client.submit_rollouts(stolen).await.unwrap_err();
        refusals.push(("FailedPrecondition".into(), format!("{:?}: {}", status.code(), status.message())));
        let returned = rlhf_proto::v1::ReturnLeaseRequest { worker_id, lease_id: lease.lease_id };
        client.return_lease(returned).await.expect("the hostile worker returns its lease");
        refusals
    });
    for (expected, got) in &refusals {
        let code = if expected == "FailedPrecondition" { "FailedPrecondition" } else { "InvalidArgument" };
        assert!(
            got.starts_with(code) && got.contains(expected.trim_start_matches("FailedPrecondition")),
            "expected {code} with {expected:?}, got {got}"
        );
    }
    // The hostile worker's returned lease is re-issued; an honest worker finishes the run.
    let (_reward, reward) = reward_server(tmp.path(), "reward", "127.0.0.1:0");
    let (_worker, _) =
        start(tmp.path(), "worker", &["worker", "--learner", &addr, "--reward", &reward, "--name", "honest"], false);
    let status = learner.wait(Duration::from_secs(120));
    let log = learner.log();
    assert!(status.success(), "learner failed:\n{log}");
    assert!(log.contains("submission refused"), "{log}");
    assert_accounted_once(&tmp.path().join("out"), 2, 8);
    let accounting: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("out/accounting.json")).unwrap()).unwrap();
    assert!(accounting["submissions_refused"].as_u64().unwrap() >= 12, "{accounting}");
}

#[test]
fn a_worker_pointed_at_the_wrong_service_names_itself_and_the_role_that_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 1, 8, 0, "");
    let (_learner, learner) = start(tmp.path(), "learner", &["learner", "--config", path_str(&config)], true);
    let (_reward, reward) = reward_server(tmp.path(), "reward", "127.0.0.1:0");
    // The reward server given as the learner.
    let err =
        crate::rlhf_err(&["worker", "--name", "w7", "--learner", &reward, "--reward", &reward, "--patience-s", "5"]);
    assert!(
        err.contains("worker w7") && err.contains("does not serve rlhf.v1.Learner (is it the reward server?)"),
        "{err}"
    );
    // The learner given as the reward server.
    let err = crate::rlhf_err(&[
        "worker",
        "--name",
        "w8",
        "--learner",
        &learner,
        "--reward",
        &learner,
        "--patience-s",
        "5",
        "--hold-lease-ms",
        "0",
    ]);
    assert!(
        err.contains("worker w8") && err.contains("does not serve rlhf.v1.RewardModel (is it the learner?)"),
        "{err}"
    );
}

#[test]
fn a_reward_server_refuses_bad_requests_and_keeps_serving() {
    use rlhf_proto::v1::reward_model_client::RewardModelClient;
    use rlhf_proto::v1::{ScoreRequest, Sequence};
    let tmp = tempfile::tempdir().unwrap();
    // A reward model: an id beyond its vocabulary would index past its embedding.
    let (reward, addr) = start(
        tmp.path(),
        "reward",
        &["reward-server", "--model", path_str(&fixture("reward")), "--listen", "127.0.0.1:0"],
        true,
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client =
            RewardModelClient::connect(format!("http://{addr}")).await.expect("the reward server accepts connections");
        let seq = |query: Vec<u32>, response: Vec<u32>| Sequence { query, response, ..Default::default() };
        let cases = [
            (
                vec![seq(vec![1], vec![2]), seq(vec![1], vec![2, 384])],
                "sequence 1: response[1]: expected a token id below 384, got 384",
            ),
            (vec![seq(vec![u32::MAX], vec![2])], "sequence 0: query[0]: expected a token id below 384"),
            (vec![seq(vec![1], vec![])], "sequence 0: response: expected a non-empty response"),
            (vec![seq(vec![1; 20_000], vec![2])], "expected at most 16384 tokens, got 20001"),
            (vec![seq(vec![1], vec![2]); 5000], "sequences: expected at most 4096, got 5000"),
        ];
        for (sequences, expected) in cases {
            let status = client.score(ScoreRequest { sequences }).await.expect_err(expected);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
            assert!(status.message().contains(expected), "expected {expected:?}, got {status}");
        }
        let scores = client
            .score(ScoreRequest { sequences: vec![seq(vec![1, 2], vec![3, 4])] })
            .await
            .expect("still serving")
            .into_inner()
            .scores;
        assert_eq!(scores.len(), 1);
        assert!(scores[0].is_finite());
    });
    assert!(reward.log().contains("score request refused"), "{}", reward.log());
}
