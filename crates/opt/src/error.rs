//! The error type of blip2-opt: config files, weights, and inputs the model cannot take.

use std::path::PathBuf;

/// Everything that can go wrong in blip2-opt. Messages are lowercase, name the file, key or value, and say
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
    #[error("invalid OPT config in {path}: {source}")]
    Json {
        /// The file (`<memory>` for a string).
        path: PathBuf,
        /// The parser's message, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// A config.json that is neither an OPT config nor a BLIP-2 config with an OPT `text_config`.
    #[error(
        "{path} is not an OPT config: expected `model_type: \"opt\"` or a BLIP-2 `text_config` of that type"
    )]
    NotAnOptConfig {
        /// The file.
        path: PathBuf,
    },

    /// A config value blip2 does not support.
    #[error("unsupported value {value} for `{key}` in the OPT config: {reason}")]
    UnsupportedConfig {
        /// The config key, as in config.json (`text_config.` omitted).
        key: String,
        /// The value found.
        value: String,
        /// What is supported.
        reason: String,
    },

    /// Inputs the model cannot take (shapes, token ids, a mask that does not cover the cache).
    #[error("bad OPT input: {reason}")]
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
