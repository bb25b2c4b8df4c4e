//! `rlhf run`: a learner, a reward server and N workers as child processes on 127.0.0.1, with
//! signals forwarded to them (workers first) and no child outliving the run.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use rlhf_actors::LearnerConfig;

use crate::config::{self, ConfigArgs};
use crate::device::Device;

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Rollout workers to start.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Continue the learner from its newest checkpoint (`--resume auto`: if there is one).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "required", conflicts_with = "overwrite")]
    resume: Option<super::learner::Resume>,
    /// Clear the learner's `out` first if it already holds a run.
    #[arg(long)]
    overwrite: bool,
    /// `cpu`, `cuda` or `cuda:N`. With `cuda` on a host with several GPUs, the learner gets
    /// `cuda:0` and the reward server and workers spread over the others.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Place the workers explicitly, e.g. `cuda:1,cuda:2` (round robin over the list).
    #[arg(long, value_delimiter = ',')]
    worker_devices: Vec<Device>,
    /// Secure every connection with a throwaway CA and token made for this run: servers speak
    /// TLS and require client certificates (mutual TLS) and the token.
    #[arg(long)]
    secure: bool,
}

/// `rlhf run --secure`'s flags for the children, from a development PKI that lives as long as
/// the run.
struct Secure {
    _dir: tempfile::TempDir,
    server: Vec<String>,
    client: Vec<String>,
}

