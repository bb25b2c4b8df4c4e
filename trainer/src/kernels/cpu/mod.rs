//! The CPU backend's (burn's `flex`) fused kernels, on raw `f32` slices.
//!
//! - **LM-head log-probs** run over the vocabulary in chunks of `vocab_chunk(n)` rows of `wte`:
//!   one `gemm` call writes a `[n, chunk]` block of logits that stays in cache, then one pass per
//!   row folds it into a running max, `Σ exp` (and `Σ exp · z` for the entropy), the way
//!   flash-attention folds keys. Chunks are spread over rayon's threads and their statistics
//!   merged in vocabulary order, so results do not depend on the thread count or on scheduling.
//!   The backward pass recomputes each block and turns it into
//!   `dz = g · (onehot − p)` in place, then two more `gemm` calls add `dz · w` into the hidden
//!   gradient and write `dzᵀ · h` into the chunk's own rows of the weight gradient.
//! - **Sampling** is one pass per row: max, `exp` into a scratch row, then the inverse-CDF walk
//!   over the kept tokens.
//!
//! `exp` is the Cephes single-precision polynomial written as plain arithmetic over 16-lane
//! arrays, which LLVM turns into AVX-512 or AVX2 code in the `multiversion` clones below (and
//! plain SSE2 elsewhere). It never fuses multiply-adds, so every clone computes the same bits.

use std::borrow::Cow;

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;
use multiversion::multiversion;
use rayon::prelude::*;

use super::{AdamWMoments, AdamWStep, LmHeadOutput};
use crate::kernels::TokenFilter;

type Flex = burn::backend::Flex;

mod elementwise;
mod sampling;

pub use elementwise::{adamw_step, tanh_gelu, tanh_gelu_backward, transpose};
pub use sampling::sample;

/// Lanes of the explicit accumulators: one AVX-512 register, or two AVX2 ones.
const LANES: usize = 16;

/// A row-major matrix's elements (borrowed when the tensor is already contiguous) and its shape.
fn matrix(tensor: &FlexTensor) -> (Cow<'_, [f32]>, [usize; 2]) {
    let dims = tensor.layout().shape();
    assert_eq!(dims.num_dims(), 2, "expected a matrix");
    let shape = [dims[0], dims[1]];
    match tensor.as_slice::<f32>() {
        Some(slice) => (Cow::Borrowed(slice), shape),
        None => (Cow::Owned(tensor.to_contiguous().as_slice::<f32>().expect("contiguous").to_vec()), shape),
    }
}

fn vector(tensor: &FlexTensor) -> Cow<'_, [f32]> {
    match tensor.as_slice::<f32>() {
        Some(slice) => Cow::Borrowed(slice),
        None => Cow::Owned(tensor.to_contiguous().as_slice::<f32>().expect("contiguous").to_vec()),
    }
}

fn tensor(values: Vec<f32>, shape: impl AsRef<[usize]>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.as_ref().to_vec()))
}

/// Vocabulary chunks per task of the backward pass (and per partial hidden gradient).
const BACKWARD_GROUP: usize = 4;

/// Vocabulary rows per chunk: a `[n, chunk]` block of about 1 MiB, at least 256 and at most 4096
/// rows, a multiple of 16.
fn vocab_chunk(n: usize) -> usize {
    ((256 * 1024) / n.max(1)).clamp(256, 4096) / 16 * 16
}

// ---------------------------------------------------------------------------------------------
// Vectorisable row arithmetic.

/// `e^x` (Cephes `expf`: range reduction by `ln 2`, a degree-7 polynomial; within 2 ulp).
/// Inputs below −87.3 give the smallest normal number instead of a subnormal or zero, which
/// callers that need a true zero (masked tokens) handle themselves.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to the nearest integer
    let x = x.clamp(-87.336_55, 88.376_26);
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let p = p * r2 + r + 1.0;
    // 2^n from the bits of t: its low mantissa bits hold n + 2^22.
    let n_bits = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    p * f32::from_bits(((n_bits + 127) << 23) as u32)
}

#[inline(always)]
fn lanes_max(values: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for l in 0..LANES {
            acc[l] = if chunk[l] > acc[l] { chunk[l] } else { acc[l] };
        }
    }
    let mut max = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in rest {
        max = max.max(v);
    }
    max
}

/// `max_v values[v]` over a row.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
fn row_max(values: &[f32]) -> f32 {
    lanes_max(values)
}

/// `(Σ exp(z − shift), Σ exp(z − shift) · (z − shift))` over a row; the second sum only
/// `with_dot`.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
fn row_sum_exp(z: &[f32], shift: f32, with_dot: bool) -> (f32, f32) {
    let mut sum = [0.0f32; LANES];
    let mut dot = [0.0f32; LANES];
    let chunks = z.chunks_exact(LANES);
    let rest = chunks.remainder();
    if with_dot {
        for chunk in chunks {
            for l in 0..LANES {
                let centred = chunk[l] - shift;
                let e = exp(centred);
                sum[l] += e;
                dot[l] += e * centred;
            }
        }
    } else {
        for chunk in chunks {
            for l in 0..LANES {
                sum[l] += exp(chunk[l] - shift);
            }
        }
    }
    let (mut s, mut d) = (sum.iter().sum::<f32>(), dot.iter().sum::<f32>());
    for &v in rest {
        let e = exp(v - shift);
        s += e;
        d += e * (v - shift);
    }
    (s, d)
}

