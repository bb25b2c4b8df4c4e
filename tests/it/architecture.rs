//! Dependency edges between the workspace's crates, as stated in the README.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Allowed workspace-internal dependencies of each crate (normal and build dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("rlhf-proto", &[]),
    ("rlhf-trainer", &[]),
    ("rlhf-actors", &["rlhf-proto", "rlhf-trainer"]),
    ("rlhf-rollout-worker", &["rlhf-proto", "rlhf-trainer"]),
    ("rlhf-reward-server", &["rlhf-proto", "rlhf-trainer"]),
    ("rlhf", &["rlhf-proto", "rlhf-trainer", "rlhf-actors", "rlhf-rollout-worker", "rlhf-reward-server"]),
    // Fuzz target bodies reach into every crate that reads untrusted bytes.
    ("rlhf-fuzz", &["rlhf-proto", "rlhf-trainer", "rlhf-actors", "rlhf-rollout-worker", "rlhf-reward-server"]),
];

/// External crates a crate must never depend on, with the reason.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    ("rlhf-trainer", "tokio", "the trainer is pure compute"),
    ("rlhf-trainer", "tonic", "the trainer knows nothing of the wire"),
    ("rlhf-trainer", "ractor", "the trainer knows nothing of actors"),
    ("rlhf-proto", "burn", "the wire carries token ids and bytes, not tensors"),
];

fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(super::root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| {
            let deps = package["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .map(|d| d["name"].as_str().unwrap().to_string())
                .collect();
            (package["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

#[test]
fn crates_depend_only_on_the_crates_the_readme_allows() {
    let deps = dependencies();
    let names: BTreeSet<&str> = ALLOWED.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        deps.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        names,
        "workspace members changed: update ALLOWED and the README"
    );
    for (name, allowed) in ALLOWED {
        let internal: BTreeSet<&str> = deps[*name].iter().map(String::as_str).filter(|d| names.contains(d)).collect();
        let allowed: BTreeSet<&str> = allowed.iter().copied().collect();
        assert!(
            internal.is_subset(&allowed),
            "{name} depends on {:?}, which the README does not allow",
            internal.difference(&allowed).collect::<Vec<_>>()
        );
    }
    for (name, forbidden, why) in FORBIDDEN {
        assert!(!deps[*name].contains(*forbidden), "{name} must not depend on {forbidden}: {why}");
    }
}
