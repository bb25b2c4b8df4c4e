//! Runtime benchmarks: weight broadcast and rollout ingest, through the real learner service on
//! loopback. Numbers are printed, never asserted.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use rlhf_actors::coordinator::CoordinatorArgs;
use rlhf_actors::{LearnerConfig, MAX_MESSAGE_BYTES};
use rlhf_proto::v1 as pb;
use rlhf_proto::v1::learner_client::LearnerClient;
use rlhf_secure::{AuthConfig, ServerSecurity, TlsConfig};
use rlhf_trainer::model::wire::WireDtype;
use rlhf_trainer::ppo::{PpoConfig, PpoTrainer};
use rlhf_trainer::{Gpt2Config, Heads};

type A = Autodiff<Flex>;

/// Starts the real learner service in this process on 127.0.0.1:0.
async fn start_learner(
    model: Gpt2Config,
    config: LearnerConfig,
    on_iteration: rlhf_actors::coordinator::OnIteration,
) -> anyhow::Result<String> {
    start_learner_with(model, config, on_iteration, ServerSecurity::plain()).await
}

/// [`start_learner`] with its port secured by `security` (`https://` when it speaks TLS).
async fn start_learner_with(
    model: Gpt2Config,
    config: LearnerConfig,
    on_iteration: rlhf_actors::coordinator::OnIteration,
    security: ServerSecurity,
) -> anyhow::Result<String> {
    let device = Default::default();
    let policy = model.init::<A>(Heads::LmValue, &device);
    let reference = policy.valid();
    let trainer = PpoTrainer::<A>::new(policy, None, reference, config.train.ppo.clone(), 0, &device)?;
    let args = CoordinatorArgs {
        sampling_json: serde_json::to_string(&config.train.sampling)?,
        model_config_json: serde_json::to_string(&model)?,
        tokenizer_json: String::new(),
        eos_id: 0,
        prompts: vec![vec![1, 2, 3, 4]],
        config,
        trainer,
        on_iteration,
        on_done: Box::new(|_, _| Ok(())),
        on_checkpoint: Box::new(|_, _, _| Ok(())),
        start_version: 0,
        prior: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let scheme = if security.tls() { "https" } else { "http" };
    let addr = format!("{scheme}://{}", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(e) = rlhf_actors::serve(args, listener, security, std::future::pending()).await {
            tracing::error!(error = %e, "learner stopped");
        }
    });
    Ok(addr)
}

