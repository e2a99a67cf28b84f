//! The BLIP-2 vision encoder (HF `Blip2VisionModel`, EVA ViT-g) on Burn.
//!
//! - [`Blip2VisionConfig`]: the `vision_config` of a BLIP-2 `config.json` (or a standalone vision config), HF
//!   field names and defaults, unsupported values rejected with the key named;
//! - [`Blip2VisionModel`]: patch embeddings with bicubic position interpolation, the pre-LN encoder,
//!   `post_layernorm`; loads from a BLIP-2 directory (prefix `vision_model.`) in f32, f16 or bf16 without
//!   reading the Q-Former or the language model.
//!
//! Generic over the Burn backend; checked stage by stage against transformers on tiny random-weight models
//! (`tests/parity.rs`).
//!
//! ```
//! use blip2_nn::backend::DefaultBackend;
//! use blip2_vision::Blip2VisionConfig;
//! use burn::prelude::*;
//!
//! // A tiny random tower; for real weights use `Blip2VisionModel::from_pretrained(dir, FloatDType::F32, &device)`.
//! let config = Blip2VisionConfig {
//!     hidden_size: 32,
//!     intermediate_size: 64,
//!     num_hidden_layers: 2,
//!     num_attention_heads: 4,
//!     image_size: 28,
//!     patch_size: 14,
//!     ..Default::default()
//! };
//! let device = Default::default();
//! let model = config.init::<DefaultBackend>(&device)?;
//!
//! let pixels = Tensor::<DefaultBackend, 4>::zeros([2, 3, 28, 28], &device);
//! let out = model.forward(pixels, false);
//! assert_eq!(out.last_hidden_state.dims(), [2, 5, 32]); // 2x2 patches + CLS
//! assert_eq!(out.pooler_output.dims(), [2, 32]);
//!
//! // Another resolution: positions are resized (bicubic) to the patch grid.
//! let tall = Tensor::<DefaultBackend, 4>::zeros([1, 3, 56, 28], &device);
//! assert_eq!(model.forward(tall, true).last_hidden_state.dims(), [1, 9, 32]);
//! # Ok::<(), blip2_vision::Error>(())
//! ```

mod config;
mod embeddings;
mod encoder;
mod error;
mod model;

pub use config::Blip2VisionConfig;
pub use embeddings::Blip2VisionEmbeddings;
pub use encoder::{Blip2Attention, Blip2Encoder, Blip2EncoderLayer, Blip2Mlp};
pub use error::Error;
pub use model::{Blip2VisionModel, Blip2VisionOutput, VISION_PREFIX, key_map_for};
