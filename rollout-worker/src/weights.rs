//! Weights from the learner: chunks reassembled into one safetensors buffer (checked for order,
//! length, CRC-32 and dtype), then loaded into a model of the run's config. Everything here reads
//! bytes from a peer, so every field is checked before it is trusted (fuzzed by
//! `fuzz/fuzz_targets/weights.rs`).

use burn_store::{ModuleSnapshot, SafetensorsStore};
use rlhf_proto::v1::WeightsChunk;
use rlhf_trainer::model::gpt2::Init;
use rlhf_trainer::model::wire::{WireDtype, WireError, to_f32};
use rlhf_trainer::{Gpt2, Gpt2Config, Heads, Kernels};

/// A weights stream or buffer that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("a chunk of version {got} in the stream of version {expected}")]
    WrongVersion { expected: u64, got: u64 },
    #[error("chunk at offset {got} out of order (expected offset {expected})")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("total_bytes {0} is over the {MAX_WEIGHTS_BYTES}-byte limit")]
    TooLarge(u64),
    #[error("unknown dtype {0:?} (expected F32 or BF16)")]
    UnknownDtype(String),
    #[error("chunks run past total_bytes {0}")]
    PastEnd(u64),
    #[error("no chunks")]
    NoChunks,
    #[error("length mismatch: {got} of {expected} bytes")]
    Length { expected: u64, got: u64 },
    #[error("CRC-32 mismatch")]
    Crc,
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("cannot load the weights: {0}")]
    Load(String),
    #[error("{missing} tensors missing, {errors} errors{first}")]
    Incomplete { missing: usize, errors: usize, first: String },
}

/// The largest weights buffer a worker accepts (GPT-2 XL in fp32 is 6.2 GB).
pub const MAX_WEIGHTS_BYTES: u64 = 16 << 30;

/// Memory reserved up front: a peer's `total_bytes` is a claim, not a fact.
const RESERVE_AT_MOST: u64 = 64 << 20;

/// Reassembles one policy version's chunks, in order.
pub struct Assembler {
    version: u64,
    bytes: Vec<u8>,
    /// From the first chunk: the buffer's length, CRC-32 and dtype.
    header: Option<(u64, u32, WireDtype)>,
}

impl Assembler {
    pub fn new(version: u64) -> Self {
        Self { version, bytes: Vec::new(), header: None }
    }

    /// Appends one chunk; the first carries the header, each starts where the last ended.
    pub fn push(&mut self, chunk: &WeightsChunk) -> Result<(), WeightsError> {
        if chunk.policy_version != self.version {
            return Err(WeightsError::WrongVersion { expected: self.version, got: chunk.policy_version });
        }
        if chunk.offset != self.bytes.len() as u64 {
            return Err(WeightsError::OutOfOrder { expected: self.bytes.len() as u64, got: chunk.offset });
        }
        if self.header.is_none() {
            if chunk.total_bytes > MAX_WEIGHTS_BYTES {
                return Err(WeightsError::TooLarge(chunk.total_bytes));
            }
            let dtype =
                WireDtype::parse(&chunk.dtype).ok_or_else(|| WeightsError::UnknownDtype(chunk.dtype.clone()))?;
            self.bytes.reserve(chunk.total_bytes.min(RESERVE_AT_MOST) as usize);
            self.header = Some((chunk.total_bytes, chunk.crc32, dtype));
        }
        let (total, _, _) = self.header.expect("set above");
        if self.bytes.len() as u64 + chunk.data.len() as u64 > total {
            return Err(WeightsError::PastEnd(total));
        }
        self.bytes.extend_from_slice(&chunk.data);
        Ok(())
    }

    /// The whole buffer as fp32 safetensors, once its length and CRC-32 match the header.
    pub fn finish(self) -> Result<Vec<u8>, WeightsError> {
        let Some((total, crc32, dtype)) = self.header else {
            return Err(WeightsError::NoChunks);
        };
        if self.bytes.len() as u64 != total {
            return Err(WeightsError::Length { expected: total, got: self.bytes.len() as u64 });
        }
        if crc32fast::hash(&self.bytes) != crc32 {
            return Err(WeightsError::Crc);
        }
        match dtype {
            WireDtype::F32 => Ok(self.bytes),
            WireDtype::Bf16 => Ok(to_f32(&self.bytes)?),
        }
    }
}

/// A language model of `config` with every weight from the safetensors buffer `bytes`.
pub fn model_from_safetensors<B: Kernels>(
    bytes: Vec<u8>,
    config: &Gpt2Config,
    device: &B::Device,
) -> Result<Gpt2<B>, WeightsError> {
    let mut model = config.init_with::<B>(Heads::Lm, &mut Init::Zeros, device);
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    // burn-store's error type is not `Send`; its text is kept.
    let result = model.load_from(&mut store).map_err(|e| WeightsError::Load(e.to_string()))?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        let first = result.errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default();
        return Err(WeightsError::Incomplete { missing: result.missing.len(), errors: result.errors.len(), first });
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlhf_proto::bytes::Bytes;

    fn chunk(offset: u64, data: &[u8], total: u64, crc32: u32) -> WeightsChunk {
        WeightsChunk {
            policy_version: 3,
            total_bytes: total,
            offset,
            data: Bytes::copy_from_slice(data),
            crc32,
            dtype: "F32".into(),
        }
    }

    #[test]
    fn chunks_reassemble_in_order_and_a_bad_stream_is_refused() {
        let data = b"0123456789";
        let crc = crc32fast::hash(data);
        let mut ok = Assembler::new(3);
        ok.push(&chunk(0, &data[..4], 10, crc)).unwrap();
        ok.push(&chunk(4, &data[4..], 10, 0)).unwrap();
        assert_eq!(ok.finish().unwrap(), data);

        let mut gap = Assembler::new(3);
        gap.push(&chunk(0, &data[..4], 10, crc)).unwrap();
        assert!(gap.push(&chunk(5, &data[5..], 10, 0)).unwrap_err().to_string().contains("out of order"));
        let mut long = Assembler::new(3);
        assert!(long.push(&chunk(0, data, 4, crc)).unwrap_err().to_string().contains("past total_bytes"));
        let mut huge = Assembler::new(3);
        assert!(huge.push(&chunk(0, data, u64::MAX, crc)).unwrap_err().to_string().contains("limit"));
        let mut other = Assembler::new(4);
        assert!(other.push(&chunk(0, data, 10, crc)).unwrap_err().to_string().contains("version 3"));
        let mut corrupt = Assembler::new(3);
        corrupt.push(&chunk(0, data, 10, crc ^ 1)).unwrap();
        assert!(corrupt.finish().unwrap_err().to_string().contains("CRC"));
        let mut short = Assembler::new(3);
        short.push(&chunk(0, &data[..4], 10, crc)).unwrap();
        assert!(short.finish().unwrap_err().to_string().contains("4 of 10"));
        assert!(Assembler::new(3).finish().is_err());
    }
}
