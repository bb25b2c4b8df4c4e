//! Reward-model training: GPT-2 with a scalar score head on preference pairs, Bradley–Terry loss.
//!
//! `loss = −log σ(r_chosen − r_rejected − margin) + c · mean((r_chosen + r_rejected)²)`, the second
//! term being TRL's `center_rewards_coefficient`. Scores are read where transformers'
//! `GPT2ForSequenceClassification` reads them ([`crate::infer::scoring::score_index`]).
//!
//! After training, [`normalize`] can give the rewards mean 0 and std 1 on a reference set (N+ /
//! Stiennon et al.). GPT-2's score head has no bias, so the bias is folded exactly into `ln_f.beta`
//! along the score direction: the directory still loads in transformers unchanged.

use crate::kernels::{AutodiffKernels, Kernels};
use crate::validate::{Checked, InvalidSetting, at_least_one, finite_at_least, section};
use burn::module::{AutodiffModule, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::activation::log_sigmoid;
use burn::tensor::{ElementConversion, Tensor};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::data::PreferencePair;
use crate::error::{InputError, TokenizerError, TrainError};
use crate::infer::scoring::{gather_scores, score_index};
use crate::model::batch::{left_pad, validate};
use crate::model::gpt2::Gpt2;
use crate::tokenizer::Tokenizer;
use crate::train::Progress;
use crate::train::Stats;
use crate::train::optim::{NonFiniteSkips, OptimConfig, clip_grad_norm};

/// Reward-model training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    pub optim: OptimConfig,
    pub epochs: usize,
    pub batch_size: usize,
    /// Tokens kept of prompt + response (the first ones).
    pub max_length: usize,
    /// Subtracted inside the sigmoid: the chosen reward must win by this much.
    pub margin: f64,
    /// TRL's `center_rewards_coefficient`: pulls rewards towards 0 (0: off).
    pub center_rewards_coefficient: f64,
    /// Evaluate every this many optimizer steps (0: at the end of each epoch).
    pub eval_every: usize,
    pub seed: u64,
    /// Stop with an error after this many consecutive optimizer steps skipped for a non-finite
    /// loss or gradient (a skipped step changes neither the weights nor the optimizer state).
    pub max_skipped_steps: usize,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            optim: OptimConfig { learning_rate: 5e-5, ..Default::default() },
            epochs: 1,
            batch_size: 8,
            max_length: 256,
            margin: 0.0,
            center_rewards_coefficient: 0.0,
            eval_every: 0,
            seed: 0,
            max_skipped_steps: 10,
        }
    }
}

impl RewardConfig {
    /// Checks every setting (see [`crate::validate`]).
    pub fn validate(&self) -> Checked {
        section("optim", self.optim.validate())?;
        at_least_one("epochs", self.epochs)?;
        at_least_one("batch_size", self.batch_size)?;
        if self.max_length < 2 {
            return Err(InvalidSetting::new("max_length", "at least 2", self.max_length));
        }
        finite_at_least("margin", self.margin, 0.0)?;
        finite_at_least("center_rewards_coefficient", self.center_rewards_coefficient, 0.0)?;
        at_least_one("max_skipped_steps", self.max_skipped_steps)
    }
}

crate::impl_validate!(RewardConfig);

/// A pair as token ids: prompt + chosen, prompt + rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct PairIds {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

/// Tokenizes pairs to at most `max_length` tokens each side. A text that is too long loses the
/// start of its prompt, so the response (what the pair is about) stays whole; a response longer
/// than `max_length` on its own keeps its first `max_length` tokens and no prompt (keeping the
/// prompt's start instead would make chosen and rejected the same text); without a prompt, the
/// first `max_length` tokens are kept.
pub fn tokenize_pairs(
    pairs: &[PreferencePair],
    tokenizer: &Tokenizer,
    max_length: usize,
) -> Result<Vec<PairIds>, TokenizerError> {
    let max_length = max_length.max(1);
    let encode = |prompt: &str, text: &str| -> Result<Vec<u32>, TokenizerError> {
        let mut ids = tokenizer.encode(&format!("{prompt}{text}"))?;
        if ids.len() > max_length && !prompt.is_empty() {
            let response = tokenizer.encode(text)?;
            let prompt_ids = tokenizer.encode(prompt)?;
            let keep = max_length.saturating_sub(response.len()).min(prompt_ids.len());
            ids = [&prompt_ids[prompt_ids.len() - keep..], response.as_slice()].concat();
        }
        ids.truncate(max_length);
        if ids.is_empty() {
            ids.push(tokenizer.eos_id());
        }
        Ok(ids)
    };
    pairs
        .iter()
        .map(|p| Ok(PairIds { chosen: encode(&p.prompt, &p.chosen)?, rejected: encode(&p.prompt, &p.rejected)? }))
        .collect()
}

