//! `rlhf bench ppo`: whole PPO iterations on random weights, split the way TRL's timers split
//! them, so that `bench/peers.py ppo` can print the same table for TRL on the same shapes.
//!
//! Queries come from a 64-bit LCG that `bench/peers.py` implements identically (lengths uniform
//! in `--query-tokens`, ids uniform over GPT-2's 50,257 tokens), and the score of a rollout is the
//! fraction of its response ids that are even, minus 0.5: both sides see the same prompts and
//! the same deterministic reward, whose cost is negligible.

use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::AutodiffModule;
use clap::Args;
use rlhf_trainer::AutodiffKernels;
use rlhf_trainer::ppo::{PpoConfig, PpoTrainer, Rollout};
use rlhf_trainer::{Gpt2Config, Heads, SamplingConfig, generate};

use crate::device::Device;

/// GPT-2's vocabulary size and end-of-text id: the benchmark uses the real vocabulary.
const VOCAB: usize = 50257;
const EOS: u32 = 50256;

#[derive(Args)]
pub struct PpoBench {
    /// A model preset (tiny, nano, distilgpt2, gpt2, gpt2-medium); otherwise --layers/--width/--heads.
    #[arg(long, conflicts_with_all = ["layers", "width", "heads"])]
    config: Option<String>,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    #[arg(long, default_value_t = 128)]
    width: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Rollouts per iteration (TRL's batch_size).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 16)]
    mini_batch: usize,
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Query lengths, `LO..HI` inclusive.
    #[arg(long, default_value = "2..8")]
    query_tokens: String,
    #[arg(long, default_value_t = 16)]
    new_tokens: usize,
    /// Never stop a response at end-of-text (every response has --new-tokens tokens).
    #[arg(long)]
    no_eos_stop: bool,
    /// Timed iterations, after one warm-up iteration that is excluded.
    #[arg(long, default_value_t = 2)]
    iterations: usize,
    #[arg(long, default_value = "cpu")]
    pub device: Device,
}

/// Knuth's MMIX linear congruential generator; `next_below` uses the high 32 bits.
/// `bench/peers.py` has the same generator, so both benchmarks draw the same queries.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 32) as u32
    }

    pub fn next_below(&mut self, n: u32) -> u32 {
        ((self.next_u32() as u64 * n as u64) >> 32) as u32
    }
}

/// `batch` queries with lengths uniform in `lo..=hi`, drawn from `Lcg::new(seed)`.
pub fn queries(batch: usize, lo: usize, hi: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Lcg::new(seed);
    (0..batch)
        .map(|_| {
            let len = lo + rng.next_below((hi - lo + 1) as u32) as usize;
            (0..len).map(|_| rng.next_below(VOCAB as u32)).collect()
        })
        .collect()
}

/// The synthetic reward: the fraction of even ids in the response, minus 0.5.
fn score(response: &[u32]) -> f32 {
    response.iter().filter(|&&t| t % 2 == 0).count() as f32 / response.len().max(1) as f32 - 0.5
}

fn parse_range(text: &str) -> anyhow::Result<(usize, usize)> {
    let (lo, hi) = text.split_once("..").with_context(|| format!("--query-tokens: expected LO..HI, got {text:?}"))?;
    let (lo, hi): (usize, usize) = (lo.parse()?, hi.parse()?);
    if lo == 0 || hi < lo {
        bail!("--query-tokens: expected 1 <= LO <= HI, got {text:?}");
    }
    Ok((lo, hi))
}

/// Seconds spent in each part of one iteration.
#[derive(Default, Clone, Copy)]
struct Split {
    generate: f64,
    score: f64,
    forward: f64,
    optimise: f64,
    step: f64,
    total: f64,
    response_tokens: f64,
}

pub fn run<B: AutodiffKernels>(args: &PpoBench, device: &B::Device) -> anyhow::Result<()> {
    let (lo, hi) = parse_range(&args.query_tokens)?;
    let (config, size) = match &args.config {
        Some(name) => (Gpt2Config::preset(name)?, name.clone()),
        None => (
            Gpt2Config::new(VOCAB, 1024, args.width, args.layers, args.heads),
            format!("{}x{}x{}", args.layers, args.width, args.heads),
        ),
    };
    config.validate().map_err(anyhow::Error::msg)?;
    let policy = config.init::<B>(Heads::LmValue, device);
    let reference = config.init::<B::InnerBackend>(Heads::Lm, device);
    let ppo = PpoConfig { mini_batch_size: args.mini_batch, ppo_epochs: args.epochs, ..Default::default() };
    let total_steps = (args.iterations + 1) * args.epochs * args.batch.div_ceil(args.mini_batch);
    let mut trainer = PpoTrainer::<B>::new(policy, None, reference, ppo, EOS, device)?;
    let mut splits = Vec::new();
    for iteration in 0..=args.iterations {
        let queries = queries(args.batch, lo, hi, iteration as u64);
        let sampling = SamplingConfig {
            max_new_tokens: args.new_tokens,
            stop_at_eos: !args.no_eos_stop,
            seed: iteration as u64,
            ..Default::default()
        };
        let started = Instant::now();
        let generation = generate(&trainer.policy.valid(), &queries, EOS, &sampling, device)?;
        let generated = Instant::now();
        let scores: Vec<f32> = generation.completion_ids.iter().map(|r| score(r)).collect();
        let scored = Instant::now();
        let rollouts: Vec<Rollout> = queries
            .into_iter()
            .zip(generation.completion_ids)
            .zip(generation.logprobs)
            .zip(scores)
            .map(|(((query, response), logprobs), score)| Rollout { query, response, logprobs, score })
            .collect();
        let stats = trainer.step(&rollouts, total_steps)?;
        let done = Instant::now();
        let split = Split {
            generate: (generated - started).as_secs_f64(),
            score: (scored - generated).as_secs_f64(),
            forward: stats["time/ppo/forward_pass"],
            optimise: stats["time/ppo/optimize_step"],
            step: (done - scored).as_secs_f64(),
            total: (done - started).as_secs_f64(),
            response_tokens: rollouts.iter().map(|r| r.response.len()).sum::<usize>() as f64 / rollouts.len() as f64,
        };
        eprintln!("# iteration {iteration}: {:.2} s{}", split.total, if iteration == 0 { " (warm-up)" } else { "" });
        splits.push(split);
    }
    let timed = if splits.len() > 1 { &splits[1..] } else { &splits[..] };
    let mean = |f: fn(&Split) -> f64| timed.iter().map(f).sum::<f64>() / timed.len() as f64;
    println!(
        "| impl | size | batch | mini-batch | epochs | response tokens | samples/s | generate s | score s | old+ref logprobs s | optimise s | step s | iteration s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| rlhf ({}) | {size} | {} | {} | {} | {:.1} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
        args.device,
        args.batch,
        args.mini_batch,
        args.epochs,
        mean(|s| s.response_tokens),
        args.batch as f64 / mean(|s| s.total),
        mean(|s| s.generate),
        mean(|s| s.score),
        mean(|s| s.forward),
        mean(|s| s.optimise),
        mean(|s| s.step),
        mean(|s| s.total),
    );
    Ok(())
}
