//! Test support: reading the committed reference fixtures (safetensors written by the scripts in
//! `fixtures/`).

use std::path::{Path, PathBuf};

use crate::parity::ReferenceFile;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A safetensors file of reference values ([`crate::parity::ReferenceFile`], panicking).
pub struct Reference(ReferenceFile);

impl Reference {
    pub fn load(path: &Path) -> Self {
        Self(ReferenceFile::load(path).unwrap())
    }

    /// A tensor as (shape, values as f64).
    pub fn get(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        self.0.get(name).unwrap()
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
    crate::parity::max_abs_diff(a, b)
}

/// A tensor's values as f64.
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().iter::<f32>().map(f64::from).collect()
}
