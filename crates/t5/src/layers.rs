//! `T5LayerNorm`, `T5Attention` (with the relative position bias), `T5DenseActDense`/`T5DenseGatedActDense`,
//! and the encoder and decoder blocks.
//!
//! Keys (under `{encoder,decoder}.block.N.`): `layer.0.SelfAttention.{q,k,v,o}.weight` (+
//! `relative_attention_bias.weight` in block 0), `layer.0.layer_norm.weight`; encoder `layer.1.DenseReluDense.*`,
//! `layer.1.layer_norm.weight`; decoder `layer.1.EncDecAttention.{q,k,v,o}.weight`, `layer.1.layer_norm.weight`,
//! `layer.2.DenseReluDense.*`, `layer.2.layer_norm.weight`. Rust field names and the renames are listed in
//! [`crate::t5_key_map`].
//!
//! Deliberate choices (as HF): no bias anywhere, **no `1/sqrt(d)` scaling** of the scores, the position bias added
//! to the scores (block 0 computes it, later blocks reuse it; cross-attention has none), softmax computed in f32
//! and rounded to the activations' dtype (`softmax(scores.float()).type_as(scores)`; `blip2_nn::ops::attention`),
//! RMS norm with the variance in f32.

use blip2_nn::ops;
use blip2_nn::{Activation, LayerCache, linear_forward};
use burn::module::Param;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear, LinearConfig, LinearLayout,
};
use burn::prelude::*;
use burn::tensor::DType;

use crate::T5Config;

fn linear<B: Backend>(d_in: usize, d_out: usize, device: &B::Device) -> Linear<B> {
    LinearConfig::new(d_in, d_out)
        .with_bias(false)
        .with_layout(LinearLayout::Col)
        .init(device)
}

/// HF `T5LayerNorm`: `weight * x / sqrt(mean(x²) + eps)`, the mean square in f32, no mean, no bias.
#[derive(Module, Debug)]
pub struct T5LayerNorm<B: Backend> {
    /// `[d_model]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Epsilon.
    pub eps: f64,
}

impl<B: Backend> T5LayerNorm<B> {
    /// Ones, as HF initialises it.
    pub fn new(width: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: burn::module::Initializer::Ones.init([width], device),
            eps,
        }
    }

    /// # Shapes
    /// `[batch, len, d_model]` -> same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let x32 = x.cast(DType::F32);
        let variance = x32.clone().powi_scalar(2).mean_dim(2); // [batch, len, 1]
        // A division, not `sqrt().recip()`: ndarray's `recip` is approximate (3.5e-4 off on 1/sqrt(1/150)), which
        // moved T5 encoder outputs by 2e-4 per block there; flex's is exact.
        let normed = x32 / (variance + self.eps).sqrt();
        let weight = self.weight.val();
        normed.cast(weight.dtype()).cast(dtype) * weight.cast(dtype).unsqueeze_dims::<3>(&[0, 1])
    }
}

/// The relative position bucket of `key_pos - query_pos` (HF `T5Attention._relative_position_bucket`).
pub fn relative_position_bucket(
    relative: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let mut distance = relative;
    if bidirectional {
        buckets /= 2;
        if distance > 0 {
            bucket += buckets;
        }
        distance = distance.abs();
    } else {
        distance = -distance.min(0);
    }
    let max_exact = buckets / 2;
    if distance < max_exact {
        return (bucket + distance) as usize;
    }
    // As torch: the log of the f32 ratio in f32, divided by Python's (f64) log of the distance ratio taken as an
    // f32 scalar, times the bucket count, truncated toward zero.
    let log_ratio = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let scaled = ((distance as f32 / max_exact as f32).ln() / log_ratio
        * (buckets - max_exact) as f32) as i64;
    (bucket + (max_exact + scaled).min(buckets - 1)) as usize
}

/// HF `T5Attention`: self- or cross-attention without biases or scaling.
#[derive(Module, Debug)]
pub struct T5Attention<B: Backend> {
    /// `d_model -> heads * d_kv`.
    pub q: Linear<B>,
    /// Keys.
    pub k: Linear<B>,
    /// Values.
    pub v: Linear<B>,
    /// `heads * d_kv -> d_model`.
    pub o: Linear<B>,
    /// `[num_buckets, heads]`, block 0 of each stack only.
    pub relative_attention_bias: Option<Embedding<B>>,
    /// Dropout on attention probabilities (training only).
    pub dropout: Dropout,
    /// Heads.
    pub num_heads: usize,
    /// Buckets.
    pub num_buckets: usize,
    /// Max distance.
    pub max_distance: usize,
    /// Encoder (bidirectional buckets) or decoder (causal buckets).
    pub bidirectional: bool,
}

