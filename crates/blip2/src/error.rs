//! The error type of the blip2 crate: every part's error, plus what composing them adds.

use std::path::PathBuf;

/// Everything that can go wrong in blip2. Messages are lowercase, name the file, key or value, and say what to
/// do. The parts' errors are kept whole (match on them for details).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Checkpoints, loading, backends and dtypes.
    #[error(transparent)]
    Nn(#[from] blip2_nn::Error),
    /// The vision tower.
    #[error(transparent)]
    Vision(#[from] blip2_vision::Error),
    /// The Q-Former.
    #[error(transparent)]
    QFormer(#[from] blip2_qformer::Error),
    /// The OPT language model.
    #[error(transparent)]
    Opt(#[from] blip2_opt::Error),
    /// The T5 language model.
    #[error(transparent)]
    T5(#[from] blip2_t5::Error),
    /// Generation.
    #[error(transparent)]
    Generation(#[from] blip2_generation::Error),
    /// Images and text preprocessing.
    #[error(transparent)]
    Processor(#[from] blip2_processor::Error),

    /// A config file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A config file is not the JSON we expect.
    #[error("invalid BLIP-2 config in {path}: {reason}")]
    Json {
        /// The file (`<memory>` for a string).
        path: PathBuf,
        /// The parser's message, or the field and what it should be.
        reason: String,
    },

    /// A `config.json` that is not a BLIP-2 config.
    #[error(
        "{path} is not a BLIP-2 config: expected `model_type: \"blip-2\"` with vision_config, qformer_config and text_config"
    )]
    NotABlip2Config {
        /// The file.
        path: PathBuf,
    },

    /// A language model type blip2 does not implement.
    #[error(
        "unknown language model type `{model_type}` in text_config of {path}: blip2 supports \"opt\" and \"t5\""
    )]
    UnknownLanguageModel {
        /// `text_config.model_type`.
        model_type: String,
        /// The file.
        path: PathBuf,
    },

    /// A config value blip2 does not support, or values that do not fit together.
    #[error("unsupported value {value} for `{key}` in the BLIP-2 config: {reason}")]
    UnsupportedConfig {
        /// The config key.
        key: String,
        /// The value found.
        value: String,
        /// What is supported.
        reason: String,
    },

    /// Inputs the model cannot take.
    #[error("bad input: {reason}")]
    BadInput {
        /// What is wrong and what was expected.
        reason: String,
    },

    /// [`ImageFeatures::select`](crate::ImageFeatures::select) of a row the batch does not have.
    #[error("no image {row} in features of {batch} images: rows are 0..{batch}")]
    NoSuchRow {
        /// The row asked for.
        row: usize,
        /// Images in the batch.
        batch: usize,
    },

    /// An empty prompt, question or text.
    #[error("{what} is empty: {remedy}")]
    EmptyText {
        /// Which one (`the prompt`, `question 2`, ...).
        what: String,
        /// What to do.
        remedy: &'static str,
    },

    /// A prompt or text over the length the model takes.
    #[error(
        "{what} {index} (\"{start}\") is {length} tokens long, over the limit of {limit} (`{key}` in {file}); \
         shorten it"
    )]
    TooLong {
        /// `prompt` or `text`.
        what: &'static str,
        /// Its position in the batch.
        index: usize,
        /// Its first characters.
        start: String,
        /// Its length in tokens.
        length: usize,
        /// The limit.
        limit: usize,
        /// The config key that sets the limit (`model_max_length`, `max_position_embeddings`).
        key: &'static str,
        /// The file that holds the key.
        file: String,
    },

    /// A prompt holding the image token, which the processor puts before the text itself.
    #[error(
        "prompt {index} contains `{token}`, the image placeholder, which blip2 puts before the text itself: \
         remove it from the text"
    )]
    ImageTokenInPrompt {
        /// Its position in the batch.
        index: usize,
        /// The token's text.
        token: String,
    },

    /// Model files that do not fit together (a processor config that disagrees with the model's config).
    #[error(
        "`{key}` is {found} in {file}, but {expected}; fix the file or download the model again"
    )]
    Mismatch {
        /// The file holding the value.
        file: String,
        /// The key.
        key: &'static str,
        /// The value found.
        found: String,
        /// What the model needs.
        expected: String,
    },

    /// Resolving a model directory or hub id, and hub downloads.
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
}

impl Error {
    pub(crate) fn unsupported(key: &str, value: impl ToString, reason: impl Into<String>) -> Self {
        Self::UnsupportedConfig {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn bad_input(reason: impl Into<String>) -> Self {
        Self::BadInput {
            reason: reason.into(),
        }
    }
}
