//! The step interface between a language model and a decoding loop.
//!
//! A decoding loop (greedy, sampling, beam search: the `blip2-generation` crate) needs only a few things from a
//! model: the logits of the last position after a prompt, the logits after one more token per row, and a way to
//! reorder (or repeat) the rows of whatever the model caches between steps. These traits name exactly that, so
//! that a loop works with any model and a model crate needs no generation code:
//!
//! - [`DecoderOnlyLm`]: a causal LM (OPT). `prefill` reads the prompt (ids or embeddings, with the padding
//!   mask) and fills a cache; `decode_step` then reads one token per row.
//! - [`EncoderDecoderLm`]: an encoder-decoder LM (T5). `encode` runs once; `decode_step` reads one decoder
//!   token per row with the encoder output, caching the decoder's self-attention and the cross-attention keys.
//!
//! Rows are whatever the loop asks for: it may repeat a prompt's row for each beam (by calling `reorder` with
//! repeated indices) and it reorders the rows along the surviving beams after every step.
//!
//! Logits are `[rows, vocab]`, in the model's float dtype; the loop reads them back as f32.

use burn::prelude::{Backend, Int, Tensor};

/// What a prompt is made of: token ids, or embeddings (BLIP-2 writes the projected queries into the embedded
/// prompt).
#[derive(Debug, Clone)]
pub enum LmPrompt<B: Backend> {
    /// `[batch, len]`.
    Ids(Tensor<B, 2, Int>),
    /// `[batch, len, embed_dim]`.
    Embeds(Tensor<B, 3>),
}

impl<B: Backend> LmPrompt<B> {
    /// `[batch, len]` of the prompt.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Ids(ids) => ids.dims(),
            Self::Embeds(embeds) => {
                let [batch, len, _] = embeds.dims();
                [batch, len]
            }
        }
    }

    /// The device the prompt lives on.
    pub fn device(&self) -> B::Device {
        match self {
            Self::Ids(ids) => ids.device(),
            Self::Embeds(embeds) => embeds.device(),
        }
    }
}

/// A causal language model driven one step at a time.
///
/// The attention mask always covers every position seen so far (cached and new), `1` for tokens and `0` for
/// padding, as in transformers.
pub trait DecoderOnlyLm<B: Backend> {
    /// What the model keeps between steps (keys and values).
    type Cache;
    /// The model's error type (bad input found by `prefill`).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Size of the output vocabulary (the logits' width).
    fn vocab_size(&self) -> usize;

    /// The longest sequence the model can read (its position table), if it has one. A loop caps its default
    /// length there.
    fn max_positions(&self) -> Option<usize> {
        None
    }

    /// An empty cache.
    fn new_cache(&self) -> Self::Cache;

    /// Reads the prompt into `cache` and returns the logits of its last position.
    ///
    /// # Shapes
    /// `prompt`: `[rows, len]` or `[rows, len, embed_dim]`; `attention_mask`: `[rows, len]`; returns
    /// `[rows, vocab]`.
    ///
    /// # Errors
    /// When the prompt does not fit the model (width, vocabulary, length).
    fn prefill(
        &self,
        prompt: LmPrompt<B>,
        attention_mask: Tensor<B, 2, Int>,
        cache: &mut Self::Cache,
    ) -> Result<Tensor<B, 2>, Self::Error>;

    /// Reads one token per row and returns the logits after it.
    ///
    /// # Shapes
    /// `tokens`: `[rows, 1]`; `attention_mask`: `[rows, cached + 1]`; returns `[rows, vocab]`.
    ///
    /// # Errors
    /// When the sequence outgrows the model.
    fn decode_step(
        &self,
        tokens: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        cache: &mut Self::Cache,
    ) -> Result<Tensor<B, 2>, Self::Error>;

    /// Keeps the cache rows `rows`, in that order (indices may repeat: that is how one prompt becomes several
    /// beams).
    fn reorder_cache(&self, cache: &mut Self::Cache, rows: Tensor<B, 1, Int>);
}

/// An encoder-decoder language model: the prompt is encoded once, then the decoder runs one step at a time.
pub trait EncoderDecoderLm<B: Backend> {
    /// The encoder's output and whatever else decoding needs from it (its padding mask).
    type Encoded;
    /// What the decoder keeps between steps (self-attention keys and values, cross-attention keys and values).
    type Cache;
    /// The model's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Size of the output vocabulary (the logits' width).
    fn vocab_size(&self) -> usize;

    /// The token the decoder starts from (`decoder_start_token_id` of the model's config), if it names one.
    fn decoder_start_token_id(&self) -> Option<u32> {
        None
    }

    /// Runs the encoder.
    ///
    /// # Shapes
    /// `prompt`: `[rows, len]` or `[rows, len, d_model]`; `attention_mask`: `[rows, len]`.
    ///
    /// # Errors
    /// When the prompt does not fit the model.
    fn encode(
        &self,
        prompt: LmPrompt<B>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Result<Self::Encoded, Self::Error>;

    /// Keeps the encoded rows `rows`, in that order (indices may repeat).
    fn reorder_encoded(&self, encoded: Self::Encoded, rows: Tensor<B, 1, Int>) -> Self::Encoded;

    /// An empty decoder cache.
    fn new_cache(&self) -> Self::Cache;

    /// Reads one decoder token per row and returns the logits after it.
    ///
    /// # Shapes
    /// `tokens`: `[rows, 1]`; returns `[rows, vocab]`.
    ///
    /// # Errors
    /// When the decoder input does not fit the model.
    fn decode_step(
        &self,
        tokens: Tensor<B, 2, Int>,
        encoded: &Self::Encoded,
        cache: &mut Self::Cache,
    ) -> Result<Tensor<B, 2>, Self::Error>;

    /// Keeps the cache rows `rows`, in that order (indices may repeat).
    fn reorder_cache(&self, cache: &mut Self::Cache, rows: Tensor<B, 1, Int>);
}
