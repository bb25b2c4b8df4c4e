//! What every training loop shares: the optimizer and its schedule, the statistics a step
//! reports, and resumable checkpoints.

pub mod checkpoint;
pub mod optim;
pub mod stats;

pub use checkpoint::*;
pub use stats::{Progress, Stats};
