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

/// Prints the difference (so that a run shows how close it came) and asserts the tolerance.
pub(crate) fn assert_passes(check: crate::parity::Check) {
    eprintln!("parity: {} max |diff| = {:e} (tolerance {:e})", check.name, check.max_abs_diff, check.tolerance);
    assert!(check.passed(), "{}: max |diff| {:e} > {:e}", check.name, check.max_abs_diff, check.tolerance);
}

/// The committed slice of real data (`tests/assets/` at the repository root, see its README).
pub(crate) fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/assets")
}

/// The full real data (`RLHF_ASSETS`, or `../shared/assets` beside the clone), for the few tests
/// that need more than the slice; `None` after one printed line naming `test` when it is missing.
pub(crate) fn full_assets(test: &str) -> Option<PathBuf> {
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/assets");
    let dir = std::env::var_os("RLHF_ASSETS").map(PathBuf::from).unwrap_or(default);
    if dir.is_dir() {
        return Some(dir);
    }
    // Straight to stderr: the test harness captures `println!`/`eprintln!` of passing tests.
    let line = format!("skipped {test}: it needs the full assets (set RLHF_ASSETS, or put them at ../shared/assets)\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    None
}
