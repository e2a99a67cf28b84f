//! OPT (HF `OPTForCausalLM`) on Burn, as BLIP-2 uses it and as a standalone causal language model.
//!
//! - [`OptConfig`]: from an OPT `config.json` or a BLIP-2 config's `text_config`, HF names and defaults;
//! - [`OptForCausalLm`]: learned positions from the attention mask (HF's offset of 2, left padding), pre- and
//!   post-LN layers, `project_in`/`project_out` (opt-350m), the head tied to `embed_tokens`; input as ids or as
//!   embeddings ([`OptInput`]); an explicit [`KvCache`](blip2_nn::KvCache) passed by `&mut` (the module stays
//!   immutable; `reorder` for beam search); logits for every position or the last only ([`LogitsFor`]); HF's
//!   loss;
//! - loading from a standalone OPT directory or a BLIP-2 directory's `language_model.*`, any on-disk dtype.
//!
//! ```
//! use blip2_nn::backend::DefaultBackend;
//! use blip2_opt::{LogitsFor, OptConfig, OptInput};
//! use burn::prelude::*;
//!
//! // A tiny random OPT; for real weights use `OptForCausalLm::from_pretrained(dir, FloatDType::F32, &device)`.
//! let config = OptConfig {
//!     vocab_size: 100, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, ffn_dim: 64,
//!     max_position_embeddings: 64, ..Default::default()
//! };
//! let device = Default::default();
//! let lm = config.init::<DefaultBackend>(&device)?;
//!
//! // A left-padded batch: prefill, then one cached step.
//! let ids = Tensor::<DefaultBackend, 2, Int>::from_ints([[1, 1, 2, 7], [2, 5, 9, 4]], &device);
//! let mask = Tensor::<DefaultBackend, 2, Int>::from_ints([[0, 0, 1, 1], [1, 1, 1, 1]], &device);
//! let mut cache = lm.new_cache();
//! let logits = lm.forward(OptInput::Ids(ids), Some(mask.clone()), Some(&mut cache), LogitsFor::Last);
//! assert_eq!(logits.dims(), [2, 1, 100]);
//! let next = logits.argmax(2).reshape([2, 1]);
//! let mask = Tensor::cat(vec![mask, Tensor::ones([2, 1], &device)], 1);
//! let step = lm.forward(OptInput::Ids(next), Some(mask), Some(&mut cache), LogitsFor::Last);
//! assert_eq!((step.dims(), cache.seq_len()), ([2, 1, 100], 5));
//! # Ok::<(), blip2_opt::Error>(())
//! ```

mod config;
mod decoder;
mod error;
mod model;
mod step;

pub use config::{OptConfig, TokenIds};
pub use decoder::{OptAttention, OptDecoderLayer};
pub use error::Error;
pub use model::{LogitsFor, OptDecoder, OptForCausalLm, OptInput, OptModel};
