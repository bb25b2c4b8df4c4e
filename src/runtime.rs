//! The distributed runtime's commands: `rlhf learner`, `rlhf worker`, `rlhf reward-server`, and
//! `rlhf run`, which starts all of them as child processes on 127.0.0.1.
//!
//! Every server takes `--listen HOST:PORT` (port 0 allowed) and prints the bound address alone on
//! its first line of stdout, so scripts and tests can read it.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::Args;
use tracing::Instrument;
use rlhf_actors::LearnerConfig;
use rlhf_actors::coordinator::CoordinatorArgs;
use rlhf_reward_server::BatchConfig;
use rlhf_trainer::data::{OnMalformed, load_unlabelled, rl_prompts};
use rlhf_trainer::ppo_update::PpoTrainer;
use rlhf_trainer::scorer::{Lexicon, LexiconScorer, Negated, RewardModelScorer, Scorer};
use rlhf_trainer::{Heads, Tokenizer, hf, hub};

use crate::config::{self, ConfigArgs};
use crate::device::Device;
use crate::models::data_path;
use crate::progress::MetricsFile;
use crate::with_backend;

#[derive(Args)]
pub struct LearnerArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Resolve and check the config, print it as TOML, and exit.
    #[arg(long)]
    check: bool,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

#[derive(Args)]
pub struct WorkerArgs {
    /// The learner's address (host:port or http://host:port).
    #[arg(long)]
    learner: String,
    /// Reward server addresses, comma separated; requests go round robin.
    #[arg(long, value_delimiter = ',', required = true)]
    reward: Vec<String>,
    /// A name for logs (default: worker-<pid>).
    #[arg(long)]
    name: Option<String>,
    /// Seconds a peer may stay unavailable before the worker gives up.
    #[arg(long, default_value_t = 60.0)]
    patience_s: f64,
    /// Fault injection for tests: hold each lease this long before rolling it out.
    #[arg(long, default_value_t = 0)]
    hold_lease_ms: u64,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

#[derive(Args)]
pub struct RewardServerArgs {
    /// Reward-model directory (or hub id).
    #[arg(long, conflicts_with = "lexicon", required_unless_present = "lexicon")]
    model: Option<String>,
    /// Lexicon file or aclImdb folder; needs --tokenizer to read token ids.
    #[arg(long, requires = "tokenizer")]
    lexicon: Option<PathBuf>,
    /// The policy's tokenizer (lexicon scoring decodes responses with it).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Flip the sign of every score (train towards negative).
    #[arg(long)]
    negate: bool,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Rollout workers to start.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

/// Prints the bound address alone on stdout's first line.
fn announce(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{addr}")?;
    stdout.flush()?;
    Ok(())
}

fn url(addr: &str) -> String {
    if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub fn learner(args: LearnerArgs) -> anyhow::Result<()> {
    let learner_config: LearnerConfig = config::resolve(args.config.config.as_deref(), Vec::new(), &args.config.sets)?;
    learner_config.validate().map_err(|e| anyhow::anyhow!("invalid learner config: {e}"))?;
    if args.check {
        print!("{}", toml::to_string_pretty(&learner_config)?);
        return Ok(());
    }
    with_backend!(args.device, |B, device| run_learner::<Autodiff<B>>(learner_config, args.listen, device))
}

fn run_learner<B: AutodiffBackend>(mut learner_config: LearnerConfig, listen: SocketAddr, device: B::Device) -> anyhow::Result<()> {
    let train = &mut learner_config.train;
    train.ppo.temperature = if train.sampling.greedy { 1.0 } else { train.sampling.temperature };
    if learner_config.runtime.max_policy_lag > 0 {
        // Off-policy rollouts: the ratio must be taken against the policy that sampled them.
        train.ppo.old_logprobs = rlhf_trainer::ppo_update::OldLogprobs::Behaviour;
    }
    let out = learner_config.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let dir = hub::resolve(&learner_config.model)?;
    let (model_config, policy) = hf::load_as::<B>(&dir, Heads::LmValue, &device).with_context(|| format!("loading policy {}", dir.display()))?;
    let (_, reference) = hf::load_as::<B::InnerBackend>(&dir, Heads::Lm, &device)?;
    let tokenizer = Tokenizer::load(&dir)?;
    let texts = load_unlabelled(&data_path(&learner_config.prompts, "train")?, OnMalformed::Error)?.rows;
    let prompts = rl_prompts(&texts, &tokenizer, &learner_config.train.prompts)?;
    anyhow::ensure!(!prompts.is_empty(), "{} gave no prompts", learner_config.prompts.display());
    config::write(&learner_config, &out.join("learner_config.toml"))?;
    let trainer = PpoTrainer::<B>::new(policy, None, reference, learner_config.train.ppo.clone(), tokenizer.eos_id(), &device)?;
    let mut metrics = MetricsFile::create(&out.join("metrics.jsonl"))?;
    let lineage_path = out.join("rollouts.jsonl");
    let mut lineage_file = std::fs::File::create(&lineage_path).with_context(|| format!("cannot create {}", lineage_path.display()))?;
    let export_dir = out.clone();
    let args = CoordinatorArgs {
        sampling_json: serde_json::to_string(&learner_config.train.sampling)?,
        model_config_json: serde_json::to_string(&model_config)?,
        eos_id: tokenizer.eos_id(),
        config: learner_config,
        trainer,
        prompts,
        on_iteration: Box::new(move |iteration, stats, lineage| {
            if let Err(e) = metrics.write(iteration + 1, stats) {
                tracing::error!(error = %e, "cannot write metrics");
            }
            for rollout in lineage {
                let _ = writeln!(lineage_file, "{}", serde_json::to_string(rollout).unwrap_or_default());
            }
        }),
        on_done: Box::new(move |trainer, totals| {
            if let Err(e) = hf::export_into(&trainer.policy.valid(), &model_config, &tokenizer, &export_dir) {
                tracing::error!(error = %e, "cannot write the trained policy");
            }
            let path = export_dir.join("accounting.json");
            if let Err(e) = std::fs::write(&path, serde_json::to_string_pretty(&totals).unwrap_or_default()) {
                tracing::error!(error = %e, path = %path.display(), "cannot write the accounting");
            }
        }),
    };
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        announce(listener.local_addr()?)?;
        let span = tracing::info_span!("run", out = %out.display());
        rlhf_actors::serve(args, listener).instrument(span).await.map_err(|e| anyhow::anyhow!("learner: {e}"))
    })
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    with_backend!(args.device, |B, device| run_worker::<B>(&args, device))
}

fn run_worker<B: Backend>(args: &WorkerArgs, device: B::Device) -> anyhow::Result<()> {
    let options = rlhf_rollout_worker::WorkerOptions {
        learner: url(&args.learner),
        rewards: args.reward.iter().map(|r| url(r)).collect(),
        name: args.name.clone().unwrap_or_else(|| format!("worker-{}", std::process::id())),
        timeout: Duration::from_secs(30),
        patience: Duration::from_secs_f64(args.patience_s),
        hold_lease: Duration::from_millis(args.hold_lease_ms),
    };
    runtime()?.block_on(async move {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("stopping: finishing or returning the current lease");
            let _ = stop.send(true);
        });
        rlhf_rollout_worker::run::<B>(options, device, stopped).await?;
        tracing::info!("worker finished");
        Ok(())
    })
}

