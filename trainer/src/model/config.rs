//! GPT-2 hyperparameters, with the field names of Hugging Face's `config.json`.
//!
//! The struct reads and writes `config.json` directly. Fields rlhf does not use are kept in
//! `extra` so that an imported config is exported unchanged.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::validate::{Checked, InvalidSetting, at_least_one};

/// GPT-2 configuration (`GPT2Config` in transformers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// MLP width; `None` means `4 * n_embd`, as in transformers.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_pdrop")]
    pub resid_pdrop: f64,
    #[serde(default = "default_pdrop")]
    pub embd_pdrop: f64,
    #[serde(default = "default_pdrop")]
    pub attn_pdrop: f64,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Every other field of `config.json` (architectures, id2label, summary_*, ...), kept as is.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Dropout probability used by rlhf at train time. Not part of `config.json`: RL wants
    /// dropout off (the default), SFT may turn it on with [`Gpt2Config::with_dropout`].
    #[serde(skip)]
    pub dropout: f64,
}

fn default_activation() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_pdrop() -> f64 {
    0.1
}
fn default_true() -> bool {
    true
}

/// Named presets: the public GPT-2 family plus tiny sizes for tests and the demo.
pub const PRESETS: &[&str] = &["gpt2", "gpt2-medium", "gpt2-large", "distilgpt2", "tiny", "nano"];

impl Gpt2Config {
    /// A config with GPT-2's defaults and the given sizes.
    pub fn new(vocab_size: usize, n_positions: usize, n_embd: usize, n_layer: usize, n_head: usize) -> Self {
        Self {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            activation_function: default_activation(),
            layer_norm_epsilon: default_eps(),
            resid_pdrop: default_pdrop(),
            embd_pdrop: default_pdrop(),
            attn_pdrop: default_pdrop(),
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            reorder_and_upcast_attn: false,
            tie_word_embeddings: true,
            bos_token_id: Some(50256),
            eos_token_id: Some(50256),
            pad_token_id: None,
            extra: serde_json::Map::new(),
            dropout: 0.0,
        }
    }

