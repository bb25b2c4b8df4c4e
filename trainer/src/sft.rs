//! Supervised fine-tuning: causal-LM loss on token sequences, with AdamW, a warm-up + decay
//! schedule, global-norm clipping, gradient accumulation, length-bucketed batches and periodic
//! evaluation (loss and perplexity on a held-out split). Checkpoints go through a callback so the
//! caller decides where they live (see `train.rs`); a resumed run replays the same batch order.

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::{ElementConversion, Tensor};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::error::{CheckpointError, InputError, TrainError};
use crate::kernels::{AutodiffKernels, Kernels};
use crate::model::batch::{left_pad, next_token_rows, select_rows, validate};
use crate::model::gpt2::Gpt2;
use crate::train::Progress;
use crate::train::Stats;
use crate::train::optim::{AdamWOptimizer, NonFiniteSkips, OptimConfig, clip_grad_norm};
use crate::validate::{Checked, InvalidSetting, at_least_one, section};

/// SFT settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    pub optim: OptimConfig,
    pub epochs: usize,
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before each optimizer step.
    pub grad_accum: usize,
    /// Tokens kept per example (the first ones, end-of-text included).
    pub max_length: usize,
    /// Evaluate every this many optimizer steps (0: at the end of each epoch).
    pub eval_every: usize,
    /// Checkpoint every this many optimizer steps (0: at the end of each epoch).
    pub checkpoint_every: usize,
    pub seed: u64,
    /// Stop with an error after this many consecutive optimizer steps skipped for a non-finite
    /// loss or gradient (a skipped step changes neither the weights nor the optimizer state).
    pub max_skipped_steps: usize,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            optim: OptimConfig {
                learning_rate: 5e-5,
                warmup_steps: 10,
                schedule: crate::train::optim::Schedule::Cosine,
                ..Default::default()
            },
            epochs: 1,
            batch_size: 8,
            grad_accum: 1,
            max_length: 128,
            eval_every: 0,
            checkpoint_every: 0,
            seed: 0,
            max_skipped_steps: 10,
        }
    }
}

impl SftConfig {
    /// Checks every setting (see [`crate::validate`]).
    pub fn validate(&self) -> Checked {
        section("optim", self.optim.validate())?;
        at_least_one("epochs", self.epochs)?;
        at_least_one("batch_size", self.batch_size)?;
        at_least_one("grad_accum", self.grad_accum)?;
        if self.max_length < 2 {
            return Err(InvalidSetting::new("max_length", "at least 2 (one token predicts the next)", self.max_length));
        }
        at_least_one("max_skipped_steps", self.max_skipped_steps)
    }
}

crate::impl_validate!(SftConfig);

/// Mean negative log-likelihood of every real token after a row's first, `[1]`, and the number
/// of tokens it averages over.
pub fn lm_loss<B: Kernels>(
    model: &Gpt2<B>,
    rows: &[Vec<u32>],
    pad_id: u32,
    device: &B::Device,
) -> (Tensor<B, 1>, usize) {
    let padded = left_pad::<B>(rows, pad_id, device);
    let out = model.forward(padded.input_ids, padded.position_ids, padded.key_mask, None);
    let hidden = select_rows(out.hidden, &next_token_rows(&padded.lengths, padded.width)); // [n_tokens, n_embd]
    let targets: Vec<u32> = rows.iter().flat_map(|row| row[1..].iter().copied()).collect();
    let logprobs = model.transformer.token_logprobs(hidden, &targets, 1.0);
    (logprobs.mean().neg(), targets.len())
}

/// Batches of similar length (less padding), in a seeded random order per epoch.
pub fn length_buckets(lengths: &[usize], batch_size: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect();
    batches.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(epoch as u64)));
    batches
}

/// `eval/loss` (per token) and `eval/perplexity` on `rows`.
pub fn evaluate<B: Kernels>(
    model: &Gpt2<B>,
    rows: &[Vec<u32>],
    batch_size: usize,
    pad_id: u32,
    device: &B::Device,
) -> Stats {
    let (mut nll, mut tokens) = (0.0, 0usize);
    let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
    for batch in length_buckets(&lengths, batch_size, 0, 0) {
        let chunk: Vec<Vec<u32>> = batch.iter().map(|&i| rows[i].clone()).collect();
        let (loss, n) = lm_loss(model, &chunk, pad_id, device);
        nll += loss.into_scalar().elem::<f64>() * n as f64;
        tokens += n;
    }
    let loss = nll / tokens.max(1) as f64;
    Stats::from([("eval/loss".to_string(), loss), ("eval/perplexity".to_string(), loss.exp())])
}