/// Where an attention block sits: the encoder's (bidirectional position buckets) or the decoder's (causal
/// buckets); HF's `is_decoder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// The encoder: buckets for both directions.
    Encoder,
    /// The decoder: buckets for earlier positions only.
    Decoder,
}

/// Whether an attention block has its own relative position bias table (the first layer of each stack's
/// self-attention, HF's `has_relative_attention_bias`) or uses the one its stack's first layer computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelativeBias {
    /// Holds `relative_attention_bias`.
    Own,
    /// Reuses the first layer's position bias (or none, for cross-attention).
    Shared,
}

impl<B: Backend> T5Attention<B> {
    /// Fresh (lazily initialised) attention.
    pub fn new(config: &T5Config, bias: RelativeBias, stack: Stack, device: &B::Device) -> Self {
        let has_bias = bias == RelativeBias::Own;
        let bidirectional = stack == Stack::Encoder;
        let inner = config.num_heads * config.d_kv;
        Self {
            q: linear(config.d_model, inner, device),
            k: linear(config.d_model, inner, device),
            v: linear(config.d_model, inner, device),
            o: linear(inner, config.d_model, device),
            relative_attention_bias: has_bias.then(|| {
                EmbeddingConfig::new(config.relative_attention_num_buckets, config.num_heads)
                    .init(device)
            }),
            dropout: DropoutConfig::new(config.dropout_rate).init(),
            num_heads: config.num_heads,
            num_buckets: config.relative_attention_num_buckets,
            max_distance: config.relative_attention_max_distance,
            bidirectional,
        }
    }

    /// The position bias `[1, heads, q_len, k_len]` for queries at `past..past + q_len` and keys at `0..k_len`.
    ///
    /// # Panics
    /// Without `relative_attention_bias` (blocks other than 0 reuse block 0's).
    pub fn compute_bias(
        &self,
        q_len: usize,
        k_len: usize,
        past: usize,
        device: &B::Device,
    ) -> Tensor<B, 4> {
        let table = self
            .relative_attention_bias
            .as_ref()
            .expect("block 0 holds the bias");
        let buckets: Vec<i64> = (0..q_len)
            .flat_map(|q| {
                (0..k_len).map(move |k| {
                    let relative = k as i64 - (q + past) as i64;
                    relative_position_bucket(
                        relative,
                        self.bidirectional,
                        self.num_buckets,
                        self.max_distance,
                    ) as i64
                })
            })
            .collect();
        let buckets =
            Tensor::<B, 2, Int>::from_data(TensorData::new(buckets, [q_len, k_len]), device);
        table
            .forward(buckets) // [q_len, k_len, heads]
            .permute([2, 0, 1])
            .unsqueeze_dim::<4>(0) // [1, heads, q_len, k_len]
    }

    fn heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [batch, len, inner] = x.dims();
        x.reshape([batch, len, self.num_heads, inner / self.num_heads])
            .swap_dims(1, 2)
    }

    /// # Shapes
    /// - `x`: `[batch, q_len, d_model]`; `context`: `[batch, k_len, d_model]` for cross-attention (`None`: self)
    /// - `bias`: position bias (+ additive mask) broadcastable to `[batch, heads, q_len, k_len]`
    /// - returns `[batch, q_len, d_model]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        context: Option<Tensor<B, 3>>,
        bias: Tensor<B, 4>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        let query = self.heads(linear_forward(&self.q, x.clone()));
        let project = |source: Tensor<B, 3>| {
            (
                self.heads(linear_forward(&self.k, source.clone())),
                self.heads(linear_forward(&self.v, source)),
            )
        };
        let (key, value) = match (context, cache) {
            // Cross-attention: keys/values of the encoder output, computed once per cache.
            (Some(context), Some(cache)) => cache.get_or_insert_with(|| project(context)),
            (Some(context), None) => project(context),
            (None, Some(cache)) => {
                let (k, v) = project(x);
                cache.append(k, v)
            }
            (None, None) => project(x),
        };
        // softmax(q kᵀ + bias) v, no 1/sqrt(d_kv): [batch, q_len, heads * d_kv]
        let context = ops::attention(query, key, value, Some(bias), &self.dropout);
        linear_forward(&self.o, context)
    }
}

