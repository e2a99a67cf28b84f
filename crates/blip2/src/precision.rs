//! [`Precision`]: the float dtype of each part of a BLIP-2 model.

use blip2_nn::backend::FloatDType;
use blip2_nn::loader::WeightFormat;

use crate::TextConfig;

/// The dtype each part is loaded and run in.
///
/// transformers keeps `query_tokens` and the Q-Former in f32 when loading in f16 (`_keep_in_fp32_modules`),
/// casts the Q-Former's output to the vision dtype, and runs `language_projection` and the language model in
/// the model dtype; [`Precision::half`] does the same, and also keeps the Q-Former in f32 for bf16 (where
/// transformers 5.24 runs it in bf16; set `qformer: FloatDType::BF16` to reproduce that). The default is f32
/// throughout.
/// For Flan-T5, f16 overflows in the feed-forward activations: use bf16 ([`Precision::recommended`]).
///
/// ```
/// use blip2::Precision;
/// use blip2_nn::backend::FloatDType;
///
/// let p = Precision::from(FloatDType::BF16);
/// assert_eq!((p.vision, p.qformer, p.language_model), (FloatDType::BF16, FloatDType::F32, FloatDType::BF16));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Precision {
    /// The ViT.
    pub vision: FloatDType,
    /// `query_tokens`, the Q-Former (and the retrieval heads' text tower).
    pub qformer: FloatDType,
    /// `language_projection` and the language model (and the retrieval projections).
    pub language_model: FloatDType,
    /// Which parts hold their `Linear` weights in int8 (the rest of the part stays in its dtype above).
    pub int8: Int8,
}

/// The parts whose `Linear` weights are held in int8: symmetric, one f32 scale per `group` outputs of each input
/// (see `blip2_nn::quantize_linear` and docs/numerics.md). Activations stay in the part's float dtype between
/// layers; on flex each int8 product quantizes them per call and multiplies in integers
/// (`blip2_nn::kernels::linear_q8`), other backends dequantize the weight and multiply in float.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int8 {
    /// The ViT.
    pub vision: bool,
    /// The language model (not `language_projection`, which is small).
    pub language_model: bool,
    /// Outputs per scale (a multiple of 16, at most 240; a weight whose size it does not divide takes the largest
    /// multiple of 16 that does, or stays in float when none does).
    pub group: usize,
}

impl Int8 {
    /// No part in int8.
    pub const NONE: Self = Self {
        vision: false,
        language_model: false,
        group: blip2_nn::DEFAULT_Q8_GROUP,
    };
}

impl Default for Int8 {
    fn default() -> Self {
        Self::NONE
    }
}

impl Precision {
    /// f32 everywhere.
    pub const F32: Self = Self {
        vision: FloatDType::F32,
        qformer: FloatDType::F32,
        language_model: FloatDType::F32,
        int8: Int8::NONE,
    };

    /// The language model's `Linear` weights in int8 with bf16 activations, the vision tower in bf16, the
    /// Q-Former in f32: about a quarter of the f32 model's memory for the language model.
    pub const INT8: Self = Self {
        vision: FloatDType::BF16,
        qformer: FloatDType::F32,
        language_model: FloatDType::BF16,
        int8: Int8 {
            vision: false,
            language_model: true,
            group: blip2_nn::DEFAULT_Q8_GROUP,
        },
    };

    /// Whether `device` holds every float dtype of this precision; checked by each loader before any part
    /// loads, so that a dtype the device lacks is named as such rather than as the first part's failure.
    ///
    /// # Errors
    /// [`blip2_nn::Error::UnsupportedDtype`] (as [`crate::Error::Nn`]) for the first dtype it lacks.
    pub fn ensure_supported<B: burn::prelude::Backend>(
        &self,
        device: &B::Device,
    ) -> Result<(), crate::Error> {
        for dtype in [self.vision, self.qformer, self.language_model] {
            blip2_nn::backend::ensure_dtype_supported::<B>(device, dtype)?;
        }
        Ok(())
    }

    /// The vision tower's weight format.
    pub fn vision_format(&self) -> WeightFormat {
        WeightFormat {
            dtype: self.vision,
            int8_group: self.int8.vision.then_some(self.int8.group),
        }
    }

    /// The language model's weight format.
    pub fn language_model_format(&self) -> WeightFormat {
        WeightFormat {
            dtype: self.language_model,
            int8_group: self.int8.language_model.then_some(self.int8.group),
        }
    }

    /// `dtype` everywhere but the Q-Former, which stays in f32 (transformers' half-precision layout).
    pub fn half(dtype: FloatDType) -> Self {
        Self {
            vision: dtype,
            qformer: FloatDType::F32,
            language_model: dtype,
            int8: Int8::NONE,
        }
    }

    /// What to use to save memory with this language model: bf16 for T5 (f16 overflows there), f16 for OPT
    /// (the original checkpoints' dtype); the Q-Former in f32 either way.
    pub fn recommended(text: &TextConfig) -> Self {
        match text {
            TextConfig::Opt(_) => Self::half(FloatDType::F16),
            TextConfig::T5(_) => Self::half(FloatDType::BF16),
        }
    }
}

impl From<FloatDType> for Precision {
    /// f32: [`Precision::F32`]; a half dtype: [`Precision::half`].
    fn from(dtype: FloatDType) -> Self {
        match dtype {
            FloatDType::F32 => Self::F32,
            half => Self::half(half),
        }
    }
}