/// What [`train`] hands back.
pub struct SftOutcome<B: AutodiffKernels> {
    pub model: Gpt2<B>,
    pub optim: AdamWOptimizer<Gpt2<B>, B>,
    pub evals: Vec<Stats>,
    pub total_steps: usize,
}

/// Writes a checkpoint of the model and optimizer after `(step, total)` optimizer steps.
pub type SaveCheckpoint<'a, B> =
    dyn FnMut(&Gpt2<B>, &AdamWOptimizer<Gpt2<B>, B>, usize, usize) -> Result<(), CheckpointError> + 'a;

/// Fine-tunes `model` on `train_rows` from optimizer step `start_step` (0, or a checkpoint's).
/// `checkpoint(model, optim, step, total)` is called every `checkpoint_every` steps and at the end.
#[allow(clippy::too_many_arguments)]
pub fn train<B: AutodiffKernels>(
    mut model: Gpt2<B>,
    mut optim: AdamWOptimizer<Gpt2<B>, B>,
    train_rows: &[Vec<u32>],
    eval_rows: &[Vec<u32>],
    config: &SftConfig,
    start_step: usize,
    pad_id: u32,
    device: &B::Device,
    progress: &mut dyn FnMut(Progress),
    checkpoint: &mut SaveCheckpoint<'_, B>,
) -> Result<SftOutcome<B>, TrainError> {
    if train_rows.is_empty() {
        return Err(InputError::Empty { field: "training texts" }.into());
    }
    validate("training text", train_rows, model.vocab_size(), model.n_positions()).map_err(CheckpointError::from)?;
    if !eval_rows.is_empty() {
        validate("eval text", eval_rows, model.vocab_size(), model.n_positions()).map_err(CheckpointError::from)?;
    }
    let accum = config.grad_accum.max(1);
    let lengths: Vec<usize> = train_rows.iter().map(Vec::len).collect();
    let batches_per_epoch = train_rows.len().div_ceil(config.batch_size.max(1));
    let steps_per_epoch = batches_per_epoch.div_ceil(accum);
    let total = steps_per_epoch * config.epochs;
    let mut evals = Vec::new();
    let mut step = start_step;
    let mut skips = NonFiniteSkips::new(config.max_skipped_steps);
    for epoch in 0..config.epochs {
        let batches = length_buckets(&lengths, config.batch_size, config.seed, epoch);
        for (group_index, group) in batches.chunks(accum).enumerate() {
            if epoch * steps_per_epoch + group_index < start_step {
                continue; // done before the checkpoint we resumed from
            }
            let mut accumulator = GradientsAccumulator::<Gpt2<B>>::new();
            let (mut loss_sum, mut tokens) = (0.0, 0usize);
            for batch in group {
                let rows: Vec<Vec<u32>> = batch.iter().map(|&i| train_rows[i].clone()).collect();
                let (loss, n) = lm_loss(&model, &rows, pad_id, device);
                loss_sum += loss.clone().into_scalar().elem::<f64>() * n as f64;
                tokens += n;
                let grads = GradientsParams::from_grads((loss / group.len() as f64).backward(), &model);
                accumulator.accumulate(&model, grads);
            }
            let mut grads = accumulator.grads();
            let grad_norm = clip_grad_norm(&model, &mut grads, config.optim.max_grad_norm);
            let lr = config.optim.lr_at(step, total);
            let train_loss = loss_sum / tokens.max(1) as f64;
            if skips.check("sft", step, train_loss, grad_norm, lr)? {
                model = optim.step(lr, model, grads);
            }
            step += 1;
            let mut metrics = Stats::from([
                ("train/loss".to_string(), train_loss),
                ("train/learning_rate".to_string(), lr),
                ("train/grad_norm".to_string(), grad_norm),
                ("train/tokens".to_string(), tokens as f64),
            ]);
            let end_of_epoch = step.is_multiple_of(steps_per_epoch);
            let every = |n: usize| {
                if n > 0 { step.is_multiple_of(n) || step == total } else { end_of_epoch }
            };
            if every(config.eval_every) && !eval_rows.is_empty() {
                let stats = evaluate(&model.valid(), eval_rows, config.batch_size, pad_id, device);
                metrics.extend(stats.clone());
                evals.push(stats);
            }
            progress(Progress { step, total, metrics: &metrics });
            if every(config.checkpoint_every) {
                checkpoint(&model, &optim, step, total)?;
            }
        }
    }
    Ok(SftOutcome { model, optim, evals, total_steps: total })
}
