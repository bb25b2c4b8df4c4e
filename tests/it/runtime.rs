//! The distributed runtime with real processes on 127.0.0.1: learner, reward server, workers.
//! Tests wait by polling with a timeout and kill every process they start when dropped.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{fixture, path_str, root};

fn assets() -> PathBuf {
    root().join("../shared/assets")
}

/// A process killed on drop, with its stderr in a file.
struct Proc {
    child: Child,
    stderr: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < timeout, "process did not exit in {timeout:?}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `rlhf args`; for servers, returns the address printed on stdout's first line.
fn start(dir: &Path, name: &str, args: &[&str], server: bool) -> (Proc, String) {
    let stderr = dir.join(format!("{name}.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(args)
        .stdout(if server { Stdio::piped() } else { Stdio::null() })
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut addr = String::new();
    if server {
        let stdout = child.stdout.take().unwrap();
        BufReader::new(stdout).read_line(&mut addr).unwrap();
    }
    let proc = Proc { child, stderr };
    assert!(!addr.is_empty() || !server, "{name} printed no address; log:\n{}", proc.log());
    (proc, addr.trim().to_string())
}

/// Runs `rlhf run --config CONFIG --workers N ARGS...` to completion and returns it (for its log).
fn run_to_end(dir: &Path, name: &str, config: &Path, workers: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["run", "--config", path_str(config), "--workers", workers];
    args.extend_from_slice(extra);
    let (mut run, _) = start(dir, name, &args, false);
    let status = run.wait(Duration::from_secs(120));
    assert!(status.success(), "rlhf run failed:\n{}", run.log());
    run
}

/// `rlhf reward-server` on the lexicon, listening on `listen`.
fn reward_server(dir: &Path, name: &str, listen: &str) -> (Proc, String) {
    let lexicon = assets().join("imdb-lexicon");
    let tokenizer = fixture("lm");
    start(
        dir,
        name,
        &["reward-server", "--lexicon", path_str(&lexicon), "--tokenizer", path_str(&tokenizer), "--listen", listen],
        true,
    )
}

/// Polls `ready` until it holds; on timeout, fails with the logs of `procs`.
fn wait_for(what: &str, timeout: Duration, procs: &[&Proc], mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > timeout {
            let logs: Vec<String> = procs.iter().map(|p| format!("--- {}\n{}", p.stderr.display(), p.log())).collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A learner config on the fixture policy, IMDb prompts and the lexicon reward.
fn config(dir: &Path, iterations: usize, batch: usize, lease_size: usize, extra: &str) -> PathBuf {
    let path = dir.join("run.toml");
    let text = format!(
        "model = {model:?}\nprompts = {prompts:?}\nout = {out:?}\n\n[reward]\nlexicon = {lexicon:?}\n\n\
         [train]\niterations = {iterations}\nbatch_size = {batch}\n\n[train.sampling]\nmax_new_tokens = 8\n\n\
         [train.ppo]\nmini_batch_size = 8\n\n[runtime]\nlease_size = {lease_size}\nheartbeat_timeout_s = 1.5\nheartbeat_interval_ms = 200\n{extra}",
        model = path_str(&fixture("lm")),
        prompts = path_str(&assets().join("imdb-sentiment/test.jsonl")),
        out = path_str(&dir.join("out")),
        lexicon = path_str(&assets().join("imdb-lexicon")),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Every prompt of the run accounted exactly once, in order, on-policy.
fn assert_accounted_once(out: &Path, iterations: usize, batch: usize) -> Vec<serde_json::Value> {
    assert_accounted_once_with_lag(out, iterations, batch, 0)
}

/// Every prompt accounted exactly once; each rollout generated at most `lag` versions before the
/// version it trained.
fn assert_accounted_once_with_lag(out: &Path, iterations: usize, batch: usize, lag: u64) -> Vec<serde_json::Value> {
    let rollouts = lines(&out.join("rollouts.jsonl"));
    let indices: Vec<u64> = rollouts.iter().map(|r| r["prompt_index"].as_u64().unwrap()).collect();
    let unique: BTreeSet<u64> = indices.iter().copied().collect();
    assert_eq!(indices.len(), unique.len(), "a prompt was counted twice");
    assert_eq!(unique, (0..(iterations * batch) as u64).collect(), "prompts missing");
    for r in &rollouts {
        let trained = r["prompt_index"].as_u64().unwrap() / batch as u64;
        let generated = r["policy_version"].as_u64().unwrap();
        assert!(generated <= trained && trained - generated <= lag, "lineage beyond max_policy_lag {lag}: {r}");
    }
    let accounting: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("accounting.json")).unwrap()).unwrap();
    assert_eq!(accounting["prompts_accounted"].as_u64().unwrap() as usize, iterations * batch);
    rollouts
}

#[test]
fn run_with_two_workers_trains_three_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 3, 16, 4, "");
    let log = run_to_end(tmp.path(), "run", &config, "2", &[]).log();
    let out = tmp.path().join("out");
    let metrics = lines(&out.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 3);
    for key in [
        "objective/kl",
        "ppo/loss/total",
        "ppo/mean_scores",
        "time/rollout_wait",
        "time/update",
        "time/weight_sync",
        "weights/bytes",
        "staleness/mean",
        "staleness/max",
        "workers/active",
        "samples_per_s",
        "reward_server/latency_p50",
        "reward_server/latency_p99",
    ] {
        assert!(metrics.iter().all(|m| m[key].is_number()), "metrics lack {key}");
    }
    assert!(metrics[0]["workers/1/samples_per_s"].is_number() && metrics[0]["workers/2/samples_per_s"].is_number());
    assert_accounted_once(&out, 3, 16);
    // Every worker loaded every version it trained on: 0, 1 and 2.
    for worker in ["worker_id=1", "worker_id=2"] {
        for version in 0..3 {
            let needle = format!("policy_version={version}");
            assert!(
                log.lines().any(|l| l.contains("loaded weights") && l.contains(worker) && l.contains(&needle)),
                "{worker} did not load version {version}:\n{log}"
            );
        }
    }
    assert!(out.join("model.safetensors").is_file());
}

#[test]
fn a_killed_worker_s_lease_is_reissued_and_the_run_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 3, 16, 4, "lease_timeout_s = 60.0\n");
    let (mut learner, addr) = start(tmp.path(), "learner", &["learner", "--config", path_str(&config)], true);
    let (_reward, reward) = reward_server(tmp.path(), "reward", "127.0.0.1:0");
    // Worker A takes a lease and sits on it; then it is killed.
    let (mut doomed, _) = start(
        tmp.path(),
        "doomed",
        &["worker", "--learner", &addr, "--reward", &reward, "--name", "doomed-worker", "--hold-lease-ms", "600000"],
        false,
    );
    wait_for("the doomed worker's lease", Duration::from_secs(60), &[&learner, &doomed], || {
        doomed.log().contains("lease received")
    });
    let (_survivor, _) = start(
        tmp.path(),
        "survivor",
        &["worker", "--learner", &addr, "--reward", &reward, "--name", "survivor"],
        false,
    );
    doomed.child.kill().unwrap(); // SIGKILL
    let status = learner.wait(Duration::from_secs(120));
    let log = learner.log();
    assert!(status.success(), "learner failed:\n{log}");
    assert!(
        log.contains("worker expired") && log.contains("doomed-worker"),
        "no warning names the dead worker:\n{log}"
    );
    assert!(log.contains("re-issuing its prompts"), "{log}");
    let out = tmp.path().join("out");
    assert_accounted_once(&out, 3, 16);
    let accounting: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("accounting.json")).unwrap()).unwrap();
    assert!(accounting["leases_reissued"].as_u64().unwrap() >= 1);
}

