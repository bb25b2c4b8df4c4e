//! One forward pass over whole sequences: per-token log-probabilities, values and scores.
//!
//! This is what the learner (log-probs and values of prompt + response) and the reward server
//! (scores) call.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::InputError;
use crate::kernels::Kernels;
use crate::model::batch::{left_pad, next_token_rows, select_rows, unpad_rows, validate};
use crate::model::gpt2::Gpt2;

/// The column where each left-padded row's score is read (see [`score`]).
pub fn score_index(rows: &[Vec<u32>], pad_id: u32, width: usize) -> Vec<i64> {
    rows.iter()
        .map(|row| {
            let pad = width - row.len();
            let index = match row.iter().position(|&t| t == pad_id) {
                Some(first) if first > 0 => first - 1,
                _ => row.len() - 1,
            };
            (pad + index) as i64
        })
        .collect()
}

/// Picks each row's score at its column. `scores`: `[batch, width, n_labels]` -> `[batch, n_labels]`
pub fn gather_scores<B: Backend>(scores: Tensor<B, 3>, index: &[i64], device: &B::Device) -> Tensor<B, 2> {
    let [batch, _, n_labels] = scores.dims();
    let index = Tensor::<B, 3, Int>::from_data(TensorData::new(index.to_vec(), [batch, 1, 1]), device)
        .expand([batch, 1, n_labels]);
    scores.gather(1, index).reshape([batch, n_labels])
}

/// Results of [`score`], per row, for the row's real tokens only.
#[derive(Debug, Clone, Default)]
pub struct Scored {
    /// `len - 1` values per row: log p(ids[i + 1] | ids[..=i]).
    pub logprobs: Vec<Vec<f32>>,
    /// `len` values per row, when the model has a value head.
    pub values: Option<Vec<Vec<f32>>>,
    /// `num_labels` values per row, when the model has a score head.
    pub scores: Option<Vec<Vec<f32>>>,
}

/// Scores whole sequences in one left-padded batch.
///
/// The score head is read where transformers' `GPT2ForSequenceClassification` reads it: at the
/// token before the first `pad_id` in the row (GPT-2 pads with end-of-text, so a response that
/// ends in end-of-text is scored at its last word), else at the last token.
pub fn score<B: Kernels>(
    model: &Gpt2<B>,
    rows: &[Vec<u32>],
    pad_id: u32,
    temperature: f32,
    with_logprobs: bool,
    device: &B::Device,
) -> Result<Scored, InputError> {
    validate("sequence", rows, model.vocab_size(), model.n_positions())?;
    if with_logprobs && rows.iter().any(|r| r.len() < 2) {
        return Err(InputError::Invalid {
            field: "sequence",
            expected: "at least 2 tokens for log-probabilities",
            got: "1".into(),
        });
    }
    let padded = left_pad::<B>(rows, pad_id, device);
    let out = model.forward(padded.input_ids, padded.position_ids, padded.key_mask, None);
    let mut scored = Scored::default();
    if with_logprobs {
        let targets: Vec<u32> = rows.iter().flat_map(|row| row[1..].iter().copied()).collect();
        let hidden = select_rows(out.hidden.clone(), &next_token_rows(&padded.lengths, padded.width));
        let logprobs = model.transformer.token_logprobs(hidden, &targets, temperature);
        let mut flat = logprobs.into_data().iter::<f32>().collect::<Vec<_>>().into_iter();
        scored.logprobs = rows.iter().map(|row| flat.by_ref().take(row.len() - 1).collect()).collect();
    }
    scored.values = out.values.map(|values| unpad_rows(values, &padded.lengths));
    if let Some(scores) = out.scores {
        let picked = gather_scores(scores, &score_index(rows, pad_id, padded.width), device); // [batch, n_labels]
        let n_labels = picked.dims()[1];
        let picked: Vec<f32> = picked.into_data().iter::<f32>().collect();
        scored.scores = Some(picked.chunks(n_labels).map(<[f32]>::to_vec).collect());
    }
    Ok(scored)
}
