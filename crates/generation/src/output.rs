//! [`GenerationOutput`]: what a generation run returns, whichever the strategy.

use burn::prelude::{Backend, Int, Tensor};
use burn::tensor::TensorData;

/// What a generation run returns.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    /// `[batch * num_return_sequences]` rows of equal length, as transformers' `sequences`: the prompt ids
    /// (decoder-only) or the start token (encoder-decoder), the new ids, then the pad id after a row ended.
    pub sequences: Vec<Vec<u32>>,
    /// Beam search: each returned hypothesis's length-normalised log-probability.
    pub sequences_scores: Option<Vec<f32>>,
    /// How many leading ids of every row are not generated.
    pub prompt_len: usize,
    /// Rows per prompt.
    pub num_return_sequences: usize,
}

impl GenerationOutput {
    /// Row `i` without its leading prompt ids.
    pub fn new_tokens(&self, i: usize) -> &[u32] {
        &self.sequences[i][self.prompt_len..]
    }

    /// The sequences as i64 rows (transformers' dtype).
    pub fn to_i64_rows(&self) -> Vec<Vec<i64>> {
        self.sequences
            .iter()
            .map(|row| row.iter().map(|&t| i64::from(t)).collect())
            .collect()
    }

    /// The sequences as a `[rows, len]` tensor.
    pub fn to_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        let rows = self.sequences.len();
        let len = self.sequences.first().map_or(0, Vec::len);
        let data: Vec<i64> = self.to_i64_rows().into_iter().flatten().collect();
        Tensor::from_data(TensorData::new(data, [rows, len]), device)
    }
}
