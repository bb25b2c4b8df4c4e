//! Drawing the next token: one pass per row (max, `exp` into a scratch row, then the inverse-CDF
//! walk over the kept tokens).

use burn::backend::flex::FlexTensor;
use rayon::prelude::*;

use super::*;

// Sampling.

pub fn sample(logits: FlexTensor, uniform: &[f32], config: &TokenFilter) -> (Vec<u32>, Vec<f32>) {
    let (z, [batch, vocab]) = matrix(&logits);
    assert_eq!(uniform.len(), batch, "one uniform draw per row");
    z.par_chunks(vocab).zip(uniform.par_iter()).map(|(row, &u)| sample_row(row, u, config)).unzip()
}

/// One row of [`sample`]: `(token, log p(token))` under `softmax(row / T)`.
fn sample_row(logits: &[f32], uniform: f32, config: &TokenFilter) -> (u32, f32) {
    let scale = if config.greedy { 1.0 } else { 1.0 / config.temperature };
    let max = row_max(logits) * scale;
    let mut probs = logits.to_vec();
    row_exp_in_place(&mut probs, scale, max, 1.0); // unnormalised: exp(z − max)
    let sum: f64 = probs.iter().map(|&p| p as f64).sum();
    let lse = max as f64 + sum.ln();
    let logprob = |token: usize| (logits[token] as f64 * scale as f64 - lse) as f32;
    if config.greedy {
        // The first maximum, as argmax.
        let token = logits.iter().position(|&l| l * scale == max).unwrap_or(0);
        return (token as u32, logprob(token));
    }
    let vocab = logits.len();
    // Tokens below `threshold` (a scaled logit) are filtered out by top-k / top-p.
    let mut threshold = f32::NEG_INFINITY;
    if config.top_k > 0 && config.top_k < vocab {
        let mut sorted = logits.to_vec();
        let (_, kth, _) = sorted.select_nth_unstable_by(config.top_k - 1, |a, b| b.total_cmp(a));
        threshold = *kth * scale;
    }
    if config.top_p < 1.0 {
        // Keep the most likely tokens until their mass (within the top-k set) reaches top_p.
        let mut kept: Vec<(f32, f32)> = logits
            .iter()
            .zip(&probs)
            .filter(|&(&l, _)| l * scale >= threshold)
            .map(|(&l, &p)| (l * scale, p))
            .collect();
        kept.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        let kept_mass: f64 = kept.iter().map(|&(_, p)| p as f64).sum();
        let mut mass_before = 0.0f64;
        let mut n_keep = 0;
        for &(_, p) in &kept {
            if mass_before / kept_mass >= config.top_p as f64 {
                break;
            }
            mass_before += p as f64;
            n_keep += 1;
        }
        threshold = threshold.max(kept[n_keep.max(1) - 1].0);
    }
    let keep = |token: usize| logits[token] * scale >= threshold;
    let total: f64 = probs.iter().enumerate().filter(|&(t, _)| keep(t)).map(|(_, &p)| p as f64).sum();
    let target = uniform as f64 * total;
    let mut cumulative = 0.0f64;
    let mut token = None;
    for (t, &p) in probs.iter().enumerate() {
        if !keep(t) {
            continue;
        }
        cumulative += p as f64;
        token = Some(t);
        if cumulative > target {
            break;
        }
    }
    let token = token.unwrap_or(vocab - 1);
    (token as u32, logprob(token))
}
