//! Typed errors, one enum per boundary. Messages are lowercase and name the file or field.
//!
//! A wrapped error is a typed field (named `error`) whose text is part of the message, and not
//! also the `source()`: `anyhow`'s `{:#}` prints the source chain after the message, which would
//! print it twice.

use std::path::PathBuf;

/// Reading or writing `config.json`, or choosing a preset.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot access {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path} is not a valid GPT-2 config.json: {error}")]
    Parse { path: PathBuf, error: serde_json::Error },
    #[error("{path}: {error}")]
    Unsupported { path: PathBuf, error: crate::validate::InvalidSetting },
    #[error("{path}: only GPT-2-family models are supported (got model_type {model_type})")]
    NotGpt2 { path: PathBuf, model_type: String },
    #[error("unknown model preset {name:?} (known: {known})")]
    UnknownPreset { name: String, known: String },
}

/// Loading or exporting a model directory.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{dir} holds no weights: expected model.safetensors or pytorch_model.bin")]
    NoWeights { dir: PathBuf },
    #[error("cannot read weights from {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{path} does not match the config: {}", describe_mismatch(missing, unexpected, misshaped))]
    Mismatch { path: PathBuf, missing: Vec<String>, unexpected: Vec<String>, misshaped: Vec<String> },
    #[error("refusing to write {path}: tensors [{}] hold NaN or infinite values", tensors.join(", "))]
    NonFinite { path: PathBuf, tensors: Vec<String> },
    #[error("{path} is a {found} checkpoint but a {expected} is needed")]
    WrongKind { path: PathBuf, expected: String, found: String },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Input(#[from] InputError),
}

fn describe_mismatch(missing: &[String], unexpected: &[String], misshaped: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing tensors [{}]", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected tensors [{}]", unexpected.join(", ")));
    }
    if !misshaped.is_empty() {
        parts.push(format!("mis-shaped tensors [{}]", misshaped.join("; ")));
    }
    parts.join("; ")
}

/// Loading or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("no tokenizer in {dir}: expected tokenizer.json, or vocab.json + merges.txt")]
    NotFound { dir: PathBuf },
    #[error("cannot load tokenizer from {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error(
        "tokenizer from {path} has no end-of-text token: set eos_token in tokenizer_config.json or add <|endoftext|>"
    )]
    NoEos { path: PathBuf },
    #[error("cannot {action} with the tokenizer: {message}")]
    Codec { action: &'static str, message: String },
    #[error("cannot write tokenizer files to {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// Resolving a remote model name.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "{name:?} is not a local path and the Hugging Face hub cannot be reached ({message}); \
         download it elsewhere and pass the local path instead (a model directory with config.json, \
         model.safetensors and tokenizer.json, or a data file)"
    )]
    Unreachable { name: String, message: String },
    #[error("{path}: no such file or directory")]
    NoSuchDir { path: PathBuf },
    #[error(
        "{name:?} is not a local directory, and this build has no hub support (feature `hub`); pass a model directory"
    )]
    Disabled { name: String },
}

/// A training loop that cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "{skipped} optimizer steps in a row had a non-finite loss or gradient (the last at step {step}): stopping \
         (max_skipped_steps). Skipped steps changed nothing, and checkpoints already written are intact; \
         lower the learning rate or check the data"
    )]
    Diverged { step: usize, skipped: usize },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Input(#[from] InputError),
}

/// Bad input to generation or scoring.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("the model has no {head} head")]
    MissingHead { head: &'static str },
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("token id {id} in {field} is outside the vocabulary (size {vocab_size})")]
    TokenOutOfRange { field: &'static str, id: u32, vocab_size: usize },
    #[error("{field}: {len} tokens exceed the model's n_positions ({n_positions})")]
    TooLong { field: &'static str, len: usize, n_positions: usize },
    #[error("{field} must be {expected}, got {got}")]
    Invalid { field: &'static str, expected: &'static str, got: String },
    #[error(
        "max_new_tokens ({max_new_tokens}) leaves no room for a prompt in the model's context of {n_positions} positions"
    )]
    NoRoomForPrompt { max_new_tokens: usize, n_positions: usize },
    #[error(
        "a prompt of {len} tokens plus max_new_tokens {max_new_tokens} exceeds the model's context of {n_positions} positions"
    )]
    PromptTooLong { len: usize, max_new_tokens: usize, n_positions: usize },
    #[error(transparent)]
    Setting(#[from] crate::validate::InvalidSetting),
}
