//! `rlhf`: one binary for every role. Each subcommand parses its flags, then calls library code.

mod bench;
mod bench_ppo;
mod bench_runtime;
mod config;
mod demo;
mod device;
mod eval;
mod export;
mod generate;
mod logging;
mod models;
mod parity;
mod ppo;
mod progress;
mod report;
mod reward;
mod runtime;
mod sft;

use std::process::ExitCode;

/// jemalloc keeps freed pages for reuse: a training step allocates and frees several
/// vocabulary-sized (100+ MB) tensors, which glibc's allocator maps and unmaps every time, paying
/// a page fault per 4 KiB page on each reuse (a third of a `distilgpt2` PPO update's time).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings (tikv-jemallocator reads this symbol; `_RJEM_MALLOC_CONF` in the
/// environment overrides it): freed pages go back to the OS only after about 10 minutes unused,
/// by a background thread rather than inside allocation calls, and large blocks may use
/// transparent huge pages. A process so keeps its peak footprint while it works. Measured on a
/// `distilgpt2` PPO iteration: 30 s decay 1.44 samples/s, 10 min 1.63, never 1.58-1.73; without
/// huge pages 1.31-1.38.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:600000,muzzy_decay_ms:600000,thp:always\0";

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rlhf", version, about = "Distributed, actor-based RLHF for GPT-2 models: one binary, no Python")]
struct Cli {
    /// Log format on stderr (`RUST_LOG` sets the level).
    #[arg(long, global = true, value_enum, default_value = "pretty")]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole pipeline offline on CPU in minutes: corpus, tokenizer, SFT, reward model,
    /// distributed PPO, evaluation and report.html.
    Demo(demo::DemoArgs),
    /// Generate continuations of text prompts with a GPT-2 model directory.
    Generate(generate::GenerateArgs),
    /// Print per-token log-probabilities of texts under a model.
    Logprobs(generate::LogprobsArgs),
    /// Write a model as a Hugging Face directory (config.json, model.safetensors, tokenizer).
    Export(export::ExportArgs),
    /// Supervised fine-tuning (causal LM) on a text dataset.
    Sft(sft::SftArgs),
    /// Reward models: train on preference pairs, score texts.
    #[command(subcommand)]
    Reward(reward::RewardCommand),
    /// PPO against a reward model or lexicon (`--local`: in one process).
    Ppo(ppo::PpoArgs),
    /// Compare policies: rewards, KL to a reference, lengths, best-of-n, win rates (JSON).
    Eval(eval::EvalArgs),
    /// The learner process: PPO updates, prompt leases, weight publishing (gRPC).
    Learner(runtime::LearnerArgs),
    /// A rollout worker: generates with the current policy and submits scored rollouts.
    Worker(runtime::WorkerArgs),
    /// A reward server: scores token sequences with a reward model or a lexicon (gRPC).
    RewardServer(runtime::RewardServerArgs),
    /// Write report.html (plots, before/after table, config) for a PPO run directory.
    Report(report::ReportArgs),
    /// Learner, reward server and N workers as child processes on 127.0.0.1.
    Run(runtime::RunArgs),
    /// Probe a role's gRPC health service: exit 0 when it is SERVING (for healthchecks and probes).
    Health(runtime::HealthArgs),
    /// The run's state from the learner: progress, and per worker its weights, heartbeat, rate
    /// and lease (read-only; a worker's credentials).
    Status(runtime::StatusArgs),
    /// Write a development CA, server and client certificates and a token (TLS in one command;
    /// production setups bring their own PKI).
    Certs(runtime::CertsArgs),
    /// Numerical parity with transformers and TRL on the committed fixtures, on any device.
    Parity(parity::ParityArgs),
    /// Benchmarks that print tables (numbers are measured, never asserted).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    // One TLS crypto provider for the process (rustls has two in the build and will not guess).
    rlhf_secure::install_crypto_provider();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(args) => demo::run(args),
        Command::Report(args) => report::run(args),
        Command::Generate(args) => generate::generate(args),
        Command::Logprobs(args) => generate::logprobs(args),
        Command::Export(args) => export::export(args),
        Command::Sft(args) => sft::run(args),
        Command::Reward(command) => reward::run(command),
        Command::Ppo(args) => ppo::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Learner(args) => runtime::learner(args),
        Command::Worker(args) => runtime::worker(args),
        Command::RewardServer(args) => runtime::reward_server(args),
        Command::Run(args) => runtime::run(args),
        Command::Health(args) => runtime::health(args),
        Command::Certs(args) => runtime::certs(args),
        Command::Status(args) => runtime::status(args),
        Command::Parity(args) => parity::run(args),
        Command::Bench(command) => bench::run(command),
    }
}