/// `values[v] ← factor · exp(values[v] · scale − shift)`, in place.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
fn row_exp_in_place(values: &mut [f32], scale: f32, shift: f32, factor: f32) {
    for v in values.iter_mut() {
        *v = factor * exp(*v * scale - shift);
    }
}

// ---------------------------------------------------------------------------------------------
// The LM head.

/// `dst[n, cols] = beta · lhs · rhs` (or `dst += ...` when `accumulate`), single-threaded: the
/// callers split the work across threads themselves. Strides are in elements, `(row, col)`.
#[allow(clippy::too_many_arguments)]
fn gemm(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    dst_strides: (isize, isize),
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (isize, isize),
    rhs: &[f32],
    rhs_strides: (isize, isize),
    beta: f32,
) {
    // The extents every index can reach, so that the unsafe call below stays inside the slices.
    let reach = |(rs, cs): (isize, isize), rows: usize, cols: usize| {
        (rows.max(1) - 1) as isize * rs + (cols.max(1) - 1) as isize * cs
    };
    assert!(reach(dst_strides, m, n) < dst.len() as isize);
    assert!(reach(lhs_strides, m, k) < lhs.len() as isize);
    assert!(reach(rhs_strides, k, n) < rhs.len() as isize);
    // SAFETY: the asserts above keep every element gemm reads or writes inside the slices, and
    // `dst` does not alias `lhs` or `rhs` (it is a distinct `&mut`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_strides.1,
            dst_strides.0,
            accumulate,
            lhs.as_ptr(),
            lhs_strides.1,
            lhs_strides.0,
            rhs.as_ptr(),
            rhs_strides.1,
            rhs_strides.0,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `out[n, width] = (h[n, d] · w[v0 .. v0 + width, d]ᵀ) · scale`: a block of scaled logits.
fn logits_block(h: &[f32], w_rows: &[f32], n: usize, d: usize, scale: f32, out: &mut [f32]) {
    let width = w_rows.len() / d;
    let row_major = |cols: usize| (cols as isize, 1);
    // rhs[k, j] = w[j, k]: unit stride along k, d along j.
    gemm([n, width, d], out, row_major(width), false, h, row_major(d), w_rows, (1, d as isize), scale);
}

/// Per-row running statistics of a log-sum-exp over vocabulary chunks.
struct RowStats {
    max: Vec<f32>,
    sum: Vec<f32>,
    /// `Σ exp(z − max) · (z − max)`, for the entropy `ln sum − dot / sum`.
    dot: Vec<f32>,
    /// The target's scaled logit, once its chunk has been seen.
    target: Vec<f32>,
}

impl RowStats {
    fn new(n: usize) -> Self {
        Self { max: vec![f32::NEG_INFINITY; n], sum: vec![0.0; n], dot: vec![0.0; n], target: vec![f32::NAN; n] }
    }

    /// Folds one row of a logits block (vocabulary ids `v0..`) into row `i`.
    fn fold(&mut self, i: usize, z: &[f32], v0: usize, target: usize, with_dot: bool) {
        let new_max = self.max[i].max(row_max(z));
        let (sum, dot) = row_sum_exp(z, new_max, with_dot);
        self.absorb(i, new_max, sum, dot);
        if (v0..v0 + z.len()).contains(&target) {
            self.target[i] = z[target - v0];
        }
    }

    /// Adds sums taken relative to `max` (at least this row's running max) to row `i`.
    fn absorb(&mut self, i: usize, max: f32, sum: f32, dot: f32) {
        if self.max[i] > f32::NEG_INFINITY {
            // Re-centre the running sums on the new max: e' = r · e, z − max = (z − old) + shift.
            let shift = self.max[i] - max;
            let r = shift.exp();
            self.dot[i] = r * (self.dot[i] + shift * self.sum[i]);
            self.sum[i] *= r;
        }
        self.sum[i] += sum;
        self.dot[i] += dot;
        self.max[i] = max;
    }

    /// Merges the statistics of disjoint vocabulary ranges.
    fn merge(mut self, other: Self) -> Self {
        for i in 0..self.max.len() {
            if other.max[i] == f32::NEG_INFINITY {
                continue;
            }
            let max = self.max[i].max(other.max[i]);
            let shift = other.max[i] - max;
            let r = shift.exp();
            self.absorb(i, max, r * other.sum[i], r * (other.dot[i] + shift * other.sum[i]));
            if self.target[i].is_nan() {
                self.target[i] = other.target[i];
            }
        }
        self
    }
}

pub fn lm_head_forward(
    hidden: FlexTensor,
    weight: FlexTensor,
    targets: &[u32],
    temperature: f32,
    with_entropy: bool,
) -> LmHeadOutput<Flex> {
    let (h, [n, d]) = matrix(&hidden);
    let (w, [vocab, d_w]) = matrix(&weight);
    assert_eq!(d, d_w, "hidden and weight widths differ");
    assert_eq!(targets.len(), n, "one target per row");
    assert!(targets.iter().all(|&t| (t as usize) < vocab), "target outside the vocabulary");
    let scale = 1.0 / temperature;
    let chunk = vocab_chunk(n);
    // One set of row statistics per chunk, merged in vocabulary order: the result does not
    // depend on how rayon spreads the chunks over threads.
    let stats = w
        .par_chunks(chunk * d)
        .enumerate()
        .map_init(
            || vec![0.0f32; n * chunk],
            |block, (c, w_rows)| {
                let width = w_rows.len() / d;
                let z = &mut block[..n * width];
                logits_block(&h, w_rows, n, d, scale, z);
                let mut stats = RowStats::new(n);
                for (i, row) in z.chunks_exact(width).enumerate() {
                    stats.fold(i, row, c * chunk, targets[i] as usize, with_entropy);
                }
                stats
            },
        )
        .collect::<Vec<_>>()
        .into_iter()
        .reduce(RowStats::merge)
        .unwrap_or_else(|| RowStats::new(n));
    let lse: Vec<f32> = (0..n).map(|i| (stats.max[i] as f64 + (stats.sum[i] as f64).ln()) as f32).collect();
    let logprobs: Vec<f32> = (0..n).map(|i| stats.target[i] - lse[i]).collect();
    let entropy = with_entropy
        .then(|| (0..n).map(|i| stats.sum[i].ln() - stats.dot[i] / stats.sum[i]).collect::<Vec<f32>>())
        .map(|e| tensor(e, [n]));
    LmHeadOutput { logprobs: tensor(logprobs, [n]), lse: tensor(lse, [n]), entropy }
}

pub fn lm_head_backward(
    hidden: FlexTensor,
    weight: FlexTensor,
    targets: &[u32],
    temperature: f32,
    lse: FlexTensor,
    grad: FlexTensor,
) -> (FlexTensor, FlexTensor) {
    let (h, [n, d]) = matrix(&hidden);
    let (w, [vocab, _]) = matrix(&weight);
    let (lse, grad) = (vector(&lse), vector(&grad));
    let scale = 1.0 / temperature;
    let chunk = vocab_chunk(n);
    let mut d_weight = vec![0.0f32; vocab * d];
    // Chunks go in groups of BACKWARD_GROUP; each group adds into its own hidden gradient, and
    // the groups' gradients are summed in vocabulary order (deterministic, whatever the threads).
    let group = BACKWARD_GROUP * chunk * d;
    let partials: Vec<Vec<f32>> = d_weight
        .par_chunks_mut(group)
        .zip(w.par_chunks(group))
        .enumerate()
        .map_init(
            || vec![0.0f32; n * chunk],
            |block, (g, (d_w_group, w_group))| {
                let mut d_hidden = vec![0.0f32; n * d];
                for (k, (d_w_rows, w_rows)) in
                    d_w_group.chunks_mut(chunk * d).zip(w_group.chunks(chunk * d)).enumerate()
                {
                    let (v0, width) = ((g * BACKWARD_GROUP + k) * chunk, w_rows.len() / d);
                    let dz = &mut block[..n * width];
                    logits_block(&h, w_rows, n, d, scale, dz);
                    // dz · T = g · (onehot − p), with p = exp(z − lse).
                    for (i, row) in dz.chunks_exact_mut(width).enumerate() {
                        row_exp_in_place(row, 1.0, lse[i], -grad[i]);
                        let target = targets[i] as usize;
                        if (v0..v0 + width).contains(&target) {
                            row[target - v0] += grad[i];
                        }
                    }
                    let row_major = |cols: usize| (cols as isize, 1);
                    // d_hidden[n, d] += dz[n, width] · w_rows[width, d] / T
                    gemm(
                        [n, d, width],
                        &mut d_hidden,
                        row_major(d),
                        true,
                        dz,
                        row_major(width),
                        w_rows,
                        row_major(d),
                        scale,
                    );
                    // d_weight[width, d] = dzᵀ[width, n] · h[n, d] / T
                    gemm(
                        [width, d, n],
                        d_w_rows,
                        row_major(d),
                        false,
                        dz,
                        (1, width as isize),
                        &h,
                        row_major(d),
                        scale,
                    );
                }
                d_hidden
            },
        )
        .collect();
    let mut d_hidden = vec![0.0f32; n * d];
    for partial in &partials {
        d_hidden.iter_mut().zip(partial).for_each(|(x, y)| *x += y);
    }
    (tensor(d_hidden, [n, d]), tensor(d_weight, [vocab, d]))
}
