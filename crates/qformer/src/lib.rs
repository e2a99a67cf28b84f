//! The BLIP-2 Querying Transformer (HF `Blip2QFormerModel`, with the learned `query_tokens` and the retrieval
//! checkpoints' text tower) on Burn, usable on its own.
//!
//! - [`QFormerConfig`] / [`Blip2QFormerConfig`]: from a BLIP-2 `config.json` (`qformer_config`,
//!   `num_query_tokens`), HF names and defaults, unsupported values rejected with the key named;
//! - [`QFormer`]: the three ways BLIP-2 runs it ([`QFormerInput`]): queries reading an image (captioning),
//!   queries + text reading an image (image-text matching), text alone (the text side of contrastive
//!   retrieval); each returns `last_hidden_state` and `pooler_output` (row 0);
//! - loading from a BLIP-2 directory (`qformer.*`, `query_tokens`, `embeddings.*`) in f32 by default, whatever the
//!   dtype on disk, without reading the vision tower or the language model.
//!
//! Checked stage by stage against transformers on tiny random-weight models (`tests/parity.rs`).
//!
//! ```
//! use blip2_nn::backend::DefaultBackend;
//! use blip2_qformer::{Blip2QFormerConfig, QFormerConfig, QFormerInput};
//! use burn::prelude::*;
//!
//! // A tiny random Q-Former with a text tower; for real weights use `QFormer::from_pretrained(dir, &device)`.
//! let config = QFormerConfig {
//!     qformer: Blip2QFormerConfig {
//!         hidden_size: 32,
//!         num_hidden_layers: 2,
//!         num_attention_heads: 4,
//!         intermediate_size: 64,
//!         encoder_hidden_size: 48,
//!         vocab_size: 100,
//!         use_qformer_text_input: true,
//!         ..Default::default()
//!     },
//!     num_query_tokens: 8,
//! };
//! let device = Default::default();
//! let qformer = config.init::<DefaultBackend>(&device)?;
//!
//! // Captioning path: 8 queries read 2 images of 257 patch embeddings.
//! let image = Tensor::<DefaultBackend, 3>::zeros([2, 257, 48], &device);
//! let out = qformer.try_forward(QFormerInput::Image(image.clone()), false)?;
//! assert_eq!(out.last_hidden_state.dims(), [2, 8, 32]);
//!
//! // Image-text matching: queries + a padded text batch.
//! let input_ids = Tensor::<DefaultBackend, 2, Int>::from_ints([[1, 5, 7], [1, 9, 0]], &device);
//! let attention_mask = Tensor::<DefaultBackend, 2, Int>::from_ints([[1, 1, 1], [1, 1, 0]], &device);
//! let itm = QFormerInput::ImageText { image, input_ids, attention_mask };
//! assert_eq!(qformer.try_forward(itm, false)?.last_hidden_state.dims(), [2, 11, 32]);
//! # Ok::<(), blip2_qformer::Error>(())
//! ```

mod attention;
mod config;
mod error;
mod layer;
mod model;
mod qformer;

pub use attention::{
    AttentionKind, Blip2QFormerAttention, Blip2QFormerMultiHeadAttention, Blip2QFormerSelfOutput,
};
pub use config::{Blip2QFormerConfig, QFormerConfig};
pub use error::Error;
pub use layer::{
    Blip2QFormerEncoder, Blip2QFormerIntermediate, Blip2QFormerLayer, Blip2QFormerOutput,
};
pub use model::{Blip2QFormerModel, Blip2TextEmbeddings, QFormerOutput};
pub use qformer::{QFormer, QFormerInput, qformer_key_map};
