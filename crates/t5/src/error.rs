//! The error type of blip2-t5: config files, weights, and inputs the model cannot take.

use std::path::PathBuf;

/// Everything that can go wrong in blip2-t5. Messages are lowercase, name the file, key or value, and say
/// what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Loading weights, opening checkpoints, backend/dtype selection (from blip2-nn).
    #[error(transparent)]
    Nn(#[from] blip2_nn::Error),

    /// A config file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A config file is not the JSON we expect (syntax, or a field of the wrong type).
    #[error("invalid T5 config in {path}: {source}")]
    Json {
        /// The file (`<memory>` for a string).
        path: PathBuf,
        /// The parser's message, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// A config.json that is neither a T5 config nor a BLIP-2 config with a T5 `text_config`.
    #[error(
        "{path} is not a T5 config: expected `model_type: \"t5\"` or a BLIP-2 `text_config` of that type"
    )]
    NotAT5Config {
        /// The file.
        path: PathBuf,
    },

    /// A config value blip2 does not support.
    #[error("unsupported value {value} for `{key}` in the T5 config: {reason}")]
    UnsupportedConfig {
        /// The config key, as in config.json (`text_config.` omitted).
        key: String,
        /// The value found.
        value: String,
        /// What is supported.
        reason: String,
    },

    /// Inputs the model cannot take (shapes, token ids, a mask that does not cover the cache).
    #[error("bad T5 input: {reason}")]
    BadInput {
        /// What is wrong and what was expected.
        reason: String,
    },
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
