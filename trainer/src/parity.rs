//! Numerical parity with the reference implementations, as checks that run on any backend: the
//! unit tests run them on the CPU, and `rlhf parity --device cuda` on a GPU.
//!
//! The references are the fixtures that `fixtures/make_gpt2_fixtures.py` (transformers 4.46.3)
//! and `fixtures/make_trl_fixtures.py` (TRL 0.11.4) wrote into `trainer/fixtures/`: a tiny GPT-2
//! checkpoint with its logits, per-token log-probs, greedy continuations and
//! sequence-classification scores, and TRL `PPOTrainer.step()`s over one and two epochs (statistics,
//! and for two epochs the parameters' change and the KL coefficient after the update).

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::error::{CheckpointError, InputError};
use crate::infer::sampling::{SamplingConfig, generate};
use crate::infer::scoring::score;
use crate::kernels::{AutodiffKernels, Kernels};
use crate::model::gpt2::Heads;
use crate::ppo::{PpoConfig, PpoTrainer, Rollout};
use crate::{Gpt2, model::hf};

/// One comparison with a reference: the largest absolute difference and what it may be.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub max_abs_diff: f64,
    pub tolerance: f64,
}

impl Check {
    fn new(name: impl Into<String>, max_abs_diff: f64, tolerance: f64) -> Self {
        Self { name: name.into(), max_abs_diff, tolerance }
    }

    /// NaN never passes.
    pub fn passed(&self) -> bool {
        self.max_abs_diff <= self.tolerance
    }
}

/// Why a check could not run.
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error("{path}: {message}")]
    Fixture { path: PathBuf, message: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Train(#[from] crate::error::TrainError),
}

/// A safetensors file of reference values.
pub struct ReferenceFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl ReferenceFile {
    pub fn load(path: &Path) -> Result<Self, ParityError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ParityError::Fixture { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(Self { path: path.to_path_buf(), bytes })
    }

    /// A tensor as (shape, values as f64).
    pub fn get(&self, name: &str) -> Result<(Vec<usize>, Vec<f64>), ParityError> {
        let bad = |message: String| ParityError::Fixture { path: self.path.clone(), message };
        let tensors = SafeTensors::deserialize(&self.bytes).map_err(|e| bad(e.to_string()))?;
        let view = tensors.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => data.chunks(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64).collect(),
            Dtype::F64 => data.chunks(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
            Dtype::I64 => data.chunks(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64).collect(),
            other => return Err(bad(format!("{name}: unexpected dtype {other:?}"))),
        };
        Ok((view.shape().to_vec(), values))
    }

    /// The first value of a tensor (a scalar statistic).
    fn scalar(&self, name: &str) -> Result<f64, ParityError> {
        let (_, values) = self.get(name)?;
        values
            .first()
            .copied()
            .ok_or_else(|| ParityError::Fixture { path: self.path.clone(), message: format!("{name} is empty") })
    }

    /// Rows of token ids stored padded, cut to their lengths.
    fn rows(&self, ids: &str, lengths: &str) -> Result<Vec<Vec<u32>>, ParityError> {
        let (shape, ids) = self.get(ids)?;
        let (_, lengths) = self.get(lengths)?;
        Ok(lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| ids[i * shape[1]..i * shape[1] + n as usize].iter().map(|&t| t as u32).collect())
            .collect())
    }
}

/// Largest absolute difference (infinite when the lengths differ).
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| if d.is_nan() || m.is_nan() { f64::NAN } else { m.max(d) })
}

/// The GPT-2 references of `fixtures/gpt2/`: inputs, outputs and checkpoints.
struct Gpt2Fixtures {
    dir: PathBuf,
    reference: ReferenceFile,
}

impl Gpt2Fixtures {
    fn load(fixtures: &Path) -> Result<Self, ParityError> {
        let dir = fixtures.join("gpt2");
        let reference = ReferenceFile::load(&dir.join("reference.safetensors"))?;
        Ok(Self { dir, reference })
    }

    fn model<B: Kernels>(&self, name: &str, device: &B::Device) -> Result<Gpt2<B>, ParityError> {
        Ok(hf::load::<B>(&self.dir.join(name), device)?.1)
    }

