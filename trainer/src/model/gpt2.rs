//! GPT-2 on burn, top-down in the style of nanoGPT: attention, MLP, block, trunk, heads.
//!
//! Field names follow Hugging Face's checkpoint (`wte`, `wpe`, `h`, `ln_1`, `attn.c_attn`,
//! `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`, `ln_f`, `score`), so loading a checkpoint is a
//! name map (see `hf.rs`). GPT-2's `Conv1D` weights are stored `[in, out]`, which is burn's
//! `Linear` layout, so they load without a transpose.
//!
//! Padding: batches are left-padded. Every forward takes `key_mask` (true for real tokens) and
//! `position_ids` computed from the mask ([`crate::model::batch::position_ids`]), so a padded row gives
//! the same logits at its real positions as the same row alone.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::module::linear;
use burn::tensor::{Bool, Int, Tensor, TensorData, TensorPrimitive};
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};

use crate::error::InputError;
use crate::kernels::Kernels;
use crate::model::config::Gpt2Config;

/// Filled into blocked attention scores. Finite on purpose: a fully masked row (a padding query)
/// then gets uniform weights instead of NaN, and NaN can never leak into real rows through `V`.
const MASK_VALUE: f32 = f32::MIN;

/// Key/value cache for incremental decoding: one `(k, v)` pair per layer, each
/// `[batch, n_head, past_len, head_dim]`.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(n_layer: usize) -> Self {
        Self { layers: vec![None; n_layer] }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|(k, _)| k.dims()[2]).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `x · W + b` for every position, as one `[batch * seq, d_in] × [d_in, d_out]` matrix product.
///
/// burn's `Linear::forward` on a rank-3 input broadcasts the weight over the batch, and the CPU
/// backend then runs one matrix product per row of the batch: during decoding (`seq = 1`) that
/// reads every weight matrix `batch` times. Flattening first reads it once.
///
/// `[batch, seq, d_in]` -> `[batch, seq, d_out]`
fn dense<B: Backend>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, d_in] = x.dims();
    let y = layer.forward(x.reshape([batch * seq, d_in])); // [batch * seq, d_out]
    let d_out = y.dims()[1];
    y.reshape([batch, seq, d_out])
}

/// Causal self-attention with fused query/key/value projection.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[n_embd, 3 * n_embd]`: query, key and value projections side by side.
    pub c_attn: Linear<B>,
    /// `[n_embd, n_embd]`
    pub c_proj: Linear<B>,
    attn_dropout: Dropout,
    resid_dropout: Dropout,
    n_head: usize,
}

impl<B: Backend> Attention<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, n_embd]`
    /// - `blocked`: `[batch, 1, seq, past + seq]`, true where a query may not see a key
    /// - returns `[batch, seq, n_embd]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        blocked: Tensor<B, 4, Bool>,
        cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, n_embd] = x.dims();
        let head_dim = n_embd / self.n_head;
        let qkv = dense(&self.c_attn, x); // [batch, seq, 3 * n_embd]
        let heads = |t: Tensor<B, 3>| t.reshape([batch, seq, self.n_head, head_dim]).swap_dims(1, 2);
        let q = heads(qkv.clone().narrow(2, 0, n_embd)); // [batch, n_head, seq, head_dim]
        let mut k = heads(qkv.clone().narrow(2, n_embd, n_embd));
        let mut v = heads(qkv.narrow(2, 2 * n_embd, n_embd));
        if let Some(slot) = cache {
            if let Some((past_k, past_v)) = slot.take() {
                k = Tensor::cat(vec![past_k, k], 2); // [batch, n_head, past + seq, head_dim]
                v = Tensor::cat(vec![past_v, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let total = k.dims()[2];
        let scores = q.matmul(k.transpose()) / (head_dim as f64).sqrt(); // [batch, n_head, seq, total]
        let scores = scores.mask_fill(blocked.expand([batch, self.n_head, seq, total]), MASK_VALUE);
        let weights = self.attn_dropout.forward(softmax(scores, 3));
        let y = weights.matmul(v); // [batch, n_head, seq, head_dim]
        let y = y.swap_dims(1, 2).reshape([batch, seq, n_embd]);
        self.resid_dropout.forward(dense(&self.c_proj, y))
    }
}

/// Position-wise feed-forward network with GPT-2's tanh GELU (`gelu_new`, [`Kernels::tanh_gelu`]).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[n_embd, n_inner]`
    pub c_fc: Linear<B>,
    /// `[n_inner, n_embd]`
    pub c_proj: Linear<B>,
    dropout: Dropout,
}

impl<B: Kernels> Mlp<B> {
    /// `[batch, seq, n_embd]` -> `[batch, seq, n_embd]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = dense(&self.c_fc, x); // [batch, seq, n_inner]
        let hidden = Tensor::from_primitive(TensorPrimitive::Float(B::tanh_gelu(hidden.into_primitive().tensor())));
        self.dropout.forward(dense(&self.c_proj, hidden))
    }
}

