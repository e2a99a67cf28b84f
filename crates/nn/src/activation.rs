//! Activation functions named as HF configs name them (`hidden_act`, `activation_function`, `dense_act_fn`).
//!
//! HF maps these strings to functions in `transformers.activations.ACT2FN`. The distinction that matters for
//! BLIP-2: `gelu` is the exact erf form (the vision tower, the Q-Former and the BLIP-2 Flan-T5 checkpoints, whose
//! configs say `dense_act_fn: "gelu"`), while `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast` are the tanh
//! approximation (plain Flan-T5's `gated-gelu`).

use std::fmt;

use burn::prelude::{Backend, Tensor};
use burn::tensor::activation;

use crate::Error;

/// An activation function from an HF config string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `gelu`: `x * Φ(x)` with the exact normal CDF (erf).
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
    GeluTanh,
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// `relu`.
    Relu,
    /// `silu` / `swish`: `x * sigmoid(x)`.
    Silu,
}

impl Activation {
    /// The names accepted by [`Activation::parse`].
    pub const NAMES: &[&str] = &[
        "gelu",
        "gelu_new",
        "gelu_pytorch_tanh",
        "gelu_fast",
        "quick_gelu",
        "relu",
        "silu",
        "swish",
    ];

    /// Parses the HF name `value` of config key `key` (the key only makes the error message useful).
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] naming the key, the value and the supported names.
    pub fn parse(key: &str, value: &str) -> Result<Self, Error> {
        Ok(match value {
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Self::GeluTanh,
            "quick_gelu" => Self::QuickGelu,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            _ => {
                return Err(Error::UnsupportedConfig {
                    key: key.to_string(),
                    value: value.to_string(),
                    reason: format!("supported activations: {}", Self::NAMES.join(", ")),
                });
            }
        })
    }

    /// Applies the activation element-wise, in the tensor's dtype.
    pub fn forward<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::Gelu => {
                #[cfg(feature = "flex")]
                let x = match crate::activation_flex::try_gelu(x) {
                    Ok(y) => return y,
                    Err(x) => x,
                };
                activation::gelu(x)
            }
            Self::GeluTanh => activation::gelu_approximate(x),
            Self::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
            Self::Relu => activation::relu(x),
            Self::Silu => activation::silu(x),
        }
    }

    /// The canonical HF name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gelu => "gelu",
            Self::GeluTanh => "gelu_new",
            Self::QuickGelu => "quick_gelu",
            Self::Relu => "relu",
            Self::Silu => "silu",
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