#[test]
fn a_worker_that_joins_mid_run_gets_the_current_weights_and_work() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 8, 16, 2, "");
    let (mut learner, addr) = start(tmp.path(), "learner", &["learner", "--config", path_str(&config)], true);
    let (_reward, reward) = reward_server(tmp.path(), "reward", "127.0.0.1:0");
    // The first worker rolls out slowly, so the run is still going when the second joins.
    let (_first, _) = start(
        tmp.path(),
        "first",
        &["worker", "--learner", &addr, "--reward", &reward, "--name", "first", "--hold-lease-ms", "40"],
        false,
    );
    let metrics = tmp.path().join("out/metrics.jsonl");
    wait_for("the first iteration", Duration::from_secs(60), &[&learner], || !lines(&metrics).is_empty());
    let (late, _) =
        start(tmp.path(), "late", &["worker", "--learner", &addr, "--reward", &reward, "--name", "late"], false);
    let status = learner.wait(Duration::from_secs(120));
    assert!(status.success(), "learner failed:\n{}", learner.log());
    let rollouts = assert_accounted_once(&tmp.path().join("out"), 8, 16);
    let late_log = late.log();
    assert!(late_log.contains("loaded weights") && late_log.contains("worker_id=2"), "{late_log}");
    let late_versions: BTreeSet<u64> =
        rollouts.iter().filter(|r| r["worker_id"] == 2).map(|r| r["policy_version"].as_u64().unwrap()).collect();
    assert!(!late_versions.is_empty(), "the late worker's id is in no rollout's lineage");
    assert!(!late_versions.contains(&0), "the late worker joined after version 0");
}

