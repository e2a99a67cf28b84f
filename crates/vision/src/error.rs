//! The error type of blip2-vision: config files, weights, and pixel inputs the tower cannot take.

use std::path::PathBuf;

/// Everything that can go wrong in blip2-vision. Messages are lowercase, name the file, key or value, and say
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
    #[error("invalid vision config in {path}: {source}")]
    Json {
        /// The file (`<memory>` for a string).
        path: PathBuf,
        /// The parser's message, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// A config.json with neither a `vision_config` object nor the fields of a standalone vision config.
    #[error(
        "{path} is not a BLIP-2 or BLIP-2 vision config: expected a `vision_config` object or \
         `model_type: \"blip_2_vision_model\"`"
    )]
    NotAVisionConfig {
        /// The file.
        path: PathBuf,
    },

    /// A config value blip2 does not support.
    #[error("unsupported value {value} for `{key}` in the vision config: {reason}")]
    UnsupportedConfig {
        /// The config key, as in config.json (`vision_config.` omitted).
        key: String,
        /// The value found.
        value: String,
        /// What is supported.
        reason: String,
    },

    /// Pixel values the tower cannot take (wrong rank, channel count or size).
    #[error("pixel_values of shape {shape:?}: {reason}")]
    BadPixelValues {
        /// The shape given.
        shape: Vec<usize>,
        /// What was expected.
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
}