/// Pre-LayerNorm transformer block.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub ln_1: LayerNorm<B>,
    pub attn: Attention<B>,
    pub ln_2: LayerNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Kernels> Block<B> {
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        blocked: Tensor<B, 4, Bool>,
        cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    ) -> Tensor<B, 3> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x), blocked, cache);
        x.clone() + self.mlp.forward(self.ln_2.forward(x))
    }
}

/// The GPT-2 trunk (`GPT2Model` in transformers): embeddings, blocks, final LayerNorm.
#[derive(Module, Debug)]
pub struct Gpt2Model<B: Backend> {
    /// `[vocab_size, n_embd]`, also the (tied) LM head.
    pub wte: Embedding<B>,
    /// `[n_positions, n_embd]`
    pub wpe: Embedding<B>,
    pub h: Vec<Block<B>>,
    pub ln_f: LayerNorm<B>,
    drop: Dropout,
}

impl<B: Backend> Gpt2Model<B> {
    /// LM logits from hidden states, through the embedding matrix (GPT-2 ties `lm_head` to `wte`).
    ///
    /// `[batch, seq, n_embd]` -> `[batch, seq, vocab_size]`
    pub fn lm_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, n_embd] = hidden.dims();
        let flat = hidden.reshape([batch * seq, n_embd]);
        let logits = flat.matmul(self.wte.weight.val().transpose()); // [batch * seq, vocab]
        let vocab = logits.dims()[1];
        logits.reshape([batch, seq, vocab])
    }
}

impl<B: Kernels> Gpt2Model<B> {
    /// Hidden states after `ln_f`.
    ///
    /// # Shapes
    /// - `input_ids`, `position_ids`: `[batch, seq]`
    /// - `key_mask`: `[batch, past + seq]`, true for real tokens (cached ones included)
    /// - returns `[batch, seq, n_embd]`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        key_mask: Tensor<B, 2, Bool>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let total = past + seq;
        let device = input_ids.device();
        // A query at absolute position past + i sees keys 0..=past + i that are real tokens.
        let causal = Tensor::<B, 2, Bool>::tril_mask([seq, total], past as i64, &device)
            .reshape([1, 1, seq, total])
            .expand([batch, 1, seq, total]);
        let padding = key_mask.bool_not().reshape([batch, 1, 1, total]).expand([batch, 1, seq, total]);
        let blocked = causal.bool_or(padding); // [batch, 1, seq, total]

        let mut x = self.drop.forward(self.wte.forward(input_ids) + self.wpe.forward(position_ids));
        for (i, block) in self.h.iter().enumerate() {
            let slot = cache.as_mut().map(|c| &mut c.layers[i]);
            x = block.forward(x, blocked.clone(), slot);
        }
        self.ln_f.forward(x)
    }

    /// Log-probabilities of `targets` under `softmax(lm_logits(hidden) / temperature)`, computed
    /// without ever holding the vocabulary-wide logits (see [`crate::kernels`]).
    ///
    /// # Shapes
    /// - `hidden`: `[rows, n_embd]`, one row per target (pick them with
    ///   [`crate::model::batch::select_rows`]); returns `[rows]`
    pub fn token_logprobs(&self, hidden: Tensor<B, 2>, targets: &[u32], temperature: f32) -> Tensor<B, 1> {
        let weight = self.wte.weight.val().into_primitive().tensor();
        let out = B::lm_head_forward(hidden.into_primitive().tensor(), weight, targets, temperature, false);
        Tensor::from_primitive(TensorPrimitive::Float(out.logprobs))
    }

    /// [`Self::token_logprobs`] and each row's entropy (a statistic, without gradient), from one
    /// pass over the vocabulary. Returns `[rows]` and `[rows]`.
    pub fn token_logprobs_and_entropy(
        &self,
        hidden: Tensor<B, 2>,
        targets: &[u32],
        temperature: f32,
    ) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let weight = self.wte.weight.val().into_primitive().tensor();
        let out = B::lm_head_forward(hidden.into_primitive().tensor(), weight, targets, temperature, true);
        let float = |t| Tensor::from_primitive(TensorPrimitive::Float(t));
        let entropy = out.entropy.expect("every Kernels::lm_head_forward returns the entropy it is asked for");
        (float(out.logprobs), float(entropy))
    }
}