#[test]
fn workers_back_off_while_the_reward_server_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 6, 16, 4, "");
    let (mut learner, addr) = start(tmp.path(), "learner", &["learner", "--config", path_str(&config)], true);
    let (reward, reward_addr) = reward_server(tmp.path(), "reward", "127.0.0.1:0");
    let (worker, _) = start(
        tmp.path(),
        "worker",
        &["worker", "--learner", &addr, "--reward", &reward_addr, "--hold-lease-ms", "30"],
        false,
    );
    let metrics = tmp.path().join("out/metrics.jsonl");
    wait_for("the first iteration", Duration::from_secs(60), &[&learner, &worker], || !lines(&metrics).is_empty());
    drop(reward); // killed
    wait_for("the worker to back off", Duration::from_secs(30), &[&learner, &worker], || {
        worker.log().contains("backing off")
    });
    std::thread::sleep(Duration::from_millis(500));
    let (_restarted, again) = reward_server(tmp.path(), "reward2", &reward_addr);
    assert_eq!(again, reward_addr);
    let status = learner.wait(Duration::from_secs(120));
    assert!(status.success(), "learner failed:\n{}", learner.log());
    assert_eq!(lines(&metrics).len(), 6);
    assert_accounted_once(&tmp.path().join("out"), 6, 16);
}

#[test]
fn a_worker_fails_over_to_the_next_reward_server() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 6, 16, 4, "");
    let (mut learner, addr) = start(tmp.path(), "learner", &["learner", "--config", path_str(&config)], true);
    let (first, first_addr) = reward_server(tmp.path(), "reward-a", "127.0.0.1:0");
    let (_second, second_addr) = reward_server(tmp.path(), "reward-b", "127.0.0.1:0");
    let rewards = format!("{first_addr},{second_addr}");
    // A patience far below the run's length: a worker that kept retrying the dead server would
    // give up long before the run ends.
    let (worker, _) = start(
        tmp.path(),
        "worker",
        &["worker", "--learner", &addr, "--reward", &rewards, "--patience-s", "5", "--hold-lease-ms", "30"],
        false,
    );
    let metrics = tmp.path().join("out/metrics.jsonl");
    wait_for("the first iteration", Duration::from_secs(60), &[&learner, &worker], || !lines(&metrics).is_empty());
    drop(first); // killed, never restarted
    let status = learner.wait(Duration::from_secs(120));
    assert!(status.success(), "learner failed:\n{}\nworker:\n{}", learner.log(), worker.log());
    let log = worker.log();
    assert!(log.contains("trying the next one") || log.contains("skipping it for a while"), "no failover:\n{log}");
    assert!(!log.contains("backing off"), "the worker waited for the dead server while another was up:\n{log}");
    assert_accounted_once(&tmp.path().join("out"), 6, 16);
}

