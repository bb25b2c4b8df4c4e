//! Security on the wire with real processes over loopback and certificates made by the test
//! (`rlhf certs`): every RPC refuses every kind of bad client and changes no state; the right
//! credentials work end to end; health answers without any; joins stop at `max_workers`; TLS
//! mistakes get errors that say which mistake.

use rlhf_proto::v1 as pb;
use rlhf_rollout_worker::{Learner, RewardServer, learner_client, reward_client};
use rlhf_secure::{TlsConfig, Token};

use super::*;

/// A development PKI written by `rlhf certs` into `dir`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path, hosts: &str) -> Self {
        super::super::rlhf_ok(&["certs", "--out", path_str(dir), "--host", hosts]);
        Self { dir: dir.to_path_buf() }
    }

    fn file(&self, name: &str) -> String {
        path_str(&self.dir.join(name)).to_string()
    }

    /// A server's flags: TLS, mutual TLS and the token.
    fn server_flags(&self) -> Vec<String> {
        #[rustfmt::skip]
        let flags = ["--tls-cert", &self.file("server.pem"), "--tls-key", &self.file("server.key"),
            "--tls-ca", &self.file("ca.pem"), "--tls-require-client-cert", "--token-file", &self.file("token")];
        flags.iter().map(|s| s.to_string()).collect()
    }

    /// A worker's flags.
    fn client_flags(&self) -> Vec<String> {
        #[rustfmt::skip]
        let flags = ["--tls-ca", &self.file("ca.pem"), "--tls-client-cert", &self.file("client.pem"),
            "--tls-client-key", &self.file("client.key"), "--token-file", &self.file("token")];
        flags.iter().map(|s| s.to_string()).collect()
    }

    fn client_tls(&self) -> TlsConfig {
        TlsConfig {
            ca: Some(self.dir.join("ca.pem")),
            client_cert: Some(self.dir.join("client.pem")),
            client_key: Some(self.dir.join("client.key")),
            ..Default::default()
        }
    }

    fn token(&self) -> Token {
        Token::new(std::fs::read_to_string(self.dir.join("token")).unwrap()).unwrap()
    }
}

/// Every learner RPC and the reward server's Score, as `client` makes them: each result is
/// `Ok` only if the call got through.
async fn every_call(
    learner: &mut Learner,
    reward: &mut RewardServer,
) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    fn ok<T>(r: Result<T, tonic::Status>) -> Result<(), tonic::Status> {
        r.map(|_| ())
    }
    let mut results = vec![
        ("Join", ok(learner.join(pb::JoinRequest { name: "intruder".into() }).await)),
        ("Heartbeat", ok(learner.heartbeat(pb::HeartbeatRequest { worker_id: 1 }).await)),
        ("LeasePrompts", ok(learner.lease_prompts(pb::LeasePromptsRequest { worker_id: 1, policy_version: 0 }).await)),
        ("SubmitRollouts", ok(learner.submit_rollouts(pb::SubmitRolloutsRequest::default()).await)),
        ("ReturnLease", ok(learner.return_lease(pb::ReturnLeaseRequest::default()).await)),
        ("Status", ok(learner.status(pb::StatusRequest {}).await)),
    ];
    // GetWeights: refused before a single chunk is sent.
    let weights = match learner.get_weights(pb::GetWeightsRequest { policy_version: 0 }).await {
        Ok(stream) => {
            stream.into_inner().message().await.map(|chunk| assert!(chunk.is_none(), "weight bytes were sent"))
        }
        Err(status) => Err(status),
    };
    results.push(("GetWeights", weights));
    results.push(("Score", ok(reward.score(pb::ScoreRequest::default()).await)));
    results
}

