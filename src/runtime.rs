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
use clap::Args;
use rlhf_actors::LearnerConfig;
use rlhf_actors::coordinator::{Accounting, CoordinatorArgs};
use rlhf_reward_server::BatchConfig;
use rlhf_trainer::AutodiffKernels;
use rlhf_trainer::Kernels;
use rlhf_trainer::error::CheckpointError;
use rlhf_trainer::ppo_update::PpoTrainer;
use rlhf_trainer::scorer::{Lexicon, LexiconScorer, Negated, RewardModelScorer, Scorer};
use rlhf_trainer::validate::{Checked, InvalidSetting, at_least_one, finite_positive};
use rlhf_trainer::{Heads, Tokenizer, hf, hub};
use serde::{Deserialize, Serialize};
use toml::Value;
use tracing::Instrument;

use crate::config::{self, ConfigArgs};
use crate::device::Device;
use crate::models::{PolicySetup, load_policy};
use crate::progress::MetricsFile;
use crate::with_backend;

#[derive(Args)]
pub struct LearnerArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Resolve and check the config, print it as TOML, and exit.
    #[arg(long)]
    check: bool,
    /// Continue from the newest checkpoint in `out/checkpoints/`.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Clear `out` first if it already holds a run (otherwise such a directory is refused).
    #[arg(long)]
    overwrite: bool,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

/// A worker's settings (`--config worker.toml`; flags override the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// The learner's address (host:port or http://host:port).
    pub learner: String,
    /// Reward server addresses; requests go round robin, and a failing server is skipped for a while (failover).
    pub reward: Vec<String>,
    /// A name for logs (default: worker-<pid>).
    pub name: Option<String>,
    /// Seconds without progress (a peer unreachable, failing or refusing) before the worker gives up.
    pub patience_s: f64,
    /// Deadline of each call, in seconds.
    pub timeout_s: f64,
    /// Fault injection for tests: hold each lease this long before rolling it out.
    pub hold_lease_ms: u64,
}

impl WorkerConfig {
    pub fn validate(&self) -> Checked {
        if self.learner.is_empty() {
            return Err(InvalidSetting::new("learner", "the learner's address (--learner)", "nothing"));
        }
        if self.reward.is_empty() {
            return Err(InvalidSetting::new("reward", "at least one reward server address (--reward)", "none"));
        }
        finite_positive("patience_s", self.patience_s)?;
        finite_positive("timeout_s", self.timeout_s)
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            learner: String::new(),
            reward: Vec::new(),
            name: None,
            patience_s: 60.0,
            timeout_s: 30.0,
            hold_lease_ms: 0,
        }
    }
}

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The learner's address (host:port or http://host:port).
    #[arg(long)]
    learner: Option<String>,
    /// Reward server addresses, comma separated; requests go round robin, failing over to the next.
    #[arg(long, value_delimiter = ',')]
    reward: Vec<String>,
    /// A name for logs (default: worker-<pid>).
    #[arg(long)]
    name: Option<String>,
    /// Seconds without progress (a peer unreachable, failing or refusing) before the worker gives up.
    #[arg(long)]
    patience_s: Option<f64>,
    /// Fault injection for tests: hold each lease this long before rolling it out.
    #[arg(long)]
    hold_lease_ms: Option<u64>,
    /// Resolve and check the config, print it as TOML, and exit.
    #[arg(long)]
    check: bool,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

/// A reward server's settings (`--config reward-server.toml`; flags override the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardServerConfig {
    /// Reward-model directory (or hub id).
    pub model: Option<String>,
    /// Lexicon file or aclImdb folder (needs `tokenizer`).
    pub lexicon: Option<PathBuf>,
    /// The policy's tokenizer (lexicon scoring decodes responses with it).
    pub tokenizer: Option<PathBuf>,
    /// Flip the sign of every score (train towards negative).
    pub negate: bool,
    pub listen: SocketAddr,
    /// Dynamic batching: largest batch, and how long the first request waits for company.
    pub max_batch: usize,
    pub max_wait_ms: u64,
}

impl RewardServerConfig {
    pub fn validate(&self) -> Checked {
        match (&self.model, &self.lexicon, &self.tokenizer) {
            (Some(_), Some(_), _) => {
                return Err(InvalidSetting::new("model", "either model or lexicon, not both", "both"));
            }
            (None, None, _) => {
                return Err(InvalidSetting::new("model", "a reward-model directory (or set lexicon)", "neither"));
            }
            (None, Some(_), None) => {
                return Err(InvalidSetting::new(
                    "tokenizer",
                    "the policy's tokenizer, to read a lexicon's token ids",
                    "nothing",
                ));
            }
            _ => {}
        }
        at_least_one("max_batch", self.max_batch)
    }
}

