//! Test support: reading the committed reference fixtures (safetensors written by the scripts in
//! `fixtures/`).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A safetensors file of reference values.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn load(path: &Path) -> Self {
        Self { bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) }
    }

    /// A tensor as (shape, values as f64).
    pub fn get(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        let tensors = SafeTensors::deserialize(&self.bytes).unwrap();
        let view = tensors.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => data.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            Dtype::F64 => data.chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::I64 => data.chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        (view.shape().to_vec(), values)
    }

    /// A float tensor of rank `D` on `B`'s default device.
    pub fn tensor<B: Backend, const D: usize>(&self, name: &str) -> Tensor<B, D> {
        let (shape, values) = self.get(name);
        let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }
}

/// Largest absolute difference; panics on length mismatch.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// A tensor's values as f64.
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().iter::<f32>().map(f64::from).collect()
}
