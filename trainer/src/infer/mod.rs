//! Running a model without training it: batched generation with a KV cache, and one forward pass
//! that scores whole sequences (log-probs, values, reward scores).

pub mod sampling;
pub mod scoring;

pub use sampling::{Generation, Generator, SamplingConfig, generate};
