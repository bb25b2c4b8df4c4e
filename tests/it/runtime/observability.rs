//! Watching a run: every role's Prometheus `/metrics` (documented names, numeric values that move
//! across iterations) and JSON log lines whose numbers are numbers.

use std::io::{Read, Write};

use super::*;

/// `GET /metrics`, parsed: every sample line's name (labels included) and value.
pub(super) fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(name, value)| (name.to_string(), value.parse::<f64>().unwrap_or_else(|_| panic!("{name}: {value}"))))
        .collect()
}

use std::collections::BTreeMap;

#[test]
fn every_role_serves_prometheus_metrics_that_move_across_iterations() {
    let tmp = tempfile::tempdir().unwrap();
    // Long enough to be scraped twice while it runs.
    let config = config(tmp.path(), 2000, 8, 4, "");
    let metrics = ["--metrics-listen", "127.0.0.1:0"];
    let mut args = vec!["learner", "--config", path_str(&config)];
    args.extend(metrics);
    let (learner, addr) = start(tmp.path(), "learner", &args, true);
    let (lexicon, tokenizer) = (assets().join("imdb-lexicon"), fixture("lm"));
    #[rustfmt::skip]
    let mut reward_args = vec!["reward-server", "--lexicon", path_str(&lexicon), "--tokenizer", path_str(&tokenizer),
        "--listen", "127.0.0.1:0"];
    reward_args.extend(metrics);
    let (reward, reward_addr) = start(tmp.path(), "reward", &reward_args, true);
    let mut worker_args = vec!["worker", "--learner", &addr, "--reward", &reward_addr];
    worker_args.extend(metrics);
    let (worker, _) = start(tmp.path(), "worker", &worker_args, false);
    let metrics_addr = |proc: &Proc| logged_field(proc, "metrics listening", "addr");
    let (learner_m, reward_m, worker_m) = (metrics_addr(&learner), metrics_addr(&reward), metrics_addr(&worker));

    let version = |m: &BTreeMap<String, f64>| m.get("rlhf_policy_version").copied().unwrap_or(0.0);
    let mut first = BTreeMap::new();
    wait_for("a few iterations", Duration::from_secs(60), &[&learner], || {
        first = scrape(&learner_m);
        version(&first) >= 3.0
    });
    let (reward_first, worker_first) = (scrape(&reward_m), scrape(&worker_m));
    let mut second = BTreeMap::new();
    wait_for("more iterations", Duration::from_secs(60), &[&learner], || {
        second = scrape(&learner_m);
        version(&second) >= version(&first) + 3.0
    });
    let (reward_second, worker_second) = (scrape(&reward_m), scrape(&worker_m));

    // The learner: the iteration's record under documented names, and the run's state.
    for name in [
        "rlhf_env_reward_mean",
        "rlhf_objective_kl",
        "rlhf_ppo_loss_total",
        "rlhf_samples_per_s",
        "rlhf_time_update",
        "rlhf_time_weight_serialize",
        "rlhf_time_weight_broadcast",
        "rlhf_iteration",
        "rlhf_policy_version",
        "rlhf_workers_active",
        "rlhf_leases_outstanding",
        "rlhf_leases_issued_total",
        "rlhf_workers_joined_total",
        "rlhf_rollouts_accepted_total",
    ] {
        assert!(second.get(name).is_some_and(|v| v.is_finite()), "the learner's /metrics lack {name}: {second:?}");
    }
    assert!(second["rlhf_leases_issued_total"] > first["rlhf_leases_issued_total"]);
    assert!(second["rlhf_iteration"] > first["rlhf_iteration"]);
    assert_eq!(second["rlhf_workers_active"], 1.0);
    // The worker: tokens, rollouts, the weight version it holds.
    for name in ["rlhf_worker_tokens_per_second", "rlhf_worker_tokens_total", "rlhf_worker_policy_version"] {
        assert!(
            worker_second.get(name).is_some_and(|v| v.is_finite()),
            "the worker's /metrics lack {name}: {worker_second:?}"
        );
    }
    let submitted = "rlhf_worker_rollouts_submitted_total";
    assert!(worker_second[submitted] > worker_first[submitted], "{worker_second:?}");
    assert!(worker_second["rlhf_worker_policy_version"] > worker_first["rlhf_worker_policy_version"]);
    // The reward server: requests, batch sizes and a latency histogram.
    let requests = "rlhf_reward_requests_total";
    assert!(reward_second[requests] > reward_first[requests], "{reward_second:?}");
    assert!(reward_second["rlhf_reward_batch_size_count"] > 0.0);
    assert!(reward_second.keys().any(|k| k.starts_with("rlhf_reward_latency_seconds_bucket{le=")), "{reward_second:?}");

    // Every metric the Grafana dashboard plots is one a role serves (counters of events this run
    // did not have, such as backoffs, appear with the first one).
    let dashboard = std::fs::read_to_string(super::super::root().join("deploy/grafana/rlhf.json")).unwrap();
    let served: BTreeSet<&str> = [&second, &worker_second, &reward_second]
        .into_iter()
        .flat_map(|m| m.keys())
        .map(|k| k.split('{').next().unwrap())
        .collect();
    let only_after_an_event =
        ["rlhf_worker_backoffs_total", "rlhf_leases_reissued_total", "rlhf_submissions_refused_total"];
    let mut plotted = 0;
    for (i, _) in dashboard.match_indices("rlhf_") {
        let name: String = dashboard[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if name == "rlhf_run" {
            continue; // the dashboard's uid
        }
        plotted += 1;
        assert!(
            served.contains(name.as_str()) || only_after_an_event.contains(&name.as_str()),
            "the dashboard plots {name}, which no role serves"
        );
    }
    assert!(plotted > 20);
}

#[test]
fn json_log_lines_parse_and_their_numbers_are_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 3, 8, 4, "");
    let (mut run, _) = start(
        tmp.path(),
        "run",
        &["--log-format", "json", "run", "--config", path_str(&config), "--workers", "1"],
        false,
    );
    assert!(run.wait(Duration::from_secs(120)).success(), "{}", run.log());
    let events: Vec<serde_json::Value> =
        run.log().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let iterations: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["fields"]["message"] == "iteration done").map(|e| &e["fields"]).collect();
    assert_eq!(iterations.len(), 3, "{events:?}");
    for (i, fields) in iterations.iter().enumerate() {
        assert_eq!(fields["iteration"], i + 1);
        for name in ["env/reward_mean", "objective/kl", "ppo/loss/total", "samples_per_s", "time/update", "workers"] {
            assert!(fields[name].is_number(), "{name} is not a number: {fields}");
        }
    }
    // `rlhf run`'s progress line (a bar on a terminal): the last iteration, with numbers.
    let progress: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["fields"]["message"] == "progress").map(|e| &e["fields"]).collect();
    let last = progress.last().unwrap_or_else(|| panic!("no progress line: {events:?}"));
    assert_eq!((last["iteration"].as_u64(), last["iterations"].as_u64()), (Some(3), Some(3)), "{last}");
    for name in ["reward", "kl", "samples_per_s", "workers", "eta_s"] {
        assert!(last[name].is_number(), "{name} is not a number: {last}");
    }
}

