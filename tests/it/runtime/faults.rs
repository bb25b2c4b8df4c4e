//! Faults: workers killed or joining late, reward servers and the learner restarted, resumes,
//! signals to `rlhf run`.

use super::*;

#[test]
fn a_killed_worker_s_lease_is_reissued_and_the_run_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 3, 16, 4, "lease_timeout_s = 60.0\n");
    let (mut learner, addr) = start(tmp.path(), "learner", &["learner", "--config", path_str(&config)], true);
    let (_reward, reward) = reward_server(tmp.path(), "reward", "127.0.0.1:0");
    // Worker A takes a lease and sits on it; then it is killed.
    let (mut doomed, _) = start_with_env(
        tmp.path(),
        "doomed",
        &["worker", "--learner", &addr, "--reward", &reward, "--name", "doomed-worker", "--hold-lease-ms", "600000"],
        false,
        &[("RUST_LOG", DEBUG_WORKER_LOG)],
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
    // The first worker rolls out slowly (8 leases of at least 100 ms an iteration), so the run is
    // still going when the second has started, even on a loaded machine.
    let (_first, _) = start(
        tmp.path(),
        "first",
        &["worker", "--learner", &addr, "--reward", &reward, "--name", "first", "--hold-lease-ms", "100"],
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
    let (second, second_addr) = reward_server(tmp.path(), "reward-b", "127.0.0.1:0");
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
    // Until then, requests went round robin: both servers scored some of the first four leases.
    let served = |server: &Proc| server.log().lines().filter(|l| l.contains("scored batch")).count();
    assert!(served(&first) >= 1 && served(&second) >= 1, "not round robin: {} and {}", served(&first), served(&second));
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
    // Enough work left after the restart (each lease held 100 ms) that both workers, backing off
    // for up to ~3 s, find the new learner before it finishes.
    const ITERATIONS: usize = 20;
    let config = config(tmp.path(), ITERATIONS, 16, 4, "checkpoint_every = 1\n");
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
            "100",
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
    assert_eq!(steps, (1..=ITERATIONS as u64).collect::<Vec<u64>>(), "the curve does not continue as one run");
    assert_accounted_once(&out, ITERATIONS, 16);
    let accounting: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("accounting.json")).unwrap()).unwrap();
    assert_eq!(accounting["resumes"], 1, "{accounting}");
    assert!(accounting["workers_joined"].as_u64().unwrap() >= 4, "each worker joined each learner: {accounting}");
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
    let err = crate::rlhf_err(&["learner", "--config", path_str(&config)]);
    assert!(err.contains("already holds a run") && err.contains("--resume"), "{err}");
    // Two more iterations from version 2.
    let second = run_to_end(tmp.path(), "second", &config, "1", &["--resume", "--set", "train.iterations=4"]);
    assert!(second.log().contains("resuming"), "{}", second.log());
    let metrics = lines(&out.join("metrics.jsonl"));
    let steps: Vec<u64> = metrics.iter().map(|m| m["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3, 4], "records of the cut-short iteration 3 were kept");
    // The policy and the KL controller came back, not only the version number: the resumed
    // policy differs from the reference (KL > 0), and β is the one the checkpoint saved (the
    // adaptive controller has moved it away from its initial 0.2).
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("checkpoints/version-2/ppo_state.json")).unwrap())
            .unwrap();
    let saved_beta = state["kl"]["adaptive"]["value"].as_f64().unwrap();
    let resumed = &metrics[2];
    assert!(resumed["objective/kl"].as_f64().unwrap().abs() > 1e-6, "policy not restored: {resumed}");
    assert_eq!(resumed["objective/kl_coef"].as_f64().unwrap(), saved_beta, "β not restored: {resumed}");
    assert_ne!(saved_beta, 0.2, "the controller never moved, so this checks nothing");
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
    let err = crate::rlhf_err(&["learner", "--config", path_str(&config), "--resume"]);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(err.contains("is in use by another rlhf process (pid ") && err.contains(" on "), "{err}");
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
    let args = ["run", "--config", path_str(&config), "--workers", "2"];
    let (run, _) = start_with_env(dir, "run", &args, false, &[("RUST_LOG", DEBUG_WORKER_LOG)]);
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
fn resume_auto_starts_afresh_resumes_and_leaves_a_finished_run_alone() {
    // One command line for the first start and every restart (what a restart policy reruns).
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 2, 8, 0, "checkpoint_every = 1\n");
    let out = tmp.path().join("out");
    // What an attempt cut short before its first checkpoint leaves behind is cleared.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("metrics.jsonl"), "{\"step\": 1, \"stale\": true}\n").unwrap();
    let auto = ["--resume", "auto"];
    run_to_end(tmp.path(), "first", &config, "1", &auto);
    assert_eq!(lines(&out.join("metrics.jsonl")).len(), 2);
    assert!(lines(&out.join("metrics.jsonl")).iter().all(|m| m["stale"].is_null()), "the stale record was kept");
    // A finished run: nothing to do, exit 0, nothing written.
    let before = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let again = run_to_end(tmp.path(), "again", &config, "1", &auto);
    assert!(again.log().contains("the run is already finished"), "{}", again.log());
    assert_eq!(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap(), before);
    let learner = crate::rlhf_ok(&["learner", "--config", path_str(&config), "--resume", "auto"]);
    assert!(learner.is_empty(), "a finished learner serves nothing: {learner}");
    // More iterations: it resumes from the newest checkpoint.
    let more = run_to_end(tmp.path(), "more", &config, "1", &["--resume", "auto", "--set", "train.iterations=3"]);
    assert!(more.log().contains("resuming"), "{}", more.log());
    assert_eq!(lines(&out.join("metrics.jsonl")).len(), 3);
    // Plain --resume still needs a checkpoint.
    let fresh = tmp.path().join("fresh.toml");
    std::fs::write(
        &fresh,
        std::fs::read_to_string(&config).unwrap().replace(path_str(&out), path_str(&tmp.path().join("empty"))),
    )
    .unwrap();
    let err = crate::rlhf_err(&["learner", "--config", path_str(&fresh), "--resume"]);
    assert!(err.contains("no checkpoint"), "{err}");
}