#[test]
fn secured_endpoints_refuse_every_bad_client_change_nothing_and_serve_the_right_one() {
    rlhf_secure::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"), "127.0.0.1,localhost");
    let other = Pki::new(&tmp.path().join("other"), "127.0.0.1,localhost");
    let config = config(tmp.path(), 2, 8, 4, "");
    let mut learner_args = vec!["learner", "--config", path_str(&config), "--health-listen", "127.0.0.1:0"];
    let server_flags = pki.server_flags();
    learner_args.extend(server_flags.iter().map(String::as_str));
    let (mut learner, addr) = start(tmp.path(), "learner", &learner_args, true);
    let lexicon = assets().join("imdb-lexicon");
    let tokenizer = fixture("lm");
    #[rustfmt::skip]
    let mut reward_args = vec!["reward-server", "--lexicon", path_str(&lexicon), "--tokenizer", path_str(&tokenizer),
        "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"];
    reward_args.extend(server_flags.iter().map(String::as_str));
    let (reward, reward_addr) =
        start_with_env(tmp.path(), "reward", &reward_args, true, &[("RUST_LOG", DEBUG_REWARD_LOG)]);
    let (learner_url, reward_url) = (format!("https://{addr}"), format!("https://{reward_addr}"));

    // The bad clients: (what is wrong, TLS, token, scheme).
    let right = pki.client_tls();
    let no_client_cert = TlsConfig { ca: right.ca.clone(), ..Default::default() };
    let untrusted_client_cert = TlsConfig { ca: right.ca.clone(), ..other.client_tls() };
    let trusts_another_ca = TlsConfig { ca: other.client_tls().ca, ..right.clone() };
    let wrong = Token::new("not-the-token".into()).unwrap();
    let (token, timeout) = (pki.token(), Duration::from_secs(10));
    let bad: Vec<(&str, TlsConfig, Option<&Token>, &str)> = vec![
        ("no token", right.clone(), None, "https"),
        ("a wrong token", right.clone(), Some(&wrong), "https"),
        ("plain text to TLS", TlsConfig::default(), Some(&token), "http"),
        ("a client certificate from an untrusted CA", untrusted_client_cert, Some(&token), "https"),
        ("a server certificate from an untrusted CA", trusts_another_ca, Some(&token), "https"),
        ("no client certificate (mutual TLS)", no_client_cert, Some(&token), "https"),
    ];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _inside = runtime.enter();
    for (what, tls, token, scheme) in &bad {
        let (learner_url, reward_url) = (format!("{scheme}://{addr}"), format!("{scheme}://{reward_addr}"));
        let mut l = learner_client(&learner_url, timeout, tls, *token).unwrap();
        let mut r = reward_client(&reward_url, timeout, tls, *token).unwrap();
        for (rpc, result) in runtime.block_on(every_call(&mut l, &mut r)) {
            let status = result.expect_err(&format!("{rpc} with {what} got through"));
            if what.contains("token") {
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "{rpc} with {what}: {status}");
            }
        }
    }
    // Nothing changed: no worker joined, nothing was scored; each refused peer logged once.
    assert!(!learner.log().contains("worker joined"), "{}", learner.log());
    assert!(!reward.log().contains("scored batch"), "{}", reward.log());
    assert_eq!(learner.log().matches("refused a call").count(), 1, "{}", learner.log());

    // Health answers without credentials, on the plain-text health ports.
    for proc in [&learner, &reward] {
        assert_eq!(
            super::super::rlhf_ok(&["health", &logged_field(proc, "health service listening", "addr")]).trim(),
            "SERVING"
        );
    }

    // On the TLS port, health needs the CA and (mutual TLS) a client certificate, but no token.
    #[rustfmt::skip]
    let tls_health = super::super::rlhf_ok(&["health", &learner_url, "--tls-ca", &pki.file("ca.pem"),
        "--tls-client-cert", &pki.file("client.pem"), "--tls-client-key", &pki.file("client.key")]);
    assert_eq!(tls_health.trim(), "SERVING");

    // `rlhf status` needs a worker's credentials, and with them reads the (untouched) state.
    let client_flags = pki.client_flags();
    let mut status_args = vec!["status", "--learner", &learner_url, "--format", "json"];
    status_args.extend(client_flags.iter().map(String::as_str));
    let status: serde_json::Value = serde_json::from_str(&super::super::rlhf_ok(&status_args)).unwrap();
    assert_eq!((status["policy_version"].as_u64(), status["prompts_done"].as_u64()), (Some(0), Some(0)), "{status}");
    assert_eq!(status["workers"].as_array().map(Vec::len), Some(0), "{status}");
    let err = super::super::rlhf_err(&["status", "--learner", &learner_url, "--tls-ca", &pki.file("ca.pem")]);
    assert!(err.contains(&learner_url), "{err}");

    // The right certificates and token: a worker completes the run.
    let mut worker_args = vec!["worker", "--learner", &learner_url, "--reward", &reward_url, "--name", "trusted"];
    worker_args.extend(client_flags.iter().map(String::as_str));
    let (_worker, _) = start(tmp.path(), "worker", &worker_args, false);
    assert!(learner.wait(Duration::from_secs(120)).success(), "{}", learner.log());
    let out = tmp.path().join("out");
    assert_accounted_once(&out, 2, 8);
    let accounting: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("accounting.json")).unwrap()).unwrap();
    // One worker joined (the trusted one); 2 iterations of 2 leases; nothing refused or re-issued.
    assert_eq!(accounting["workers_joined"], 1, "{accounting}");
    assert_eq!(accounting["leases_issued"], 4, "{accounting}");
    assert_eq!(accounting["leases_reissued"], 0, "{accounting}");
    assert_eq!(accounting["submissions_refused"], 0, "{accounting}");
}