async fn client(addr: &str) -> anyhow::Result<LearnerClient<tonic::transport::Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())?
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20);
    for _ in 0..100 {
        if let Ok(client) = endpoint.connect().await.map(LearnerClient::new) {
            return Ok(client
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("cannot reach the learner at {addr}")
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// A weight-broadcast path `rlhf bench weight-sync` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncPath {
    /// Plain-text gRPC.
    Plain,
    /// TLS 1.3 with client certificates (mutual TLS) and a token.
    Mtls,
}

pub fn weight_sync(
    preset: &str,
    workers: usize,
    dtype: &str,
    runs: usize,
    path: Option<SyncPath>,
) -> anyhow::Result<()> {
    let wire_dtype = match dtype {
        "f32" => WireDtype::F32,
        "bf16" => WireDtype::Bf16,
        other => anyhow::bail!("--dtype must be f32 or bf16, got {other:?}"),
    };
    if let Some(path) = path {
        let (seconds, wire_bytes) = measure_sync(preset, workers, wire_dtype, runs, path)?;
        println!("measured {seconds} {wire_bytes}");
        return Ok(());
    }
    // Each path in a process of its own (a process holds one learner), one after the other,
    // then a raw TCP copy of the same bytes.
    let mut rows = Vec::new();
    let mut wire_bytes = 0;
    for (name, path) in [("gRPC stream (rlhf, plain text)", "plain"), ("gRPC stream (rlhf, mTLS + token)", "mtls")] {
        let runs_arg = runs.to_string();
        let workers_arg = workers.to_string();
        #[rustfmt::skip]
        let args = ["bench", "weight-sync", "--config", preset, "--workers", &workers_arg, "--dtype", dtype,
            "--runs", &runs_arg, "--path", path];
        let out = crate::runtime::rlhf_command()?.args(args).output().context("starting the bench's child")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let measured = stdout.lines().find_map(|l| l.strip_prefix("measured "));
        let Some((seconds, bytes)) = measured.and_then(|m| m.split_once(' ')) else {
            anyhow::bail!("the {path} bench failed:\n{}", String::from_utf8_lossy(&out.stderr));
        };
        rows.push((name, seconds.parse::<f64>()?));
        wire_bytes = bytes.parse()?;
    }
    let tcp = raw_tcp(wire_bytes, workers, runs)?;
    rows.push(("raw TCP copy", tcp));
    let gbps = |seconds: f64| (wire_bytes * workers) as f64 / seconds / 1e9;
    println!("| path | dtype | workers | bytes per worker | median s (new connections) | GB/s (all workers) |");
    println!("|---|---|---|---|---|---|");
    for (name, seconds) in &rows {
        println!(
            "| {name} | {} | {workers} | {wire_bytes} | {seconds:.3} | {:.2} |",
            wire_dtype.name(),
            gbps(*seconds)
        );
    }
    println!("\nratio gRPC / raw TCP time: {:.2}", rows[0].1 / tcp);
    println!("ratio mTLS + token / plain gRPC time: {:.2}", rows[1].1 / rows[0].1);
    Ok(())
}

/// The median time for `workers` new clients to download one version over `path`, and the
/// bytes each received on the wire.
fn measure_sync(
    preset: &str,
    workers: usize,
    dtype: WireDtype,
    runs: usize,
    path: SyncPath,
) -> anyhow::Result<(f64, usize)> {
    let model = Gpt2Config::preset(preset)?;
    let mut config = LearnerConfig::default();
    config.runtime.weights_dtype = dtype;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        // A development PKI made here: TLS 1.3, client certificates required, and a token.
        let pki_dir = tempfile::tempdir()?;
        let pki = rlhf_secure::certs::write(pki_dir.path(), &["127.0.0.1".into()])?;
        let auth = AuthConfig { token_file: Some(pki.token.clone()), ..Default::default() };
        let (addr, tls, token) = match path {
            SyncPath::Plain => {
                (start_learner(model, config, Box::new(|_, _, _| {})).await?, TlsConfig::default(), None)
            }
            SyncPath::Mtls => {
                let server = TlsConfig {
                    cert: Some(pki.server_cert.clone()),
                    key: Some(pki.server_key.clone()),
                    ca: Some(pki.ca.clone()),
                    require_client_cert: true,
                    ..Default::default()
                };
                let client = TlsConfig {
                    ca: Some(pki.ca.clone()),
                    client_cert: Some(pki.client_cert.clone()),
                    client_key: Some(pki.client_key.clone()),
                    ..Default::default()
                };
                let security = ServerSecurity::new(&server, &auth, None)?;
                let addr = start_learner_with(model, config, Box::new(|_, _, _| {}), security).await?;
                (addr, client, auth.token()?)
            }
        };
        // Wait until the learner answers.
        let mut probe = rlhf_rollout_worker::learner_client(&addr, Duration::from_secs(5), &tls, token.as_ref())?;
        for _ in 0..200 {
            if probe
                .heartbeat(pb::HeartbeatRequest { worker_id: 0 })
                .await
                .is_err_and(|s| s.code() == tonic::Code::Unavailable)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            } else {
                break;
            }
        }
        let mut times = Vec::new();
        let mut wire_bytes = 0;
        for _ in 0..runs.max(1) {
            // New connections each run: the handshake is part of the broadcast.
            let clients = (0..workers)
                .map(|_| rlhf_rollout_worker::learner_client(&addr, Duration::from_secs(60), &tls, token.as_ref()))
                .collect::<Result<Vec<_>, _>>()?;
            let started = Instant::now();
            let tasks: Vec<_> = clients
                .into_iter()
                .map(|mut c| tokio::spawn(async move { rlhf_rollout_worker::download_weights(&mut c, 0).await }))
                .collect();
            let mut bytes = 0;
            for task in tasks {
                bytes = task.await?.with_context(|| format!("download from {addr}"))?.len();
            }
            times.push(started.elapsed().as_secs_f64());
            // The wire size (bf16 is widened to fp32 after the download).
            wire_bytes = if dtype == WireDtype::Bf16 { bytes / 2 } else { bytes };
        }
        Ok((median(times), wire_bytes))
    })
}

