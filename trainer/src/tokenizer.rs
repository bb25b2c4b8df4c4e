//! GPT-2 byte-level BPE through the `tokenizers` crate.
//!
//! Reads `tokenizer.json`, or `vocab.json` + `merges.txt`. The end-of-text id comes from the
//! files (`tokenizer_config.json`'s `eos_token`, else the `<|endoftext|>` token), never a
//! constant; padding uses it too, as is GPT-2 practice.

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, models::bpe::BPE};

use crate::error::TokenizerError;

const DEFAULT_EOS: &str = "<|endoftext|>";

/// A loaded tokenizer with its special ids.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos_token: String,
    eos_id: u32,
    pad_id: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("eos_token", &self.eos_token).field("eos_id", &self.eos_id).finish()
    }
}

/// The byte index of the first whitespace character at or after byte `from` (on a character
/// boundary), if any.
fn whitespace_at_or_after(text: &str, from: usize) -> Option<usize> {
    if from >= text.len() {
        return None;
    }
    let start = (from..text.len()).find(|&i| text.is_char_boundary(i))?;
    text[start..].char_indices().find(|(_, c)| c.is_whitespace()).map(|(i, _)| start + i)
}

impl Tokenizer {
    /// Loads from a directory (`tokenizer.json`, or `vocab.json` + `merges.txt`) or from a
    /// `tokenizer.json` file.
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let (inner, dir) = if path.is_file() {
            (from_json(path)?, path.parent().map(Path::to_path_buf).unwrap_or_default())
        } else if path.join("tokenizer.json").is_file() {
            (from_json(&path.join("tokenizer.json"))?, path.to_path_buf())
        } else if path.join("vocab.json").is_file() && path.join("merges.txt").is_file() {
            (from_vocab_merges(&path.join("vocab.json"), &path.join("merges.txt"))?, path.to_path_buf())
        } else {
            return Err(TokenizerError::NotFound { dir: path.to_path_buf() });
        };
        let eos_token = configured_eos(&dir).unwrap_or_else(|| DEFAULT_EOS.to_string());
        let eos_id = inner.token_to_id(&eos_token).ok_or_else(|| TokenizerError::NoEos { path: path.to_path_buf() })?;
        Ok(Self { inner, eos_token, eos_id, pad_id: eos_id })
    }

    /// Wraps a tokenizer built in code (e.g. trained by the demo).
    pub fn from_tokenizer(inner: tokenizers::Tokenizer, eos_token: &str) -> Result<Self, TokenizerError> {
        let eos_id =
            inner.token_to_id(eos_token).ok_or_else(|| TokenizerError::NoEos { path: PathBuf::from("<memory>") })?;
        Ok(Self { inner, eos_token: eos_token.to_string(), eos_id, pad_id: eos_id })
    }

    /// The tokenizer as `tokenizer.json` text (sent to workers that must decode).
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        self.inner.to_string(false).map_err(|e| TokenizerError::Codec { action: "serialise", message: e.to_string() })
    }

    /// A tokenizer from `tokenizer.json` text, with end-of-text id `eos_id`.
    pub fn from_json(json: &str, eos_id: u32) -> Result<Self, TokenizerError> {
        let load = |message: String| TokenizerError::Load {
            path: PathBuf::from("<tokenizer.json from the learner>"),
            message,
        };
        let inner: tokenizers::Tokenizer = json.parse().map_err(|e: tokenizers::Error| load(e.to_string()))?;
        let eos_token = inner.id_to_token(eos_id).ok_or_else(|| load(format!("no token with id {eos_id}")))?;
        Ok(Self { inner, eos_token, eos_id, pad_id: eos_id })
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Text to ids, without special tokens (GPT-2 adds none).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Codec { action: "encode", message: e.to_string() })
    }

    /// The first `max_tokens` ids of `text`, exactly as `encode(text)` would start, without
    /// tokenising all of a long text: it encodes growing prefixes of the text cut just before a
    /// whitespace character (a byte-level BPE's pre-tokens never cross one, so every token before
    /// the cut is the same as in the whole text) until one yields more than `max_tokens` ids.
    pub fn encode_prefix(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>, TokenizerError> {
        let mut budget = max_tokens.max(1) * 8;
        loop {
            let Some(cut) = whitespace_at_or_after(text, budget) else {
                let mut ids = self.encode(text)?;
                ids.truncate(max_tokens);
                return Ok(ids);
            };
            let mut ids = self.encode(&text[..cut])?;
            if ids.len() > max_tokens {
                ids.truncate(max_tokens);
                return Ok(ids);
            }
            budget = cut * 2;
        }
    }

    /// Ids to text, keeping special tokens (so an end-of-text is visible).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, false).map_err(|e| TokenizerError::Codec { action: "decode", message: e.to_string() })
    }

    /// Writes `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`, the files
    /// `transformers.AutoTokenizer` reads.
    pub fn save_hf(&self, dir: &Path) -> Result<(), TokenizerError> {
        let write_error = |path: &Path, message: String| TokenizerError::Write { path: path.to_path_buf(), message };
        let json = dir.join("tokenizer.json");
        self.inner.save(&json, false).map_err(|e| write_error(&json, e.to_string()))?;
        let eos = &self.eos_token;
        let config = serde_json::json!({
            "tokenizer_class": "GPT2TokenizerFast",
            "bos_token": eos, "eos_token": eos, "unk_token": eos, "pad_token": eos,
            "add_prefix_space": false,
            "model_max_length": 1024,
        });
        let special = serde_json::json!({"bos_token": eos, "eos_token": eos, "unk_token": eos, "pad_token": eos});
        for (name, value) in [("tokenizer_config.json", config), ("special_tokens_map.json", special)] {
            let path = dir.join(name);
            let text = serde_json::to_string_pretty(&value).expect("json values serialise");
            std::fs::write(&path, text + "\n").map_err(|e| write_error(&path, e.to_string()))?;
        }
        Ok(())
    }
}

