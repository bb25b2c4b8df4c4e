//! Parity with transformers on the checkpoints and outputs that
//! `fixtures/make_gpt2_fixtures.py` wrote (`fixtures/gpt2/`), on the CPU backend, plus import and
//! export round trips.

use std::path::{Path, PathBuf};

use burn::backend::Flex;

use crate::model::gpt2::Heads;
use crate::testutil::assert_passes;
use crate::{Gpt2, Tokenizer, model::hf};

type B = Flex;

fn fixtures() -> PathBuf {
    crate::testutil::fixtures().join("gpt2")
}

fn load(name: &str) -> Gpt2<B> {
    hf::load::<B>(&fixtures().join(name), &Default::default()).unwrap().1
}

#[test]
fn padded_batch_logits_match_transformers() {
    assert_passes(crate::parity::logits::<B>(&crate::testutil::fixtures(), &Default::default()).unwrap());
}

#[test]
fn per_token_logprobs_match_transformers() {
    assert_passes(crate::parity::token_logprobs::<B>(&crate::testutil::fixtures(), &Default::default()).unwrap());
}

#[test]
fn greedy_kv_cache_generation_matches_transformers_generate() {
    assert_passes(crate::parity::greedy_generation::<B>(&crate::testutil::fixtures(), &Default::default()).unwrap());
}

#[test]
fn sequence_classification_scores_match_transformers() {
    assert_passes(crate::parity::reward_scores::<B>(&crate::testutil::fixtures(), &Default::default()).unwrap());
}

#[test]
fn sampled_logprobs_equal_a_full_forward_over_prompt_and_completion() {
    // The KV-cache path and the one-pass scoring path must agree: this is what makes the PPO
    // ratio start at exactly 1 for on-policy samples.
    assert_passes(crate::parity::sampled_logprobs::<B>(&crate::testutil::fixtures(), &Default::default()).unwrap());
}

#[test]
fn a_bad_fixture_directory_is_named() {
    let err =
        crate::parity::logits::<B>(Path::new("/nonexistent/fixtures"), &Default::default()).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/fixtures/gpt2/reference.safetensors"), "{err}");
}

fn params(model: &Gpt2<B>) -> Vec<(String, Vec<f32>)> {
    use burn_store::ModuleSnapshot;
    let mut out: Vec<(String, Vec<f32>)> = model
        .collect(None, None, false)
        .into_iter()
        .map(|s| (s.full_path(), s.to_data().unwrap().iter::<f32>().collect()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn bin_and_bare_trunk_checkpoints_load_the_same_weights() {
    let lm = params(&load("lm"));
    assert_eq!(lm, params(&load("lm_bin")));
    assert_eq!(lm, params(&load("trunk")));
}

#[test]
fn export_then_import_is_bit_identical() {
    let device = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    for name in ["lm", "reward"] {
        let (config, model) = hf::load::<B>(&fixtures().join(name), &device).unwrap();
        let model = if name == "lm" { model.with_value_head(0) } else { model };
        let tokenizer = Tokenizer::load(&fixtures().join(name)).unwrap();
        let out = tmp.path().join(name);
        hf::export(&model, &config, &tokenizer, &out).unwrap();
        let (_, back) = hf::load::<B>(&out, &device).unwrap();
        assert_eq!(back.heads(), model.heads());
        assert_eq!(params(&back), params(&model), "{name}");
        // Exporting onto an existing directory is refused and leaves it alone.
        let err = hf::export(&model, &config, &tokenizer, &out).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
    }
    // Keep copies for `make_gpt2_fixtures.py --check-export` when asked to.
    if let Ok(keep) = std::env::var("RLHF_KEEP_EXPORTS") {
        for name in ["lm", "reward"] {
            copy_dir(&tmp.path().join(name), &Path::new(&keep).join(name));
        }
    }
}

#[test]
fn a_value_head_is_in_model_safetensors_where_trl_reads_it() {
    // TRL's `AutoModelForCausalLMWithValueHead` reads `v_head.*` from model.safetensors (checked
    // with TRL itself by `make_gpt2_fixtures.py --check-export`); a directory TRL wrote has no
    // value_head.safetensors, and its trained head must load, not a fresh one.
    let device = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    let (config, model) = hf::load::<B>(&fixtures().join("lm"), &device).unwrap();
    let model = model.with_value_head(7);
    let out = tmp.path().join("policy");
    hf::export(&model, &config, &Tokenizer::load(&fixtures().join("lm")).unwrap(), &out).unwrap();
    let tensors = std::fs::read(out.join(hf::SAFETENSORS_FILE)).unwrap();
    let names: Vec<String> =
        safetensors::SafeTensors::deserialize(&tensors).unwrap().names().into_iter().map(str::to_string).collect();
    assert!(names.contains(&"v_head.summary.weight".to_string()) && names.contains(&"v_head.summary.bias".to_string()));
    std::fs::remove_file(out.join(hf::VALUE_HEAD_FILE)).unwrap();
    let (_, back) = hf::load_as::<B>(&out, Heads::LmValue, &device).unwrap();
    assert_eq!(params(&back), params(&model), "the trained value head, not a fresh one");
    // `hf::load` (export, generate) sees the head in model.safetensors too.
    let (_, back) = hf::load::<B>(&out, &device).unwrap();
    assert_eq!((back.heads(), params(&back)), (Heads::LmValue, params(&model)));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_mismatched_checkpoint_names_every_bad_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("lm"), tmp.path());
    // Claim a wider MLP than the weights have.
    let config_path = tmp.path().join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["n_inner"] = serde_json::json!(64);
    config["n_layer"] = serde_json::json!(3);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = hf::load::<B>(tmp.path(), &Default::default()).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(err.contains("transformer.h.0.mlp.c_fc.weight expected [32, 64] found [32, 128]"), "{err}");
    assert!(err.contains("missing tensors [") && err.contains("transformer.h.2.ln_1.weight"), "{err}");

    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let err = hf::load::<B>(tmp.path(), &Default::default()).unwrap_err().to_string();
    assert!(err.contains("model.safetensors or pytorch_model.bin"), "{err}");
}

#[test]
fn a_reward_model_starts_from_an_lm_checkpoint() {
    let (_, model) =
        hf::load_as::<B>(&fixtures().join("lm"), Heads::Score { num_labels: 1 }, &Default::default()).unwrap();
    let trunk = |m: &Gpt2<B>| params(m).into_iter().filter(|(n, _)| n.starts_with("transformer.")).collect::<Vec<_>>();
    assert_eq!(trunk(&model), trunk(&load("lm")));
    assert!(model.score.is_some());
    // But a reward checkpoint without its score head is an error.
    let tmp = tempfile::tempdir().unwrap();
    let (config, lm) = hf::load::<B>(&fixtures().join("lm"), &Default::default()).unwrap();
    let tokenizer = Tokenizer::load(&fixtures().join("lm")).unwrap();
    hf::export(&lm, &config, &tokenizer, &tmp.path().join("x")).unwrap();
    let path = tmp.path().join("x/config.json");
    let text = std::fs::read_to_string(&path).unwrap().replace("GPT2LMHeadModel", "GPT2ForSequenceClassification");
    std::fs::write(&path, text).unwrap();
    let err = hf::load::<B>(&tmp.path().join("x"), &Default::default()).unwrap_err().to_string();
    assert!(err.contains("missing tensors [score.weight]"), "{err}");
}
