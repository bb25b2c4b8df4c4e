//! Rollout worker: leases prompts, generates with `rlhf_trainer`'s sampler, scores on the reward
//! server and submits rollouts to the learner. Built by the distributed-runtime issue; for now this
//! crate only fixes its place in the dependency graph.
