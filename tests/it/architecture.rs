//! Dependency edges between the workspace's crates, as stated in the README.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Allowed workspace-internal dependencies of each crate (normal and build dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("rlhf-proto", &[]),
    ("rlhf-secure", &[]),
    ("rlhf-trainer", &[]),
    ("rlhf-actors", &["rlhf-proto", "rlhf-secure", "rlhf-trainer"]),
    ("rlhf-rollout-worker", &["rlhf-proto", "rlhf-secure", "rlhf-trainer"]),
    ("rlhf-reward-server", &["rlhf-proto", "rlhf-secure", "rlhf-trainer"]),
    (
        "rlhf",
        &["rlhf-proto", "rlhf-secure", "rlhf-trainer", "rlhf-actors", "rlhf-rollout-worker", "rlhf-reward-server"],
    ),
    // Fuzz target bodies reach into every crate that reads untrusted bytes.
    ("rlhf-fuzz", &["rlhf-proto", "rlhf-trainer", "rlhf-actors", "rlhf-rollout-worker", "rlhf-reward-server"]),
];

/// External crates a crate must never depend on, with the reason.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    ("rlhf-trainer", "tokio", "the trainer is pure compute"),
    ("rlhf-trainer", "tonic", "the trainer knows nothing of the wire"),
    ("rlhf-trainer", "ractor", "the trainer knows nothing of actors"),
    ("rlhf-proto", "burn", "the wire carries token ids and bytes, not tensors"),
    ("rlhf-secure", "burn", "security knows nothing of models"),
    ("rlhf-secure", "ractor", "security knows nothing of actors"),
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

/// The crates whose top-level modules are checked for import cycles, by source folder.
const SOURCE_ROOTS: &[&str] =
    &["trainer/src", "secure/src", "actors/src", "rollout-worker/src", "reward-server/src", "src"];

/// Non-test Rust source under `dir`: test-only files (`tests.rs`, `*_tests.rs`, `testutil.rs`)
/// are skipped, and a file's `#[cfg(test)] mod tests { ... }` block (always last) is cut off.
fn sources(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if path.is_dir() {
            sources(&path, out);
        } else if name.ends_with(".rs") && name != "tests.rs" && !name.ends_with("_tests.rs") && name != "testutil.rs" {
            let text = std::fs::read_to_string(&path).unwrap();
            let text = match text.find("#[cfg(test)]\nmod tests {") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            out.push((path, text));
        }
    }
}

/// The top-level module a file belongs to (`model/gpt2.rs` → `model`, `lib.rs` → none).
fn top_module(root: &std::path::Path, file: &std::path::Path) -> Option<String> {
    let relative = file.strip_prefix(root).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?.trim_end_matches(".rs").to_string();
    (!matches!(first.as_str(), "lib" | "main")).then_some(first)
}

/// Edges `a → b` when a file of module `a` names `crate::b` (in a path or a `use crate::{b, ..}`).
fn module_imports(root: &std::path::Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(root, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in &files {
        let Some(from) = top_module(root, file) else { continue };
        let mut targets = BTreeSet::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    targets.insert(name);
                }
            } else {
                targets.insert(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
            }
        }
        let modules: BTreeSet<String> = files.iter().filter_map(|(f, _)| top_module(root, f)).collect();
        let entry = edges.entry(from.clone()).or_default();
        entry.extend(targets.into_iter().filter(|t| *t != from && modules.contains(t)));
    }
    edges
}

/// A cycle in `edges`, if any, as the list of modules along it.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_an_import_cycle_between_its_top_level_modules() {
    for root in SOURCE_ROOTS {
        let edges = module_imports(&super::root().join(root));
        assert!(!edges.is_empty(), "{root}: no modules found");
        if let Some(cycle) = find_cycle(&edges) {
            panic!("{root}: modules import each other in a cycle: {}", cycle.join(" → "));
        }
    }
    // The check itself finds cycles.
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&edges), Some(vec!["a".into(), "b".into(), "a".into()]));
}