impl Secure {
    fn new() -> anyhow::Result<Self> {
        let dir =
            tempfile::Builder::new().prefix("rlhf-run-pki").tempdir().context("a folder for the run's certificates")?;
        let pki = rlhf_secure::certs::write(dir.path(), &["127.0.0.1".into(), "localhost".into()])?;
        let arg = |flag: &str, path: &std::path::Path| [flag.to_string(), path.display().to_string()];
        let server = [
            arg("--tls-cert", &pki.server_cert),
            arg("--tls-key", &pki.server_key),
            arg("--tls-ca", &pki.ca),
            arg("--token-file", &pki.token),
        ]
        .concat();
        let client = [
            arg("--tls-ca", &pki.ca),
            arg("--tls-client-cert", &pki.client_cert),
            arg("--tls-client-key", &pki.client_key),
            arg("--token-file", &pki.token),
        ]
        .concat();
        let server = [server, vec!["--tls-require-client-cert".to_string()]].concat();
        Ok(Self { _dir: dir, server, client })
    }
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
    let finished = rlhf_actors::run_dir::RunDir::new(&learner_config.out).finished(&learner_config);
    if args.resume == Some(super::learner::Resume::Auto) && finished {
        tracing::info!(out = %learner_config.out.display(), "the run is already finished");
        return Ok(());
    }
    let gpus = if matches!(args.device, Device::Cuda(_)) { crate::device::gpu_count() } else { 0 };
    let placement = crate::device::Placement::plan(args.device, gpus, args.workers, &args.worker_devices);
    for device in [&placement.learner, &placement.reward].into_iter().chain(&placement.workers) {
        crate::device::check(*device)?;
    }
    tracing::info!(learner = %placement.learner, reward = %placement.reward, workers = ?placement.workers.iter().map(ToString::to_string).collect::<Vec<_>>(), "devices");
    let secure = if args.secure { Some(Secure::new()?) } else { None };
    let server_flags = secure.as_ref().map(|s| s.server.clone()).unwrap_or_default();
    let device = placement.learner.to_string();
    // Children talk on 127.0.0.1, whatever `listen` the config sets for a cluster.
    let mut learner_args =
        vec!["learner".to_string(), "--device".into(), device.clone(), "--listen".into(), "127.0.0.1:0".into()];
    if let Some(file) = &args.config.config {
        learner_args.extend(["--config".into(), file.display().to_string()]);
    }
    for set in &args.config.sets {
        learner_args.extend(["--set".into(), set.clone()]);
    }
    match args.resume {
        Some(super::learner::Resume::Required) => learner_args.push("--resume".into()),
        Some(super::learner::Resume::Auto) => learner_args.extend(["--resume".into(), "auto".into()]),
        None => {}
    }
    if args.overwrite {
        learner_args.push("--overwrite".into());
    }
    learner_args.extend(server_flags.iter().cloned());
    let (mut learner, learner_addr) = spawn_server("learner", &learner_args)?;
    let mut reward_args = vec!["reward-server".to_string(), "--device".into(), placement.reward.to_string()];
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
    reward_args.extend(server_flags.iter().cloned());
    let (mut reward, reward_addr) = spawn_server("reward server", &reward_args)?;
    let scheme = if secure.is_some() { "https" } else { "http" };
    let (learner_addr, reward_addr) = (format!("{scheme}://{learner_addr}"), format!("{scheme}://{reward_addr}"));
    tracing::info!(learner = %learner_addr, reward = %reward_addr, workers = args.workers, "started learner and reward server");
    let mut workers: Vec<ChildGuard> = Vec::new();
    for (i, worker_device) in placement.workers.iter().enumerate() {
        let worker_device = worker_device.to_string();
        let child = rlhf_command()?
            .args([
                "worker",
                "--learner",
                &learner_addr,
                "--reward",
                &reward_addr,
                "--device",
                &worker_device,
                "--name",
                &format!("worker-{}", i + 1),
            ])
            .args(secure.iter().flat_map(|s| s.client.iter()))
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
    let mut progress = RunProgress::new(&learner_config);
    let status = loop {
        progress.poll();
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

/// `rlhf run`'s live progress from the learner's `metrics.jsonl`: iteration i/N, reward, KL,
/// samples/s, workers and ETA. A bar on a terminal; otherwise a `progress` log line at most every
/// 10 s (and for the last iteration).
struct RunProgress {
    path: std::path::PathBuf,
    read: u64,
    total: usize,
    bar: Option<indicatif::ProgressBar>,
    started: std::time::Instant,
    last_line: Option<std::time::Instant>,
}

impl RunProgress {
    fn new(config: &LearnerConfig) -> Self {
        let path = config.out.join(rlhf_actors::run_dir::METRICS_FILE);
        let read = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let total = config.train.iterations;
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("PPO [{elapsed_precise}] {bar:30} {pos}/{len} ETA {eta} {msg}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar
        });
        Self { path, read, total, bar, started: std::time::Instant::now(), last_line: None }
    }

    /// Reads the records written since the last call and shows the newest.
    fn poll(&mut self) {
        use std::io::{Read, Seek};
        let Ok(mut file) = std::fs::File::open(&self.path) else { return };
        // A resuming learner drops the records written after its checkpoint: start over.
        if file.metadata().is_ok_and(|m| m.len() < self.read) {
            self.read = 0;
        }
        if file.seek(std::io::SeekFrom::Start(self.read)).is_err() {
            return;
        }
        let mut text = String::new();
        if file.read_to_string(&mut text).is_err() {
            return;
        }
        // Only whole lines; a partly written one is read next time.
        let Some(end) = text.rfind('\n') else { return };
        self.read += end as u64 + 1;
        let Some(record) = text[..end].lines().rev().find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        else {
            return;
        };
        let iteration = record["step"].as_u64().unwrap_or(0) as usize;
        let get = |k: &str| record[k].as_f64().unwrap_or(f64::NAN);
        let (reward, kl, rate, workers) =
            (get("env/reward_mean"), get("objective/kl"), get("samples_per_s"), get("workers/active"));
        let message = format!("reward {reward:.3} KL {kl:.3} {rate:.1} samples/s {workers} workers");
        if let Some(bar) = &self.bar {
            bar.set_position(iteration as u64);
            bar.set_message(message);
            return;
        }
        let due = self.last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if due || iteration >= self.total {
            self.last_line = Some(std::time::Instant::now());
            let per_iteration = self.started.elapsed().as_secs_f64() / iteration.max(1) as f64;
            let eta_s = (per_iteration * self.total.saturating_sub(iteration) as f64).round();
            #[rustfmt::skip]
            tracing::info!(iteration, iterations = self.total, reward, kl, samples_per_s = rate, workers, eta_s, "progress");
        }
    }
}

impl Drop for RunProgress {
    fn drop(&mut self) {
        self.poll();
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