/// A linear head stored in PyTorch's `nn.Linear` layout, `weight: [n_out, n_embd]`, as
/// transformers (`score`) and TRL (`v_head.summary`) save it.
#[derive(Module, Debug)]
pub struct TorchLinear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> TorchLinear<B> {
    fn init(n_embd: usize, n_out: usize, bias: bool, init: &mut Init, device: &B::Device) -> Self {
        let weight = Param::from_tensor(init.normal([n_out, n_embd], 0.02, device));
        let bias = bias.then(|| Param::from_tensor(Tensor::zeros([n_out], device)));
        Self { weight, bias }
    }

    /// `[batch, seq, n_embd]` -> `[batch, seq, n_out]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(x, self.weight.val().transpose(), self.bias.as_ref().map(|b| b.val()))
    }
}

/// TRL's value head: `v_head.summary`, hidden -> 1 per token.
#[derive(Module, Debug)]
pub struct ValueHead<B: Backend> {
    pub summary: TorchLinear<B>,
}

/// What a GPT-2 checkpoint holds beside the trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heads {
    /// `GPT2LMHeadModel` (the LM head is tied to `wte`).
    Lm,
    /// `GPT2LMHeadModel` plus TRL's value head on the same trunk (a PPO policy).
    LmValue,
    /// `GPT2ForSequenceClassification` with `num_labels` outputs (1 for a reward model).
    Score { num_labels: usize },
}

/// A GPT-2 trunk with its optional heads: policy (LM + value), reference (LM), reward model
/// (score) or critic (score used as value).
#[derive(Module, Debug)]
pub struct Gpt2<B: Backend> {
    pub transformer: Gpt2Model<B>,
    /// TRL's value head (`v_head.summary.{weight,bias}`), present on PPO policies.
    pub v_head: Option<ValueHead<B>>,
    /// transformers' sequence-classification head (`score.weight`, no bias).
    pub score: Option<TorchLinear<B>>,
}

/// What one forward pass returns. Heads that the model lacks are `None`.
pub struct Gpt2Output<B: Backend> {
    /// `[batch, seq, n_embd]`: the trunk's output, input to the LM head
    /// ([`Gpt2Model::lm_logits`], [`Gpt2Model::token_logprobs`]).
    pub hidden: Tensor<B, 3>,
    /// `[batch, seq]`, when the model has a value head.
    pub values: Option<Tensor<B, 2>>,
    /// `[batch, seq, num_labels]`, when the model has a score head.
    pub scores: Option<Tensor<B, 3>>,
}

impl<B: Backend> Gpt2Output<B> {
    /// `[batch, seq]`: per-token values from the value head, or from a score head read at every
    /// position (a separate critic).
    pub fn token_values(&self) -> Result<Tensor<B, 2>, InputError> {
        if let Some(values) = &self.values {
            return Ok(values.clone());
        }
        let scores = self.scores.clone().ok_or(InputError::MissingHead { head: "value or score" })?;
        let [batch, seq, _] = scores.dims();
        Ok(scores.narrow(2, 0, 1).reshape([batch, seq]))
    }
}

/// Where initial weights come from: a seeded host RNG (the same weights on every backend and in
/// every process), or zeros for a model whose weights are about to be loaded.
#[allow(clippy::large_enum_variant)] // one short-lived value per model initialisation
pub enum Init {
    Seeded(StdRng),
    Zeros,
}

impl Init {
    pub fn seeded(seed: u64) -> Self {
        Self::Seeded(StdRng::seed_from_u64(seed))
    }

    /// A `[d0, d1]` tensor of N(0, std²) draws (zeros for [`Init::Zeros`]).
    fn normal<B: Backend>(&mut self, shape: [usize; 2], std: f64, device: &B::Device) -> Tensor<B, 2> {
        match self {
            Self::Zeros => Tensor::zeros(shape, device),
            Self::Seeded(rng) => {
                let normal = Normal::new(0.0f32, std as f32).expect("a positive std");
                let values: Vec<f32> = (0..shape[0] * shape[1]).map(|_| normal.sample(rng)).collect();
                Tensor::from_data(TensorData::new(values, shape), device)
            }
        }
    }
}

impl Gpt2Config {
    /// A randomly initialised model with GPT-2's initialisation (normal 0.02; residual
    /// projections scaled by 1/sqrt(2 n_layer); LayerNorm 1/0; biases 0), seeded with 0.
    pub fn init<B: Backend>(&self, heads: Heads, device: &B::Device) -> Gpt2<B> {
        self.init_with(heads, &mut Init::seeded(0), device)
    }

