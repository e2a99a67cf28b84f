//! `Blip2QFormerIntermediate`, `Blip2QFormerOutput`, `Blip2QFormerLayer`, `Blip2QFormerEncoder`.
//!
//! Keys (under `qformer.encoder.layer.N.`): `attention.*`, `crossattention.*` (only where
//! `N % cross_attention_frequency == 0`), `intermediate_query.dense.*`, `output_query.{dense,LayerNorm}.*`, and with
//! the text tower `intermediate.dense.*`, `output.{dense,LayerNorm}.*`.
//!
//! A layer splits its sequence at `query_length` exactly as HF does: the first `query_length` rows (the learned
//! queries) cross-attend to the image and use the query feed-forward; the rest (text) skip cross-attention and
//! use the text feed-forward. Self-attention runs over the whole sequence first.

use blip2_nn::ops::layer_norm;
use blip2_nn::{Activation, linear_forward};
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;

use crate::Blip2QFormerConfig;
use crate::attention::{AttentionKind, Blip2QFormerAttention, linear};

/// HF `Blip2QFormerIntermediate`: `act(dense(x))`.
#[derive(Module, Debug)]
pub struct Blip2QFormerIntermediate<B: Backend> {
    /// `hidden -> intermediate`.
    pub dense: Linear<B>,
    /// `hidden_act`.
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Backend> Blip2QFormerIntermediate<B> {
    /// Fresh (lazily initialised) block.
    pub fn new(config: &Blip2QFormerConfig, activation: Activation, device: &B::Device) -> Self {
        Self {
            dense: linear(config.hidden_size, config.intermediate_size, device),
            activation,
        }
    }

    /// # Shapes
    /// `[batch, len, hidden] -> [batch, len, intermediate]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.activation.forward(linear_forward(&self.dense, x))
    }
}

/// HF `Blip2QFormerOutput`: `LayerNorm(dropout(dense(x)) + residual)`.
#[derive(Module, Debug)]
pub struct Blip2QFormerOutput<B: Backend> {
    /// `intermediate -> hidden`.
    pub dense: Linear<B>,
    /// HF's `LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    /// Dropout after `dense` (training only).
    pub dropout: Dropout,
}

impl<B: Backend> Blip2QFormerOutput<B> {
    /// Fresh (lazily initialised) block.
    pub fn new(config: &Blip2QFormerConfig, device: &B::Device) -> Self {
        Self {
            dense: linear(config.intermediate_size, config.hidden_size, device),
            layer_norm: LayerNormConfig::new(config.hidden_size)
                .with_epsilon(config.layer_norm_eps)
                .init(device),
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
        }
    }

    /// # Shapes
    /// `[batch, len, intermediate]`, residual `[batch, len, hidden]` `-> [batch, len, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self.dropout.forward(linear_forward(&self.dense, x));
        layer_norm(&self.layer_norm, x + residual)
    }
}

/// HF `Blip2QFormerLayer`.
#[derive(Module, Debug)]
pub struct Blip2QFormerLayer<B: Backend> {
    /// Self-attention over queries and text.
    pub attention: Blip2QFormerAttention<B>,
    /// The queries' cross-attention to the image (every `cross_attention_frequency`-th layer).
    pub crossattention: Option<Blip2QFormerAttention<B>>,
    /// Text feed-forward (with `use_qformer_text_input`).
    pub intermediate: Option<Blip2QFormerIntermediate<B>>,
    /// Text feed-forward output (with `use_qformer_text_input`).
    pub output: Option<Blip2QFormerOutput<B>>,
    /// Query feed-forward.
    pub intermediate_query: Blip2QFormerIntermediate<B>,
    /// Query feed-forward output.
    pub output_query: Blip2QFormerOutput<B>,
}

impl<B: Backend> Blip2QFormerLayer<B> {
    /// Fresh (lazily initialised) layer number `index`.
    pub fn new(
        config: &Blip2QFormerConfig,
        index: usize,
        activation: Activation,
        device: &B::Device,
    ) -> Self {
        let text = config.use_qformer_text_input;
        Self {
            attention: Blip2QFormerAttention::new(config, AttentionKind::SelfAttention, device),
            crossattention: config
                .has_cross_attention(index)
                .then(|| Blip2QFormerAttention::new(config, AttentionKind::CrossAttention, device)),
            intermediate: text.then(|| Blip2QFormerIntermediate::new(config, activation, device)),
            output: text.then(|| Blip2QFormerOutput::new(config, device)),
            intermediate_query: Blip2QFormerIntermediate::new(config, activation, device),
            output_query: Blip2QFormerOutput::new(config, device),
        }
    }

    /// # Shapes
    /// - `hidden_states`: `[batch, seq_len, hidden]`, the first `query_length` rows being queries
    /// - `additive_mask`: `[batch, 1, 1, seq_len]`; `image`: `[batch, num_patches + 1, encoder_hidden]`
    /// - returns `[batch, seq_len, hidden]`
    ///
    /// # Panics
    /// When text rows reach a layer without the text feed-forward, or a cross-attention layer gets no image:
    /// [`crate::QFormer`] checks both before calling.
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 3>,
        additive_mask: Option<Tensor<B, 4>>,
        image: Option<Tensor<B, 3>>,
        query_length: usize,
    ) -> Tensor<B, 3> {
        let attended = self.attention.forward(hidden_states, additive_mask, None);
        let [_, seq_len, _] = attended.dims();
        let text_ffn = |x: Tensor<B, 3>| {
            let (intermediate, output) = self
                .intermediate
                .as_ref()
                .zip(self.output.as_ref())
                .expect("text rows need the text feed-forward (use_qformer_text_input)");
            output.forward(intermediate.forward(x.clone()), x)
        };
        if query_length == 0 {
            return text_ffn(attended);
        }
        let mut queries = attended.clone().narrow(1, 0, query_length); // [batch, query_length, hidden]
        if let Some(cross) = &self.crossattention {
            let image = image.expect("cross-attention layers need the image embeddings");
            queries = cross.forward(queries, None, Some(image));
        }
        let queries = self
            .output_query
            .forward(self.intermediate_query.forward(queries.clone()), queries);
        if seq_len == query_length {
            return queries;
        }
        let text = text_ffn(attended.narrow(1, query_length, seq_len - query_length));
        Tensor::cat(vec![queries, text], 1)
    }
}

/// HF `Blip2QFormerEncoder`: the stack of layers.
#[derive(Module, Debug)]
pub struct Blip2QFormerEncoder<B: Backend> {
    /// `num_hidden_layers` layers (HF's attribute is `layer`).
    pub layer: Vec<Blip2QFormerLayer<B>>,
}

impl<B: Backend> Blip2QFormerEncoder<B> {
    /// Fresh (lazily initialised) encoder.
    pub fn new(config: &Blip2QFormerConfig, activation: Activation, device: &B::Device) -> Self {
        Self {
            layer: (0..config.num_hidden_layers)
                .map(|i| Blip2QFormerLayer::new(config, i, activation, device))
                .collect(),
        }
    }
}
