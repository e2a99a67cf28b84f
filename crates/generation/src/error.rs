//! The error type of blip2-generation.

use std::path::PathBuf;

/// Everything that can go wrong while configuring or running generation. Messages are lowercase, name the
/// field, file or value, and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `generation_config.json` could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A `generation_config.json` is not valid JSON, or a field has the wrong type.
    #[error("invalid generation config in {path}: {reason}")]
    Json {
        /// The file (`<memory>` for a string).
        path: PathBuf,
        /// The parser's message or the field and what it should be.
        reason: String,
    },

    /// A field transformers knows but blip2 does not implement, set to a value that would change the output.
    #[error("`{key}` = {value} in {path} is not supported by blip2-generation: {reason}")]
    Unsupported {
        /// The field.
        key: String,
        /// Its value.
        value: String,
        /// The file (`<memory>` for a string).
        path: PathBuf,
        /// What to do instead.
        reason: String,
    },

    /// A field name that is not a transformers generation option.
    #[error("unknown generation option `{key}` in {path}")]
    UnknownField {
        /// The field.
        key: String,
        /// The file (`<memory>` for a string).
        path: PathBuf,
    },

    /// Values that are invalid alone or together.
    #[error("invalid generation config ({}): {reason}", fields.join(", "))]
    InvalidConfig {
        /// The fields involved, with transformers' names.
        fields: Vec<&'static str>,
        /// What is wrong and what would be valid.
        reason: String,
    },

    /// A prompt the loop cannot start from (empty, a mask of another shape, ids of another length).
    #[error("bad prompt: {reason}")]
    BadPrompt {
        /// What is wrong.
        reason: String,
    },

    /// The language model refused an input or failed.
    #[error("language model: {0}")]
    Model(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The logits could not be read back from the device.
    #[error("cannot read the logits back from the device: {0}")]
    Readback(String),

    /// The model produced NaN logits.
    #[error(
        "the model produced NaN logits at step {step} for row {row}; check the weights and the dtype (f16 overflows easily: try bf16 or f32)"
    )]
    NanLogits {
        /// Generation step (0 = after the prompt).
        step: usize,
        /// Row of the (expanded) batch.
        row: usize,
    },

    /// Sampling found no token with a non-zero probability (every score is -inf after processing), or fewer
    /// tokens than beam sampling must draw.
    #[error(
        "nothing to sample at step {step} for row {row}: {available} token(s) have a non-zero probability, {needed} needed (the logits processors removed the rest)"
    )]
    NothingToSample {
        /// Generation step.
        step: usize,
        /// Row of the batch (beam sampling: the batch item).
        row: usize,
        /// Tokens left with a non-zero probability.
        available: usize,
        /// Tokens the step draws.
        needed: usize,
    },
}

impl Error {
    pub(crate) fn invalid(fields: &[&'static str], reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            fields: fields.to_vec(),
            reason: reason.into(),
        }
    }

    pub(crate) fn bad_prompt(reason: impl Into<String>) -> Self {
        Self::BadPrompt {
            reason: reason.into(),
        }
    }
}
