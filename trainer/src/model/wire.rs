//! Weights on the wire: a safetensors buffer of the policy's tensors, in fp32 or bf16.
//!
//! bf16 halves the bytes a weight broadcast moves; workers widen it back to fp32 before loading
//! (generation then runs on bf16-rounded weights, which `rlhf bench weight-sync` trades for speed).

use safetensors::{Dtype, SafeTensors, View, serialize};
use serde::{Deserialize, Serialize};

/// Element type of weights on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireDtype {
    #[default]
    F32,
    Bf16,
}

impl WireDtype {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::Bf16 => "BF16",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "F32" => Some(Self::F32),
            "BF16" => Some(Self::Bf16),
            _ => None,
        }
    }
}

struct Owned {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Owned {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// A weights buffer that is not a valid safetensors buffer.
#[derive(Debug, thiserror::Error)]
#[error("weights buffer: {error}")]
pub struct WireError {
    /// Printed in the message, so not also a `source` (see `trainer/src/error.rs`).
    pub error: safetensors::SafeTensorError,
}

/// Rewrites every `from` tensor of a safetensors buffer as `to` with `convert`.
fn recast(bytes: &[u8], from: Dtype, to: Dtype, convert: impl Fn(&[u8]) -> Vec<u8>) -> Result<Vec<u8>, WireError> {
    let tensors = SafeTensors::deserialize(bytes).map_err(|error| WireError { error })?;
    let mut owned = Vec::new();
    for (name, view) in tensors.tensors() {
        let (dtype, data) =
            if view.dtype() == from { (to, convert(view.data())) } else { (view.dtype(), view.data().to_vec()) };
        owned.push((name, Owned { dtype, shape: view.shape().to_vec(), data }));
    }
    owned.sort_by(|a, b| a.0.cmp(&b.0));
    serialize(owned.iter().map(|(name, t)| (name.as_str(), t)), None).map_err(|error| WireError { error })
}

/// fp32 tensors to bf16 (round to nearest even).
pub fn to_bf16(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    recast(bytes, Dtype::F32, Dtype::BF16, |data| {
        data.chunks_exact(4)
            .flat_map(|c| half::bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
            .collect()
    })
}

/// bf16 tensors back to fp32.
pub fn to_f32(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    recast(bytes, Dtype::BF16, Dtype::F32, |data| {
        data.chunks_exact(2).flat_map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32().to_le_bytes()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_halves_the_bytes_and_round_trips_within_bf16_precision() {
        let values: Vec<f32> = (0..4096).map(|i| (i as f32 - 2000.0) * 0.0173).collect();
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensor = Owned { dtype: Dtype::F32, shape: vec![64, 64], data };
        let bytes = serialize([("w", &tensor)], None).unwrap();
        let small = to_bf16(&bytes).unwrap();
        assert!(small.len() < bytes.len() * 6 / 10);
        let back = to_f32(&small).unwrap();
        let tensors = SafeTensors::deserialize(&back).unwrap();
        let view = tensors.tensor("w").unwrap();
        assert_eq!(view.dtype(), Dtype::F32);
        for (c, v) in view.data().chunks(4).zip(&values) {
            let got = f32::from_le_bytes(c.try_into().unwrap());
            // Round to nearest: within half a unit in the last of bf16's 8 significant bits.
            assert!((got - v).abs() <= v.abs() / 256.0, "{got} vs {v}");
        }
    }
}
