//! Shared building blocks of blip2, the Rust port of BLIP-2 on Burn.
//!
//! Every other blip2 crate builds on these, and none of them depends on another leaf:
//! - [`backend`]: compile-time backend aliases behind cargo features (`flex` default, `ndarray`, `wgpu`,
//!   `vulkan`, `metal`, `cuda`), a run-time choice among them ([`backend::with_backend`]), and which float
//!   dtypes each supports;
//! - [`loader`]: strict, memory-mapped safetensors loading into Burn modules under a key prefix, with dtype
//!   casts, tied parameters and a full report of what did not match; and saving back with HF names;
//! - [`Activation`]: the activation functions HF configs name;
//! - [`linear_forward`]: a PyTorch-layout `Linear` on activations of any rank without copying its weight;
//! - [`mask`]: padding and causal masks, boolean and additive;
//! - [`ops`]: the attention layers' products and softmax (with flex's bf16 fast paths);
//! - [`KvCache`]: per-layer key/value caches for incremental decoding and beam search;
//! - [`lm`]: the step traits a language model implements so that a decoding loop can drive it;
//! - [`kernels`]: CPU products for bf16, f16 and int8 weights (and f32 at decoding sizes), picked at run time
//!   by CPU features; on flex, [`linear_forward`] uses them;
//! - [`alloc`]: opt-in allocator tuning for CPU inference in applications;
//! - [`kernel_cache`]: the GPU backends' autotune results and compiled kernels kept across processes;
//! - [`config`]: finding and reading a model's `config.json`;
//! - [`limits`]: the largest sizes blip2 accepts from a config or a file.
//!
//! ```
//! use blip2_nn::{Activation, backend::DefaultBackend};
//! use burn::prelude::*;
//!
//! let device = Default::default();
//! let act = Activation::parse("hidden_act", "quick_gelu")?;
//! let y = act.forward(Tensor::<DefaultBackend, 1>::from_floats([0.0, 1.0], &device));
//! let y: Vec<f32> = y.to_data().to_vec().unwrap();
//! assert!((y[1] - 1.0 / (1.0 + (-1.702f32).exp())).abs() < 1e-6);
//! # Ok::<(), blip2_nn::Error>(())
//! ```

mod activation;
#[cfg(feature = "flex")]
mod activation_flex;
pub mod alloc;
pub mod backend;
pub mod config;
mod error;
pub mod kernel_cache;
pub mod kernels;
mod kv_cache;
pub mod limits;
mod linear;
#[cfg(feature = "flex")]
mod linear_flex;
pub mod lm;
pub mod loader;
pub mod mask;
pub mod ops;
#[cfg(feature = "flex")]
mod tensor_flex;

pub use activation::Activation;
pub use error::Error;
pub use kv_cache::{KvCache, LayerCache};
pub use linear::{
    DEFAULT_Q8_GROUP, embed_from_q8, linear_forward, linear_gelu_forward, matmul_nt, q8_group_for,
    quantize_linear, quantize_linears,
};