fn from_json(path: &Path) -> Result<tokenizers::Tokenizer, TokenizerError> {
    tokenizers::Tokenizer::from_file(path)
        .map_err(|e| TokenizerError::Load { path: path.to_path_buf(), message: e.to_string() })
}

/// GPT-2's original file pair: a BPE model with a byte-level pre-tokenizer and decoder.
fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let load_error = |message: String| TokenizerError::Load { path: vocab.to_path_buf(), message };
    let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .build()
        .map_err(|e| load_error(e.to_string()))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    if tokenizer.token_to_id(DEFAULT_EOS).is_some() {
        tokenizer.add_special_tokens(&[AddedToken::from(DEFAULT_EOS, true)]);
    }
    Ok(tokenizer)
}

/// The `eos_token` named by `tokenizer_config.json` or `special_tokens_map.json`, if any. It may
/// be a string or an object with a `content` field.
fn configured_eos(dir: &Path) -> Option<String> {
    ["tokenizer_config.json", "special_tokens_map.json"].iter().find_map(|name| {
        let text = std::fs::read_to_string(dir.join(name)).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        match value.get("eos_token")? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => other.get("content")?.as_str().map(str::to_string),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assets() -> PathBuf {
        crate::testutil::assets().join("gpt2-tokenizer")
    }

    #[test]
    fn real_gpt2_tokenizer_json_matches_openai_ids() {
        let tokenizer = Tokenizer::load(&assets().join("tokenizer.json")).unwrap();
        assert_eq!(tokenizer.encode("This movie is").unwrap(), vec![1212, 3807, 318]);
        assert_eq!(tokenizer.encode("Hello world<|endoftext|>").unwrap(), vec![15496, 995, 50256]);
        assert_eq!(tokenizer.eos_id(), 50256);
        assert_eq!(tokenizer.pad_id(), 50256);
        assert_eq!(tokenizer.decode(&tokenizer.encode("naïve 🎬 café").unwrap()).unwrap(), "naïve 🎬 café");
        // A prefix of a long text is exactly the start of the whole text's ids.
        let long = "It was a  dark and stormy night; the rain fell in torrents, except at occasional intervals. "
            .repeat(200)
            + &"x".repeat(5000);
        let whole = tokenizer.encode(&long).unwrap();
        for n in [1, 7, 32, 100, 1000, whole.len(), whole.len() + 5] {
            assert_eq!(tokenizer.encode_prefix(&long, n).unwrap(), whole[..n.min(whole.len())], "first {n} ids");
        }
    }

    #[test]
    fn vocab_and_merges_give_the_same_ids_as_tokenizer_json() {
        let test = "vocab_and_merges_give_the_same_ids_as_tokenizer_json";
        let Some(full) = crate::testutil::full_assets(test) else { return };
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(full.join("gpt2-tokenizer/encoder.json"), dir.path().join("vocab.json")).unwrap();
        std::fs::copy(full.join("gpt2-tokenizer/vocab.bpe"), dir.path().join("merges.txt")).unwrap();
        let pair = Tokenizer::load(dir.path()).unwrap();
        let json = Tokenizer::load(&assets()).unwrap();
        let text = "This movie is great!<|endoftext|> Isn't it?  Spaces\n\nand lines.";
        assert_eq!(pair.encode(text).unwrap(), json.encode(text).unwrap());
        assert_eq!(pair.eos_id(), 50256);
    }

    #[test]
    fn saved_files_reload_with_the_same_ids() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = Tokenizer::load(&assets()).unwrap();
        tokenizer.save_hf(dir.path()).unwrap();
        let back = Tokenizer::load(dir.path()).unwrap();
        assert_eq!(back.encode("This movie is").unwrap(), vec![1212, 3807, 318]);
    }

    #[test]
    fn a_directory_without_tokenizer_files_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tokenizer::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()) && err.contains("tokenizer.json"), "{err}");
    }
}