    /// A named preset (see [`PRESETS`]). `tiny` and `nano` use GPT-2's vocabulary so they work
    /// with the real tokenizer.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let config = match name {
            "gpt2" => Self::new(50257, 1024, 768, 12, 12),
            "gpt2-medium" => Self::new(50257, 1024, 1024, 24, 16),
            "gpt2-large" => Self::new(50257, 1024, 1280, 36, 20),
            "distilgpt2" => Self::new(50257, 1024, 768, 6, 12),
            "tiny" => Self::new(50257, 256, 64, 2, 4),
            "nano" => Self::new(50257, 128, 32, 1, 2),
            other => {
                return Err(ConfigError::UnknownPreset { name: other.to_string(), known: PRESETS.join(", ") });
            }
        };
        Ok(config)
    }

    /// Set the train-time dropout probability (applied to embeddings, attention and residuals).
    pub fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    /// Width of the MLP's hidden layer.
    pub fn n_inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Reads `config.json` and checks that rlhf implements what it describes.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|error| ConfigError::Io { path: path.to_path_buf(), error })?;
        let parse = |error| ConfigError::Parse { path: path.to_path_buf(), error };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(parse)?;
        // Another architecture's config would fail below on some missing GPT-2 field: say what it is.
        match value.get("model_type").and_then(|t| t.as_str()) {
            Some("gpt2") | None => {}
            Some(other) => {
                return Err(ConfigError::NotGpt2 { path: path.to_path_buf(), model_type: other.to_string() });
            }
        }
        let config: Self = serde_json::from_value(value).map_err(parse)?;
        config.validate().map_err(|error| ConfigError::Unsupported { path: path.to_path_buf(), error })?;
        Ok(config)
    }

    /// Writes `config.json` for the given transformers architecture (`GPT2LMHeadModel`,
    /// `GPT2ForSequenceClassification`).
    pub fn save(&self, path: &Path, architecture: &str) -> Result<(), ConfigError> {
        let mut config = self.clone();
        config.extra.insert("architectures".into(), serde_json::json!([architecture]));
        config.extra.insert("model_type".into(), serde_json::json!("gpt2"));
        config.extra.entry("n_ctx").or_insert(serde_json::json!(self.n_positions));
        config.extra.entry("initializer_range").or_insert(serde_json::json!(0.02));
        if architecture == "GPT2ForSequenceClassification" {
            config.extra.insert("num_labels".into(), serde_json::json!(1));
            config.extra.insert("id2label".into(), serde_json::json!({"0": "LABEL_0"}));
            config.extra.insert("label2id".into(), serde_json::json!({"LABEL_0": 0}));
            // transformers finds the last real token of each row through pad_token_id.
            config.pad_token_id = config.pad_token_id.or(config.eos_token_id);
        }
        let text = serde_json::to_string_pretty(&config).expect("a config always serialises");
        std::fs::write(path, text + "\n").map_err(|error| ConfigError::Io { path: path.to_path_buf(), error })
    }

    /// The number of score labels recorded in `config.json` (1 when absent, as for reward models).
    pub fn num_labels(&self) -> usize {
        if let Some(n) = self.extra.get("num_labels").and_then(|v| v.as_u64()) {
            return n as usize;
        }
        self.extra.get("id2label").and_then(|v| v.as_object()).map(|m| m.len()).filter(|&n| n > 0).unwrap_or(1)
    }

    /// Checks the sizes and the options rlhf does not implement.
    pub fn validate(&self) -> Checked {
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            let expected = format!("a multiple of n_head ({})", self.n_head);
            return Err(InvalidSetting::new("n_embd", &expected, self.n_embd));
        }
        at_least_one("vocab_size", self.vocab_size)?;
        at_least_one("n_positions", self.n_positions)?;
        at_least_one("n_layer", self.n_layer)?;
        if !matches!(self.activation_function.as_str(), "gelu_new" | "gelu_pytorch_tanh") {
            return Err(InvalidSetting::new(
                "activation_function",
                "\"gelu_new\" (or \"gelu_pytorch_tanh\")",
                format!("{:?}", self.activation_function),
            ));
        }
        let unsupported = |field: &str, got: bool| InvalidSetting::new(field, &(!got).to_string(), got);
        if !self.scale_attn_weights {
            return Err(unsupported("scale_attn_weights", false));
        }
        if self.scale_attn_by_inverse_layer_idx {
            return Err(unsupported("scale_attn_by_inverse_layer_idx", true));
        }
        if self.reorder_and_upcast_attn {
            return Err(unsupported("reorder_and_upcast_attn", true));
        }
        if !self.tie_word_embeddings {
            return Err(InvalidSetting::new("tie_word_embeddings", "true (GPT-2 ties lm_head to wte)", false));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(InvalidSetting::new("dropout", "a number in [0, 1)", self.dropout));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_unknown_names_are_listed() {
        for name in PRESETS {
            Gpt2Config::preset(name).unwrap().validate().unwrap();
        }
        let err = Gpt2Config::preset("gpt5").unwrap_err().to_string();
        assert!(err.contains("gpt5") && err.contains("distilgpt2"), "{err}");
    }

    #[test]
    fn config_json_round_trips_and_keeps_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let mut config = Gpt2Config::preset("nano").unwrap();
        config.extra.insert("summary_type".into(), serde_json::json!("cls_index"));
        config.save(&path, "GPT2LMHeadModel").unwrap();
        let back = Gpt2Config::load(&path).unwrap();
        assert_eq!(back.n_embd, 32);
        assert_eq!(back.extra["summary_type"], "cls_index");
        assert_eq!(back.extra["architectures"][0], "GPT2LMHeadModel");
    }

    #[test]
    fn unsupported_options_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"vocab_size": 10, "n_positions": 8, "n_embd": 8, "n_layer": 1, "n_head": 2, "activation_function": "relu"}"#).unwrap();
        let err = Gpt2Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("relu"), "{err}");
    }

    #[test]
    fn another_architecture_is_named_not_a_serde_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        // A Llama config.json (abridged): none of GPT-2's field names.
        let llama = r#"{"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 32000}"#;
        std::fs::write(&path, llama).unwrap();
        let err = Gpt2Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("config.json: only GPT-2-family models are supported (got model_type llama)"), "{err}");
    }
}
