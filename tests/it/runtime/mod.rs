//! The distributed runtime with real processes on 127.0.0.1: learner, reward server, workers.
//! Tests wait by polling with a timeout and kill every process they start when dropped. Here: the
//! helpers and normal runs; `faults.rs`: processes killed, restarted and resumed; `hostile.rs`:
//! peers that send what they should not.

mod containers;
mod faults;
mod hostile;
mod observability;
mod paths;
mod secure;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{assets, fixture, path_str, reward_scores};

/// A process killed on drop, with its stderr in a file.
pub(super) struct Proc {
    pub(super) child: Child,
    pub(super) stderr: PathBuf,
}

impl Proc {
    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub(super) fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
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
pub(super) fn start(dir: &Path, name: &str, args: &[&str], server: bool) -> (Proc, String) {
    start_with_env(dir, name, args, server, &[])
}

/// A worker's log with each lease it receives and submits in it (per-lease lines are `debug`).
pub(super) const DEBUG_WORKER_LOG: &str = "info,hf_hub=off,rlhf_rollout_worker=debug";

/// A reward server's log with each scored batch (and how many requests it joined) in it.
pub(super) const DEBUG_REWARD_LOG: &str = "info,hf_hub=off,rlhf_reward_server=debug";

/// [`start`] with extra environment variables.
pub(super) fn start_with_env(
    dir: &Path,
    name: &str,
    args: &[&str],
    server: bool,
    env: &[(&str, &str)],
) -> (Proc, String) {
    let stderr = dir.join(format!("{name}.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(args)
        .envs(env.iter().copied())
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
pub(super) fn run_to_end(dir: &Path, name: &str, config: &Path, workers: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["run", "--config", path_str(config), "--workers", workers];
    args.extend_from_slice(extra);
    let (mut run, _) = start(dir, name, &args, false);
    let status = run.wait(Duration::from_secs(120));
    assert!(status.success(), "rlhf run failed:\n{}", run.log());
    run
}

/// `rlhf reward-server` on the lexicon, listening on `listen`.
pub(super) fn reward_server(dir: &Path, name: &str, listen: &str) -> (Proc, String) {
    let lexicon = assets().join("imdb-lexicon");
    let tokenizer = fixture("lm");
    let args =
        ["reward-server", "--lexicon", path_str(&lexicon), "--tokenizer", path_str(&tokenizer), "--listen", listen];
    start_with_env(dir, name, &args, true, &[("RUST_LOG", DEBUG_REWARD_LOG)])
}

/// `key=value` from a log line (the value up to the next space).
pub(super) fn log_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    Some(line[start..].split_whitespace().next()?.to_string())
}

/// The `key` field of the first line of `proc`'s log that holds `message`, once there is one
/// (e.g. the address a server logged for a port-0 listener).
pub(super) fn logged_field(proc: &Proc, message: &str, key: &str) -> String {
    let mut value = None;
    wait_for(&format!("{message:?} in the log"), Duration::from_secs(60), &[proc], || {
        value = proc.log().lines().find(|l| l.contains(message)).and_then(|l| log_field(l, key));
        value.is_some()
    });
    value.unwrap()
}

/// Polls `ready` until it holds; on timeout, fails with the logs of `procs`.
pub(super) fn wait_for(what: &str, timeout: Duration, procs: &[&Proc], mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > timeout {
            let logs: Vec<String> = procs.iter().map(|p| format!("--- {}\n{}", p.stderr.display(), p.log())).collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The whole JSON lines of a file another process may be appending to (a last line without its
/// newline is still being written, and is left for the next read).
pub(super) fn lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A learner config on the fixture policy, IMDb prompts and the lexicon reward.
pub(super) fn config(dir: &Path, iterations: usize, batch: usize, lease_size: usize, extra: &str) -> PathBuf {
    let lexicon = format!("lexicon = {:?}", path_str(&assets().join("imdb-lexicon")));
    config_with(dir, iterations, batch, lease_size, &lexicon, "", extra)
}

/// A learner config on the fixture policy and IMDb prompts, with `reward` lines in `[reward]`,
/// `train` lines in `[train]` and `extra` after `[runtime]`'s.
pub(super) fn config_with(
    dir: &Path,
    iterations: usize,
    batch: usize,
    lease_size: usize,
    reward: &str,
    train: &str,
    extra: &str,
) -> PathBuf {
    let path = dir.join("run.toml");
    let text = format!(
        "model = {model:?}\nprompts = {prompts:?}\nout = {out:?}\n\n[reward]\n{reward}\n\n\
         [train]\niterations = {iterations}\nbatch_size = {batch}\n{train}\n\n[train.sampling]\nmax_new_tokens = 8\n\n\
         [train.ppo]\nmini_batch_size = 8\n\n[runtime]\nlease_size = {lease_size}\nheartbeat_timeout_s = 1.5\nheartbeat_interval_ms = 200\n{extra}",
        model = path_str(&fixture("lm")),
        prompts = path_str(&assets().join("imdb-sentiment/test.jsonl")),
        out = path_str(&dir.join("out")),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Every prompt of the run accounted exactly once, in order, on-policy.
pub(super) fn assert_accounted_once(out: &Path, iterations: usize, batch: usize) -> Vec<serde_json::Value> {
    assert_accounted_once_with_lag(out, iterations, batch, 0)
}

/// Every prompt accounted exactly once; each rollout generated at most `lag` versions before the
/// version it trained.
pub(super) fn assert_accounted_once_with_lag(
    out: &Path,
    iterations: usize,
    batch: usize,
    lag: u64,
) -> Vec<serde_json::Value> {
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
        "time/weight_serialize",
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
    // Version 0 was never broadcast (workers fetch it when they join). Versions 1 and 2 reached
    // both workers, each broadcast recorded in the first record closed after the last worker's
    // acknowledgement (usually the next one; later if a worker was slow to poll), in less time
    // than an iteration took. The ledger's unit test pins the exact semantics.
    assert!(metrics[0].get("time/weight_broadcast").is_none(), "{}", metrics[0]);
    let broadcasts: Vec<&serde_json::Value> =
        metrics[1..].iter().filter(|m| m["time/weight_broadcast"].is_number()).collect();
    assert!(!broadcasts.is_empty(), "no broadcast time in {metrics:?}");
    for m in broadcasts {
        let (broadcast, wait) =
            (m["time/weight_broadcast"].as_f64().unwrap(), m["time/rollout_wait"].as_f64().unwrap());
        assert!(broadcast > 0.0 && broadcast < wait + m["time/update"].as_f64().unwrap() + 1.0, "{m}");
    }
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
fn one_on_policy_worker_reproduces_ppo_local() {
    // Same algorithm, distributed or not: max_policy_lag = 0, one worker, the whole batch in one
    // lease and a fixed seed give the same per-iteration statistics as `rlhf ppo --local`.
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 3, 16, 0, "");
    run_to_end(tmp.path(), "run", &config, "1", &[]);
    let lexicon = assets().join("imdb-lexicon");
    let local_out = ppo_local(tmp.path(), &["--lexicon", path_str(&lexicon)]);
    assert_same_metrics(&tmp.path().join("out"), &local_out);
}

#[test]
fn the_distributed_learner_trains_a_separate_critic_like_ppo_local() {
    // Seed 001's recipe: a critic initialised from the reward model, with its own optimizer,
    // checkpointed and exported. Distributed (one on-policy worker) and local runs agree.
    let tmp = tempfile::tempdir().unwrap();
    let reward = fixture("reward");
    let config = config_with(
        tmp.path(),
        3,
        16,
        0,
        &format!("model = {:?}", path_str(&reward)),
        "critic = \"reward-model\"",
        "checkpoint_every = 1",
    );
    run_to_end(tmp.path(), "run", &config, "1", &[]);
    let local_out = ppo_local(tmp.path(), &["--reward-model", path_str(&reward), "--critic", "reward-model"]);
    let out = tmp.path().join("out");
    assert_same_metrics(&out, &local_out);
    // The critic is in every checkpoint and in the run directory, and trained like the local one.
    for version in 1..=3 {
        let dir = out.join(format!("checkpoints/version-{version}/critic"));
        assert!(dir.join("model.safetensors").is_file() && dir.join("optimizer.bin").is_file(), "{}", dir.display());
    }
    assert!(!out.join("value_head.safetensors").exists(), "the policy has no value head with a separate critic");
    let (initial, distributed) = (reward_scores(&reward), reward_scores(&out.join("critic")));
    let local = reward_scores(&local_out.join("critic"));
    assert!(initial.iter().zip(&distributed).all(|(a, b)| (a - b).abs() > 1e-5), "the critic did not train");
    for (d, l) in distributed.iter().zip(&local) {
        assert!(
            (d - l).abs() <= 1e-4 * l.abs().max(1.0),
            "critics differ: distributed {distributed:?}, local {local:?}"
        );
    }
}

/// `rlhf ppo --local` with the settings of [`config`] (3 iterations of 16) and `reward` flags;
/// returns its run directory.
fn ppo_local(dir: &Path, reward: &[&str]) -> PathBuf {
    let out = dir.join("local");
    let (model, prompts) = (fixture("lm"), assets().join("imdb-sentiment/test.jsonl"));
    let mut args = vec!["ppo", "--local", "--model", path_str(&model), "--prompts", path_str(&prompts)];
    args.extend_from_slice(reward);
    args.extend_from_slice(&["--out", path_str(&out), "--iterations", "3", "--batch-size", "16"]);
    args.extend_from_slice(&["--set", "sampling.max_new_tokens=8", "--set", "ppo.mini_batch_size=8"]);
    super::rlhf_ok(&args);
    out
}

/// Every iteration's statistics (timings aside) agree within 1e-4 (relative above 1).
fn assert_same_metrics(distributed: &Path, local: &Path) {
    let distributed = lines(&distributed.join("metrics.jsonl"));
    let local = lines(&local.join("metrics.jsonl"));
    assert_eq!(distributed.len(), 3);
    assert_eq!(local.len(), 3);
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
fn rlhf_health_probes_a_role_s_health_service() {
    let tmp = tempfile::tempdir().unwrap();
    let (_reward, addr) = reward_server(tmp.path(), "reward", "127.0.0.1:0");
    assert_eq!(super::rlhf_ok(&["health", &addr]).trim(), "SERVING");
    assert_eq!(super::rlhf_ok(&["health", &addr, "--service", "rlhf.v1.RewardModel"]).trim(), "SERVING");
    // Asked about a service it does not serve, or with nothing listening: non-zero, with the reason.
    let err = super::rlhf_err(&["health", &addr, "--service", "rlhf.v1.Learner"]);
    assert!(err.contains(&addr) && err.contains("health check failed"), "{err}");
    let err = super::rlhf_err(&["health", "127.0.0.1:1", "--timeout-s", "2"]);
    assert!(err.contains("127.0.0.1:1") && err.contains("cannot connect"), "{err}");
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
    // Workers do roll out ahead: while an update runs they lease the next iteration's prompts.
    let ahead = metrics.iter().filter(|m| m["staleness/max"].as_f64().unwrap() >= 1.0).count();
    let staleness: Vec<f64> = metrics.iter().map(|m| m["staleness/max"].as_f64().unwrap()).collect();
    assert!(ahead >= 1, "no rollout was generated ahead of its policy version: staleness/max {staleness:?}");
    assert!(metrics.iter().all(|m| m["objective/kl"].as_f64().unwrap().is_finite()));
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
    let reward = format!("model = {:?}\nretokenize = true", path_str(&fixture("reward")));
    let config = config_with(tmp.path(), 1, 8, 0, &reward, "", "");
    let text = std::fs::read_to_string(&config).unwrap().replace(path_str(&fixture("lm")), path_str(&policy));
    std::fs::write(&config, text).unwrap();
    run_to_end(tmp.path(), "run", &config, "1", &[]);
    let metrics = lines(&tmp.path().join("out/metrics.jsonl"));
    assert!(metrics[0]["env/reward_mean"].as_f64().unwrap().is_finite());
    // The retokenising scorer (decode with the policy's tokenizer, encode with the reward
    // model's) gives what `rlhf reward score` gives for the decoded text.
    let eval = tmp.path().join("eval.json");
    let (before, after) =
        (format!("before={}", path_str(&policy)), format!("after={}", path_str(&tmp.path().join("out"))));
    #[rustfmt::skip]
    super::rlhf_ok(&[
        "eval", "--policy", &before, "--policy", &after, "--prompts", path_str(&assets().join("imdb-sentiment/test.jsonl")),
        "--reward-model", path_str(&fixture("reward")), "--n-prompts", "3", "--samples", "3", "--max-new-tokens", "8",
        "--out", path_str(&eval),
    ]);
    let eval: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&eval).unwrap()).unwrap();
    for sample in eval["samples"].as_array().unwrap() {
        let prompt = sample["prompt"].as_str().unwrap();
        let responses: Vec<&str> =
            ["before", "after"].iter().map(|p| sample[p]["response"].as_str().unwrap()).collect();
        let stdout = super::rlhf_ok(&[
            "reward",
            "score",
            "--model",
            path_str(&fixture("reward")),
            "--prompt",
            prompt,
            "--text",
            responses[0],
            "--text",
            responses[1],
        ]);
        for (line, policy) in stdout.lines().zip(["before", "after"]) {
            let want = serde_json::from_str::<serde_json::Value>(line).unwrap()["score"].as_f64().unwrap();
            let got = sample[policy]["reward"].as_f64().unwrap();
            assert!(
                (want - got).abs() < 1e-4,
                "{prompt:?} + {:?}: eval {got}, rlhf reward score {want}",
                sample[policy]
            );
        }
    }
}
