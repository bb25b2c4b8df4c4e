//! Left-padded batches: ids, key mask and position ids for rows of different lengths.
//!
//! Left padding keeps every row's last real token in the last column, which is where generation
//! continues. Position ids count real tokens only, so a padded row sees the same positions as the
//! same row alone.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::error::InputError;

/// A left-padded batch on a device.
pub struct Padded<B: Backend> {
    /// `[batch, width]`
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, width]`, true for real tokens.
    pub key_mask: Tensor<B, 2, Bool>,
    /// `[batch, width]`: 0, 1, 2, ... over the real tokens; 0 on padding.
    pub position_ids: Tensor<B, 2, Int>,
    /// Real tokens per row.
    pub lengths: Vec<usize>,
    pub width: usize,
}

/// Checks that rows are non-empty, in the vocabulary and no longer than `max_len`.
pub fn validate(field: &'static str, rows: &[Vec<u32>], vocab_size: usize, max_len: usize) -> Result<(), InputError> {
    if rows.is_empty() || rows.iter().any(|r| r.is_empty()) {
        return Err(InputError::Empty { field });
    }
    for row in rows {
        if let Some(&id) = row.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(InputError::TokenOutOfRange { field, id, vocab_size });
        }
        if row.len() > max_len {
            return Err(InputError::TooLong { field, len: row.len(), n_positions: max_len });
        }
    }
    Ok(())
}

/// Left-pads `rows` with `pad_id`. Rows must be non-empty (see [`validate`]).
pub fn left_pad<B: Backend>(rows: &[Vec<u32>], pad_id: u32, device: &B::Device) -> Padded<B> {
    let batch = rows.len();
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(batch * width);
    let mut mask = Vec::with_capacity(batch * width);
    let mut positions = Vec::with_capacity(batch * width);
    for row in rows {
        let pad = width - row.len();
        ids.extend(std::iter::repeat_n(pad_id as i64, pad).chain(row.iter().map(|&t| t as i64)));
        mask.extend(std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, row.len())));
        positions.extend(std::iter::repeat_n(0i64, pad).chain(0..row.len() as i64));
    }
    Padded {
        input_ids: Tensor::from_data(TensorData::new(ids, [batch, width]), device),
        key_mask: Tensor::from_data(TensorData::new(mask, [batch, width]), device),
        position_ids: Tensor::from_data(TensorData::new(positions, [batch, width]), device),
        lengths: rows.iter().map(Vec::len).collect(),
        width,
    }
}

/// Reads a `[batch, width]` float tensor into rows, keeping each row's last `lengths[i]` values
/// (the real positions of a left-padded batch).
pub fn unpad_rows<B: Backend>(tensor: Tensor<B, 2>, lengths: &[usize]) -> Vec<Vec<f32>> {
    let [_, width] = tensor.dims();
    let flat: Vec<f32> = tensor.into_data().iter::<f32>().collect();
    flat.chunks(width.max(1)).zip(lengths).map(|(row, &len)| row[width - len..].to_vec()).collect()
}

/// Rows of a `[batch, width, n_embd]` tensor picked by flat index `row · width + column`.
///
/// `[batch, width, n_embd]` -> `[index.len(), n_embd]`
pub fn select_rows<B: Backend>(hidden: Tensor<B, 3>, index: &[usize]) -> Tensor<B, 2> {
    let [batch, width, n_embd] = hidden.dims();
    let device = hidden.device();
    let index: Vec<i64> = index.iter().map(|&i| i as i64).collect();
    let n = index.len();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [n]), &device);
    hidden.reshape([batch * width, n_embd]).select(0, index)
}

/// For left-padded rows of `lengths` in a batch of `width` columns, the flat index
/// (`row · width + column`) of every position that predicts a next real token: each row's real
/// positions but its last, row after row.
pub fn next_token_rows(lengths: &[usize], width: usize) -> Vec<usize> {
    lengths
        .iter()
        .enumerate()
        .flat_map(|(row, &len)| {
            let pad = width - len;
            (pad..width - 1).map(move |col| row * width + col)
        })
        .collect()
}
