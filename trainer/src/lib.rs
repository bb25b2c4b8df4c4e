//! rlhf's compute core: GPT-2 on burn, Hugging Face interop, sampling, scoring and the RLHF math.
//!
//! **Invariant:** pure compute. No tokio, no tonic, no actors: the processes around this crate
//! call it, and it never knows whether it runs in a learner, a worker or a test.
//! Everything is generic over the burn backend; concrete backends are chosen by the binary.
//!
//! The folders name the architecture, bottom up:
//! - [`kernels`]: fused CPU kernels and their autodiff nodes (the LM head, sampling, AdamW);
//! - [`model`]: GPT-2, its batches, Hugging Face directories, the weight wire format;
//! - [`infer`]: generation and scoring, no gradients;
//! - [`data`]: datasets in every format, preference pairs, RL prompts, the demo corpus;
//! - [`train`]: optimizer, step statistics, checkpoints;
//! - [`sft`], [`reward`], [`ppo`]: the three training stages;
//! - [`parity`]: the checks against transformers and TRL fixtures (`rlhf parity`).

pub mod data;
pub mod error;
pub mod hub;
pub mod infer;
pub mod kernels;
pub mod model;
pub mod parity;
pub mod ppo;
pub mod reward;
pub mod rundir;
pub mod sft;
pub mod tokenizer;
pub mod train;
pub mod validate;

pub use infer::{Generation, Generator, SamplingConfig, generate};
pub use kernels::{AutodiffKernels, Kernels};
pub use model::{Gpt2, Gpt2Config, Heads, KvCache};
pub use tokenizer::Tokenizer;

#[cfg(test)]
mod learning_tests;
#[cfg(test)]
mod testutil;
