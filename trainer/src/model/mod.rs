//! The model: GPT-2's hyperparameters and modules, left-padded batches, Hugging Face directories
//! in and out, and the weight format the learner broadcasts.

pub mod batch;
pub mod config;
pub mod gpt2;
pub mod hf;
pub mod wire;

#[cfg(test)]
mod parity_tests;

pub use config::Gpt2Config;
pub use gpt2::{Gpt2, Gpt2Output, Heads, KvCache};