    /// The prompts, unpadded.
    fn prompts(&self) -> Result<Vec<Vec<u32>>, ParityError> {
        let (shape, ids) = self.reference.get("input_ids")?;
        let (_, mask) = self.reference.get("attention_mask")?;
        Ok((0..shape[0])
            .map(|b| {
                let row = b * shape[1]..(b + 1) * shape[1];
                ids[row.clone()].iter().zip(&mask[row]).filter(|(_, m)| **m > 0.5).map(|(t, _)| *t as u32).collect()
            })
            .collect())
    }
}

/// Logits of a left-padded batch, at its real positions, against transformers.
pub fn logits<B: Kernels>(fixtures: &Path, device: &B::Device) -> Result<Check, ParityError> {
    let f = Gpt2Fixtures::load(fixtures)?;
    let model = f.model::<B>("lm", device)?;
    let (shape, ids) = f.reference.get("input_ids")?;
    let (_, mask) = f.reference.get("attention_mask")?;
    let (_, positions) = f.reference.get("position_ids")?;
    let as_int = |v: &[f64]| {
        let values: Vec<i64> = v.iter().map(|&x| x as i64).collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(values, [shape[0], shape[1]]), device)
    };
    let out = model.forward(as_int(&ids), as_int(&positions), as_int(&mask).equal_elem(1), None);
    let logits: Vec<f64> = model.transformer.lm_logits(out.hidden).into_data().iter::<f32>().map(f64::from).collect();
    let (_, want) = f.reference.get("logits")?;
    let vocab = want.len() / mask.len();
    // The real positions only; padding positions are garbage in both implementations.
    let real: Vec<usize> =
        (0..mask.len()).filter(|&i| mask[i] > 0.5).flat_map(|i| i * vocab..(i + 1) * vocab).collect();
    let pick = |v: &[f64]| real.iter().map(|&i| v[i]).collect::<Vec<_>>();
    Ok(Check::new("gpt2: padded-batch logits vs transformers", max_abs_diff(&pick(&logits), &pick(&want)), 1e-4))
}

/// Per-token log-probs of each prompt (the fused LM-head path), against transformers.
pub fn token_logprobs<B: Kernels>(fixtures: &Path, device: &B::Device) -> Result<Check, ParityError> {
    let f = Gpt2Fixtures::load(fixtures)?;
    let model = f.model::<B>("lm", device)?;
    let prompts = f.prompts()?;
    let scored = score(&model, &prompts[..3], 0, 1.0, true, device)?; // the 4th prompt has 1 token
    let (shape, want) = f.reference.get("logprobs")?;
    let width = shape[1];
    let mut worst = 0.0f64;
    for (b, row) in scored.logprobs.iter().enumerate() {
        let want_row = &want[b * width + width - row.len()..(b + 1) * width];
        let got: Vec<f64> = row.iter().map(|&x| x as f64).collect();
        worst = worst.max(max_abs_diff(&got, want_row));
    }
    Ok(Check::new("gpt2: per-token log-probs vs transformers", worst, 1e-5))
}

/// Greedy KV-cache continuations against transformers' `generate`: the number of tokens that
/// differ (none may).
pub fn greedy_generation<B: Kernels>(fixtures: &Path, device: &B::Device) -> Result<Check, ParityError> {
    let f = Gpt2Fixtures::load(fixtures)?;
    let model = f.model::<B>("lm", device)?;
    let (shape, want) = f.reference.get("greedy_ids")?;
    let config = SamplingConfig { greedy: true, max_new_tokens: shape[1], stop_at_eos: false, ..Default::default() };
    let out = generate(&model, &f.prompts()?, 0, &config, device)?;
    let got: Vec<f64> = out.completion_ids.iter().flat_map(|row| row.iter().map(|&t| t as f64)).collect();
    let differing = if got.len() == want.len() {
        got.iter().zip(&want).filter(|(a, b)| a != b).count() as f64
    } else {
        f64::INFINITY
    };
    Ok(Check::new("gpt2: greedy generation vs transformers (tokens that differ)", differing, 0.0))
}

/// Sequence-classification (reward-model) scores against transformers.
pub fn reward_scores<B: Kernels>(fixtures: &Path, device: &B::Device) -> Result<Check, ParityError> {
    let f = Gpt2Fixtures::load(fixtures)?;
    let model = f.model::<B>("reward", device)?;
    if model.heads() != (Heads::Score { num_labels: 1 }) {
        return Err(ParityError::Fixture {
            path: f.dir.join("reward"),
            message: "not a one-label reward model".into(),
        });
    }
    let scored = score(&model, &f.prompts()?, 0, 1.0, false, device)?;
    let got: Vec<f64> = scored.scores.unwrap_or_default().iter().map(|s| s[0] as f64).collect();
    let (_, want) = f.reference.get("scores")?;
    Ok(Check::new("gpt2: reward-model scores vs transformers", max_abs_diff(&got, &want), 1e-4))
}