rlhf_trainer::impl_validate!(WorkerConfig, RewardServerConfig);

impl Default for RewardServerConfig {
    fn default() -> Self {
        Self {
            model: None,
            lexicon: None,
            tokenizer: None,
            negate: false,
            listen: "127.0.0.1:0".parse().expect("a valid address"),
            max_batch: 64,
            max_wait_ms: 5,
        }
    }
}

#[derive(Args)]
pub struct RewardServerArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Reward-model directory (or hub id).
    #[arg(long, conflicts_with = "lexicon")]
    model: Option<String>,
    /// Lexicon file or aclImdb folder; needs --tokenizer to read token ids.
    #[arg(long)]
    lexicon: Option<PathBuf>,
    /// The policy's tokenizer (lexicon scoring decodes responses with it).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Flip the sign of every score (train towards negative).
    #[arg(long)]
    negate: bool,
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[arg(long)]
    max_batch: Option<usize>,
    #[arg(long)]
    max_wait_ms: Option<u64>,
    /// Resolve and check the config, print it as TOML, and exit.
    #[arg(long)]
    check: bool,
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
    /// Continue the learner from its newest checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Clear the learner's `out` first if it already holds a run.
    #[arg(long)]
    overwrite: bool,
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

/// How long a server drains open connections after SIGTERM before it exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
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
    // The policy's context, when the model is a local directory (else checked once loaded).
    let config_json = std::path::Path::new(&learner_config.model).join("config.json");
    if config_json.is_file() {
        let model_config = rlhf_trainer::Gpt2Config::load(&config_json)?;
        learner_config
            .train
            .validate_for_model(model_config.n_positions)
            .map_err(|e| anyhow::anyhow!("invalid config: {}", e.within("train")))?;
    }
    if args.check {
        print!("{}", toml::to_string_pretty(&learner_config)?);
        return Ok(());
    }
    with_backend!(args.device, |B, device| run_learner::<Autodiff<B>>(
        learner_config,
        args.listen,
        args.resume,
        args.overwrite,
        device
    ))
}

/// The newest `version-N` checkpoint under `dir`.
/// The run's [`Accounting`]: in each learner checkpoint, and in the run directory at the end.
const ACCOUNTING_FILE: &str = "accounting.json";

fn latest_learner_checkpoint(dir: &std::path::Path) -> Option<(u64, PathBuf)> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: u64 = e.file_name().to_str()?.strip_prefix("version-")?.parse().ok()?;
            e.path().join("ppo_state.json").is_file().then_some((version, e.path()))
        })
        .max_by_key(|(version, _)| *version)
}