/// Scores of a batch of sequences. `[batch]`
fn sequence_scores<B: Kernels>(model: &Gpt2<B>, rows: &[Vec<u32>], pad_id: u32, device: &B::Device) -> Tensor<B, 1> {
    let padded = left_pad::<B>(rows, pad_id, device);
    let out = model.forward(padded.input_ids, padded.position_ids, padded.key_mask, None);
    let scores = out.scores.expect("a reward model has a score head");
    let picked = gather_scores(scores, &score_index(rows, pad_id, padded.width), device); // [batch, n_labels]
    picked.narrow(1, 0, 1).reshape([rows.len()])
}

/// Bradley–Terry loss and its parts for `pairs`. Returns `(loss [1], chosen [n], rejected [n])`.
fn pair_loss<B: Kernels>(
    model: &Gpt2<B>,
    pairs: &[&PairIds],
    config: &RewardConfig,
    pad_id: u32,
    device: &B::Device,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
    let n = pairs.len();
    let rows: Vec<Vec<u32>> =
        pairs.iter().map(|p| p.chosen.clone()).chain(pairs.iter().map(|p| p.rejected.clone())).collect();
    let scores = sequence_scores(model, &rows, pad_id, device); // [2n]: chosen, then rejected
    let chosen = scores.clone().narrow(0, 0, n);
    let rejected = scores.narrow(0, n, n);
    let mut loss = log_sigmoid(chosen.clone() - rejected.clone() - config.margin).mean().neg();
    if config.center_rewards_coefficient != 0.0 {
        loss = loss + (chosen.clone() + rejected.clone()).powi_scalar(2).mean() * config.center_rewards_coefficient;
    }
    (loss, chosen, rejected)
}

/// Evaluation metrics on `pairs`: `eval/loss`, `eval/accuracy` (chosen scored higher),
/// `eval/margin` (mean r_chosen − r_rejected), `eval/reward_mean`, `eval/reward_std`.
pub fn evaluate<B: Kernels>(
    model: &Gpt2<B>,
    pairs: &[PairIds],
    config: &RewardConfig,
    pad_id: u32,
    device: &B::Device,
) -> Stats {
    let (mut loss_sum, mut chosen_all, mut rejected_all) = (0.0, Vec::new(), Vec::new());
    let refs: Vec<&PairIds> = pairs.iter().collect();
    for chunk in refs.chunks(config.batch_size.max(1)) {
        let (loss, chosen, rejected) = pair_loss(model, chunk, config, pad_id, device);
        loss_sum += loss.into_scalar().elem::<f64>() * chunk.len() as f64;
        chosen_all.extend(chosen.into_data().iter::<f32>().map(f64::from));
        rejected_all.extend(rejected.into_data().iter::<f32>().map(f64::from));
    }
    let n = pairs.len().max(1) as f64;
    let wins = chosen_all.iter().zip(&rejected_all).filter(|(c, r)| c > r).count() as f64;
    let margin = chosen_all.iter().zip(&rejected_all).map(|(c, r)| c - r).sum::<f64>() / n;
    let all: Vec<f64> = chosen_all.iter().chain(&rejected_all).copied().collect();
    let mean = all.iter().sum::<f64>() / all.len().max(1) as f64;
    let std = (all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (all.len().max(2) - 1) as f64).sqrt();
    Stats::from([
        ("eval/loss".to_string(), loss_sum / n),
        ("eval/accuracy".to_string(), wins / n),
        ("eval/margin".to_string(), margin),
        ("eval/reward_mean".to_string(), mean),
        ("eval/reward_std".to_string(), std),
    ])
}

