//! `rlhf bench ...`: measured numbers printed as tables. Nothing here is asserted by tests.

use std::time::Instant;

use burn::backend::Autodiff;
use clap::{Args, Subcommand};
use rlhf_trainer::Kernels;
use rlhf_trainer::{Generator, Gpt2Config, Heads, SamplingConfig};

use crate::device::Device;
use crate::with_backend;

use crate::bench_ppo::Lcg;
pub use crate::bench_ppo::PpoBench;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Tokens/s of batched KV-cache sampling on random weights.
    Generate(GenerateBench),
    /// Full PPO iterations (generate, score, old/reference log-probs, optimise) on random weights.
    Ppo(PpoBench),
    /// Time to deliver one policy version to N workers over loopback gRPC, next to a raw TCP copy.
    WeightSync(WeightSyncBench),
    /// Rollouts/s the learner accepts from synthetic workers (excluding the PPO update).
    Ingest(IngestBench),
}

#[derive(Args)]
pub struct WeightSyncBench {
    /// Model preset whose (random) weights are sent.
    #[arg(long, default_value = "gpt2")]
    config: String,
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Element type on the wire: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Measure one path only, in this process (the bench runs each path in a process of its
    /// own, since a process holds one learner).
    #[arg(long, hide = true)]
    path: Option<crate::bench_runtime::SyncPath>,
}

#[derive(Args)]
pub struct IngestBench {
    /// Concurrent synthetic workers.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Rollouts per iteration.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    #[arg(long, default_value_t = 16)]
    lease_size: usize,
    #[arg(long, default_value_t = 4)]
    iterations: usize,
    /// Response tokens per synthetic rollout.
    #[arg(long, default_value_t = 32)]
    response_len: usize,
}

#[derive(Args)]
pub struct GenerateBench {
    /// Model presets, comma separated (tiny, nano, distilgpt2, gpt2, gpt2-medium).
    #[arg(long, value_delimiter = ',', default_value = "tiny")]
    config: Vec<String>,
    /// Batch sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    batch: Vec<usize>,
    #[arg(long, default_value_t = 16)]
    prompt_len: usize,
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Timed runs per row (after one warm-up run); the table shows the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Greedy decoding instead of sampling (temperature 1, no top-k/top-p).
    #[arg(long)]
    greedy: bool,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Generate(args) => {
            with_backend!(args.device, |B, device| bench_generate::<B>(&args, &device))
        }
        BenchCommand::Ppo(args) => {
            with_backend!(args.device, |B, device| crate::bench_ppo::run::<Autodiff<B>>(&args, &device))
        }
        BenchCommand::WeightSync(args) => {
            crate::bench_runtime::weight_sync(&args.config, args.workers, &args.dtype, args.runs, args.path)
        }
        BenchCommand::Ingest(args) => {
            crate::bench_runtime::ingest(args.workers, args.batch, args.lease_size, args.iterations, args.response_len)
        }
    }
}

fn bench_generate<B: Kernels>(args: &GenerateBench, device: &B::Device) -> anyhow::Result<()> {
    println!("| impl | config | batch | prompt_len | new_tokens | median s | tokens/s |");
    println!("|---|---|---|---|---|---|---|");
    for name in &args.config {
        let config = Gpt2Config::preset(name)?;
        // Laid out for decoding once, as a worker does per policy version.
        let generator = Generator::new(config.init::<B>(Heads::Lm, device));
        for &batch in &args.batch {
            // The prompts `bench/peers.py generate` draws too.
            let mut rng = Lcg::new(0);
            let prompts: Vec<Vec<u32>> = (0..batch)
                .map(|_| (0..args.prompt_len).map(|_| rng.next_below(config.vocab_size as u32)).collect())
                .collect();
            let sampling = SamplingConfig {
                max_new_tokens: args.new_tokens,
                greedy: args.greedy,
                stop_at_eos: false,
                ..Default::default()
            };
            let mut times = Vec::new();
            for run in 0..=args.runs.max(1) {
                let start = Instant::now();
                let out = generator.generate(&prompts, 0, &sampling, device)?;
                assert_eq!(out.completion_ids[0].len(), args.new_tokens);
                if run > 0 {
                    times.push(start.elapsed().as_secs_f64());
                }
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let tokens_per_s = (batch * args.new_tokens) as f64 / median;
            println!(
                "| rlhf ({}) | {name} | {batch} | {} | {} | {median:.3} | {tokens_per_s:.1} |",
                args.device, args.prompt_len, args.new_tokens
            );
        }
    }
    Ok(())
}
