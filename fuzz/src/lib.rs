//! Fuzz target bodies: each takes arbitrary bytes, feeds them to code that reads untrusted input,
//! and must return without panicking (an `Err` is the right answer to garbage). libFuzzer drives
//! them through `fuzz/libfuzzer` (`cargo +nightly fuzz run`, see `fuzz/README.md`); the CI smoke
//! test (`fuzz/tests/smoke.rs`) runs each over its seeds and a fixed set of mutations of them.
//!
//! | target        | what it reads                                                          |
//! |---------------|------------------------------------------------------------------------|
//! | `messages`    | every learner and reward message, decoded, then the receiver's checks   |
//! | `weights`     | a stream of weight chunks (offsets, CRC, header, dtype) into a model    |
//! | `safetensors` | a `model.safetensors` file, through the checkpoint loader               |
//! | `datasets`    | a dataset file in each format, through each row parser                  |

use std::path::{Path, PathBuf};

use rlhf_proto::prost::Message;
use rlhf_proto::v1 as pb;
use rlhf_trainer::model::wire::WireDtype;

/// The CPU backend every target builds models on.
type B = burn::backend::Flex;

/// The run the learner-side and worker-side checks are made against.
const VOCAB: usize = 384;
const N_POSITIONS: usize = 64;
const MAX_NEW_TOKENS: usize = 8;

/// A tiny GPT-2 for the weight and checkpoint targets (small, so each run is fast).
fn tiny_config() -> rlhf_trainer::Gpt2Config {
    rlhf_trainer::Gpt2Config::new(16, 8, 8, 1, 2)
}

/// The lease every fuzzed submission claims: prompts 4..8 of worker 1 at version 2.
const LEASE_PROMPTS: [u64; 4] = [4, 5, 6, 7];

fn prompt(index: u64) -> Vec<u32> {
    vec![(index % VOCAB as u64) as u32; 1 + (index % 5) as usize]
}

fn worker_settings() -> rlhf_rollout_worker::peer_input::RunSettings {
    let join = pb::JoinResponse {
        worker_id: 1,
        sampling_json: serde_json::to_string(&rlhf_trainer::SamplingConfig {
            max_new_tokens: MAX_NEW_TOKENS,
            ..Default::default()
        })
        .expect("serialises"),
        model_config_json: serde_json::to_string(&rlhf_trainer::Gpt2Config::new(VOCAB, N_POSITIONS, 8, 1, 2))
            .expect("serialises"),
        eos_id: 0,
        ..Default::default()
    };
    rlhf_rollout_worker::peer_input::RunSettings::from_join(&join).expect("valid settings")
}

/// `messages`: the first byte picks a message; the rest is its encoding.
pub fn messages(data: &[u8]) {
    let _ = check_message(data);
}

/// Decodes and checks one tagged message: `Some(accepted)` for the messages with checks.
fn check_message(data: &[u8]) -> Option<bool> {
    let (&kind, bytes) = data.split_first()?;
    match kind % 8 {
        // Learner side: a worker's submission, then every check the service makes.
        0 => {
            let request = pb::SubmitRolloutsRequest::decode(bytes).ok()?;
            let lease = rlhf_actors::validation::LeaseClaim {
                lease_id: 9,
                worker_id: 1,
                policy_version: 2,
                prompts: &LEASE_PROMPTS,
            };
            let limits = rlhf_actors::validation::RolloutLimits {
                vocab_size: VOCAB,
                n_positions: N_POSITIONS,
                max_new_tokens: MAX_NEW_TOKENS,
            };
            return Some(rlhf_actors::validation::check_submission(&request, &lease, &limits, prompt).is_ok());
        }
        // Reward server: a score request, then its checks.
        1 => return Some(rlhf_reward_server::decode_and_check(bytes, VOCAB).is_ok()),
        // Worker side: the learner's run settings and leases.
        2 => {
            let joined = pb::JoinResponse::decode(bytes).ok()?;
            return Some(rlhf_rollout_worker::peer_input::RunSettings::from_join(&joined).is_ok());
        }
        3 => {
            let Ok(pb::LeasePromptsResponse { reply: Some(pb::lease_prompts_response::Reply::Lease(lease)) }) =
                pb::LeasePromptsResponse::decode(bytes)
            else {
                return Some(false);
            };
            return Some(worker_settings().check_lease(&lease).is_ok());
        }
        // The messages the receivers take as decoded (ids and names only).
        4 => {
            let _ = pb::JoinRequest::decode(bytes);
            let _ = pb::HeartbeatRequest::decode(bytes);
            let _ = pb::HeartbeatResponse::decode(bytes);
        }
        5 => {
            let _ = pb::LeasePromptsRequest::decode(bytes);
            let _ = pb::ReturnLeaseRequest::decode(bytes);
            let _ = pb::GetWeightsRequest::decode(bytes);
        }
        6 => {
            let _ = pb::SubmitRolloutsResponse::decode(bytes);
            let _ = pb::ReturnLeaseResponse::decode(bytes);
            let _ = pb::ScoreResponse::decode(bytes);
        }
        _ => {
            let _ = pb::WeightsChunk::decode(bytes);
        }
    }
    None
}

