//! Elementwise passes: GPT-2's tanh GELU and its gradient, the AdamW update, and the decoding
//! layout of the LM head.

use burn::backend::flex::FlexTensor;
use multiversion::multiversion;
use rayon::prelude::*;

use super::*;

// GELU.

/// Elements per parallel task of elementwise passes.
const ELEMENTWISE_BLOCK: usize = 1 << 14;

/// `tanh(u) = sign(u) · (1 − 2 / (e^{2|u|} + 1))`: within a few 1e-8 of the true value (an
/// absolute error, which is what GELU's `½x(1 + tanh)` sees).
#[inline(always)]
fn tanh(u: f32) -> f32 {
    let e = exp(2.0 * u.abs());
    let t = 1.0 - 2.0 / (e + 1.0);
    if u < 0.0 { -t } else { t }
}

/// `tanh(√(2/π)(x + 0.044715x³))`
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = crate::kernels::GELU_SQRT_2_OVER_PI as f32;
    const A: f32 = crate::kernels::GELU_CUBIC as f32;
    tanh(C * (x + A * x * x * x))
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
fn gelu_block(out: &mut [f32], x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = 0.5 * v * (1.0 + gelu_tanh(v));
    }
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
fn gelu_backward_block(out: &mut [f32], x: &[f32], grad: &[f32]) {
    const C: f32 = crate::kernels::GELU_SQRT_2_OVER_PI as f32;
    const A3: f32 = 3.0 * crate::kernels::GELU_CUBIC as f32;
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(grad) {
        let t = gelu_tanh(v);
        let du = C * (1.0 + A3 * v * v);
        *o = g * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du);
    }
}

pub fn tanh_gelu(x: FlexTensor) -> FlexTensor {
    let shape = x.layout().shape().clone();
    let x = vector(&x);
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(ELEMENTWISE_BLOCK).zip(x.par_chunks(ELEMENTWISE_BLOCK)).for_each(|(out, x)| gelu_block(out, x));
    tensor(out, &shape)
}

pub fn tanh_gelu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
    let shape = x.layout().shape().clone();
    let (x, grad) = (vector(&x), vector(&grad));
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(ELEMENTWISE_BLOCK)
        .zip(x.par_chunks(ELEMENTWISE_BLOCK))
        .zip(grad.par_chunks(ELEMENTWISE_BLOCK))
        .for_each(|((out, x), grad)| gelu_backward_block(out, x, grad));
    tensor(out, &shape)
}

// AdamW.

/// Elements per parallel task of the optimizer's pass.
const ADAMW_BLOCK: usize = 1 << 16;

/// A tensor's elements as a uniquely owned contiguous buffer: in place when the tensor already
/// is one (the optimizer's own moments), a copy otherwise.
fn owned_f32(mut tensor: FlexTensor) -> FlexTensor {
    let whole = tensor.is_contiguous() && tensor.layout().start_offset() == 0;
    if !(whole && tensor.try_storage_mut::<f32>().is_some()) {
        tensor = FlexTensor::from_data(TensorData::new(vector(&tensor).into_owned(), tensor.layout().shape().clone()));
    }
    tensor
}

/// [`super::Kernels::adamw_step`] in one pass: the moments are updated in place, the parameter is
/// written to a fresh buffer (the model still shares the old one).
pub fn adamw_step(
    param: FlexTensor,
    grad: FlexTensor,
    moments: Option<(FlexTensor, FlexTensor)>,
    step: &AdamWStep,
) -> AdamWMoments<Flex> {
    let shape = param.layout().shape().clone();
    let (theta, g) = (vector(&param), vector(&grad));
    let first = moments.is_none();
    let (mut m, mut v) = match moments {
        Some((m, v)) => (owned_f32(m), owned_f32(v)),
        None => (FlexTensor::zeros(shape.clone(), param.dtype()), FlexTensor::zeros(shape.clone(), param.dtype())),
    };
    let mut out = vec![0.0f32; theta.len()];
    let (b1, b2, eps) = (step.beta_1, step.beta_2, step.epsilon);
    let (f1, f2) = (1.0 - b1, 1.0 - b2);
    let (c1, c2) = (1.0 - b1.powi(step.time), 1.0 - b2.powi(step.time));
    let decay = step.lr * step.weight_decay as f64;
    let (keep, lr) = ((1.0 - decay) as f32, step.lr as f32);
    let (ms, vs) = (m.try_storage_mut::<f32>().expect("unique"), v.try_storage_mut::<f32>().expect("unique"));
    out.par_chunks_mut(ADAMW_BLOCK)
        .zip(ms.par_chunks_mut(ADAMW_BLOCK))
        .zip(vs.par_chunks_mut(ADAMW_BLOCK))
        .enumerate()
        .for_each(|(block, ((out, ms), vs))| {
            let start = block * ADAMW_BLOCK;
            let (theta, g) = (&theta[start..start + out.len()], &g[start..start + out.len()]);
            adamw_block(out, ms, vs, theta, g, [b1, b2, f1, f2, c1, c2, eps, keep, lr], first, decay == 0.0);
        });
    AdamWMoments { param: tensor(out, &shape), moment_1: m, moment_2: v }
}

/// The per-element AdamW arithmetic in the order burn's ops apply it (no fused multiply-adds),
/// so the result is bit-for-bit burn's.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx512bw", "x86_64+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
fn adamw_block(
    out: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    theta: &[f32],
    g: &[f32],
    [b1, b2, f1, f2, c1, c2, eps, keep, lr]: [f32; 9],
    first: bool,
    no_decay: bool,
) {
    for i in 0..out.len() {
        let grad = g[i];
        let (mi, vi) =
            if first { (grad * f1, grad * grad * f2) } else { (m[i] * b1 + grad * f1, v[i] * b2 + grad * grad * f2) };
        m[i] = mi;
        v[i] = vi;
        let delta = (mi / c1) / ((vi / c2).sqrt() + eps);
        let decayed = if no_decay { theta[i] } else { theta[i] * keep };
        out[i] = decayed - delta * lr;
    }
}

// Decoding.

/// `[rows, cols]` -> a contiguous `[cols, rows]` copy, in 32 × 32 tiles, output rows spread over
/// rayon's threads.
pub fn transpose(matrix_in: FlexTensor) -> FlexTensor {
    const TILE: usize = 32;
    let (input, [rows, cols]) = matrix(&matrix_in);
    let mut output = vec![0.0f32; rows * cols];
    output.par_chunks_mut(TILE * rows).enumerate().for_each(|(block, out)| {
        let c0 = block * TILE;
        let width = out.len() / rows.max(1);
        for r0 in (0..rows).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let src = &input[r * cols + c0..r * cols + c0 + width];
                for (c, &value) in src.iter().enumerate() {
                    out[c * rows + r] = value;
                }
            }
        }
    });
    tensor(output, [cols, rows])
}
