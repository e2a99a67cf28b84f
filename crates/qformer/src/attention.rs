//! `Blip2QFormerMultiHeadAttention`, `Blip2QFormerSelfOutput`, `Blip2QFormerAttention`: BERT's post-LN attention
//! block, for self-attention and for the queries' cross-attention to the image.
//!
//! Keys (under `qformer.encoder.layer.N.attention.` or `.crossattention.`): `attention.{query,key,value}.*`
//! (cross-attention keys/values are `[hidden, encoder_hidden_size]`), `output.dense.*`, `output.LayerNorm.*`
//! (field `layer_norm`, renamed by the crate's key map).
//!
//! Deliberate choices: the eager form `softmax(q kᵀ · head_dim^-0.5 + mask) v` with the softmax in the activations'
//! dtype (HF's BLIP attention does not upcast), and an additive mask of the dtype's minimum at padded keys (what
//! transformers 5.x's `create_bidirectional_mask` gives eager attention).

use blip2_nn::linear_forward;
use blip2_nn::ops::{layer_norm, matmul, softmax};
use burn::nn::{
    Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, LinearLayout,
};
use burn::prelude::*;

use crate::Blip2QFormerConfig;

pub(crate) fn linear<B: Backend>(d_in: usize, d_out: usize, device: &B::Device) -> Linear<B> {
    LinearConfig::new(d_in, d_out)
        .with_layout(LinearLayout::Col)
        .init(device)
}

/// HF `Blip2QFormerMultiHeadAttention`: separate query/key/value projections.
#[derive(Module, Debug)]
pub struct Blip2QFormerMultiHeadAttention<B: Backend> {
    /// `hidden -> hidden`.
    pub query: Linear<B>,
    /// `hidden` (or `encoder_hidden_size` for cross-attention) `-> hidden`.
    pub key: Linear<B>,
    /// Same shape as `key`.
    pub value: Linear<B>,
    /// Dropout on the attention probabilities (training only).
    pub dropout: Dropout,
    /// Heads.
    pub num_heads: usize,
}

/// What an attention block attends to: its own input, or the image (keys and values of width
/// `encoder_hidden_size`; HF's `is_cross_attention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// Queries, keys and values from the layer's input.
    SelfAttention,
    /// Queries from the layer's input, keys and values from the image features.
    CrossAttention,
}

impl<B: Backend> Blip2QFormerMultiHeadAttention<B> {
    /// Fresh (lazily initialised) attention of `kind`.
    pub fn new(config: &Blip2QFormerConfig, kind: AttentionKind, device: &B::Device) -> Self {
        let hidden = config.hidden_size;
        let kv_in = match kind {
            AttentionKind::CrossAttention => config.encoder_hidden_size,
            AttentionKind::SelfAttention => hidden,
        };
        Self {
            query: linear(hidden, hidden, device),
            key: linear(kv_in, hidden, device),
            value: linear(kv_in, hidden, device),
            dropout: DropoutConfig::new(config.attention_probs_dropout_prob).init(),
            num_heads: config.num_attention_heads,
        }
    }

    fn heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [batch, len, hidden] = x.dims();
        x.reshape([batch, len, self.num_heads, hidden / self.num_heads]) // [batch, len, heads, head_dim]
            .swap_dims(1, 2) // [batch, heads, len, head_dim]
    }

    /// # Shapes
    /// - `hidden_states`: `[batch, seq_len, hidden]`
    /// - `context`: keys/values `[batch, kv_len, kv_hidden]` (the image for cross-attention; `hidden_states`
    ///   for self-attention)
    /// - `additive_mask`: `[batch, 1, 1, kv_len]`, 0 or the dtype's minimum
    /// - returns `[batch, seq_len, hidden]`
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 3>,
        context: Tensor<B, 3>,
        additive_mask: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 3> {
        let [batch, seq_len, hidden] = hidden_states.dims();
        let head_dim = hidden / self.num_heads;
        let query = self.heads(linear_forward(&self.query, hidden_states));
        let key = self.heads(linear_forward(&self.key, context.clone()));
        let value = self.heads(linear_forward(&self.value, context));
        let scale = (head_dim as f64).powf(-0.5);
        let mut scores = matmul(query, key.swap_dims(2, 3)).mul_scalar(scale); // [batch, heads, seq_len, kv_len]
        if let Some(mask) = additive_mask {
            scores = scores + mask;
        }
        let probs = self.dropout.forward(softmax(scores, 3));
        let context = matmul(probs, value); // [batch, heads, seq_len, head_dim]
        context.swap_dims(1, 2).reshape([batch, seq_len, hidden])
    }
}

/// HF `Blip2QFormerSelfOutput`: `LayerNorm(dropout(dense(x)) + residual)`.
#[derive(Module, Debug)]
pub struct Blip2QFormerSelfOutput<B: Backend> {
    /// `hidden -> hidden`.
    pub dense: Linear<B>,
    /// HF's `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    /// Dropout after `dense` (training only).
    pub dropout: Dropout,
}

impl<B: Backend> Blip2QFormerSelfOutput<B> {
    /// Fresh (lazily initialised) output block.
    pub fn new(config: &Blip2QFormerConfig, device: &B::Device) -> Self {
        Self {
            dense: linear(config.hidden_size, config.hidden_size, device),
            layer_norm: LayerNormConfig::new(config.hidden_size)
                .with_epsilon(config.layer_norm_eps)
                .init(device),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
        }
    }

    /// # Shapes
    /// `[batch, seq_len, hidden]` (both) `-> [batch, seq_len, hidden]`
    pub fn forward(&self, hidden_states: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self
            .dropout
            .forward(linear_forward(&self.dense, hidden_states));
        layer_norm(&self.layer_norm, x + residual)
    }
}

/// HF `Blip2QFormerAttention`: attention then the post-LN output block.
#[derive(Module, Debug)]
pub struct Blip2QFormerAttention<B: Backend> {
    /// The multi-head attention.
    pub attention: Blip2QFormerMultiHeadAttention<B>,
    /// Dense + residual + LayerNorm.
    pub output: Blip2QFormerSelfOutput<B>,
}

impl<B: Backend> Blip2QFormerAttention<B> {
    /// Fresh (lazily initialised) block of `kind`.
    pub fn new(config: &Blip2QFormerConfig, kind: AttentionKind, device: &B::Device) -> Self {
        Self {
            attention: Blip2QFormerMultiHeadAttention::new(config, kind, device),
            output: Blip2QFormerSelfOutput::new(config, device),
        }
    }

    /// Self-attention when `encoder_hidden_states` is `None`, else cross-attention to it (without a mask: BLIP-2's
    /// image mask is all ones).
    ///
    /// # Shapes
    /// - `hidden_states`: `[batch, seq_len, hidden]`; `encoder_hidden_states`: `[batch, kv_len, encoder_hidden]`
    /// - `additive_mask` (self-attention only): `[batch, 1, 1, seq_len]`
    /// - returns `[batch, seq_len, hidden]`
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 3>,
        additive_mask: Option<Tensor<B, 4>>,
        encoder_hidden_states: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let attended = match encoder_hidden_states {
            Some(image) => self.attention.forward(hidden_states.clone(), image, None),
            None => {
                self.attention
                    .forward(hidden_states.clone(), hidden_states.clone(), additive_mask)
            }
        };
        self.output.forward(attended, hidden_states)
    }
}
