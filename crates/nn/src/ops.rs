//! The attention layers' products and softmax, and layer norms, with the flex fast paths for bf16: flex converts
//! both operands of a bf16 product (and a layer norm's input and output) to f32 on one thread, one element at a
//! time, and runs its bf16 softmax as a scalar loop; here the conversions are threaded and vectorised
//! ([`crate::kernels::widen_bf16`], [`crate::kernels::narrow_bf16`]), the softmax is flex's vectorised f32 one,
//! and [`qkv_attention`] fuses a whole self-attention. Every other backend and dtype, `Autodiff<Flex>` included,
//! takes Burn's ops unchanged.

use burn::nn::LayerNorm;
use burn::prelude::{Backend, Tensor};

/// `a.matmul(b)`. On flex in bf16 the result has the same bits as Burn's product (the same f32 product of the
/// same exactly widened operands, rounded once).
///
/// ```
/// use blip2_nn::backend::DefaultBackend;
/// use burn::prelude::*;
///
/// let device = Default::default();
/// let a = Tensor::<DefaultBackend, 2>::from_floats([[1.0, 2.0]], &device);
/// let b = Tensor::<DefaultBackend, 2>::from_floats([[3.0], [4.0]], &device);
/// let y: Vec<f32> = blip2_nn::ops::matmul(a, b).into_data().to_vec().unwrap();
/// assert_eq!(y, [11.0]);
/// ```
///
/// On Burn's cubecl backends (wgpu, CUDA), a vector-matrix or matrix-vector product (one row of `a`, or one
/// column of `b`: a decoding step's attention) has its inner axis, and for one row its output axis, padded with
/// zeros to a multiple of [`GEMV_PAD`] and the padding sliced off the result (the same values: the padded terms
/// are products of zeros). cubecl 0.10 keys its matmul autotune results by rounded sizes and can reuse a
/// vector-matrix kernel chosen for one size on another it cannot launch for ("Rhs dimension n=22 must be a
/// multiple of plane size 8", a panic; tracel-ai/cubecl#1611), which decoding meets as the cache grows.
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let (a, b) = match crate::tensor_flex::try_matmul_bf16(a, b) {
        Ok(y) => return y,
        Err(operands) => operands,
    };
    let (m, n) = (a.dims()[D - 2], b.dims()[D - 1]);
    if (m == 1 || n == 1) && B::name(&a.device()).contains("cubecl") {
        return gemv_padded(a, b);
    }
    a.matmul(b)
}

/// The multiple that [`matmul`] pads a vector-matrix product's axes to on cubecl backends: the largest plane
/// (subgroup) size of the GPUs cubecl targets (64 on AMD; 32 on NVIDIA; 8-32 on lavapipe and others).
pub const GEMV_PAD: usize = 64;

/// `a.matmul(b)` with the inner axis padded with zeros to a multiple of [`GEMV_PAD`], and with one row in `a`
/// the output axis too (its padding sliced off).
fn gemv_padded<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    let (m, k, n) = (a.dims()[D - 2], a.dims()[D - 1], b.dims()[D - 1]);
    let kp = k.next_multiple_of(GEMV_PAD);
    let np = if m == 1 {
        n.next_multiple_of(GEMV_PAD)
    } else {
        n
    };
    let a = zero_pad(a, D - 1, kp);
    let b = zero_pad(zero_pad(b, D - 2, kp), D - 1, np);
    let y = a.matmul(b);
    if np == n { y } else { y.narrow(D - 1, 0, n) }
}

/// `x` with zeros appended along `dim` up to `len` values, in `x`'s dtype.
fn zero_pad<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize, len: usize) -> Tensor<B, D> {
    let mut dims = x.dims();
    if dims[dim] >= len {
        return x;
    }
    dims[dim] = len - dims[dim];
    let zeros = Tensor::<B, D>::zeros(dims, (&x.device(), x.dtype()));
    Tensor::cat(vec![x, zeros], dim)
}

/// `softmax(x, dim)`. On flex in bf16 it is computed in f32 and rounded once (as torch's bf16 softmax is; flex's
/// own rounds the exponentials first), so it can differ from Burn's bf16 softmax by one bf16 rounding step.
pub fn softmax<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = match crate::tensor_flex::try_softmax_bf16(x, dim) {
        Ok(y) => return y,
        Err(x) => x,
    };
    burn::tensor::activation::softmax(x, dim)
}

/// Softmax self-attention of a fused projection `qkv: [batch, seq, 3 * heads * head_dim]` (for each token the
/// queries of every head, then the keys, then the values, head-major: HF's ViT `qkv` layout), as
/// `[batch, seq, heads * head_dim]`: `softmax(q kᵀ * scale) v` per head, without masks or dropout. `None` when
/// this backend and dtype have no fused kernel (then run the separate ops); today that is flex in bf16 on a
/// CPU with AVX512-BF16, where it follows the rounding steps of HF's eager attention in bf16
/// ([`crate::kernels::attention_qkv_bf16`]) and runs heads in parallel without copying them out.
pub fn qkv_attention<B: Backend>(
    qkv: &Tensor<B, 3>,
    heads: usize,
    scale: f64,
) -> Option<Tensor<B, 3>> {
    #[cfg(feature = "flex")]
    return crate::tensor_flex::try_qkv_attention(qkv, heads, scale);
    #[cfg(not(feature = "flex"))]
    {
        let _ = (qkv, heads, scale);
        None
    }
}

