//! Shared set-up of blip2's benches: real-size models with random weights, built in memory (no downloads).
//!
//! Run them with `cargo bench -p blip2-benches`, or `cargo xtask bench vision` to time transformers on the same
//! config in the same run and print the comparison for docs/performance.md.

use blip2_nn::backend::{FloatDType, cast_module};

/// The backend the benches run on: flex by default, CUDA or wgpu with the crate's features.
#[cfg(feature = "cuda")]
pub type BenchBackend = blip2_nn::backend::Cuda;
/// The backend the benches run on: flex by default, CUDA or wgpu with the crate's features.
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type BenchBackend = blip2_nn::backend::Wgpu;
/// The backend the benches run on: flex by default, CUDA or wgpu with the crate's features.
#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
pub type BenchBackend = blip2_nn::backend::DefaultBackend;

/// A number from the environment variable `var`, if set and valid.
pub fn env_value<T: std::str::FromStr>(var: &str) -> Option<T> {
    std::env::var(var).ok().and_then(|v| v.trim().parse().ok())
}

/// A comma-separated list from `var`, or from `default` when it is unset (invalid items are skipped).
pub fn env_list<T: std::str::FromStr>(var: &str, default: &str) -> Vec<T> {
    let text = std::env::var(var).unwrap_or_else(|_| default.to_string());
    text.split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// A weight format a bench runs in: a float dtype, or `int8` (every `Linear` weight in int8 with bf16 activations:
/// what `Precision::INT8` gives the language model; outputs per scale [`int8_group`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchDtype {
    /// Every parameter in this dtype.
    Float(FloatDType),
    /// `Linear` weights in int8, the rest (and the activations) in bf16.
    Int8,
}

impl BenchDtype {
    /// The name in bench ids and tables (`f32`, `bf16`, `int8`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Float(dtype) => dtype.name(),
            Self::Int8 => "int8",
        }
    }

    /// `module` in this format, every parameter materialised.
    ///
    /// # Panics
    /// When the backend cannot hold the dtype: benches choose dtypes the backend has.
    pub fn apply<B: Backend, M: burn::module::Module<B>>(self, module: M, device: &B::Device) -> M {
        match self {
            Self::Float(dtype) => {
                cast_module(module, dtype, device).expect("the backend supports the bench dtype")
            }
            Self::Int8 => {
                let module = cast_module(module, FloatDType::BF16, device)
                    .expect("the backend supports bf16");
                blip2_nn::quantize_linears(module, int8_group()).0
            }
        }
    }
}

impl std::str::FromStr for BenchDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "int8" => Ok(Self::Int8),
            other => other
                .parse()
                .map(Self::Float)
                .map_err(|e: blip2_nn::Error| e.to_string()),
        }
    }
}

/// Outputs per int8 scale in the int8 benches: `BLIP2_BENCH_INT8_GROUP`, default
/// [`blip2_nn::DEFAULT_Q8_GROUP`] (what `--dtype int8` uses).
pub fn int8_group() -> usize {
    env_value("BLIP2_BENCH_INT8_GROUP").unwrap_or(blip2_nn::DEFAULT_Q8_GROUP)
}

/// Seconds of measurement per bench (`BLIP2_BENCH_SECS`, default 20; GPUs need far less).
pub fn measurement_secs() -> u64 {
    env_value("BLIP2_BENCH_SECS").unwrap_or(20)
}
use blip2_vision::{Blip2VisionConfig, Blip2VisionModel};
use burn::prelude::*;

/// What every bench binary calls first: the allocator settings the `blip2` CLI uses
/// ([`blip2_nn::alloc::tune_malloc_for_inference`]).
pub fn setup() {
    blip2_nn::alloc::tune_malloc_for_inference();
}

/// The ViT-g of every BLIP-2 checkpoint (1408 hidden, 39 layers, 16 heads, MLP 6144, patch 14) at 224 px,
/// with `BLIP2_BENCH_LAYERS` overriding the depth for a quick smoke run.
pub fn vit_g_config() -> Blip2VisionConfig {
    let mut config = Blip2VisionConfig::vit_g(224);
    // Random weights of a useful scale (HF's 1e-10 would make every position embedding ~0).
    config.initializer_range = 0.02;
    if let Some(layers) = env_value("BLIP2_BENCH_LAYERS") {
        config.num_hidden_layers = layers;
    }
    config
}

/// A random-weight vision tower in `dtype`, every parameter materialised (so the first timed call does not pay
/// for initialisation).
///
/// # Panics
/// When the backend cannot hold `dtype`: benches choose dtypes the backend has.
pub fn random_vision<B: Backend>(
    config: &Blip2VisionConfig,
    dtype: FloatDType,
    device: &B::Device,
) -> Blip2VisionModel<B> {
    let model = config.init::<B>(device).expect("the bench config is valid");
    // Casting touches every parameter, which materialises the lazy ones; f32 -> f32 is a no-op cast.
    cast_module(model, dtype, device).expect("the backend supports the bench dtype")
}

/// Deterministic pixel values `[batch, 3, size, size]` in the normalised range.
pub fn pixels<B: Backend>(batch: usize, size: usize, device: &B::Device) -> Tensor<B, 4> {
    let n = batch * 3 * size * size;
    let values: Vec<f32> = (0..n).map(|i| ((i % 251) as f32 / 125.0) - 1.0).collect();
    Tensor::from_data(TensorData::new(values, [batch, 3, size, size]), device)
}