#[test]
fn rlhf_run_secure_completes_over_mutual_tls_with_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 2, 8, 4, "");
    let log = run_to_end(tmp.path(), "run", &config, "1", &["--secure"]).log();
    assert!(log.contains("https://127.0.0.1"), "{log}");
    assert_accounted_once(&tmp.path().join("out"), 2, 8);
}

#[test]
fn tls_mistakes_get_errors_that_say_which() {
    let tmp = tempfile::tempdir().unwrap();
    // A certificate for "localhost" only, served at 127.0.0.1: a name mismatch.
    let pki = Pki::new(&tmp.path().join("pki"), "localhost");
    let other = Pki::new(&tmp.path().join("other"), "localhost");
    let config = config(tmp.path(), 1, 8, 0, "");
    #[rustfmt::skip]
    let tls = ["--tls-cert", &pki.file("server.pem"), "--tls-key", &pki.file("server.key"), "--token-file", &pki.file("token")];
    let mut args = vec!["learner", "--config", path_str(&config)];
    args.extend(tls);
    let (_learner, addr) = start(tmp.path(), "learner", &args, true);
    let (_plain, plain_addr) = reward_server(tmp.path(), "plain", "127.0.0.1:0");
    let port = addr.rsplit(':').next().unwrap();
    let token = pki.file("token");
    let worker = |learner: &str, ca: &str, extra: &[&str]| {
        let mut args = vec!["worker", "--learner", learner, "--reward", &plain_addr, "--patience-s", "3"];
        args.extend(["--tls-ca", ca, "--token-file", &token]);
        args.extend(extra);
        super::super::rlhf_err(&args)
    };
    let cases = [
        (format!("https://127.0.0.1:{port}"), pki.file("ca.pem"), "name mismatch"),
        (format!("https://localhost:{port}"), other.file("ca.pem"), "unknown CA"),
        (
            format!("https://localhost:{plain_addr_port}", plain_addr_port = plain_addr.rsplit(':').next().unwrap()),
            pki.file("ca.pem"),
            "does not speak TLS",
        ),
    ];
    for (url, ca, expected) in &cases {
        // (The reward server here is plain text.)
        let err = worker(url, ca, &["--allow-plaintext-token"]);
        assert!(err.contains(url.as_str()) && err.contains(expected), "{url}: expected {expected:?} in:\n{err}");
    }
    // Plain text to the TLS learner.
    let err = worker(&format!("http://127.0.0.1:{port}"), &pki.file("ca.pem"), &["--allow-plaintext-token"]);
    assert!(err.contains("plain-text client talking to a TLS server"), "{err}");
    // A learner that requires client certificates (mutual TLS): none, or one from another CA.
    let mtls_dir = tmp.path().join("mtls");
    std::fs::create_dir_all(&mtls_dir).unwrap();
    let mtls_config = super::config(&mtls_dir, 1, 8, 0, "");
    let mut args = vec!["learner", "--config", path_str(&mtls_config)];
    args.extend(tls);
    let ca = pki.file("ca.pem");
    args.extend(["--tls-ca", &ca, "--tls-require-client-cert"]);
    let (_mtls, mtls_addr) = start(&mtls_dir, "learner", &args, true);
    let url = format!("https://localhost:{}", mtls_addr.rsplit(':').next().unwrap());
    let (other_cert, other_key) = (other.file("client.pem"), other.file("client.key"));
    for client in [vec![], vec!["--tls-client-cert", &other_cert, "--tls-client-key", &other_key]] {
        let mut extra = vec!["--allow-plaintext-token"];
        extra.extend(client.iter().copied());
        let err = worker(&url, &ca, &extra);
        assert!(err.contains(&url) && err.contains("requires a client certificate"), "{err}");
    }
    // A token never goes over plain text unless allowed.
    let err = worker(&format!("http://127.0.0.1:{port}"), &pki.file("ca.pem"), &[]);
    assert!(err.contains("allow_plaintext_token") && err.contains(port), "{err}");
}