/// Median time to copy `bytes` to `workers` readers over loopback TCP, all at once.
fn raw_tcp(bytes: usize, workers: usize, runs: usize) -> anyhow::Result<f64> {
    let payload = std::sync::Arc::new(vec![7u8; bytes]);
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let started = Instant::now();
        let server = {
            let payload = payload.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let senders: Vec<_> = (0..workers)
                    .map(|_| {
                        let (mut stream, _) = listener.accept()?;
                        let payload = payload.clone();
                        Ok(std::thread::spawn(move || stream.write_all(&payload)))
                    })
                    .collect::<std::io::Result<_>>()?;
                for sender in senders {
                    sender.join().expect("sender thread")?;
                }
                Ok(())
            })
        };
        let readers: Vec<_> = (0..workers)
            .map(|_| {
                std::thread::spawn(move || -> std::io::Result<usize> {
                    let mut stream = std::net::TcpStream::connect(addr)?;
                    let mut buffer = Vec::with_capacity(bytes);
                    stream.read_to_end(&mut buffer)?;
                    Ok(buffer.len())
                })
            })
            .collect();
        for reader in readers {
            anyhow::ensure!(reader.join().expect("reader thread")? == bytes, "short read");
        }
        server.join().expect("server thread")?;
        times.push(started.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

pub fn ingest(
    workers: usize,
    batch: usize,
    lease_size: usize,
    iterations: usize,
    response_len: usize,
) -> anyhow::Result<()> {
    let model = Gpt2Config::new(512, 64, 16, 1, 2);
    let mut config = LearnerConfig::default();
    config.train.batch_size = batch;
    config.train.iterations = iterations;
    config.train.ppo = PpoConfig { ppo_epochs: 1, mini_batch_size: batch, ..Default::default() };
    config.runtime.lease_size = lease_size;
    let (waits_tx, waits_rx) = std::sync::mpsc::channel();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let addr = start_learner(
            model,
            config,
            Box::new(move |_, stats, _| {
                let _ = waits_tx.send(stats["time/rollout_wait"]);
            }),
        )
        .await?;
        let mut tasks = Vec::new();
        for w in 0..workers {
            let mut client = client(&addr).await?;
            tasks.push(tokio::spawn(async move {
                let worker_id =
                    client.join(pb::JoinRequest { name: format!("synthetic-{w}") }).await?.into_inner().worker_id;
                loop {
                    use pb::lease_prompts_response::Reply;
                    let reply = client
                        .lease_prompts(pb::LeasePromptsRequest { worker_id, policy_version: 0 })
                        .await?
                        .into_inner();
                    let lease = match reply.reply {
                        Some(Reply::Lease(lease)) => lease,
                        Some(Reply::WaitMs(ms)) => {
                            tokio::time::sleep(Duration::from_millis(ms.min(5))).await;
                            continue;
                        }
                        _ => return Ok::<(), tonic::Status>(()),
                    };
                    let rollouts = lease
                        .prompts
                        .iter()
                        .map(|p| pb::Rollout {
                            rollout_id: p.prompt_index,
                            worker_id,
                            lease_id: lease.lease_id,
                            policy_version: lease.policy_version,
                            prompt_index: p.prompt_index,
                            query: p.ids.clone(),
                            response: vec![5; response_len],
                            logprobs: vec![-1.0; response_len],
                            score: 0.5,
                        })
                        .collect();
                    let request =
                        pb::SubmitRolloutsRequest { worker_id, lease_id: lease.lease_id, rollouts, score_seconds: 0.0 };
                    client.submit_rollouts(request).await?;
                }
            }));
        }
        for task in tasks {
            task.await?.context("synthetic worker")?;
        }
        anyhow::Ok(())
    })?;
    let waits: Vec<f64> = waits_rx.try_iter().collect();
    let rates: Vec<f64> = waits.iter().map(|w| batch as f64 / w.max(1e-9)).collect();
    println!("| workers | batch | lease size | response tokens | median rollouts/s accepted |");
    println!("|---|---|---|---|---|");
    println!("| {workers} | {batch} | {lease_size} | {response_len} | {:.0} |", median(rates));
    Ok(())
}