pub fn reward_server(args: RewardServerArgs) -> anyhow::Result<()> {
    with_backend!(args.device, |B, device| run_reward_server::<B>(&args, device))
}

fn run_reward_server<B: Backend>(args: &RewardServerArgs, device: B::Device) -> anyhow::Result<()> {
    let mut scorer: Box<dyn Scorer> = match (&args.model, &args.lexicon) {
        (Some(name), _) => {
            let dir = hub::resolve(name)?;
            let (_, model) = hf::load::<B>(&dir, &device).with_context(|| format!("loading reward model {}", dir.display()))?;
            anyhow::ensure!(model.score.is_some(), "{} is not a reward model (no score head)", dir.display());
            let tokenizer = Tokenizer::load(&dir)?;
            Box::new(RewardModelScorer { model, tokenizer, policy_tokenizer: None, batch_size: 64, device, label: dir.display().to_string() })
        }
        (None, Some(path)) => {
            let tokenizer = Tokenizer::load(args.tokenizer.as_deref().context("--lexicon needs --tokenizer")?)?;
            Box::new(LexiconScorer { lexicon: Lexicon::load(path)?, tokenizer })
        }
        (None, None) => bail!("pass --model DIR or --lexicon PATH"),
    };
    if args.negate {
        scorer = Box::new(Negated(scorer));
    }
    let batching = BatchConfig { max_batch: args.max_batch, max_wait: Duration::from_millis(args.max_wait_ms) };
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
        announce(listener.local_addr()?)?;
        rlhf_reward_server::serve(scorer, listener, batching, shutdown_signal()).await.context("reward server")
    })
}