    /// [`Gpt2Config::init`] with the weights drawn from `init`.
    pub fn init_with<B: Backend>(&self, heads: Heads, init: &mut Init, device: &B::Device) -> Gpt2<B> {
        let proj_std = 0.02 / (2.0 * self.n_layer as f64).sqrt();
        let mut lin = |d_in: usize, d_out: usize, std: f64| Linear {
            weight: Param::from_tensor(init.normal([d_in, d_out], std, device)),
            bias: Some(Param::from_tensor(Tensor::zeros([d_out], device))),
        };
        let ln = || LayerNormConfig::new(self.n_embd).with_epsilon(self.layer_norm_epsilon).init(device);
        let drop = || DropoutConfig::new(self.dropout).init();
        let h = (0..self.n_layer)
            .map(|_| Block {
                ln_1: ln(),
                attn: Attention {
                    c_attn: lin(self.n_embd, 3 * self.n_embd, 0.02),
                    c_proj: lin(self.n_embd, self.n_embd, proj_std),
                    attn_dropout: drop(),
                    resid_dropout: drop(),
                    n_head: self.n_head,
                },
                ln_2: ln(),
                mlp: Mlp {
                    c_fc: lin(self.n_embd, self.n_inner(), 0.02),
                    c_proj: lin(self.n_inner(), self.n_embd, proj_std),
                    dropout: drop(),
                },
            })
            .collect();
        let mut embedding =
            |n: usize| Embedding { weight: Param::from_tensor(init.normal([n, self.n_embd], 0.02, device)) };
        let transformer = Gpt2Model {
            wte: embedding(self.vocab_size),
            wpe: embedding(self.n_positions),
            h,
            ln_f: ln(),
            drop: drop(),
        };
        let v_head = matches!(heads, Heads::LmValue)
            .then(|| ValueHead { summary: TorchLinear::init(self.n_embd, 1, true, init, device) });
        let score = match heads {
            Heads::Score { num_labels } => Some(TorchLinear::init(self.n_embd, num_labels, false, init, device)),
            _ => None,
        };
        Gpt2 { transformer, v_head, score }
    }
}

impl<B: Backend> Gpt2<B> {
    /// Which heads this model carries.
    pub fn heads(&self) -> Heads {
        match (&self.score, &self.v_head) {
            (Some(score), _) => Heads::Score { num_labels: score.weight.dims()[0] },
            (None, Some(_)) => Heads::LmValue,
            (None, None) => Heads::Lm,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.transformer.wte.weight.dims()[0]
    }

    pub fn n_positions(&self) -> usize {
        self.transformer.wpe.weight.dims()[0]
    }

    /// Adds a freshly initialised value head (a policy made from an LM checkpoint).
    pub fn with_value_head(mut self, seed: u64) -> Self {
        let device = self.transformer.wte.weight.device();
        let n_embd = self.transformer.wte.weight.dims()[1];
        self.v_head = Some(ValueHead { summary: TorchLinear::init(n_embd, 1, true, &mut Init::seeded(seed), &device) });
        self
    }

    /// Replaces the score head with a freshly initialised one (a reward model or critic made
    /// from an LM checkpoint).
    pub fn with_score_head(mut self, num_labels: usize, seed: u64) -> Self {
        let device = self.transformer.wte.weight.device();
        let n_embd = self.transformer.wte.weight.dims()[1];
        self.score = Some(TorchLinear::init(n_embd, num_labels, false, &mut Init::seeded(seed), &device));
        self
    }
}

impl<B: Kernels> Gpt2<B> {
    /// One forward pass through the trunk and the value and score heads present. The LM head is
    /// applied separately, only where it is needed: logits at chosen positions
    /// ([`Gpt2Model::lm_logits`]) or log-probs of chosen tokens ([`Gpt2Model::token_logprobs`]).
    ///
    /// # Shapes
    /// - `input_ids`, `position_ids`: `[batch, seq]`; `key_mask`: `[batch, past + seq]`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        key_mask: Tensor<B, 2, Bool>,
        cache: Option<&mut KvCache<B>>,
    ) -> Gpt2Output<B> {
        let hidden = self.transformer.forward(input_ids, position_ids, key_mask, cache);
        let values = self.v_head.as_ref().map(|head| {
            let [batch, seq, _] = hidden.dims();
            head.summary.forward(hidden.clone()).reshape([batch, seq]) // [batch, seq]
        });
        let scores = self.score.as_ref().map(|head| head.forward(hidden.clone()));
        Gpt2Output { hidden, values, scores }
    }
}
