//! Parity with transformers on the checkpoints and outputs that
//! `fixtures/make_gpt2_fixtures.py` wrote (`fixtures/gpt2/`), plus import/export round trips.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};

use crate::gpt2::Heads;
use crate::testutil::max_abs_diff;
use crate::sampling::{SamplingConfig, generate};
use crate::scoring::score;
use crate::{Gpt2, Tokenizer, hf};

type B = Flex;

fn fixtures() -> PathBuf {
    crate::testutil::fixtures().join("gpt2")
}

struct Reference(crate::testutil::Reference);

impl Reference {
    fn load() -> Self {
        Self(crate::testutil::Reference::load(&fixtures().join("reference.safetensors")))
    }

    fn get(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        self.0.get(name)
    }

    /// The prompts, unpadded.
    fn prompts(&self) -> Vec<Vec<u32>> {
        let (shape, ids) = self.get("input_ids");
        let (_, mask) = self.get("attention_mask");
        (0..shape[0])
            .map(|b| {
                let row = b * shape[1]..(b + 1) * shape[1];
                ids[row.clone()].iter().zip(&mask[row]).filter(|(_, m)| **m > 0.5).map(|(t, _)| *t as u32).collect()
            })
            .collect()
    }
}

fn load(name: &str) -> Gpt2<B> {
    hf::load::<B>(&fixtures().join(name), &Default::default()).unwrap().1
}

#[test]
fn padded_batch_logits_match_transformers() {
    let reference = Reference::load();
    let model = load("lm");
    let device = Default::default();
    let (shape, ids) = reference.get("input_ids");
    let (_, mask) = reference.get("attention_mask");
    let (_, positions) = reference.get("position_ids");
    let as_int = |v: &[f64]| {
        Tensor::<B, 2, Int>::from_data(TensorData::new(v.iter().map(|&x| x as i64).collect::<Vec<_>>(), [shape[0], shape[1]]), &device)
    };
    let key_mask = as_int(&mask).equal_elem(1);
    let out = model.forward(as_int(&ids), as_int(&positions), key_mask, None);
    let logits = model.transformer.lm_logits(out.hidden);
    let logits: Vec<f64> = logits.into_data().iter::<f32>().map(f64::from).collect();
    let (_, want) = reference.get("logits");
    let vocab = want.len() / mask.len();
    // Compare the real positions only; padding positions are garbage in both implementations.
    let real: Vec<usize> = (0..mask.len()).filter(|&i| mask[i] > 0.5).flat_map(|i| i * vocab..(i + 1) * vocab).collect();
    let pick = |v: &[f64]| real.iter().map(|&i| v[i]).collect::<Vec<_>>();
    let diff = max_abs_diff(&pick(&logits), &pick(&want));
    eprintln!("parity: max |logit diff| = {diff:e}");
    assert!(diff <= 1e-4, "max |logit diff| {diff:e}");
}

#[test]
fn per_token_logprobs_match_transformers() {
    let reference = Reference::load();
    let model = load("lm");
    let prompts = reference.prompts();
    let scored = score(&model, &prompts[..3], 0, 1.0, true, &Default::default()).unwrap(); // row 3 has 1 token
    let (shape, want) = reference.get("logprobs");
    let width = shape[1];
    for (b, row) in scored.logprobs.iter().enumerate() {
        let want_row = &want[b * width + width - row.len()..(b + 1) * width];
        let got: Vec<f64> = row.iter().map(|&x| x as f64).collect();
        let diff = max_abs_diff(&got, want_row);
        eprintln!("parity: row {b} max |logprob diff| = {diff:e}");
        assert!(diff <= 1e-5, "row {b}: max |logprob diff| {diff:e}");
    }
}

#[test]
fn greedy_kv_cache_generation_matches_transformers_generate() {
    let reference = Reference::load();
    let model = load("lm");
    let (shape, want) = reference.get("greedy_ids");
    let config = SamplingConfig { greedy: true, max_new_tokens: shape[1], stop_at_eos: false, ..Default::default() };
    let out = generate(&model, &reference.prompts(), 0, &config, &Default::default()).unwrap();
    for (b, row) in out.completion_ids.iter().enumerate() {
        let want_row: Vec<u32> = want[b * shape[1]..(b + 1) * shape[1]].iter().map(|&t| t as u32).collect();
        assert_eq!(row, &want_row, "row {b}");
    }
}

#[test]
fn sequence_classification_scores_match_transformers() {
    let reference = Reference::load();
    let model = load("reward");
    assert_eq!(model.heads(), Heads::Score { num_labels: 1 });
    let scored = score(&model, &reference.prompts(), 0, 1.0, false, &Default::default()).unwrap();
    let got: Vec<f64> = scored.scores.unwrap().iter().map(|s| s[0] as f64).collect();
    let (_, want) = reference.get("scores");
    let diff = max_abs_diff(&got, &want);
    eprintln!("parity: max |score diff| = {diff:e}");
    assert!(diff <= 1e-4, "max |score diff| {diff:e}");
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
    let (_, model) = hf::load_as::<B>(&fixtures().join("lm"), Heads::Score { num_labels: 1 }, &Default::default()).unwrap();
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

#[test]
fn sampled_logprobs_equal_a_full_forward_over_prompt_and_completion() {
    // The KV-cache path and the one-pass scoring path must agree: this is what makes the PPO
    // ratio start at exactly 1 for on-policy samples.
    let reference = Reference::load();
    let model = load("lm");
    let device = Default::default();
    let prompts = reference.prompts();
    let config = SamplingConfig { max_new_tokens: 12, temperature: 0.7, top_k: 40, seed: 3, stop_at_eos: false, ..Default::default() };
    let out = generate(&model, &prompts, 0, &config, &device).unwrap();
    let full: Vec<Vec<u32>> = prompts.iter().zip(&out.completion_ids).map(|(p, c)| [p.clone(), c.clone()].concat()).collect();
    let scored = score(&model, &full, 0, 0.7, true, &device).unwrap();
    for (b, (sampled, whole)) in out.logprobs.iter().zip(&scored.logprobs).enumerate() {
        let tail = &whole[whole.len() - sampled.len()..];
        let diff = sampled.iter().zip(tail).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff <= 1e-4, "row {b}: max |diff| {diff:e}");
    }
}