fn run_learner<B: AutodiffKernels>(
    mut learner_config: LearnerConfig,
    listen: SocketAddr,
    resume: bool,
    overwrite: bool,
    device: B::Device,
) -> anyhow::Result<()> {
    let train = &mut learner_config.train;
    train.ppo.temperature = if train.sampling.greedy { 1.0 } else { train.sampling.temperature };
    if learner_config.runtime.max_policy_lag > 0 {
        // Off-policy rollouts: the ratio must be taken against the policy that sampled them.
        train.ppo.old_logprobs = rlhf_trainer::ppo_update::OldLogprobs::Behaviour;
    }
    let out = learner_config.out.clone();
    let _run_dir = crate::models::run_dir(&out, resume, overwrite)?;
    let setup = load_policy::<B>(
        &learner_config.model,
        Heads::LmValue,
        &learner_config.prompts,
        &learner_config.train.prompts,
        &device,
    )?;
    let PolicySetup { model_config, policy, reference, tokenizer, prompts } = setup;
    learner_config
        .train
        .validate_for_model(model_config.n_positions)
        .map_err(|e| anyhow::anyhow!("invalid config: {}", e.within("train")))?;
    config::write(&learner_config, &out.join("learner_config.toml"))?;
    let mut trainer =
        PpoTrainer::<B>::new(policy, None, reference, learner_config.train.ppo.clone(), tokenizer.eos_id(), &device)?;
    let checkpoints = out.join("checkpoints");
    let (start_version, prior) = match (resume, latest_learner_checkpoint(&checkpoints)) {
        (false, _) => (0, Accounting::default()),
        (true, None) => bail!("--resume: no checkpoint in {}", checkpoints.display()),
        (true, Some((_, dir))) => {
            let state = trainer.restore_checkpoint(&dir)?;
            tracing::info!(checkpoint = %dir.display(), policy_version = state.version, "resuming");
            let path = dir.join(ACCOUNTING_FILE);
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("--resume: cannot read {}", path.display()))?;
            let mut prior: Accounting = serde_json::from_str(&text)
                .with_context(|| format!("--resume: {} is not an accounting record", path.display()))?;
            prior.resumes += 1;
            (state.version, prior)
        }
    };
    if resume {
        // Records of iterations after the checkpoint belong to the attempt that was cut short:
        // drop them, so the files read as one run (their prompts are rolled out again).
        let batch = learner_config.train.batch_size as u64;
        let metrics = rlhf_trainer::rundir::truncate_records(&out.join("metrics.jsonl"), |r| {
            r["step"].as_u64().is_some_and(|s| s <= start_version)
        })?;
        let rollouts = rlhf_trainer::rundir::truncate_records(&out.join("rollouts.jsonl"), |r| {
            r["prompt_index"].as_u64().is_some_and(|i| i / batch < start_version)
        })?;
        if metrics + rollouts > 0 {
            tracing::info!(
                metrics,
                rollouts,
                policy_version = start_version,
                "dropped records written after the checkpoint"
            );
        }
    }
    let (checkpoint_config, checkpoint_tokenizer) = (model_config.clone(), tokenizer.clone());
    let mut metrics = MetricsFile::create(&out.join("metrics.jsonl"))?;
    let lineage_path = out.join("rollouts.jsonl");
    let mut lineage_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&lineage_path)
        .with_context(|| format!("cannot open {}", lineage_path.display()))?;
    let export_dir = out.clone();
    let args = CoordinatorArgs {
        sampling_json: serde_json::to_string(&learner_config.train.sampling)?,
        model_config_json: serde_json::to_string(&model_config)?,
        tokenizer_json: if learner_config.reward.retokenize { tokenizer.to_json()? } else { String::new() },
        eos_id: tokenizer.eos_id(),
        config: learner_config,
        trainer,
        prompts,
        start_version,
        prior,
        on_checkpoint: Box::new(move |trainer, version, totals| {
            let dir = checkpoints.join(format!("version-{version}"));
            rlhf_trainer::train::write_dir_atomically(&dir, |dir| {
                trainer.save_checkpoint(dir, version, &checkpoint_config, &checkpoint_tokenizer)?;
                let path = dir.join(ACCOUNTING_FILE);
                std::fs::write(&path, serde_json::to_string_pretty(totals).unwrap_or_default())
                    .map_err(|e| CheckpointError::Write { path, message: e.to_string() })
            })
            .map_err(|e| e.to_string())
        }),
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
            // The whole run's, a resumed learner's included.
            let path = export_dir.join(ACCOUNTING_FILE);
            if let Err(e) = std::fs::write(&path, serde_json::to_string_pretty(&totals).unwrap_or_default()) {
                tracing::error!(error = %e, path = %path.display(), "cannot write the accounting");
            }
            crate::report::write_for_run(&export_dir);
        }),
    };
    runtime()?.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        announce(listener.local_addr()?)?;
        let span = tracing::info_span!("run", out = %out.display());
        rlhf_actors::serve(args, listener).instrument(span).await.map_err(|e| anyhow::anyhow!("learner: {e}"))
    })
}

fn string(value: &str) -> Value {
    Value::String(value.to_string())
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let mut flags = Vec::new();
    if let Some(v) = &args.learner {
        flags.push(("learner", string(v)));
    }
    if !args.reward.is_empty() {
        flags.push(("reward", Value::Array(args.reward.iter().map(|r| string(r)).collect())));
    }
    if let Some(v) = &args.name {
        flags.push(("name", string(v)));
    }
    if let Some(v) = args.patience_s {
        flags.push(("patience_s", Value::Float(v)));
    }
    if let Some(v) = args.hold_lease_ms {
        flags.push(("hold_lease_ms", Value::Integer(v as i64)));
    }
    let worker_config: WorkerConfig = config::resolve(args.config.config.as_deref(), flags, &args.config.sets)?;
    if args.check {
        print!("{}", toml::to_string_pretty(&worker_config)?);
        return Ok(());
    }
    with_backend!(args.device, |B, device| run_worker::<B>(&worker_config, device))
}

