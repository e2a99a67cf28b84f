//! Attention masks: padding, causal, and both, as boolean masks (true = masked, Burn's convention for
//! `attention`) and as additive masks with an explicit fill value.
//!
//! HF has two conventions for the additive fill, and the choice shows in the outputs of rows that are fully
//! masked (the query rows of left padding in a causal LM): old BERT-style code adds `-10000`
//! ([`MaskValue::Value`]); transformers 5.x builds its eager masks with the dtype's most negative finite value
//! ([`MaskValue::DtypeMin`]). With the dtype minimum, every score of a fully masked row becomes exactly that
//! minimum, the softmax is uniform over all keys, and the row's output is the mean of the values; with `-inf`
//! such a row would be NaN. Pick the convention of the model being ported and say which in its file.

use burn::prelude::{Backend, Bool, Int, Tensor};
use burn::tensor::DType;

use crate::backend::FloatDType;

/// What masked positions of an additive mask hold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MaskValue {
    /// The most negative finite value of the scores' dtype (`torch.finfo(dtype).min`), as transformers 5.x does.
    DtypeMin,
    /// A fixed value, e.g. `-10000.0` for older BERT-style code.
    Value(f64),
}

impl MaskValue {
    /// The fill value for scores of `dtype`.
    pub fn value(self, dtype: FloatDType) -> f64 {
        match self {
            Self::DtypeMin => dtype_min(dtype),
            Self::Value(v) => v,
        }
    }
}

/// `torch.finfo(dtype).min`.
pub fn dtype_min(dtype: FloatDType) -> f64 {
    match dtype {
        FloatDType::F32 => f64::from(f32::MIN),
        FloatDType::F16 => half::f16::MIN.to_f64(),
        FloatDType::BF16 => half::bf16::MIN.to_f64(),
    }
}

/// Key padding mask from an HF `attention_mask` (1 = keep, 0 = pad).
///
/// # Shapes
/// `attention_mask`: `[batch, kv_len]` -> `[batch, 1, 1, kv_len]`, true where the key is padding.
pub fn padding_mask<B: Backend>(attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 4, Bool> {
    let [batch, kv_len] = attention_mask.dims();
    attention_mask.equal_elem(0).reshape([batch, 1, 1, kv_len])
}

/// Causal mask for `q_len` queries that are the last `q_len` of `kv_len` positions (a KV cache holds the first
/// `kv_len - q_len`): query `i` sees keys `0..=kv_len - q_len + i`.
///
/// # Shapes
/// `[1, 1, q_len, kv_len]`, true where the key is in the query's future.
///
/// # Panics
/// If `q_len > kv_len` (a programming error, not user input).
pub fn causal_mask<B: Backend>(
    q_len: usize,
    kv_len: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    assert!(
        q_len <= kv_len,
        "causal mask: {q_len} queries but only {kv_len} keys"
    );
    let past = (kv_len - q_len) as i64;
    let query = Tensor::<B, 1, Int>::arange(past..past + q_len as i64, device).reshape([q_len, 1]);
    let key = Tensor::<B, 1, Int>::arange(0..kv_len as i64, device).reshape([1, kv_len]);
    key.greater(query).reshape([1, 1, q_len, kv_len])
}

/// Causal and padding masks combined, for a decoder fed `q_len` new positions with an `attention_mask` that
/// covers all `kv_len` positions (cache included).
///
/// # Shapes
/// `attention_mask`: `[batch, kv_len]` -> `[batch, 1, q_len, kv_len]`, true where masked.
pub fn causal_padding_mask<B: Backend>(
    attention_mask: Tensor<B, 2, Int>,
    q_len: usize,
) -> Tensor<B, 4, Bool> {
    let [batch, kv_len] = attention_mask.dims();
    let device = attention_mask.device();
    let causal = causal_mask::<B>(q_len, kv_len, &device).expand([batch, 1, q_len, kv_len]);
    let padding = padding_mask(attention_mask).expand([batch, 1, q_len, kv_len]);
    causal.bool_or(padding)
}

/// Additive mask: `0` where `mask` is false, `value` where it is true, in `dtype`.
///
/// # Shapes
/// Same as `mask`.
pub fn additive_mask<B: Backend, const D: usize>(
    mask: Tensor<B, D, Bool>,
    value: MaskValue,
    dtype: FloatDType,
) -> Tensor<B, D> {
    let device = mask.device();
    let zeros = Tensor::<B, D>::zeros(mask.shape(), (&device, dtype.dtype()));
    zeros.mask_fill(mask, value.value(dtype))
}

/// The dtype of `x` as a [`FloatDType`] (f32 for anything else, e.g. `Flex32`).
pub fn float_dtype_of<B: Backend, const D: usize>(x: &Tensor<B, D>) -> FloatDType {
    match x.dtype() {
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        _ => FloatDType::F32,
    }
}