/// Trains `model` (which must have a score head) on `train`, evaluating on `eval`. Returns the
/// trained model and every evaluation.
pub fn train<B: AutodiffKernels>(
    mut model: Gpt2<B>,
    train: &[PairIds],
    eval: &[PairIds],
    config: &RewardConfig,
    pad_id: u32,
    device: &B::Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Gpt2<B>, Vec<Stats>), TrainError> {
    if model.score.is_none() {
        return Err(InputError::Invalid {
            field: "model",
            expected: "a score head (a reward model)",
            got: "an LM".into(),
        }
        .into());
    }
    for (field, set) in [("train pairs", train), ("eval pairs", eval)] {
        let rows: Vec<Vec<u32>> = set.iter().flat_map(|p| [p.chosen.clone(), p.rejected.clone()]).collect();
        if !rows.is_empty() {
            validate(field, &rows, model.vocab_size(), model.n_positions())?;
        }
    }
    if train.is_empty() {
        return Err(InputError::Empty { field: "train pairs" }.into());
    }
    let batch_size = config.batch_size.max(1);
    let steps_per_epoch = train.len().div_ceil(batch_size);
    let total = steps_per_epoch * config.epochs;
    let mut optim = config.optim.adamw::<B, Gpt2<B>>();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut evals = Vec::new();
    let mut step = 0;
    let mut skips = NonFiniteSkips::new(config.max_skipped_steps);
    for _ in 0..config.epochs {
        let mut order: Vec<&PairIds> = train.iter().collect();
        order.shuffle(&mut rng);
        for chunk in order.chunks(batch_size) {
            let (loss, chosen, rejected) = pair_loss(&model, chunk, config, pad_id, device);
            let loss_value = loss.clone().into_scalar().elem::<f64>();
            let accuracy = chosen.clone().greater(rejected).float().mean().into_scalar().elem::<f64>();
            let lr = config.optim.lr_at(step, total);
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            let grad_norm = clip_grad_norm(&model, &mut grads, config.optim.max_grad_norm);
            if skips.check("reward model", step, loss_value, grad_norm, lr)? {
                model = optim.step(lr, model, grads);
            }
            step += 1;
            let mut metrics = Stats::from([
                ("train/loss".to_string(), loss_value),
                ("train/accuracy".to_string(), accuracy),
                ("train/learning_rate".to_string(), lr),
            ]);
            let end_of_epoch = step % steps_per_epoch == 0;
            let due = if config.eval_every > 0 { step % config.eval_every == 0 || step == total } else { end_of_epoch };
            if due && !eval.is_empty() {
                let stats = evaluate(&model.valid(), eval, config, pad_id, device);
                metrics.extend(stats.clone());
                evals.push(stats);
            }
            progress(Progress { step, total, metrics: &metrics });
        }
    }
    Ok((model, evals))
}