#[test]
fn a_learner_stopped_by_sigterm_checkpoints_exits_0_and_resumes() {
    // No periodic checkpoints: whatever is on disk after the stop, SIGTERM wrote.
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 12, 8, 8, "");
    let out = tmp.path().join("out");
    let (mut learner, addr) = start(tmp.path(), "learner", &["learner", "--config", path_str(&config)], true);
    let (_reward, reward) = reward_server(tmp.path(), "reward", "127.0.0.1:0");
    let worker_args = |addr: &str| {
        ["worker", "--learner", addr, "--reward", &reward, "--hold-lease-ms", "300"].map(String::from).to_vec()
    };
    let args = worker_args(&addr);
    let (worker, _) = start(tmp.path(), "worker", &args.iter().map(String::as_str).collect::<Vec<_>>(), false);
    let metrics = out.join("metrics.jsonl");
    wait_for("two iterations", Duration::from_secs(60), &[&learner, &worker], || lines(&metrics).len() >= 2);
    // SAFETY: kill(2) on a child of this test.
    unsafe { libc::kill(learner.child.id() as i32, libc::SIGTERM) };
    let status = learner.wait(Duration::from_secs(30));
    let log = learner.log();
    assert!(status.success(), "a learner stopped by SIGTERM exits 0:\n{log}");
    assert!(log.contains("stopped with a checkpoint"), "{log}");
    let version = newest_checkpoint(&out).expect("a checkpoint written on SIGTERM");
    assert!((2..12).contains(&version), "checkpoint at version {version}");
    drop(worker);
    // The same command line with --resume auto continues from it and finishes the run.
    let resume = ["learner", "--config", path_str(&config), "--resume", "auto"];
    let (mut learner, addr) = start(tmp.path(), "resumed", &resume, true);
    let args = worker_args(&addr);
    let (_worker, _) = start(tmp.path(), "worker-2", &args.iter().map(String::as_str).collect::<Vec<_>>(), false);
    let status = learner.wait(Duration::from_secs(120));
    assert!(status.success() && learner.log().contains("resuming"), "{}", learner.log());
    let steps: Vec<u64> = lines(&metrics).iter().map(|m| m["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=12).collect::<Vec<_>>());
    assert_accounted_once(&out, 12, 8);
}

/// The newest complete learner checkpoint's version in a run directory.
pub(super) fn newest_checkpoint(out: &Path) -> Option<u64> {
    std::fs::read_dir(out.join("checkpoints"))
        .ok()?
        .flatten()
        .filter(|e| e.path().join("ppo_state.json").is_file())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("version-")?.parse().ok())
        .max()
}

#[test]
fn a_checkpoint_that_cannot_be_written_stops_the_learner_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 4, 8, 0, "checkpoint_every = 2\n");
    let (mut learner, addr) = start(tmp.path(), "learner", &["learner", "--config", path_str(&config)], true);
    // A file where the checkpoints folder goes: every checkpoint write fails.
    let blocker = tmp.path().join("out/checkpoints");
    std::fs::write(&blocker, "not a folder").unwrap();
    let (_reward, reward) = reward_server(tmp.path(), "reward", "127.0.0.1:0");
    let (_worker, _) =
        start(tmp.path(), "worker", &["worker", "--learner", &addr, "--reward", &reward, "--name", "w"], false);
    let status = learner.wait(Duration::from_secs(120));
    let log = learner.log();
    assert!(!status.success(), "the learner exited 0 after a failed checkpoint:\n{log}");
    assert!(log.contains("checkpoint of version 2 failed") && log.contains("out/checkpoints"), "{log}");
    // It stopped there: iteration 2, whose checkpoint failed, is not recorded, and no final model.
    let steps: Vec<u64> =
        lines(&tmp.path().join("out/metrics.jsonl")).iter().map(|m| m["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1], "{log}");
    assert!(!tmp.path().join("out/model.safetensors").exists());
}

#[test]
fn old_checkpoints_are_deleted_beyond_checkpoint_keep() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 5, 8, 0, "checkpoint_every = 1\ncheckpoint_keep = 2\n");
    run_to_end(tmp.path(), "first", &config, "1", &[]);
    let checkpoints = tmp.path().join("out/checkpoints");
    let listed = || {
        let mut names: Vec<String> = std::fs::read_dir(&checkpoints)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(listed(), ["version-4", "version-5"]);
    // The newest still resumes; afterwards the two newest are kept again.
    run_to_end(tmp.path(), "second", &config, "1", &["--resume", "--set", "train.iterations=6"]);
    assert_eq!(listed(), ["version-5", "version-6"]);
}