/// Whether a tagged message seed passes its receiver's checks (the smoke test keeps the seeds
/// honest with it).
pub fn seed_is_accepted(data: &[u8]) -> bool {
    check_message(data) == Some(true)
}

/// `weights`: with an even first byte, the rest is a stream of length-prefixed `WeightsChunk`
/// encodings (u16 little-endian lengths); with an odd one, the rest is a weights buffer chunked
/// by the learner's own `WeightSnapshot::chunks` with its true CRC (so the fuzzer reaches the
/// safetensors parsing), as bf16 when bit 1 is set. Whatever assembles is loaded into a model.
pub fn weights(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut assembler = rlhf_rollout_worker::weights::Assembler::new(1);
    if mode % 2 == 0 {
        let mut rest = rest;
        while rest.len() >= 2 {
            let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
            let body = &rest[2..(2 + len).min(rest.len())];
            rest = &rest[2 + body.len()..];
            let Ok(chunk) = pb::WeightsChunk::decode(body) else {
                return;
            };
            if assembler.push(&chunk).is_err() {
                return;
            }
        }
    } else {
        // Chunked exactly as the learner sends a version.
        let dtype = if mode & 2 != 0 { WireDtype::Bf16 } else { WireDtype::F32 };
        let bytes = rlhf_proto::bytes::Bytes::copy_from_slice(rest);
        let snapshot = rlhf_actors::weights::WeightSnapshot { version: 1, crc32: crc32fast::hash(rest), bytes, dtype };
        for chunk in snapshot.chunks() {
            assembler.push(&chunk).expect("the learner's chunks assemble");
        }
    }
    if let Ok(bytes) = assembler.finish() {
        let _ = rlhf_rollout_worker::weights::model_from_safetensors::<B>(bytes, &tiny_config(), &Default::default());
    }
}

/// A directory reused by every run of a file-reading target in this process.
fn scratch() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory")).path()
}

/// `safetensors`: the bytes are a checkpoint's `model.safetensors`, beside a valid `config.json`,
/// loaded as the commands load a model directory.
pub fn safetensors(data: &[u8]) {
    let dir = scratch().join("checkpoint");
    if !dir.join("config.json").is_file() {
        std::fs::create_dir_all(&dir).expect("scratch space");
        tiny_config().save(&dir.join("config.json"), "GPT2LMHeadModel").expect("writes config.json");
    }
    std::fs::write(dir.join(rlhf_trainer::model::hf::SAFETENSORS_FILE), data).expect("scratch space");
    let _ = rlhf_trainer::model::hf::load::<B>(&dir, &Default::default());
}

/// The dataset readers, by the file name they are given.
const DATASET_FILES: [&str; 6] =
    ["rows.jsonl", "rows.csv", "rows.txt", "pairs.jsonl", "comparisons.jsonl", "rows.parquet"];

/// `datasets`: the first byte picks a reader and a format; the rest is the file.
pub fn datasets(data: &[u8]) {
    use rlhf_trainer::data::{self, OnMalformed};
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let name = DATASET_FILES[kind as usize % DATASET_FILES.len()];
    let path: PathBuf = scratch().join(name);
    std::fs::write(&path, bytes).expect("scratch space");
    for on_malformed in [OnMalformed::Error, OnMalformed::Skip] {
        match name {
            "pairs.jsonl" => drop(data::load_preferences(&path, &data::Columns::default(), on_malformed)),
            "comparisons.jsonl" => {
                let _ = data::load_comparisons(&path, on_malformed);
                let _ = data::load_prompt_texts(&path, &data::Columns::default(), on_malformed);
                let _ = data::load_sft_texts(&path, &data::Columns::default(), on_malformed);
            }
            "rows.txt" => drop(data::load_unlabelled(&path, &data::Columns::default(), on_malformed)),
            _ => {
                let _ = data::load_text(&path, on_malformed);
                let _ = data::load_unlabelled(&path, &data::Columns::default(), on_malformed);
            }
        }
    }
}

/// A target body: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target by name.
pub const TARGETS: [(&str, Target); 4] =
    [("messages", messages), ("weights", weights), ("safetensors", safetensors), ("datasets", datasets)];

pub mod seeds;