#[test]
fn a_join_flood_stops_at_max_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), 1, 8, 0, "max_workers = 3\n");
    // The flood's workers never heartbeat: none may expire (and free a place) while it runs.
    let text =
        std::fs::read_to_string(&config).unwrap().replace("heartbeat_timeout_s = 1.5", "heartbeat_timeout_s = 60");
    std::fs::write(&config, text).unwrap();
    let (learner, addr) = start(tmp.path(), "learner", &["learner", "--config", path_str(&config)], true);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let codes: Vec<tonic::Code> = runtime.block_on(async {
        let mut client =
            learner_client(&format!("http://{addr}"), Duration::from_secs(10), &TlsConfig::default(), None).unwrap();
        let mut codes = Vec::new();
        for i in 0..50 {
            let reply = client.join(pb::JoinRequest { name: format!("flood-{i}") }).await;
            codes.push(match reply {
                Ok(_) => tonic::Code::Ok,
                Err(status) => {
                    assert!(status.message().contains("max_workers"), "{status}");
                    status.code()
                }
            });
        }
        codes
    });
    assert_eq!(codes.iter().filter(|c| **c == tonic::Code::Ok).count(), 3, "{codes:?}");
    assert!(codes[3..].iter().all(|c| *c == tonic::Code::ResourceExhausted), "{codes:?}");
    assert_eq!(learner.log().matches("worker joined").count(), 3);
}

#[test]
fn the_learner_and_the_reward_servers_may_have_different_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let (learner_token, reward_token) = (tmp.path().join("learner-token"), tmp.path().join("reward-token"));
    std::fs::write(&learner_token, "learner-secret\n").unwrap();
    std::fs::write(&reward_token, "reward-secret\n").unwrap();
    let config = config(tmp.path(), 1, 8, 0, "");
    // The learner's token from RLHF_TOKEN, the reward server's from its file; plain text on
    // loopback, so the worker must allow sending tokens in the clear.
    let args = ["learner", "--config", path_str(&config)];
    let (mut learner, addr) = start_with_env(tmp.path(), "learner", &args, true, &[("RLHF_TOKEN", "learner-secret")]);
    let (lexicon, tokenizer) = (assets().join("imdb-lexicon"), fixture("lm"));
    #[rustfmt::skip]
    let reward_args = ["reward-server", "--lexicon", path_str(&lexicon), "--tokenizer", path_str(&tokenizer),
        "--listen", "127.0.0.1:0", "--token-file", path_str(&reward_token)];
    let (_reward, reward_addr) = start(tmp.path(), "reward", &reward_args, true);
    #[rustfmt::skip]
    let worker = |reward_token_file: &Path| super::super::rlhf(&["worker", "--learner", &addr, "--reward", &reward_addr,
        "--token-file", path_str(&learner_token), "--reward-token-file", path_str(reward_token_file),
        "--allow-plaintext-token", "--patience-s", "5"]);
    // The learner's token sent to the reward server: refused, and the error says so.
    let out = worker(&learner_token);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&reward_addr) && err.contains("wrong token"), "{err}");
    // Each its own token: the run completes.
    let out = worker(&reward_token);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(learner.wait(Duration::from_secs(60)).success(), "{}", learner.log());
    assert_accounted_once(&tmp.path().join("out"), 1, 8);
}