/// Softmax attention of separate heads, merged back: `softmax(q kᵀ + mask) v` for each batch row and head, as
/// `[batch, q_len, heads * head_dim]`, with `dropout` on the probabilities (a no-op outside training). No
/// scaling: pass the queries scaled (OPT) or not (T5).
///
/// The steps are those of HF's eager attention in the inputs' dtype: the product (and the sum with the mask)
/// in that dtype, the softmax computed in f32 and rounded back once, then the product with the values. On flex
/// in bf16 on a CPU with AVX512-BF16 they run fused, a head per task, reading the heads where they lie and
/// writing the merged context ([`crate::kernels::attention_bf16`]); elsewhere as separate tensor ops.
///
/// # Shapes
/// - `q`: `[batch, heads, q_len, head_dim]`; `k`, `v`: `[batch, heads, kv_len, head_dim]`
/// - `mask`: additive, broadcastable to `[batch, heads, q_len, kv_len]`
/// - returns `[batch, q_len, heads * head_dim]`
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4>>,
    dropout: &burn::nn::Dropout,
) -> Tensor<B, 3> {
    // Flex only (not `Autodiff<Flex>`): on flex dropout is a no-op, so the fused kernel leaves nothing out.
    #[cfg(feature = "flex")]
    if let Some(context) = crate::tensor_flex::try_attention(&q, &k, &v, mask.as_ref()) {
        return context;
    }
    let [batch, heads, q_len, head_dim] = q.dims();
    let dtype = q.dtype();
    let scores = matmul(q, k.swap_dims(2, 3)); // [batch, heads, q_len, kv_len]
    let scores = match mask {
        Some(mask) => scores + mask,
        None => scores,
    };
    let probs =
        burn::tensor::activation::softmax(scores.cast(burn::tensor::DType::F32), 3).cast(dtype);
    let context = matmul(dropout.forward(probs), v); // [batch, heads, q_len, head_dim]
    context
        .swap_dims(1, 2)
        .reshape([batch, q_len, heads * head_dim])
}

/// `a + b` (same shapes, no broadcasting needed). On flex in bf16 with both contiguous, threaded and vectorised
/// with the bits of Burn's sum (the f32 sum rounded once); otherwise Burn's `+`. For the residual connections of
/// the bf16 encoders, where flex's own bf16 sum runs one element at a time on one thread.
pub fn add<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let (a, b) = match crate::tensor_flex::try_add_bf16(a, b) {
        Ok(sum) => return sum,
        Err(ab) => ab,
    };
    a + b
}

/// `norm.forward(x)`. On flex in bf16 the result has the same bits as Burn's layer norm (the same f32 layer norm
/// of the exactly widened input, rounded once), with the conversions threaded and vectorised.
pub fn layer_norm<B: Backend, const D: usize>(
    norm: &LayerNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = match crate::tensor_flex::try_layer_norm_bf16(norm, x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    norm.forward(x)
}

/// A patch embedding: `conv.forward(x)` for a convolution whose stride equals its kernel (non-overlapping
/// patches, no padding, no dilation, one group), as `[batch, patches, channels_out]` with the patches in
/// row-major order (`conv.forward(x).flatten(2, 3).swap_dims(1, 2)`). A remainder of the image beyond whole
/// patches is dropped, as the valid convolution does.
///
/// On flex in bf16 the patches are cut out as rows of `channels_in * kh * kw` values and multiplied by the
/// kernel as a `Linear` ([`crate::linear_forward`]: blip2's bf16 kernels, f32 sums rounded once), which is within
/// the bf16 rounding of flex's convolution (it widens to f32, runs its f32 convolution and rounds); every other
/// backend and dtype, f32 on flex included, runs `conv.forward` unchanged.
///
/// # Shapes
/// - `x`: `[batch, channels_in, height, width]`
/// - returns `[batch, (height / kh) * (width / kw), channels_out]`
pub fn patch_embed<B: Backend>(conv: &burn::nn::conv::Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    if let Some(y) = patches_as_rows(conv, &x) {
        return y;
    }
    conv.forward(x).flatten::<3>(2, 3).swap_dims(1, 2)
}

/// [`patch_embed`]'s flex bf16 path; `None` where it does not apply.
#[cfg(feature = "flex")]
fn patches_as_rows<B: Backend>(
    conv: &burn::nn::conv::Conv2d<B>,
    x: &Tensor<B, 4>,
) -> Option<Tensor<B, 3>> {
    use burn::nn::PaddingConfig2d;
    use burn::tensor::DType;
    let weight = conv.weight.val();
    let [out, cin, kh, kw] = weight.dims();
    let [batch, channels, height, width] = x.dims();
    let patchify = conv.stride == [kh, kw]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && matches!(
            conv.padding,
            PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0)
        );
    if std::any::TypeId::of::<B>() != std::any::TypeId::of::<burn::backend::Flex>()
        || x.dtype() != DType::BF16
        || weight.dtype() != DType::BF16
        || !patchify
        || channels != cin
        || height < kh
        || width < kw
    {
        return None;
    }
    let (gh, gw) = (height / kh, width / kw);
    let rows = x
        .clone()
        .narrow(2, 0, gh * kh)
        .narrow(3, 0, gw * kw)
        .reshape([batch, cin, gh, kh, gw, kw])
        .permute([0, 2, 4, 1, 3, 5]) // [batch, gh, gw, cin, kh, kw]
        .reshape([batch, gh * gw, cin * kh * kw]);
    let linear = burn::nn::Linear {
        // `[in, out]`, the transposed view of the kernel's `[out, cin * kh * kw]`, as a PyTorch-layout `Linear`.
        weight: burn::module::Param::from_tensor(weight.reshape([out, cin * kh * kw]).transpose()),
        bias: conv
            .bias
            .as_ref()
            .map(|b| burn::module::Param::from_tensor(b.val())),
    };
    Some(crate::linear_forward(&linear, rows))
}
