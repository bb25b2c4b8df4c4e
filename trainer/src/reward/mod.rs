//! Rewards: training a reward model on preference pairs, and the scorers that turn (query,
//! response) into one number (a reward model, a lexicon, or either negated).

pub mod scorer;
pub mod training;

pub use training::*;