/// HF `T5DenseActDense` (`wi`, `wo`) or `T5DenseGatedActDense` (`wi_0`, `wi_1`, `wo`).
#[derive(Module, Debug)]
pub struct T5DenseReluDense<B: Backend> {
    /// Plain feed-forward input.
    pub wi: Option<Linear<B>>,
    /// Gated: the activated branch.
    pub wi_0: Option<Linear<B>>,
    /// Gated: the linear branch.
    pub wi_1: Option<Linear<B>>,
    /// Output.
    pub wo: Linear<B>,
    /// Dropout before `wo` (training only).
    pub dropout: Dropout,
    /// The activation.
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Backend> T5DenseReluDense<B> {
    /// Fresh (lazily initialised) feed-forward.
    pub fn new(config: &T5Config, activation: Activation, device: &B::Device) -> Self {
        let gated = config.is_gated();
        let (d, f) = (config.d_model, config.d_ff);
        Self {
            wi: (!gated).then(|| linear(d, f, device)),
            wi_0: gated.then(|| linear(d, f, device)),
            wi_1: gated.then(|| linear(d, f, device)),
            wo: linear(f, d, device),
            dropout: DropoutConfig::new(config.dropout_rate).init(),
            activation,
        }
    }

    /// # Shapes
    /// `[batch, len, d_model]` -> same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = match (&self.wi, &self.wi_0, &self.wi_1) {
            (Some(wi), _, _) => self.activation.forward(linear_forward(wi, x)),
            (None, Some(wi_0), Some(wi_1)) => {
                self.activation.forward(linear_forward(wi_0, x.clone())) * linear_forward(wi_1, x)
            }
            _ => unreachable!("built with either wi or wi_0 and wi_1"),
        };
        linear_forward(&self.wo, self.dropout.forward(hidden))
    }
}

/// HF `T5LayerSelfAttention`: `x + attn(norm(x))`.
#[derive(Module, Debug)]
pub struct T5LayerSelfAttention<B: Backend> {
    /// `SelfAttention` in the checkpoint.
    pub self_attention: T5Attention<B>,
    /// Pre-norm.
    pub layer_norm: T5LayerNorm<B>,
    /// Dropout on the output (training only).
    pub dropout: Dropout,
}

/// HF `T5LayerCrossAttention`: `x + attn(norm(x), encoder)`.
#[derive(Module, Debug)]
pub struct T5LayerCrossAttention<B: Backend> {
    /// `EncDecAttention` in the checkpoint.
    pub enc_dec_attention: T5Attention<B>,
    /// Pre-norm.
    pub layer_norm: T5LayerNorm<B>,
    /// Dropout on the output (training only).
    pub dropout: Dropout,
}

fn attention_sublayer<B: Backend>(
    attention: &T5Attention<B>,
    layer_norm: &T5LayerNorm<B>,
    dropout: &Dropout,
    x: Tensor<B, 3>,
    context: Option<Tensor<B, 3>>,
    bias: Tensor<B, 4>,
    cache: Option<&mut LayerCache<B>>,
) -> Tensor<B, 3> {
    let attended = attention.forward(layer_norm.forward(x.clone()), context, bias, cache);
    x + dropout.forward(attended)
}

impl<B: Backend> T5LayerSelfAttention<B> {
    fn new(config: &T5Config, bias: RelativeBias, stack: Stack, device: &B::Device) -> Self {
        Self {
            self_attention: T5Attention::new(config, bias, stack, device),
            layer_norm: T5LayerNorm::new(config.d_model, config.layer_norm_epsilon, device),
            dropout: DropoutConfig::new(config.dropout_rate).init(),
        }
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        bias: Tensor<B, 4>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        attention_sublayer(
            &self.self_attention,
            &self.layer_norm,
            &self.dropout,
            x,
            None,
            bias,
            cache,
        )
    }
}

