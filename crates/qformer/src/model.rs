//! `Blip2QFormerModel` (input LayerNorm + encoder) and `Blip2TextEmbeddings` (the ITM checkpoints' text tower).
//!
//! Keys: `qformer.layernorm.*`, `qformer.encoder.layer.N.*`; `embeddings.{word_embeddings,position_embeddings}.weight`
//! at the checkpoint root (HF 5.x keeps the text embeddings outside `qformer`).
//!
//! Deliberate choices (as HF): the pooler is row 0 of `last_hidden_state` with no dense layer; inputs are cast to
//! the Q-Former's own dtype (it stays f32 when the rest of a model runs in half precision); the text embeddings
//! have no LayerNorm of their own (the Q-Former's input `layernorm` normalises queries and text together).

use blip2_nn::mask::{MaskValue, additive_mask, float_dtype_of, padding_mask};
use blip2_nn::ops::layer_norm;
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::prelude::*;

use crate::Blip2QFormerConfig;
use crate::layer::Blip2QFormerEncoder;

/// What the Q-Former returns (HF `BaseModelOutputWithPoolingAndCrossAttentions`).
#[derive(Debug, Clone)]
pub struct QFormerOutput<B: Backend> {
    /// `[batch, seq_len, hidden]` (queries first, then text).
    pub last_hidden_state: Tensor<B, 3>,
    /// Row 0 of `last_hidden_state`, `[batch, hidden]` (no dense layer, no tanh).
    pub pooler_output: Tensor<B, 2>,
    /// When asked for: the input layernorm's output, then each layer's output (`num_hidden_layers + 1`).
    pub hidden_states: Option<Vec<Tensor<B, 3>>>,
}

/// HF `Blip2QFormerModel`: the input LayerNorm and the layers (the learned queries live in [`crate::QFormer`]).
#[derive(Module, Debug)]
pub struct Blip2QFormerModel<B: Backend> {
    /// LayerNorm of the input embeddings (queries, or queries + text).
    pub layernorm: LayerNorm<B>,
    /// Dropout after `layernorm` (training only).
    pub dropout: Dropout,
    /// The layers.
    pub encoder: Blip2QFormerEncoder<B>,
}

impl Blip2QFormerConfig {
    /// A fresh Q-Former (parameters lazy: nothing is allocated or randomised until used or loaded).
    ///
    /// # Errors
    /// [`crate::Error::UnsupportedConfig`] from [`Blip2QFormerConfig::validate`].
    pub fn init<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<Blip2QFormerModel<B>, crate::Error> {
        self.validate()?;
        let activation = self.activation()?;
        Ok(Blip2QFormerModel {
            layernorm: LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            dropout: DropoutConfig::new(self.hidden_dropout_prob).init(),
            encoder: Blip2QFormerEncoder::new(self, activation, device),
        })
    }
}

impl<B: Backend> Blip2QFormerModel<B> {
    /// HF `Blip2QFormerModel.forward`.
    ///
    /// # Shapes
    /// - `query_embeds`: `[batch, seq_len, hidden]`; its first `query_length` rows are queries
    /// - `attention_mask`: `[batch, seq_len]`, 1 = keep, 0 = padding (`None`: all kept)
    /// - `image`: `[batch, num_patches + 1, encoder_hidden]`, needed when `query_length > 0`
    ///
    /// # Panics
    /// On inconsistent inputs; [`crate::QFormer`]'s entry points check them and return errors instead.
    pub fn forward(
        &self,
        query_embeds: Tensor<B, 3>,
        query_length: usize,
        attention_mask: Option<Tensor<B, 2, Int>>,
        image: Option<Tensor<B, 3>>,
        output_hidden_states: bool,
    ) -> QFormerOutput<B> {
        let dtype = self.layernorm.gamma.val().dtype();
        let embedded = self
            .dropout
            .forward(layer_norm(&self.layernorm, query_embeds.cast(dtype)));
        let mask = attention_mask.map(|mask| {
            additive_mask(
                padding_mask(mask),
                MaskValue::DtypeMin,
                float_dtype_of(&embedded),
            )
        });
        let image = image.map(|image| image.cast(dtype));
        let mut hidden_states = output_hidden_states.then(|| vec![embedded.clone()]);
        let mut x = embedded;
        for layer in &self.encoder.layer {
            x = layer.forward(x, mask.clone(), image.clone(), query_length);
            if let Some(states) = hidden_states.as_mut() {
                states.push(x.clone());
            }
        }
        let [batch, _, hidden] = x.dims();
        let pooler_output = x.clone().narrow(1, 0, 1).reshape([batch, hidden]);
        QFormerOutput {
            last_hidden_state: x,
            pooler_output,
            hidden_states,
        }
    }
}

/// HF `Blip2TextEmbeddings`: word + absolute position embeddings of the Q-Former's text tower.
#[derive(Module, Debug)]
pub struct Blip2TextEmbeddings<B: Backend> {
    /// `[vocab_size, hidden]`.
    pub word_embeddings: Embedding<B>,
    /// `[max_position_embeddings, hidden]`.
    pub position_embeddings: Embedding<B>,
}

impl<B: Backend> Blip2TextEmbeddings<B> {
    /// Fresh (lazily initialised) embeddings.
    pub fn new(config: &Blip2QFormerConfig, device: &B::Device) -> Self {
        Self {
            word_embeddings: EmbeddingConfig::new(config.vocab_size, config.hidden_size)
                .init(device),
            position_embeddings: EmbeddingConfig::new(
                config.max_position_embeddings,
                config.hidden_size,
            )
            .init(device),
        }
    }

    /// `word_embeddings(ids) + position_embeddings(0..len)`.
    ///
    /// # Shapes
    /// `[batch, len]` -> `[batch, len, hidden]`
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, len] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<B, 1, Int>::arange(0..len as i64, &device).unsqueeze_dim::<2>(0); // [1, len]
        self.word_embeddings.forward(input_ids) + self.position_embeddings.forward(positions)
    }
}