fn run_worker<B: Kernels>(worker_config: &WorkerConfig, device: B::Device) -> anyhow::Result<()> {
    let options = rlhf_rollout_worker::WorkerOptions {
        learner: url(&worker_config.learner),
        rewards: worker_config.reward.iter().map(|r| url(r)).collect(),
        name: worker_config.name.clone().unwrap_or_else(|| format!("worker-{}", std::process::id())),
        timeout: Duration::from_secs_f64(worker_config.timeout_s),
        patience: Duration::from_secs_f64(worker_config.patience_s),
        hold_lease: Duration::from_millis(worker_config.hold_lease_ms),
    };
    let name = options.name.clone();
    runtime()?.block_on(async move {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("stopping: finishing or returning the current lease");
            let _ = stop.send(true);
        });
        rlhf_rollout_worker::run::<B>(options, device, stopped).await.with_context(|| format!("worker {name}"))?;
        tracing::info!("worker finished");
        Ok(())
    })
}

pub fn reward_server(args: RewardServerArgs) -> anyhow::Result<()> {
    let mut flags = Vec::new();
    if let Some(v) = &args.model {
        flags.push(("model", string(v)));
    }
    if let Some(v) = &args.lexicon {
        flags.push(("lexicon", string(&v.display().to_string())));
    }
    if let Some(v) = &args.tokenizer {
        flags.push(("tokenizer", string(&v.display().to_string())));
    }
    if args.negate {
        flags.push(("negate", Value::Boolean(true)));
    }
    if let Some(v) = args.listen {
        flags.push(("listen", string(&v.to_string())));
    }
    if let Some(v) = args.max_batch {
        flags.push(("max_batch", Value::Integer(v as i64)));
    }
    if let Some(v) = args.max_wait_ms {
        flags.push(("max_wait_ms", Value::Integer(v as i64)));
    }
    let server_config: RewardServerConfig = config::resolve(args.config.config.as_deref(), flags, &args.config.sets)?;
    if args.check {
        print!("{}", toml::to_string_pretty(&server_config)?);
        return Ok(());
    }
    with_backend!(args.device, |B, device| run_reward_server::<B>(&server_config, device))
}

fn run_reward_server<B: Kernels>(server_config: &RewardServerConfig, device: B::Device) -> anyhow::Result<()> {
    let mut scorer: Box<dyn Scorer> = match (&server_config.model, &server_config.lexicon) {
        (Some(name), _) => {
            let dir = hub::resolve(name)?;
            let (_, model) =
                hf::load::<B>(&dir, &device).with_context(|| format!("loading reward model {}", dir.display()))?;
            anyhow::ensure!(model.score.is_some(), "{} is not a reward model (no score head)", dir.display());
            let tokenizer = Tokenizer::load(&dir)?;
            Box::new(RewardModelScorer {
                model,
                tokenizer,
                policy_tokenizer: None,
                batch_size: 64,
                device,
                label: dir.display().to_string(),
            })
        }
        (None, Some(path)) => {
            let tokenizer =
                Tokenizer::load(server_config.tokenizer.as_deref().context("a lexicon needs a tokenizer")?)?;
            Box::new(LexiconScorer { lexicon: Lexicon::load(path)?, tokenizer })
        }
        (None, None) => bail!("set model or lexicon"),
    };
    if server_config.negate {
        scorer = Box::new(Negated(scorer));
    }
    let batching =
        BatchConfig { max_batch: server_config.max_batch, max_wait: Duration::from_millis(server_config.max_wait_ms) };
    let listen = server_config.listen;
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        announce(listener.local_addr()?)?;
        // On SIGTERM the server stops taking connections and drains open ones, for at most
        // SHUTDOWN_GRACE: a client that keeps its connection open cannot hold it up.
        let (signalled, drained) = tokio::sync::oneshot::channel();
        let shutdown = async move {
            shutdown_signal().await;
            let _ = signalled.send(());
        };
        tokio::select! {
            served = rlhf_reward_server::serve(scorer, listener, batching, shutdown) => served.context("reward server"),
            _ = async {
                if drained.await.is_ok() {
                    tokio::time::sleep(SHUTDOWN_GRACE).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "clients still connected after the grace period; stopping anyway");
                Ok(())
            }
        }
    })
}

/// A child process that is killed if it is still running when dropped.
struct ChildGuard {
    name: String,
    child: Child,
}

