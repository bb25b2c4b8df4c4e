//! The runtime across real containers: `deploy/compose/docker-compose.yml` on this machine's
//! Docker Engine, every role in its own container with its own address on a private bridge
//! network, under scaling, kills, a network partition and learner restarts. Skipped, with the
//! reason printed, where no Docker engine or `docker-compose` answers.

use std::process::Output;

use super::*;

/// Long enough that the run is still going when the last fault is injected (an iteration here
/// takes ~0.3 s on 2 cores), short enough for the whole test to stay near 3 minutes.
const ITERATIONS: usize = 150;
const BATCH: usize = 32;

#[test]
fn a_compose_run_survives_scaling_kills_a_partition_and_learner_restarts() {
    let Some(compose) = Compose::start_if_docker_answers("containers", false, ITERATIONS) else { return };
    let started = Instant::now();
    let run = compose.run_dir();

    // 1. Two workers are rolling out.
    compose.ok(&["up", "-d", "--scale", "worker=2"]);
    let learner = compose.id("learner");
    compose.wait("the first iterations", || lines(&run.join("metrics.jsonl")).len() >= 3);
    assert_eq!(compose.ids("worker").len(), 2);

    // 2. A third worker mid-run: it joins and its rollouts appear in the lineage.
    compose.ok(&["up", "-d", "--no-recreate", "--scale", "worker=3"]);
    let workers = compose.ids("worker");
    assert_eq!(workers.len(), 3);
    let names: Vec<String> = workers.iter().map(|id| compose.worker_name(id)).collect();
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), 3, "worker names are not unique: {names:?}");
    let third = compose.worker_name(&compose.newest(&workers));
    compose.wait("the third worker's rollouts in the lineage", || {
        lines(&run.join("rollouts.jsonl")).iter().any(|r| r["worker"] == third.as_str())
    });
    eprintln!("[{:>5.1} s] 2. worker {third} joined mid-run and is in the lineage", secs(started));

    // 3. SIGKILL of a worker that holds a lease. With the reward server frozen, every worker
    // that took a lease sits on it (its scoring call waits), and its log says which lease.
    let reward = compose.id("reward");
    docker_ok(&["pause", &reward]);
    let mut holder = None;
    compose.wait("a worker holding a lease", || {
        holder = workers.iter().find(|id| compose.holds_a_lease(id)).cloned();
        holder.is_some()
    });
    let holder = holder.unwrap();
    let victim = compose.worker_name(&holder);
    docker_ok(&["kill", &holder]);
    compose.wait("the killed worker's lease re-issued", || {
        compose.logs(&learner).lines().any(|l| l.contains("lease of an expired worker") && l.contains(&victim))
    });
    docker_ok(&["unpause", &reward]);
    eprintln!("[{:>5.1} s] 3. killed worker {victim}: expired, its lease re-issued", secs(started));

    // 4. A network partition: a worker is cut off, expired, reconnected; it rejoins and goes on.
    let cut = workers.iter().find(|id| **id != holder).unwrap().clone();
    let cut_name = compose.worker_name(&cut);
    let network = format!("{}_rlhf", compose.project);
    docker_ok(&["network", "disconnect", &network, &cut]);
    compose.wait("the cut-off worker expired", || {
        compose.logs(&learner).lines().any(|l| l.contains("worker expired") && l.contains(&cut_name))
    });
    let leases_before = compose.logs(&cut).matches("lease received").count();
    docker_ok(&["network", "connect", &network, &cut]);
    compose.wait("the reconnected worker back at work", || {
        let joins =
            compose.logs(&learner).lines().filter(|l| l.contains("worker joined") && l.contains(&cut_name)).count();
        joins >= 2 && compose.logs(&cut).matches("lease received").count() > leases_before
    });
    eprintln!("[{:>5.1} s] 4. partitioned worker {cut_name}: expired, rejoined, rolling out again", secs(started));

    // 5. SIGKILL of the learner, then the same container started again: it resumes from its
    // volume. Its checkpoint must postdate steps 3 and 4, whose re-issue and expiries the run's
    // accounting is checked for at the end: what happened after the newest checkpoint is rolled
    // back with the iterations it happened in (the update of version n + 2 starts after now).
    let after_faults = lines(&run.join("metrics.jsonl")).len() as u64;
    compose.wait("a checkpoint after the faults", || {
        super::faults::newest_checkpoint(&run).is_some_and(|version| version >= after_faults + 2)
    });
    let started_at = compose.started_at(&learner);
    docker_ok(&["kill", &learner]);
    // Docker may restart it by its on-failure policy; if not, the operator does.
    compose.wait("the killed learner down or restarted", || {
        compose.state(&learner) == "exited" || compose.started_at(&learner) != started_at
    });
    let by = if compose.state(&learner) == "exited" {
        docker_ok(&["start", &learner]);
        "docker start"
    } else {
        "its restart policy"
    };
    compose.wait("the learner resumed", || compose.logs(&learner).matches("resuming").count() >= 1);
    let metrics_at_resume = lines(&run.join("metrics.jsonl")).len();
    compose.wait("training after the resume", || lines(&run.join("metrics.jsonl")).len() > metrics_at_resume + 2);
    eprintln!(
        "[{:>5.1} s] 5. killed learner restarted by {by} at iteration {metrics_at_resume}, resumed",
        secs(started)
    );

    // 6. `docker-compose stop` (SIGTERM, then stop_grace_period): a checkpoint and exit 0; then
    // started again, it resumes and finishes the run.
    compose.ok(&["stop", "learner"]);
    assert_eq!(compose.exit_code(&learner), 0, "the stopped learner's exit code; log:\n{}", compose.logs(&learner));
    let log = compose.logs(&learner);
    assert!(log.contains("stopped with a checkpoint") || log.contains("checkpointed already"), "{log}");
    let stopped_at = lines(&run.join("metrics.jsonl")).len();
    assert!(stopped_at < ITERATIONS, "the run ended before the learner was stopped: make ITERATIONS larger");
    eprintln!("[{:>5.1} s] 6. learner stopped by SIGTERM at iteration {stopped_at}: checkpoint, exit 0", secs(started));
    compose.ok(&["start", "learner"]);
    compose.wait_for("the run's end", Duration::from_secs(240), || compose.state(&learner) == "exited");
    let log = compose.logs(&learner);
    assert_eq!(compose.exit_code(&learner), 0, "{log}");
    assert!(log.contains("run finished") && log.matches("resuming").count() == 2, "{log}");
    // Workers exit 0 at the end of the run (restart: on-failure leaves them down).
    compose.wait("the workers' exits", || workers.iter().all(|id| compose.state(id) == "exited"));
    for id in workers.iter().filter(|id| **id != holder) {
        assert_eq!(compose.exit_code(id), 0, "worker {id}; log:\n{}", compose.logs(id));
    }

    // Every prompt exactly once, in a curve with every iteration once, in order, across the
    // two resumes; the lineage names all three workers.
    let rollouts = assert_accounted_once(&run, ITERATIONS, BATCH);
    let steps: Vec<u64> = lines(&run.join("metrics.jsonl")).iter().map(|m| m["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=ITERATIONS as u64).collect::<Vec<_>>());
    let in_lineage: BTreeSet<&str> = rollouts.iter().map(|r| r["worker"].as_str().unwrap()).collect();
    assert!(names.iter().all(|n| in_lineage.contains(n.as_str())), "lineage {in_lineage:?}, workers {names:?}");
    let accounting: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("accounting.json")).unwrap()).unwrap();
    assert_eq!(accounting["resumes"], 2, "{accounting}");
    assert!(accounting["leases_reissued"].as_u64().unwrap() >= 1, "{accounting}");
    eprintln!("[{:>5.1} s] the run finished: {} prompts, each once; {accounting}", secs(started), ITERATIONS * BATCH);
}