#[test]
fn workers_rejoin_a_restarted_learner_and_the_run_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 8, 16, 4, "checkpoint_every = 1\n");
    let (mut learner, addr) = start(tmp.path(), "learner", &["learner", "--config", path_str(&config)], true);
    let (_reward, reward_addr) = reward_server(tmp.path(), "reward", "127.0.0.1:0");
    let worker_args = |name: &'static str| {
        [
            "worker",
            "--learner",
            &addr,
            "--reward",
            &reward_addr,
            "--name",
            name,
            "--patience-s",
            "60",
            "--hold-lease-ms",
            "30",
        ]
    };
    let (worker_a, _) = start(tmp.path(), "worker-a", &worker_args("a"), false);
    let (worker_b, _) = start(tmp.path(), "worker-b", &worker_args("b"), false);
    let out = tmp.path().join("out");
    wait_for("a checkpoint", Duration::from_secs(60), &[&learner, &worker_a], || {
        lines(&out.join("metrics.jsonl")).len() >= 2
    });
    learner.child.kill().unwrap(); // SIGKILL: no goodbye to the workers
    learner.wait(Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let listen = addr.trim_start_matches("http://");
    let (mut restarted, again) = start(
        tmp.path(),
        "learner2",
        &["learner", "--config", path_str(&config), "--resume", "--listen", listen],
        true,
    );
    assert_eq!(again, addr);
    let status = restarted.wait(Duration::from_secs(180));
    assert!(status.success(), "restarted learner failed:\n{}\nworker a:\n{}", restarted.log(), worker_a.log());
    for worker in [&worker_a, &worker_b] {
        let log = worker.log();
        assert!(log.contains("joining again"), "a worker did not rejoin:\n{log}");
    }
    let steps: Vec<u64> = lines(&out.join("metrics.jsonl")).iter().map(|m| m["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=8).collect::<Vec<u64>>(), "the curve does not continue as one run");
    assert_accounted_once(&out, 8, 16);
    let accounting: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("accounting.json")).unwrap()).unwrap();
    assert_eq!(accounting["resumes"], 1, "{accounting}");
    assert!(accounting["workers_joined"].as_u64().unwrap() >= 4, "each worker joined each learner: {accounting}");
}

#[test]
fn one_on_policy_worker_reproduces_ppo_local() {
    // Same algorithm, distributed or not: max_policy_lag = 0, one worker, the whole batch in one
    // lease and a fixed seed give the same per-iteration statistics as `rlhf ppo --local`.
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 3, 16, 0, "");
    run_to_end(tmp.path(), "run", &config, "1", &[]);
    let local_out = tmp.path().join("local");
    super::rlhf_ok(&[
        "ppo",
        "--local",
        "--model",
        path_str(&fixture("lm")),
        "--lexicon",
        path_str(&assets().join("imdb-lexicon")),
        "--prompts",
        path_str(&assets().join("imdb-sentiment/test.jsonl")),
        "--out",
        path_str(&local_out),
        "--iterations",
        "3",
        "--batch-size",
        "16",
        "--set",
        "sampling.max_new_tokens=8",
        "--set",
        "ppo.mini_batch_size=8",
    ]);
    let distributed = lines(&tmp.path().join("out/metrics.jsonl"));
    let local = lines(&local_out.join("metrics.jsonl"));
    assert_eq!(distributed.len(), 3);
    for (d, l) in distributed.iter().zip(&local) {
        let mut compared = 0;
        for (key, value) in l.as_object().unwrap() {
            if key.starts_with("time/") || key == "step" {
                continue;
            }
            let (want, got) = (value.as_f64().unwrap(), d[key].as_f64().unwrap_or(f64::NAN));
            assert!((want - got).abs() <= 1e-4 * want.abs().max(1.0), "{key}: local {want}, distributed {got}");
            compared += 1;
        }
        assert!(compared > 20);
    }
}

#[test]
fn bf16_weights_on_the_wire_halve_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    for dtype in ["f32", "bf16"] {
        let dir = tmp.path().join(dtype);
        std::fs::create_dir_all(&dir).unwrap();
        let config = config(&dir, 1, 8, 0, &format!("weights_dtype = {dtype:?}\n"));
        run_to_end(&dir, "run", &config, "1", &[]);
        bytes.push(lines(&dir.join("out/metrics.jsonl"))[0]["weights/bytes"].as_f64().unwrap());
    }
    assert!(bytes[1] < bytes[0] * 0.55, "bf16 {} vs f32 {}", bytes[1], bytes[0]);
}

