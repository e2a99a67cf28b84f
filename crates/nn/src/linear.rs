//! Applying a PyTorch-layout `Linear` to activations of any rank without copying its weight.
//!
//! Every blip2 model stores linear weights as HF does, `[out, in]` (`LinearLayout::Col`), so `weight.val()` is
//! a transposed view. Burn 0.21's `linear` first reshapes the weight to the input's rank (`[1, in, out]` for a
//! `[batch, seq_len, in]` input), and reshaping a transposed view makes a contiguous copy of the whole weight on
//! every call: for ViT-g's `fc1` (1408 -> 6144, 257 tokens) on flex that took 66 ms against 25 ms for the same
//! product on 2-D operands (2-core EPYC, release). Flattening the leading dimensions keeps both operands 2-D,
//! and flex's gemm reads the transposed view in place.

use burn::nn::Linear;
use burn::prelude::{Backend, Tensor};

/// `linear.forward(x)` for `x` of shape `[..., in]`, computed on a 2-D view `[prod(...), in]`.
///
/// # Shapes
/// - `x`: `[d0, ..., in]`
/// - returns `[d0, ..., out]`
pub fn linear_forward<B: Backend, const D: usize>(
    linear: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    if D <= 2 {
        return linear.forward(x);
    }
    let dims = x.dims();
    let rows: usize = dims[..D - 1].iter().product();
    let flat = x.reshape([rows, dims[D - 1]]); // [rows, in]
    let out = linear.forward(flat); // [rows, out]
    let mut shape = dims;
    shape[D - 1] = out.dims()[1];
    out.reshape(shape)
}
