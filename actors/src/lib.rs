//! The learner process: ractor actors (membership, prompt dispatch, experience buffer, PPO
//! learner, weight publisher) and its gRPC service. Built by the distributed-runtime issue; for now
//! this crate only fixes its place in the dependency graph.
//!
//! **Invariant:** no tensor math lives here; the PPO update is `rlhf_trainer`'s.