#[test]
fn with_a_policy_lag_workers_roll_out_ahead_within_the_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 5, 16, 4, "max_policy_lag = 1\n");
    run_to_end(tmp.path(), "run", &config, "2", &[]);
    let out = tmp.path().join("out");
    assert_accounted_once_with_lag(&out, 5, 16, 1);
    let metrics = lines(&out.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 5);
    assert!(metrics.iter().all(|m| m["staleness/max"].as_f64().unwrap() <= 1.0));
    assert!(metrics.iter().all(|m| m["objective/kl"].as_f64().unwrap().is_finite()));
}

#[test]
fn a_learner_resumes_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    // Three iterations with a checkpoint at version 2: as if the learner died after iteration
    // 3, whose records are then written but not covered by a checkpoint.
    let config = config(tmp.path(), 3, 8, 0, "checkpoint_every = 2\n");
    run_to_end(tmp.path(), "first", &config, "1", &[]);
    let out = tmp.path().join("out");
    assert!(out.join("checkpoints/version-2/ppo_state.json").is_file());
    assert!(out.join("checkpoints/version-2/value_head.safetensors").is_file());
    // Without --resume or --overwrite the directory is refused.
    let err = super::rlhf_err(&["learner", "--config", path_str(&config)]);
    assert!(err.contains("already holds a run") && err.contains("--resume"), "{err}");
    // Two more iterations from version 2.
    let second = run_to_end(tmp.path(), "second", &config, "1", &["--resume", "--set", "train.iterations=4"]);
    assert!(second.log().contains("resuming"), "{}", second.log());
    let steps: Vec<u64> = lines(&out.join("metrics.jsonl")).iter().map(|m| m["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3, 4], "records of the cut-short iteration 3 were kept");
    let indices: Vec<u64> =
        lines(&out.join("rollouts.jsonl")).iter().map(|r| r["prompt_index"].as_u64().unwrap()).collect();
    assert_eq!(indices.len(), 32, "a prompt is in the lineage twice");
    assert_eq!(
        indices.into_iter().collect::<BTreeSet<u64>>(),
        (0..32).collect(),
        "the resumed run continues the prompt stream"
    );
    // The run's accounting covers both learners: 16 prompts from the checkpoint, 16 after it.
    let accounting: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("accounting.json")).unwrap()).unwrap();
    assert_eq!(
        (accounting["prompts_accounted"].as_u64(), accounting["resumes"].as_u64()),
        (Some(32), Some(1)),
        "{accounting}"
    );
    let staged: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(staged.is_empty(), "staging directories left behind: {staged:?}");
}

#[test]
fn a_second_learner_on_the_same_run_directory_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 2, 8, 0, "");
    // No worker: the first learner waits for rollouts, holding its directory.
    let (_first, _) = start(tmp.path(), "first", &["learner", "--config", path_str(&config)], true);
    let started = Instant::now();
    let err = super::rlhf_err(&["learner", "--config", path_str(&config), "--resume"]);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(err.contains("is in use by another rlhf process (pid ") && err.contains(" on "), "{err}");
}

