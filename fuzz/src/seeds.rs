//! Well-formed inputs for each target, built from the real encoders (so they stay valid as the
//! formats change): the starting corpus for libFuzzer and the base of the CI smoke test's
//! mutations.

use rlhf_proto::prost::Message;
use rlhf_proto::v1 as pb;
use rlhf_trainer::Heads;
use rlhf_trainer::model::wire::WireDtype;

use super::{B, LEASE_PROMPTS, MAX_NEW_TOKENS, N_POSITIONS, VOCAB, prompt, tiny_config};

fn tagged(tag: u8, bytes: Vec<u8>) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(bytes);
    out
}

/// The seeds of `target` (one of [`super::TARGETS`]).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "messages" => messages(),
        "weights" => weights(),
        "safetensors" => safetensors(),
        "datasets" => datasets(),
        other => panic!("no target {other}"),
    }
}

fn messages() -> Vec<Vec<u8>> {
    let rollouts = LEASE_PROMPTS
        .iter()
        .map(|&i| pb::Rollout {
            rollout_id: 100 + i,
            worker_id: 1,
            lease_id: 9,
            policy_version: 2,
            prompt_index: i,
            query: prompt(i),
            response: vec![5; MAX_NEW_TOKENS],
            logprobs: vec![-1.5; MAX_NEW_TOKENS],
            score: 0.25,
        })
        .collect();
    let submission = pb::SubmitRolloutsRequest { worker_id: 1, lease_id: 9, rollouts, score_seconds: 0.01 };
    let ids = pb::Sequence { query: vec![1, 2, 3], response: vec![4, 5], ..Default::default() };
    let text = pb::Sequence { query_text: "A film".into(), response_text: " I loved.".into(), ..Default::default() };
    let join = pb::JoinResponse {
        worker_id: 3,
        sampling_json: serde_json::to_string(&rlhf_trainer::SamplingConfig {
            max_new_tokens: 8,
            temperature: 0.7,
            top_k: 5,
            ..Default::default()
        })
        .expect("serialises"),
        model_config_json: serde_json::to_string(&rlhf_trainer::Gpt2Config::new(VOCAB, N_POSITIONS, 8, 1, 2))
            .expect("serialises"),
        eos_id: 7,
        heartbeat_interval_ms: 500,
        tokenizer_json: String::new(),
    };
    let lease = pb::Lease {
        lease_id: 4,
        policy_version: 1,
        prompts: vec![
            pb::Prompt { prompt_index: 0, ids: vec![1, 2, 3] },
            pb::Prompt { prompt_index: 1, ids: vec![9; 20] },
        ],
        seed: 11,
        deadline_ms: 1000,
    };
    vec![
        tagged(0, submission.encode_to_vec()),
        tagged(1, pb::ScoreRequest { sequences: vec![ids.clone(), ids] }.encode_to_vec()),
        tagged(1, pb::ScoreRequest { sequences: vec![text] }.encode_to_vec()),
        tagged(2, join.encode_to_vec()),
        tagged(
            3,
            pb::LeasePromptsResponse { reply: Some(pb::lease_prompts_response::Reply::Lease(lease)) }.encode_to_vec(),
        ),
        tagged(4, pb::JoinRequest { name: "worker-1".into() }.encode_to_vec()),
        tagged(5, pb::GetWeightsRequest { policy_version: 3 }.encode_to_vec()),
        tagged(6, pb::ScoreResponse { scores: vec![0.5, -1.0], scorer: "lexicon".into() }.encode_to_vec()),
        tagged(
            7,
            pb::WeightsChunk {
                policy_version: 1,
                total_bytes: 4,
                offset: 0,
                data: vec![1, 2, 3, 4].into(),
                crc32: 5,
                dtype: WireDtype::F32.name().into(),
            }
            .encode_to_vec(),
        ),
    ]
}

/// The tiny model's weights as the learner serialises them.
fn weight_buffer(dtype: WireDtype) -> Vec<u8> {
    let model = tiny_config().init::<B>(Heads::Lm, &Default::default());
    rlhf_actors::weights::WeightSnapshot::of(&model, 1, dtype).expect("serialises").bytes.to_vec()
}

fn weights() -> Vec<Vec<u8>> {
    let buffer = weight_buffer(WireDtype::F32);
    let crc32 = crc32fast::hash(&buffer);
    let mut stream = vec![0u8];
    for (i, piece) in buffer.chunks(1000).enumerate() {
        let chunk = pb::WeightsChunk {
            policy_version: 1,
            total_bytes: buffer.len() as u64,
            offset: (i * 1000) as u64,
            data: piece.to_vec().into(),
            crc32: if i == 0 { crc32 } else { 0 },
            dtype: if i == 0 { WireDtype::F32.name().into() } else { String::new() },
        };
        let encoded = chunk.encode_to_vec();
        stream.extend((encoded.len() as u16).to_le_bytes());
        stream.extend(encoded);
    }
    vec![stream, tagged(1, buffer), tagged(3, weight_buffer(WireDtype::Bf16))]
}

fn safetensors() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = dir.path().join("model");
    let model = tiny_config().init::<B>(Heads::Lm, &Default::default());
    let tokenizer = rlhf_trainer::Tokenizer::from_json(TOKENIZER_JSON, 0).expect("a tokenizer");
    rlhf_trainer::model::hf::export(&model, &tiny_config(), &tokenizer, &out).expect("exports");
    vec![std::fs::read(out.join(rlhf_trainer::model::hf::SAFETENSORS_FILE)).expect("written")]
}

/// A word-level tokenizer small enough to inline.
const TOKENIZER_JSON: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"<|endoftext|>":0,"a":1,"b":2},"unk_token":"<|endoftext|>"}}"#;

fn datasets() -> Vec<Vec<u8>> {
    let parquet = include_bytes!("../../trainer/fixtures/data/imdb_sample.parquet").to_vec();
    vec![
        tagged(0, b"{\"text\": \"A fine film.\", \"label\": 1}\n{\"text\": \"Dull.\", \"label\": \"neg\"}\n".to_vec()),
        tagged(1, b"text,label\n\"A fine, long film.\",1\nDull.,0\n".to_vec()),
        tagged(2, b"The film opens on\nA story about\n".to_vec()),
        tagged(3, b"{\"prompt\": \"Q\", \"chosen\": \" yes\", \"rejected\": \" no\"}\n".to_vec()),
        tagged(
            4,
            b"{\"info\": {\"post\": \"My cat...\", \"title\": \"Cat\", \"subreddit\": \"pets\"}, \"summaries\": [{\"text\": \" A cat.\"}, {\"text\": \" Dog.\"}], \"choice\": 0}\n"
                .to_vec(),
        ),
        tagged(5, parquet),
    ]
}
