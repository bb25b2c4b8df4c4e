//! Reward server: scores (prompt, response) token sequences with a reward model or a rule-based
//! scorer. Built by the distributed-runtime issue; for now this crate only fixes its place in the
//! dependency graph.
