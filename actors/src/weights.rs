//! Versioned weights: the policy serialised once per version into one shared buffer, streamed to
//! every worker in chunks. The buffer is a safetensors file, so its header carries each tensor's
//! name, shape, dtype and byte range; a CRC-32 of the whole buffer travels with the first chunk.

use burn::tensor::backend::Backend;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use rlhf_proto::bytes::Bytes;
use rlhf_proto::v1::WeightsChunk;
use rlhf_trainer::Gpt2;
use rlhf_trainer::model::wire::{WireDtype, WireError, to_bf16};

/// The policy could not be serialised for workers.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// burn-store's error, as text (its type is not `Send`).
    #[error("serialising weights: {0}")]
    Serialise(String),
    #[error("converting weights to bf16: {0}")]
    Bf16(#[from] WireError),
}

/// Bytes per streamed chunk.
pub const CHUNK_BYTES: usize = 1 << 20;

/// One published policy version.
#[derive(Debug, Clone)]
pub struct WeightSnapshot {
    pub version: u64,
    /// Shared by every stream; chunks are slices of it, not copies.
    pub bytes: Bytes,
    pub crc32: u32,
    pub dtype: WireDtype,
}

impl WeightSnapshot {
    /// Serialises the policy's language model (the trunk; workers need no value head).
    pub fn of<B: Backend>(model: &Gpt2<B>, version: u64, dtype: WireDtype) -> Result<Self, SnapshotError> {
        let mut store = SafetensorsStore::from_bytes(None).with_regex(r"^transformer\.");
        model.save_into(&mut store).map_err(|e| SnapshotError::Serialise(e.to_string()))?;
        let mut bytes = store.get_bytes().map_err(|e| SnapshotError::Serialise(e.to_string()))?;
        if dtype == WireDtype::Bf16 {
            bytes = to_bf16(&bytes)?;
        }
        let crc32 = crc32fast::hash(&bytes);
        Ok(Self { version, bytes: Bytes::from(bytes), crc32, dtype })
    }

    /// The chunks of this snapshot; each borrows a slice of the shared buffer.
    pub fn chunks(&self) -> impl Iterator<Item = WeightsChunk> + Send + 'static {
        let (bytes, version, crc32, dtype) = (self.bytes.clone(), self.version, self.crc32, self.dtype);
        let total = bytes.len();
        (0..total.div_ceil(CHUNK_BYTES).max(1)).map(move |i| {
            let start = i * CHUNK_BYTES;
            let end = (start + CHUNK_BYTES).min(total);
            WeightsChunk {
                policy_version: version,
                total_bytes: total as u64,
                offset: start as u64,
                data: bytes.slice(start..end),
                crc32: if i == 0 { crc32 } else { 0 },
                dtype: if i == 0 { dtype.name().into() } else { String::new() },
            }
        })
    }
}
