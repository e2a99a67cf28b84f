//! T5 and Flan-T5 (HF `T5ForConditionalGeneration`) on Burn, as BLIP-2 uses it and as a standalone model.
//!
//! - [`T5Config`]: from a T5 `config.json` or a BLIP-2 config's `text_config`; the feed-forward (`relu`,
//!   `gated-gelu`, ...) and the exact-gelu `dense_act_fn` of the BLIP-2 Flan-T5 configs; tied or untied head;
//! - [`T5ForConditionalGeneration`]: RMS norms, attention without scaling, relative position buckets (block 0
//!   only, offset by the cache when decoding), `encode` from ids or embeddings (BLIP-2 feeds the query embeddings),
//!   `decode` with a [`T5Cache`] passed by `&mut` (self-attention grows, cross-attention computed once), logits for
//!   every position or the last ([`LogitsFor`]), `shift_right` and the loss;
//! - loading from a standalone T5 directory or a BLIP-2 directory's `language_model.*`, any on-disk dtype. Flan-T5
//!   overflows in f16: use bf16 or f32.
//!
//! ```
//! use blip2_nn::backend::DefaultBackend;
//! use blip2_t5::{LogitsFor, T5Config, T5Input};
//! use burn::prelude::*;
//!
//! // A tiny random Flan-T5-like model; for real weights use `T5ForConditionalGeneration::from_pretrained`.
//! let config = T5Config {
//!     vocab_size: 100, d_model: 32, d_kv: 8, d_ff: 64, num_layers: 2, num_heads: 4,
//!     feed_forward_proj: "gated-gelu".into(), tie_word_embeddings: Some(false), ..Default::default()
//! };
//! let device = Default::default();
//! let t5 = config.init::<DefaultBackend>(&device)?;
//! let ids = Tensor::<DefaultBackend, 2, Int>::from_ints([[5, 6, 7, 1]], &device);
//! let encoded = t5.encode(T5Input::Ids(ids), None);
//!
//! // Greedy decoding with a cache, from decoder_start_token_id (0).
//! let mut cache = t5.new_cache();
//! let mut token = Tensor::<DefaultBackend, 2, Int>::zeros([1, 1], &device);
//! for _ in 0..3 {
//!     let logits = t5.decode(token, encoded.clone(), None, Some(&mut cache), LogitsFor::Last);
//!     token = logits.argmax(2).reshape([1, 1]);
//! }
//! assert_eq!(cache.seq_len(), 3);
//! # Ok::<(), blip2_t5::Error>(())
//! ```

mod config;
mod error;
mod layers;
mod model;
mod step;

pub use config::{T5Config, TokenIds};
pub use error::Error;
pub use layers::{
    RelativeBias, Stack, T5Attention, T5DecoderBlock, T5DenseReluDense, T5EncoderBlock,
    T5LayerCrossAttention, T5LayerFf, T5LayerNorm, T5LayerSelfAttention, relative_position_bucket,
};
pub use model::{
    LogitsFor, T5Cache, T5Decoder, T5Encoder, T5ForConditionalGeneration, T5Input, t5_key_map,
};
pub use step::T5Encoded;