#[test]
fn rlhf_status_shows_both_workers_of_a_running_run_with_their_weight_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 2000, 8, 4, "");
    let (run, _) = start(tmp.path(), "run", &["run", "--config", path_str(&config), "--workers", "2"], false);
    let learner = logged_field(&run, "started learner and reward server", "learner");
    let mut status = serde_json::Value::Null;
    wait_for("both workers past version 2", Duration::from_secs(60), &[&run], || {
        let out = super::super::rlhf(&["status", "--learner", &learner, "--format", "json"]);
        status = serde_json::from_slice(&out.stdout).unwrap_or_default();
        status["workers"]
            .as_array()
            .is_some_and(|w| w.len() == 2 && w.iter().all(|w| w["policy_version"].as_u64().is_some_and(|v| v >= 2)))
    });
    let mut names: Vec<&str> =
        status["workers"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["worker-1", "worker-2"], "{status}");
    for worker in status["workers"].as_array().unwrap() {
        assert!(worker["address"].as_str().unwrap().starts_with("127.0.0.1:"), "{worker}");
        assert!(worker["seconds_since_heartbeat"].as_f64().unwrap() < 5.0, "{worker}");
        assert!(worker["policy_version"].as_u64().unwrap() <= status["policy_version"].as_u64().unwrap());
    }
    assert_eq!(status["iterations"], 2000);
    assert!(status["prompts_done"].as_u64().unwrap() >= 16, "{status}");
    // The table names both workers too.
    let table = super::super::rlhf_ok(&["status", "--learner", &learner]);
    assert!(table.contains("worker-1") && table.contains("worker-2") && table.contains("| weights |"), "{table}");
}
