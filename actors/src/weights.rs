//! Versioned weights: the policy serialised once per version into one shared buffer, streamed to
//! every worker in chunks. The buffer is a safetensors file, so its header carries each tensor's
//! name, shape, dtype and byte range; a CRC-32 of the whole buffer travels with the first chunk.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use rlhf_proto::v1::WeightsChunk;
use rlhf_trainer::Gpt2;

/// Bytes per streamed chunk.
pub const CHUNK_BYTES: usize = 1 << 20;

/// One published policy version.
#[derive(Debug, Clone)]
pub struct WeightSnapshot {
    pub version: u64,
    pub bytes: Arc<Vec<u8>>,
    pub crc32: u32,
}

impl WeightSnapshot {
    /// Serialises the policy's language model (the trunk; workers need no value head).
    pub fn of<B: Backend>(model: &Gpt2<B>, version: u64) -> Result<Self, String> {
        let mut store = SafetensorsStore::from_bytes(None).with_regex(r"^transformer\.");
        model.save_into(&mut store).map_err(|e| format!("serialising weights: {e}"))?;
        let bytes = store.get_bytes().map_err(|e| format!("serialising weights: {e}"))?;
        let crc32 = crc32fast::hash(&bytes);
        Ok(Self { version, bytes: Arc::new(bytes), crc32 })
    }

    /// The chunks of this snapshot; each borrows a slice of the shared buffer.
    pub fn chunks(&self) -> impl Iterator<Item = WeightsChunk> + Send + 'static {
        let (bytes, version, crc32) = (self.bytes.clone(), self.version, self.crc32);
        let total = bytes.len();
        (0..total.div_ceil(CHUNK_BYTES).max(1)).map(move |i| {
            let start = i * CHUNK_BYTES;
            let end = (start + CHUNK_BYTES).min(total);
            WeightsChunk {
                policy_version: version,
                total_bytes: total as u64,
                offset: start as u64,
                data: bytes[start..end].to_vec(),
                crc32: if i == 0 { crc32 } else { 0 },
                dtype: if i == 0 { "F32".into() } else { String::new() },
            }
        })
    }
}
