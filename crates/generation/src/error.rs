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

    /// A prompt longer than the language model's position table.
    #[error(
        "the prompt takes {length} positions, over the language model's {max_positions} \
         (max_position_embeddings); shorten the prompt"
    )]
    PromptTooLong {
        /// Positions the prompt takes (`<image>` tokens and padding included).
        length: usize,
        /// The model's position table.
        max_positions: usize,
    },

    /// A prompt and `max_new_tokens` that together outgrow the language model's position table.
    #[error(
        "max_new_tokens {max_new_tokens} does not fit: the prompt takes {prompt} of the language model's \
         {max_positions} positions (max_position_embeddings), which leaves room for {} new tokens; lower \
         max_new_tokens or shorten the prompt",
        max_positions + 1 - prompt
    )]
    TooManyNewTokens {
        /// Positions the prompt takes.
        prompt: usize,
        /// New tokens asked for (from `max_new_tokens`, `max_length` or the default).
        max_new_tokens: usize,
        /// The model's position table.
        max_positions: usize,
    },

    /// Prompts times beams (or return sequences) over [`MAX_ROWS`](crate::MAX_ROWS).
    #[error(
        "{prompts} prompts x {field} {per_prompt} = {} rows, over blip2's cap of {limit} rows per run; \
         lower {field} or give fewer prompts at a time",
        prompts * per_prompt
    )]
    TooManyRows {
        /// The option that multiplies the rows (`num_beams` or `num_return_sequences`).
        field: &'static str,
        /// Its value.
        per_prompt: usize,
        /// Prompts in the batch.
        prompts: usize,
        /// The cap.
        limit: usize,
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