/// The log-probs the sampler reports equal a full forward pass over prompt + completion (what
/// makes the PPO ratio start at exactly 1 for on-policy samples).
pub fn sampled_logprobs<B: Kernels>(fixtures: &Path, device: &B::Device) -> Result<Check, ParityError> {
    let f = Gpt2Fixtures::load(fixtures)?;
    let model = f.model::<B>("lm", device)?;
    let prompts = f.prompts()?;
    let config = SamplingConfig {
        max_new_tokens: 12,
        temperature: 0.7,
        top_k: 40,
        seed: 3,
        stop_at_eos: false,
        ..Default::default()
    };
    let out = generate(&model, &prompts, 0, &config, device)?;
    let full: Vec<Vec<u32>> =
        prompts.iter().zip(&out.completion_ids).map(|(p, c)| [p.clone(), c.clone()].concat()).collect();
    let scored = score(&model, &full, 0, 0.7, true, device)?;
    let mut worst = 0.0f64;
    for (sampled, whole) in out.logprobs.iter().zip(&scored.logprobs) {
        let tail = &whole[whole.len() - sampled.len()..];
        let a: Vec<f64> = sampled.iter().map(|&x| x as f64).collect();
        let b: Vec<f64> = tail.iter().map(|&x| x as f64).collect();
        worst = worst.max(max_abs_diff(&a, &b));
    }
    Ok(Check::new("gpt2: sampled log-probs vs a full forward pass", worst, 1e-4))
}

/// The statistics TRL names in its `PPOTrainer.step()` that the fixture records.
pub const STEP_STATISTICS: &[&str] = &[
    "objective/kl",
    "objective/kl_coef",
    "objective/entropy",
    "ppo/mean_non_score_reward",
    "ppo/mean_scores",
    "ppo/loss/policy",
    "ppo/loss/value",
    "ppo/loss/total",
    "ppo/policy/entropy",
    "ppo/policy/approxkl",
    "ppo/policy/policykl",
    "ppo/policy/clipfrac",
    "ppo/policy/advantages_mean",
    "ppo/returns/mean",
    "ppo/returns/var",
    "ppo/val/vpred",
    "ppo/val/error",
    "ppo/val/clipfrac",
    "ppo/val/mean",
    "ppo/val/var",
    "ppo/val/var_explained",
    "tokens/responses_len_mean",
];

/// Which TRL `PPOTrainer.step()` a fixture recorded (`make_trl_fixtures.py::model_step`): one
/// mini-batch per epoch over the same four rollouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PpoStep {
    /// `ppo_step.safetensors`, one epoch: the statistics are the first mini-batch's, before any
    /// parameter update.
    FirstMiniBatch,
    /// `ppo_step_after_update.safetensors`, two epochs: TRL averages the statistics of both, the
    /// second taken after the first optimizer step; each recorded parameter's change over the
    /// step (two Adam steps) and the KL coefficient after it are compared too.
    AfterAnUpdate,
}

/// Parameters whose change over [`PpoStep::AfterAnUpdate`] the fixture records, by checkpoint
/// name, and the file of the exported policy that holds each.
const UPDATED_PARAMETERS: &[(&str, &str)] = &[
    ("transformer.wte.weight", "model.safetensors"),
    ("transformer.h.0.attn.c_attn.weight", "model.safetensors"),
    ("transformer.h.1.mlp.c_proj.weight", "model.safetensors"),
    ("transformer.ln_f.weight", "model.safetensors"),
    ("v_head.summary.weight", "value_head.safetensors"),
    ("v_head.summary.bias", "value_head.safetensors"),
];