impl<B: Backend> T5LayerCrossAttention<B> {
    fn new(config: &T5Config, device: &B::Device) -> Self {
        Self {
            enc_dec_attention: T5Attention::new(
                config,
                RelativeBias::Shared,
                Stack::Decoder,
                device,
            ),
            layer_norm: T5LayerNorm::new(config.d_model, config.layer_norm_epsilon, device),
            dropout: DropoutConfig::new(config.dropout_rate).init(),
        }
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        encoder: Tensor<B, 3>,
        mask: Tensor<B, 4>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        attention_sublayer(
            &self.enc_dec_attention,
            &self.layer_norm,
            &self.dropout,
            x,
            Some(encoder),
            mask,
            cache,
        )
    }
}

/// HF `T5LayerFF`: `x + ff(norm(x))`.
#[derive(Module, Debug)]
pub struct T5LayerFf<B: Backend> {
    /// `DenseReluDense` in the checkpoint.
    pub dense_relu_dense: T5DenseReluDense<B>,
    /// Pre-norm.
    pub layer_norm: T5LayerNorm<B>,
    /// Dropout on the output (training only).
    pub dropout: Dropout,
}

impl<B: Backend> T5LayerFf<B> {
    fn new(config: &T5Config, activation: Activation, device: &B::Device) -> Self {
        Self {
            dense_relu_dense: T5DenseReluDense::new(config, activation, device),
            layer_norm: T5LayerNorm::new(config.d_model, config.layer_norm_epsilon, device),
            dropout: DropoutConfig::new(config.dropout_rate).init(),
        }
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let out = self
            .dense_relu_dense
            .forward(self.layer_norm.forward(x.clone()));
        x + self.dropout.forward(out)
    }
}

/// An encoder `T5Block`: `layer.0` self-attention, `layer.1` feed-forward.
#[derive(Module, Debug)]
pub struct T5EncoderBlock<B: Backend> {
    /// `layer.0`.
    pub layer_0: T5LayerSelfAttention<B>,
    /// `layer.1`.
    pub layer_1: T5LayerFf<B>,
}

/// A decoder `T5Block`: `layer.0` causal self-attention, `layer.1` cross-attention, `layer.2` feed-forward.
#[derive(Module, Debug)]
pub struct T5DecoderBlock<B: Backend> {
    /// `layer.0`.
    pub layer_0: T5LayerSelfAttention<B>,
    /// `layer.1`.
    pub layer_1: T5LayerCrossAttention<B>,
    /// `layer.2`.
    pub layer_2: T5LayerFf<B>,
}

impl<B: Backend> T5EncoderBlock<B> {
    /// Fresh block; block 0 holds the relative position bias.
    pub fn new(
        config: &T5Config,
        index: usize,
        activation: Activation,
        device: &B::Device,
    ) -> Self {
        Self {
            layer_0: T5LayerSelfAttention::new(config, first_bias(index), Stack::Encoder, device),
            layer_1: T5LayerFf::new(config, activation, device),
        }
    }

    /// # Shapes
    /// `x`: `[batch, len, d_model]`, `bias`: `[batch, heads, len, len]` (position bias + mask)
    pub fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        self.layer_1.forward(self.layer_0.forward(x, bias, None))
    }
}

impl<B: Backend> T5DecoderBlock<B> {
    /// Fresh block; block 0 holds the relative position bias (self-attention only).
    pub fn new(
        config: &T5Config,
        index: usize,
        activation: Activation,
        device: &B::Device,
    ) -> Self {
        Self {
            layer_0: T5LayerSelfAttention::new(config, first_bias(index), Stack::Decoder, device),
            layer_1: T5LayerCrossAttention::new(config, device),
            layer_2: T5LayerFf::new(config, activation, device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, new_len, d_model]`; `encoder`: `[batch, enc_len, d_model]`
    /// - `self_bias`: `[batch, heads, new_len, kv_len]`; `cross_mask`: `[batch, 1, 1, enc_len]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        self_bias: Tensor<B, 4>,
        encoder: Tensor<B, 3>,
        cross_mask: Tensor<B, 4>,
        self_cache: Option<&mut LayerCache<B>>,
        cross_cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        let x = self.layer_0.forward(x, self_bias, self_cache);
        let x = self.layer_1.forward(x, encoder, cross_mask, cross_cache);
        self.layer_2.forward(x)
    }
}

/// The first layer of a stack owns the relative position bias; the others reuse its output.
fn first_bias(index: usize) -> RelativeBias {
    if index == 0 {
        RelativeBias::Own
    } else {
        RelativeBias::Shared
    }
}