/// Rescales the score head so that `rows` score with mean 0 and std 1. Returns `(mean, std)`
/// before the change.
pub fn normalize<B: Kernels>(
    model: &mut Gpt2<B>,
    rows: &[Vec<u32>],
    pad_id: u32,
    batch_size: usize,
    device: &B::Device,
) -> (f64, f64) {
    let mut scores = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch_size.max(1)) {
        scores.extend(sequence_scores(model, chunk, pad_id, device).into_data().iter::<f32>().map(f64::from));
    }
    let n = scores.len().max(2) as f64;
    let mean = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
    let std = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt().max(1e-6);
    // new score = gain · w·h + bias, with gain = 1/std and bias = −mean/std.
    // w' = gain · w; the bias comes from shifting ln_f.beta by δ = bias · w / (gain · |w|²),
    // so that w'·δ = bias. Only the first label is normalised.
    let score = model.score.as_mut().expect("a reward model has a score head");
    let w = score.weight.val(); // [n_labels, n_embd]
    let w0 = w.clone().narrow(0, 0, 1); // [1, n_embd]
    let gain = 1.0 / std;
    let bias = -mean / std;
    let norm_sq = w0.clone().powi_scalar(2).sum().into_scalar().elem::<f64>();
    let delta = w0.clone().reshape([w0.dims()[1]]) * (bias / (gain * norm_sq));
    let n_labels = w.dims()[0];
    let scaled = if n_labels == 1 { w * gain } else { Tensor::cat(vec![w0 * gain, w.narrow(0, 1, n_labels - 1)], 0) };
    score.weight = Param::from_tensor(scaled);
    let ln_f = &mut model.transformer.ln_f;
    let beta = ln_f.beta.as_ref().map(|b| b.val()).unwrap_or_else(|| delta.zeros_like());
    ln_f.beta = Some(Param::from_tensor(beta + delta));
    (mean, std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_pairs_lose_the_start_of_their_prompt_not_their_response() {
        let tokenizer = Tokenizer::load(&crate::testutil::assets().join("gpt2-tokenizer")).unwrap();
        let pair = |prompt: &str| PreferencePair {
            prompt: prompt.into(),
            chosen: " a fine short summary".into(),
            rejected: " bad".into(),
        };
        let long = pair("POST: a very long post that goes on and on about nothing in particular at all.\nTL;DR:");
        let ids = &tokenize_pairs(std::slice::from_ref(&long), &tokenizer, 12).unwrap()[0];
        assert_eq!(ids.chosen.len(), 12);
        assert_eq!(tokenizer.decode(&ids.chosen).unwrap(), " at all.\nTL;DR: a fine short summary");
        assert!(tokenizer.decode(&ids.rejected).unwrap().ends_with("TL;DR: bad"));
        // What fits is encoded in one piece; without a prompt the first tokens are kept.
        let short = &tokenize_pairs(&[pair("Q:")], &tokenizer, 64).unwrap()[0];
        assert_eq!(short.chosen, tokenizer.encode("Q: a fine short summary").unwrap());
        let review = PreferencePair { prompt: String::new(), chosen: long.prompt.clone(), rejected: "x".into() };
        let cut = &tokenize_pairs(&[review], &tokenizer, 5).unwrap()[0];
        assert_eq!(cut.chosen, tokenizer.encode(&long.prompt).unwrap()[..5]);
        // A response too long on its own keeps its start, so two long responses stay apart.
        let ids = &tokenize_pairs(&[pair("Q:")], &tokenizer, 3).unwrap()[0];
        assert_eq!(tokenizer.decode(&ids.chosen).unwrap(), " a fine short");
        assert_eq!(tokenizer.decode(&ids.rejected).unwrap(), "Q: bad");
    }

    #[test]
    fn margin_and_centring_change_the_loss_by_their_terms() {
        use burn::backend::Flex;
        let device = Default::default();
        let model: Gpt2<Flex> = crate::Gpt2Config::new(32, 16, 16, 1, 2).init_with(
            crate::Heads::Score { num_labels: 1 },
            &mut crate::model::gpt2::Init::seeded(3),
            &device,
        );
        let pairs = [
            PairIds { chosen: vec![1, 2, 3], rejected: vec![1, 4] },
            PairIds { chosen: vec![5], rejected: vec![6, 7] },
        ];
        let refs: Vec<&PairIds> = pairs.iter().collect();
        let loss = |margin, center_rewards_coefficient| {
            let config = RewardConfig { margin, center_rewards_coefficient, ..Default::default() };
            let (loss, chosen, rejected) = pair_loss(&model, &refs, &config, 0, &device);
            let values = |t: Tensor<Flex, 1>| t.into_data().iter::<f32>().map(f64::from).collect::<Vec<_>>();
            (values(loss)[0], values(chosen), values(rejected))
        };
        let (plain, chosen, rejected) = loss(0.0, 0.0);
        // −log σ(d − m) grows with the margin m.
        let with_margin = loss(1.0, 0.0).0;
        let expected: f64 =
            chosen.iter().zip(&rejected).map(|(c, r)| -(1.0 / (1.0 + (-(c - r - 1.0)).exp())).ln()).sum::<f64>() / 2.0;
        assert!(
            with_margin > plain && (with_margin - expected).abs() < 1e-5,
            "{plain} -> {with_margin}, expected {expected}"
        );
        // Centring adds c · mean((r_chosen + r_rejected)²).
        let centred = loss(0.0, 0.5).0;
        let term = 0.5 * chosen.iter().zip(&rejected).map(|(c, r)| (c + r).powi(2)).sum::<f64>() / 2.0;
        assert!((centred - plain - term).abs() < 1e-5, "{plain} + {term} != {centred}");
    }
}
