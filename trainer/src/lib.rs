//! rlhf's compute core: GPT-2 on burn, Hugging Face interop, sampling, scoring and the PPO math.
//!
//! **Invariant:** pure compute. No tokio, no tonic, no actors: the processes around this crate
//! call it, and it never knows whether it runs in a learner, a worker or a test.
//! Everything is generic over the burn backend; concrete backends are chosen by the binary.

pub mod batch;
pub mod config;
pub mod corpus;
pub mod data;
pub mod error;
pub mod gpt2;
pub mod hf;
pub mod hub;
pub mod kernels;
pub mod optim;
pub mod parity;
pub mod ppo;
pub mod ppo_local;
pub mod ppo_update;
pub mod reward;
pub mod rundir;
pub mod sampling;
pub mod scorer;
pub mod scoring;
pub mod sft;
pub mod tokenizer;
pub mod train;
pub mod validate;
pub mod wire;

pub use config::Gpt2Config;
pub use gpt2::{Gpt2, Heads, KvCache};
pub use kernels::{AutodiffKernels, Kernels};
pub use sampling::{Generation, Generator, SamplingConfig, generate};
pub use tokenizer::Tokenizer;

#[cfg(test)]
mod learning_tests;
#[cfg(test)]
mod ppo_parity;
#[cfg(test)]
mod testutil;