#[test]
fn a_reward_model_with_another_tokenizer_scores_text() {
    // The policy uses the real GPT-2 vocabulary; the reward model its own 384-token BPE. With
    // `reward.retokenize`, workers send text and the reward server tokenises it itself.
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy");
    super::rlhf_ok(&[
        "sft",
        "--init",
        "nano",
        "--tokenizer",
        path_str(&assets().join("gpt2-tokenizer")),
        "--data",
        path_str(&assets().join("imdb-sentiment/test.jsonl")),
        "--max-examples",
        "17",
        "--batch-size",
        "16",
        "--max-length",
        "16",
        "--out",
        path_str(&policy),
    ]);
    let config = config(tmp.path(), 1, 8, 0, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(path_str(&fixture("lm")), path_str(&policy)).replace(
        &format!("lexicon = {:?}", path_str(&assets().join("imdb-lexicon"))),
        &format!("model = {:?}\nretokenize = true", path_str(&fixture("reward"))),
    );
    std::fs::write(&config, text).unwrap();
    run_to_end(tmp.path(), "run", &config, "1", &[]);
    let metrics = lines(&tmp.path().join("out/metrics.jsonl"));
    assert!(metrics[0]["env/reward_mean"].as_f64().unwrap().is_finite());
}

/// A client written from the `.proto` files alone, playing a hostile worker.
mod hostile {
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
    let config = config(tmp.path(), 2, 8, 4, "lease_timeout_s = 2.0\n");
    let (mut learner, addr) = start(tmp.path(), "learner", &["learner", "--config", path_str(&config)], true);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refusals: Vec<(String, String)> = runtime.block_on(async {
        let mut client = hostile::client(&addr).await;
        let (worker_id, lease) = hostile::join_and_lease(&mut client).await;
        let honest = hostile::honest(worker_id, &lease);
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
        refusals
    });
    for (expected, got) in &refusals {
        let code = if expected == "FailedPrecondition" { "FailedPrecondition" } else { "InvalidArgument" };
        assert!(
            got.starts_with(code) && got.contains(expected.trim_start_matches("FailedPrecondition")),
            "expected {code} with {expected:?}, got {got}"
        );
    }
    // The hostile worker's lease expires and is re-issued; an honest worker finishes the run.
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

/// Live (not zombie) processes whose parent is `pid`.
fn live_children(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        if fields.len() > 1 && fields[0] != "Z" && fields[1] == pid.to_string() {
            children.push(child);
        }
    }
    children
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z")
    })
}

/// `rlhf run` with 2 workers, waited on until its 4 children run.
fn running_run(dir: &Path) -> (Proc, Vec<u32>) {
    let config = config(dir, 50, 16, 4, "");
    let (run, _) = start(dir, "run", &["run", "--config", path_str(&config), "--workers", "2"], false);
    let pid = run.child.id();
    let mut children = Vec::new();
    wait_for("the run's 4 children", Duration::from_secs(60), &[&run], || {
        children = live_children(pid);
        children.len() == 4 && run.log().contains("lease received")
    });
    (run, children)
}

#[test]
fn sigterm_to_rlhf_run_stops_all_its_children() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut run, children) = running_run(tmp.path());
    // SAFETY: kill(2) on a child of this test.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGTERM) };
    let status = run.wait(Duration::from_secs(60));
    assert!(!status.success(), "a stopped run is not a finished one");
    let log = run.log();
    assert!(log.contains("forwarding SIGTERM"), "{log}");
    wait_for("every child to exit", Duration::from_secs(10), &[&run], || children.iter().all(|&c| !alive(c)));
    assert!(
        log.contains("returned the lease before stopping") || log.contains("worker finished"),
        "the workers did not stop cleanly:\n{log}"
    );
    // Workers stop before the learner, so handing back a lease does not fail.
    assert!(!log.contains("could not return the lease"), "{log}");
}

#[test]
fn children_die_with_a_killed_rlhf_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut run, children) = running_run(tmp.path());
    run.child.kill().unwrap(); // SIGKILL: no chance to forward anything
    run.wait(Duration::from_secs(10));
    wait_for("every orphan to exit", Duration::from_secs(30), &[&run], || children.iter().all(|&c| !alive(c)));
}

#[test]
fn a_worker_pointed_at_the_wrong_service_names_itself_and_the_role_that_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 1, 8, 0, "");
    let (_learner, learner) = start(tmp.path(), "learner", &["learner", "--config", path_str(&config)], true);
    let (_reward, reward) = reward_server(tmp.path(), "reward", "127.0.0.1:0");
    // The reward server given as the learner.
    let err =
        super::rlhf_err(&["worker", "--name", "w7", "--learner", &reward, "--reward", &reward, "--patience-s", "5"]);
    assert!(
        err.contains("worker w7") && err.contains("does not serve rlhf.v1.Learner (is it the reward server?)"),
        "{err}"
    );
    // The learner given as the reward server.
    let err = super::rlhf_err(&[
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