impl ChildGuard {
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (SIGTERM: finish or hand back work, then exit).
    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; at worst the pid has exited and the call fails.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How long children get to stop after a forwarded SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Forwards SIGTERM to every child still running, waits up to [`STOP_GRACE`] for them, then
/// kills the rest.
fn stop_children(children: &mut [&mut ChildGuard]) {
    for child in children.iter_mut() {
        if child.running() {
            tracing::info!(child = %child.name, "forwarding SIGTERM");
            child.signal(libc::SIGTERM);
        }
    }
    let started = std::time::Instant::now();
    while children.iter_mut().any(|c| c.running()) && started.elapsed() < STOP_GRACE {
        std::thread::sleep(Duration::from_millis(100));
    }
    for child in children.iter_mut() {
        if child.running() {
            tracing::warn!(child = %child.name, "did not stop in time; killing it");
            let _ = child.child.kill();
            let _ = child.child.wait();
        }
    }
}

/// Starts `rlhf <args>` with stdout piped; returns the guard and the first stdout line (the
/// bound address), forwarding later stdout lines to ours.
/// `rlhf` with this process's log format, as a child that gets SIGTERM if this process dies
/// (so that no learner, worker or reward server outlives the `rlhf run` or `rlhf demo` that
/// started it, even when that one is SIGKILLed).
pub(crate) fn rlhf_command() -> anyhow::Result<Command> {
    let mut command = Command::new(std::env::current_exe().context("locating the rlhf binary")?);
    let format = match crate::logging::format() {
        crate::logging::LogFormat::Pretty => "pretty",
        crate::logging::LogFormat::Json => "json",
    };
    command.args(["--log-format", format]);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches only the new process.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    Ok(command)
}

fn spawn_server(name: &str, args: &[String]) -> anyhow::Result<(ChildGuard, String)> {
    let mut child = rlhf_command()?
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
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
    let device = args.device.to_string();
    let mut learner_args = vec!["learner".to_string(), "--device".into(), device.clone()];
    if let Some(file) = &args.config.config {
        learner_args.extend(["--config".into(), file.display().to_string()]);
    }
    for set in &args.config.sets {
        learner_args.extend(["--set".into(), set.clone()]);
    }
    if args.resume {
        learner_args.push("--resume".into());
    }
    if args.overwrite {
        learner_args.push("--overwrite".into());
    }
    let (mut learner, learner_addr) = spawn_server("learner", &learner_args)?;
    let mut reward_args = vec!["reward-server".to_string(), "--device".into(), device.clone()];
    match (&learner_config.reward.model, &learner_config.reward.lexicon) {
        (Some(model), _) => reward_args.extend(["--model".into(), model.clone()]),
        (None, Some(lexicon)) => reward_args.extend([
            "--lexicon".into(),
            lexicon.display().to_string(),
            "--tokenizer".into(),
            learner_config.model.clone(),
        ]),
        (None, None) => bail!("the config needs reward.model or reward.lexicon"),
    }
    if learner_config.reward.negate {
        reward_args.push("--negate".into());
    }
    let (mut reward, reward_addr) = spawn_server("reward server", &reward_args)?;
    tracing::info!(learner = %learner_addr, reward = %reward_addr, workers = args.workers, "started learner and reward server");
    let mut workers: Vec<ChildGuard> = Vec::new();
    for i in 0..args.workers {
        let child = rlhf_command()?
            .args([
                "worker",
                "--learner",
                &learner_addr,
                "--reward",
                &reward_addr,
                "--device",
                &device,
                "--name",
                &format!("worker-{}", i + 1),
            ])
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a worker")?;
        workers.push(ChildGuard { name: format!("worker-{}", i + 1), child });
    }
    // SIGTERM or Ctrl-C reaches every child: workers hand back their leases, servers stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing a signal handler")?;
    }
    // Wait for the learner; if every worker has failed meanwhile, the run cannot finish.
    let status = loop {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!("stopping the run: forwarding the signal to every child");
            // Workers first, so that they can still hand their leases back to the learner.
            stop_children(&mut workers.iter_mut().collect::<Vec<_>>());
            stop_children(&mut [&mut learner, &mut reward]);
            bail!("the run was stopped by a signal");
        }
        if let Some(status) = learner.child.try_wait().context("waiting for the learner")? {
            break status;
        }
        let total = workers.len();
        let failed: Vec<String> = workers
            .iter_mut()
            .filter_map(|w| matches!(w.child.try_wait(), Ok(Some(s)) if !s.success()).then(|| w.name.clone()))
            .collect();
        if total > 0 && failed.len() == total {
            bail!("every worker failed ({}); see their errors above", failed.join(", "));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
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