#[test]
fn a_compose_run_with_mutual_tls_and_a_token_completes() {
    // deploy/compose/secure.yml over the same compose file, with certificates from `rlhf certs`
    // for the service names; healthchecks go to the plain-text health ports.
    const SHORT: usize = 6;
    let Some(compose) = Compose::start_if_docker_answers("containers (secure)", true, SHORT) else { return };
    compose.ok(&["up", "-d", "learner", "reward"]);
    let learner = compose.id("learner");
    // From the host, by the learner's address on the bridge network: its health port answers in
    // plain text without credentials; its gRPC port speaks TLS only.
    let ip = docker_ok(&["inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &learner]);
    let ip = ip.trim();
    compose
        .wait("the learner's health port", || super::super::rlhf(&["health", &format!("{ip}:7100")]).status.success());
    let plain = super::super::rlhf_err(&["health", &format!("{ip}:7000"), "--timeout-s", "5"]);
    assert!(plain.contains(&format!("{ip}:7000")), "{plain}");

    compose.ok(&["up", "-d", "--scale", "worker=2"]);
    compose.wait_for("the run's end", Duration::from_secs(180), || compose.state(&learner) == "exited");
    let log = compose.logs(&learner);
    assert_eq!(compose.exit_code(&learner), 0, "{log}");
    assert!(log.contains("run finished") && !log.contains("refused a call"), "{log}");
    assert_eq!(log.matches("worker joined").count(), 2, "{log}");
    assert_accounted_once(&compose.run_dir(), SHORT, BATCH);
    let reward = compose.id("reward");
    assert!(compose.logs(&reward).contains("tls=true"));
    // The reward server's metrics port (compose exposes it) counted the run's requests.
    let ip = docker_ok(&["inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &reward]);
    let metrics = super::observability::scrape(&format!("{}:9101", ip.trim()));
    assert!(metrics.get("rlhf_reward_requests_total").is_some_and(|n| *n > 0.0), "{metrics:?}");
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// A `docker-compose` project on `deploy/compose/docker-compose.yml`, with the fixture models as
/// its data, a test learner config and a host directory as the learner's volume; taken down
/// (containers, network, volumes) on drop.
struct Compose {
    project: String,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// Compose files, in `deploy/compose`, in order.
    files: Vec<String>,
}

impl Compose {
    /// Builds the image from the binary under test and writes the project's data and config;
    /// `None`, after one printed line, when no Docker engine or compose tool answers.
    fn start_if_docker_answers(test: &str, secure: bool, iterations: usize) -> Option<Self> {
        let engine = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
        let tool = Command::new("docker-compose").arg("version").output();
        let why = match (&engine, &tool) {
            (Ok(e), Ok(t)) if e.status.success() && t.status.success() => None,
            (Ok(e), _) if !e.status.success() => Some(format!("no Docker engine answers ({})", stderr(e).trim())),
            (Err(e), _) => Some(format!("no docker command ({e})")),
            _ => Some("no docker-compose command".to_string()),
        };
        if let Some(why) = why {
            let line = format!("skipped {test}: {why}\n");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        copy_dir(&fixture("lm"), &data.join("sft"));
        copy_dir(&fixture("reward"), &data.join("reward-model"));
        std::fs::create_dir_all(data.join("corpus")).unwrap();
        std::fs::copy(assets().join("imdb-sentiment/test.jsonl"), data.join("corpus/train.jsonl")).unwrap();
        let config = dir.path().join("learner.toml");
        std::fs::write(&config, learner_config(iterations)).unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).unwrap();

        let project = format!("rlhf-it-{}{}", if secure { "secure-" } else { "" }, std::process::id());
        let image = format!("{project}:latest");
        let build = Command::new(super::super::root().join("deploy/docker/build-image.sh"))
            .arg(&image)
            .env("RLHF_BINARY", env!("CARGO_BIN_EXE_rlhf"))
            .output()
            .unwrap();
        assert!(build.status.success(), "build-image.sh failed:\n{}", stderr(&build));
        let mut env = vec![
            ("RLHF_IMAGE".into(), image),
            ("RLHF_DATA".into(), path_str(&data).into()),
            ("RLHF_LEARNER_CONFIG".into(), path_str(&config).into()),
            ("RLHF_RUN".into(), path_str(&run).into()),
            // Workers log each submission, so the test can tell which one holds a lease.
            ("RLHF_LOG".into(), "info,rlhf_rollout_worker=debug".into()),
        ];
        let mut files = vec!["docker-compose.yml".to_string()];
        if secure {
            let pki = dir.path().join("pki");
            super::super::rlhf_ok(&["certs", "--out", path_str(&pki), "--host", "learner,reward"]);
            env.push(("RLHF_PKI".into(), path_str(&pki).into()));
            files.push("secure.yml".into());
        }
        Some(Self { project, dir, env, files })
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn command(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .current_dir(super::super::root().join("deploy/compose"))
            .args(["-p", &self.project])
            .args(self.files.iter().flat_map(|f| ["-f", f.as_str()]))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args);
        assert!(out.status.success(), "docker-compose {args:?} failed:\n{}\n{}", stderr(&out), self.all_logs());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The containers of `service`, oldest first.
    fn ids(&self, service: &str) -> Vec<String> {
        let mut ids: Vec<String> = self.ok(&["ps", "-q", service]).lines().map(str::to_string).collect();
        ids.sort_by_key(|id| docker_ok(&["inspect", "--format", "{{.Created}}", id]));
        ids
    }

    /// The one container of `service`.
    fn id(&self, service: &str) -> String {
        let ids = self.ids(service);
        assert_eq!(ids.len(), 1, "{service}: {ids:?}");
        ids[0].clone()
    }

    fn newest(&self, ids: &[String]) -> String {
        ids.last().unwrap().clone()
    }

    fn logs(&self, id: &str) -> String {
        let out = Command::new("docker").args(["logs", id]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    fn all_logs(&self) -> String {
        let out = self.command(&["logs", "--no-color", "--tail", "60"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn state(&self, id: &str) -> String {
        docker_ok(&["inspect", "--format", "{{.State.Status}}", id]).trim().to_string()
    }

    fn started_at(&self, id: &str) -> String {
        docker_ok(&["inspect", "--format", "{{.State.StartedAt}}", id])
    }

    fn exit_code(&self, id: &str) -> i64 {
        docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", id]).trim().parse().unwrap()
    }

    /// The name a worker joined under (`HOSTNAME:pid` by default).
    fn worker_name(&self, id: &str) -> String {
        let mut name = None;
        self.wait(&format!("worker {id} joined"), || {
            name = self
                .logs(id)
                .lines()
                .rev()
                .find(|l| l.contains("joined the learner"))
                .and_then(|l| log_field(l, "worker"));
            name.is_some()
        });
        name.unwrap()
    }

    /// Whether a worker's last lease event is a lease it received (and has not yet submitted).
    fn holds_a_lease(&self, id: &str) -> bool {
        let events = ["lease received", "rollouts submitted", "rollouts refused", "dropping the lease"];
        let logs = self.logs(id);
        let last = logs.lines().rev().find(|l| events.iter().any(|e| l.contains(e)));
        last.is_some_and(|l| l.contains("lease received"))
    }

    fn wait(&self, what: &str, ready: impl FnMut() -> bool) {
        self.wait_for(what, Duration::from_secs(90), ready)
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let started = Instant::now();
        while !ready() {
            assert!(started.elapsed() < timeout, "timed out waiting for {what}; logs:\n{}", self.all_logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.command(&["down", "--volumes", "--timeout", "5"]);
        let _ = Command::new("docker").args(["image", "rm", &format!("{}:latest", self.project)]).output();
    }
}

/// The learner's config inside its container: paths are the compose file's mounts.
fn learner_config(iterations: usize) -> String {
    format!(
        "model = \"/data/sft\"\nprompts = \"/data/corpus/train.jsonl\"\nout = \"/run/rlhf/out\"\nlisten = \"0.0.0.0:7000\"\n\n\
         [reward]\nmodel = \"/data/reward-model\"\n\n\
         [train]\niterations = {iterations}\nbatch_size = {BATCH}\n\n[train.sampling]\nmax_new_tokens = 8\n\n\
         [train.ppo]\nmini_batch_size = 16\n\n\
         [runtime]\nlease_size = 4\ncheckpoint_every = 3\nheartbeat_timeout_s = 3.0\nheartbeat_interval_ms = 300\n"
    )
}

fn docker_ok(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?} failed:\n{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