/// One [`PpoTrainer::step`] against TRL 0.11.4 for the same policy, reference, rollouts and
/// scores (see [`PpoStep`]). Statistics are compared relative to `max(|TRL|, 1)`; a parameter's
/// change relative to the learning rate (an Adam step moves each weight by about it). Returns
/// the checks and the trainer after its step.
pub fn ppo_step<B: AutodiffKernels>(
    fixtures: &Path,
    which: PpoStep,
    device: &B::Device,
) -> Result<(Vec<Check>, PpoTrainer<B>), ParityError> {
    let dir = fixtures.join("trl");
    let (model_config, policy) = hf::load::<B>(&dir.join("policy"), device)?;
    if policy.v_head.is_none() {
        return Err(ParityError::Fixture {
            path: dir.join("policy"),
            message: "value_head.safetensors was not loaded".into(),
        });
    }
    let (_, reference) = hf::load::<B::InnerBackend>(&dir.join("reference"), device)?;
    let (file, ppo_epochs) = match which {
        PpoStep::FirstMiniBatch => ("ppo_step.safetensors", 1),
        PpoStep::AfterAnUpdate => ("ppo_step_after_update.safetensors", 2),
    };
    let r = ReferenceFile::load(&dir.join(file))?;
    let (queries, responses) = (r.rows("queries", "query_lengths")?, r.rows("responses", "response_lengths")?);
    let (_, scores) = r.get("scores")?;
    let rollouts: Vec<Rollout> = (0..queries.len())
        .map(|i| Rollout {
            query: queries[i].clone(),
            response: responses[i].clone(),
            logprobs: vec![0.0; responses[i].len()], // recomputed, as TRL does
            score: scores[i] as f32,
        })
        .collect();
    let learning_rate = 1e-4;
    let mut config = PpoConfig { ppo_epochs, mini_batch_size: 4, ..Default::default() };
    config.optim.learning_rate = learning_rate;
    let mut trainer = PpoTrainer::<B>::new(policy, None, reference, config, 0, device)?;
    let stats = trainer.step(&rollouts, ppo_epochs)?;
    let label = match which {
        PpoStep::FirstMiniBatch => "ppo step",
        PpoStep::AfterAnUpdate => "ppo step over two epochs",
    };
    let mut checks = Vec::new();
    for &key in STEP_STATISTICS {
        let want = r.scalar(key)?;
        let got = stats.get(key).copied().unwrap_or(f64::NAN);
        checks.push(Check::new(
            format!("{label}: {key} vs TRL (relative)"),
            (got - want).abs() / want.abs().max(1.0),
            1e-4,
        ));
    }
    if which == PpoStep::AfterAnUpdate {
        let want = r.scalar("kl_coef_after")?;
        checks.push(Check::new(
            format!("{label}: kl_coef after the step vs TRL"),
            (trainer.kl.value() - want).abs(),
            1e-7,
        ));
        // The parameters' change, read back from the policy as it would be exported.
        let exported = tempfile::tempdir().map_err(|e| ParityError::Fixture {
            path: std::env::temp_dir(),
            message: format!("cannot make a directory for the updated policy: {e}"),
        })?;
        let tokenizer = crate::Tokenizer::load(&dir.join("policy"))
            .map_err(|e| ParityError::Fixture { path: dir.join("policy"), message: e.to_string() })?;
        hf::write_dir(
            &burn::module::AutodiffModule::valid(&trainer.policy),
            &model_config,
            &tokenizer,
            exported.path(),
        )?;
        for &(name, file) in UPDATED_PARAMETERS {
            let (_, before) = ReferenceFile::load(&dir.join("policy").join(file))?.get(name)?;
            let (_, after) = ReferenceFile::load(&exported.path().join(file))?.get(name)?;
            let ours: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            let (_, theirs) = r.get(&format!("delta/{name}"))?;
            let diff = max_abs_diff(&ours, &theirs) / learning_rate;
            checks.push(Check::new(format!("{label}: change of {name} vs TRL (in learning rates)"), diff, 1e-2));
        }
    }
    Ok((checks, trainer))
}

/// Every check above, in order.
pub fn all<B: AutodiffKernels>(fixtures: &Path, device: &B::Device) -> Result<Vec<Check>, ParityError> {
    let mut checks = vec![
        logits::<B::InnerBackend>(fixtures, device)?,
        token_logprobs::<B::InnerBackend>(fixtures, device)?,
        greedy_generation::<B::InnerBackend>(fixtures, device)?,
        reward_scores::<B::InnerBackend>(fixtures, device)?,
        sampled_logprobs::<B::InnerBackend>(fixtures, device)?,
    ];
    checks.extend(ppo_step::<B>(fixtures, PpoStep::FirstMiniBatch, device)?.0);
    checks.extend(ppo_step::<B>(fixtures, PpoStep::AfterAnUpdate, device)?.0);
    Ok(checks)
}