/// A child process that is killed if it is still running when dropped.
struct ChildGuard {
    name: String,
    child: Child,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `rlhf <args>` with stdout piped; returns the guard and the first stdout line (the
/// bound address), forwarding later stdout lines to ours.
/// `rlhf` with this process's log format.
fn rlhf_command() -> anyhow::Result<Command> {
    let mut command = Command::new(std::env::current_exe().context("locating the rlhf binary")?);
    let format = match crate::logging::format() {
        crate::logging::LogFormat::Pretty => "pretty",
        crate::logging::LogFormat::Json => "json",
    };
    command.args(["--log-format", format]);
    Ok(command)
}

fn spawn_server(name: &str, args: &[String]) -> anyhow::Result<(ChildGuard, String)> {
    let mut child = rlhf_command()?.args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let guard = ChildGuard { name: name.to_string(), child };
    let first = lines.next().transpose().with_context(|| format!("reading {name}'s address"))?;
    let Some(addr) = first else { bail!("{name} exited before printing its address") };
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            println!("{line}");
        }
    });
    Ok((guard, addr))
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let learner_config: LearnerConfig = config::resolve(args.config.config.as_deref(), Vec::new(), &args.config.sets)?;
    learner_config.validate().map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    let device = args.device.to_string();
    let mut learner_args = vec!["learner".to_string(), "--device".into(), device.clone()];
    if let Some(file) = &args.config.config {
        learner_args.extend(["--config".into(), file.display().to_string()]);
    }
    for set in &args.config.sets {
        learner_args.extend(["--set".into(), set.clone()]);
    }
    let (mut learner, learner_addr) = spawn_server("learner", &learner_args)?;
    let mut reward_args = vec!["reward-server".to_string(), "--device".into(), device.clone()];
    match (&learner_config.reward.model, &learner_config.reward.lexicon) {
        (Some(model), _) => reward_args.extend(["--model".into(), model.clone()]),
        (None, Some(lexicon)) => {
            reward_args.extend(["--lexicon".into(), lexicon.display().to_string(), "--tokenizer".into(), learner_config.model.clone()])
        }
        (None, None) => bail!("the config needs reward.model or reward.lexicon"),
    }
    if learner_config.reward.negate {
        reward_args.push("--negate".into());
    }
    let (_reward, reward_addr) = spawn_server("reward server", &reward_args)?;
    tracing::info!(learner = %learner_addr, reward = %reward_addr, workers = args.workers, "started learner and reward server");
    let mut workers: Vec<ChildGuard> = Vec::new();
    for i in 0..args.workers {
        let child = rlhf_command()?
            .args(["worker", "--learner", &learner_addr, "--reward", &reward_addr, "--device", &device, "--name", &format!("worker-{}", i + 1)])
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a worker")?;
        workers.push(ChildGuard { name: format!("worker-{}", i + 1), child });
    }
    let status = learner.child.wait().context("waiting for the learner")?;
    // Workers exit once told the run is done; give them a moment, then stop the rest.
    for worker in &mut workers {
        for _ in 0..50 {
            if let Ok(Some(_)) = worker.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        tracing::debug!(worker = %worker.name, "stopped");
    }
    if !status.success() {
        bail!("the learner exited with {status}");
    }
    Ok(())
}
