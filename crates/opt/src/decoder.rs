//! `OPTAttention` and `OPTDecoderLayer`.
//!
//! Keys (under `model.decoder.layers.N.`): `self_attn.{q_proj,k_proj,v_proj,out_proj}.*`, `self_attn_layer_norm.*`,
//! `fc1.*`, `fc2.*`, `final_layer_norm.*` (the layer's feed-forward LayerNorm; biases only with `enable_bias`).
//!
//! Deliberate choices (as HF): queries are scaled by `head_dim^-0.5` *before* the product with the keys; the mask
//! is additive with the dtype's minimum (a left-pad query row, whose every key is masked, then gets a uniform
//! softmax, as in the reference); the softmax runs in f32 and is cast back.

use blip2_nn::ops;
use blip2_nn::{Activation, LayerCache, linear_forward};
use burn::nn::{
    Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, LinearLayout,
};
use burn::prelude::*;

use crate::OptConfig;

pub(crate) fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    bias: bool,
    device: &B::Device,
) -> Linear<B> {
    LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_layout(LinearLayout::Col)
        .init(device)
}

/// torch's `nn.LayerNorm` default eps (1e-5): OPT configs do not set one.
pub(crate) fn layer_norm<B: Backend>(width: usize, device: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(width).with_epsilon(1e-5).init(device)
}

/// HF `OPTAttention`.
#[derive(Module, Debug)]
pub struct OptAttention<B: Backend> {
    /// Keys.
    pub k_proj: Linear<B>,
    /// Values.
    pub v_proj: Linear<B>,
    /// Queries.
    pub q_proj: Linear<B>,
    /// Output.
    pub out_proj: Linear<B>,
    /// Dropout on the attention probabilities (training only).
    pub dropout: Dropout,
    /// Heads.
    pub num_heads: usize,
}

impl<B: Backend> OptAttention<B> {
    /// Fresh (lazily initialised) attention.
    pub fn new(config: &OptConfig, device: &B::Device) -> Self {
        let (hidden, bias) = (config.hidden_size, config.enable_bias);
        Self {
            k_proj: linear(hidden, hidden, bias, device),
            v_proj: linear(hidden, hidden, bias, device),
            q_proj: linear(hidden, hidden, bias, device),
            out_proj: linear(hidden, hidden, bias, device),
            dropout: DropoutConfig::new(config.attention_dropout).init(),
            num_heads: config.num_attention_heads,
        }
    }

    fn heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [batch, len, hidden] = x.dims();
        x.reshape([batch, len, self.num_heads, hidden / self.num_heads]) // [batch, len, heads, head_dim]
            .swap_dims(1, 2) // [batch, heads, len, head_dim]
    }

    /// # Shapes
    /// - `hidden_states`: `[batch, new_len, hidden]`
    /// - `mask`: additive, `[batch, 1, new_len, kv_len]` (`kv_len` = cached + new)
    /// - returns `[batch, new_len, hidden]`
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 3>,
        mask: Tensor<B, 4>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        let hidden = hidden_states.dims()[2];
        let head_dim = hidden / self.num_heads;
        let scale = (head_dim as f64).powf(-0.5);
        // HF scales the projected queries (bias included) before the product.
        let query =
            self.heads(linear_forward(&self.q_proj, hidden_states.clone()).mul_scalar(scale));
        let key = self.heads(linear_forward(&self.k_proj, hidden_states.clone()));
        let value = self.heads(linear_forward(&self.v_proj, hidden_states));
        let (key, value) = match cache {
            Some(cache) => cache.append(key, value),
            None => (key, value),
        }; // [batch, heads, kv_len, head_dim]
        // softmax(q kᵀ + mask) in f32, rounded to the dtype, times the values: [batch, new_len, hidden]
        let context = ops::attention(query, key, value, Some(mask), &self.dropout);
        linear_forward(&self.out_proj, context)
    }
}

/// HF `OPTDecoderLayer`, pre-LN (`do_layer_norm_before`) or post-LN (opt-350m).
#[derive(Module, Debug)]
pub struct OptDecoderLayer<B: Backend> {
    /// Self-attention.
    pub self_attn: OptAttention<B>,
    /// LayerNorm of the attention block.
    pub self_attn_layer_norm: LayerNorm<B>,
    /// `hidden -> ffn_dim`.
    pub fc1: Linear<B>,
    /// `ffn_dim -> hidden`.
    pub fc2: Linear<B>,
    /// LayerNorm of the feed-forward block.
    pub final_layer_norm: LayerNorm<B>,
    /// Dropout on each block's output (training only).
    pub dropout: Dropout,
    /// `activation_function`.
    #[module(skip)]
    pub activation: Activation,
    /// Pre-LN when true.
    pub do_layer_norm_before: bool,
}

impl<B: Backend> OptDecoderLayer<B> {
    /// Fresh (lazily initialised) layer.
    pub fn new(config: &OptConfig, activation: Activation, device: &B::Device) -> Self {
        let (hidden, bias) = (config.hidden_size, config.enable_bias);
        Self {
            self_attn: OptAttention::new(config, device),
            self_attn_layer_norm: layer_norm(hidden, device),
            fc1: linear(hidden, config.ffn_dim, bias, device),
            fc2: linear(config.ffn_dim, hidden, bias, device),
            final_layer_norm: layer_norm(hidden, device),
            dropout: DropoutConfig::new(config.dropout).init(),
            activation,
            do_layer_norm_before: config.do_layer_norm_before,
        }
    }

    /// # Shapes
    /// `[batch, new_len, hidden]`, mask `[batch, 1, new_len, kv_len]` `-> [batch, new_len, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: Tensor<B, 4>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        let pre = self.do_layer_norm_before;
        let residual = x.clone();
        let h = if pre {
            ops::layer_norm(&self.self_attn_layer_norm, x)
        } else {
            x
        };
        let h = self.dropout.forward(self.self_attn.forward(h, mask, cache)) + residual;
        let h = if pre {
            h
        } else {
            ops::layer_norm(&self.self_attn_layer_norm, h)
        };

        let residual = h.clone();
        let f = if pre {
            ops::layer_norm(&self.final_layer_norm, h)
        } else {
            h
        };
        let f = self.activation.forward(linear_forward(&self.fc1, f)); // [batch, new_len, ffn_dim]
        let h = self.dropout.forward(linear_forward(&self.fc2, f)) + residual;
        if pre {
            h
        } else {
            ops::layer_norm(&self.final_layer_norm, h)
        }
    }
}
