//! The error type of blip2-nn: checkpoint files, loading, saving, backend and dtype selection, config values.

use std::path::PathBuf;

use crate::backend::FloatDType;
use crate::loader::LoadReport;

/// Everything that can go wrong in blip2-nn. Messages are lowercase, name the file, key or value, and say what
/// to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A model directory without weights.
    #[error(
        "no weights in {dir}: expected model.safetensors, or model.safetensors.index.json with its shards \
         (PyTorch .bin checkpoints are not supported; convert them to safetensors)"
    )]
    NoWeights {
        /// The directory.
        dir: PathBuf,
    },

    /// A shard named by `model.safetensors.index.json` is not there.
    #[error("shard {shard} named by {index} is missing; download it again or fix the index")]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The missing shard.
        shard: PathBuf,
    },

    /// `model.safetensors.index.json` cannot be used.
    #[error("invalid shard index {path}: {reason}")]
    BadIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A safetensors file whose header cannot be parsed.
    #[error("{path} is not a valid safetensors file: {reason}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A safetensors file shorter (or longer) than its header says: usually an interrupted download.
    #[error(
        "{path} is truncated or damaged: its header describes {expected} bytes but the file has {found}; \
         download it again"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Length the header implies.
        expected: u64,
        /// Actual length.
        found: u64,
    },

    /// The same tensor name in two shards.
    #[error("tensor `{key}` is stored twice, in {first} and in {second}")]
    DuplicateKey {
        /// The tensor name.
        key: String,
        /// One file.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },

    /// A tensor was asked for that the checkpoint does not hold.
    #[error("tensor `{key}` is not in the checkpoint ({files})")]
    TensorNotFound {
        /// The tensor name.
        key: String,
        /// The checkpoint's files, joined.
        files: String,
    },

    /// A tensor of a dtype that cannot become a float parameter (an integer or bool tensor, an 8-bit float).
    #[error(
        "tensor `{key}` in {path} has dtype {dtype}; a float tensor (F32, F16, BF16 or F64) is expected"
    )]
    TensorDtype {
        /// The tensor name.
        key: String,
        /// The file.
        path: PathBuf,
        /// The dtype on disk.
        dtype: String,
    },

    /// The checkpoint and the module disagree: missing, unexpected or mis-shaped tensors (all of them listed).
    #[error("{0}")]
    Incompatible(Box<LoadReport>),

    /// A backend asked to compute in a dtype it does not support.
    #[error(
        "backend {backend} does not support {dtype} (it supports: {}); pick another dtype or backend",
        supported.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
    )]
    UnsupportedDtype {
        /// `Backend::name` of the device.
        backend: String,
        /// The dtype asked for.
        dtype: FloatDType,
        /// What the backend supports.
        supported: Vec<FloatDType>,
    },

    /// A dtype name that is not f32, f16 or bf16.
    #[error("unknown dtype `{name}`; use f32, f16 or bf16")]
    UnknownDtype {
        /// What was given.
        name: String,
    },

    /// A backend name blip2 does not know.
    #[error(
        "unknown backend `{name}`; use cpu, flex, ndarray, wgpu, vulkan, metal or cuda[:N] \
         (compiled in: {compiled})"
    )]
    UnknownBackend {
        /// What was given.
        name: String,
        /// The compiled-in backends, joined.
        compiled: String,
    },

    /// A known backend that this build does not include.
    #[error(
        "backend `{name}` is not compiled into this build (compiled in: {compiled}); rebuild with \
         `--features {name}`"
    )]
    BackendNotCompiled {
        /// The backend.
        name: String,
        /// The compiled-in backends, joined.
        compiled: String,
    },

    /// A malformed device string.
    #[error("invalid device `{spec}`: {reason}")]
    InvalidDevice {
        /// What was given.
        spec: String,
        /// What is wrong.
        reason: String,
    },

    /// A config value over one of blip2's resource limits ([`crate::limits`]): refused before anything is
    /// allocated.
    #[error(
        "`{key}` = {value}{} is over blip2's limit of {limit}; the config is damaged or not a model blip2 can \
         run (the limits are in blip2_nn::limits and docs/weights.md)",
        crate::limits::location(path)
    )]
    LimitExceeded {
        /// The config file, when known.
        path: Option<PathBuf>,
        /// The config key (with its section in a BLIP-2 config, e.g. `vision_config.num_hidden_layers`), or
        /// what was counted (`parameters`).
        key: String,
        /// The value found.
        value: u64,
        /// The largest value accepted.
        limit: u64,
    },

    /// A safetensors header longer than [`crate::limits::MAX_SAFETENSORS_HEADER_BYTES`].
    #[error(
        "{path} is not a usable safetensors file: its header is {len} bytes, over the limit of {limit} bytes \
         (the safetensors format's own); the file is damaged or not safetensors"
    )]
    HeaderTooLarge {
        /// The file.
        path: PathBuf,
        /// The header length the file states.
        len: u64,
        /// The limit.
        limit: u64,
    },

    /// A tensor entry of a safetensors header that cannot be right: a shape whose size overflows, a byte range
    /// that does not fit the shape and dtype, lies outside the data, or overlaps another tensor's.
    #[error("{path} is damaged: tensor `{key}` {reason}; download the file again")]
    BadTensor {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// A weight that cannot be quantized as asked.
    #[error("cannot quantize `{key}` to int8: {reason}")]
    Quantization {
        /// The parameter or checkpoint key.
        key: String,
        /// Why.
        reason: String,
    },

    /// A config value blip2 does not support (e.g. an unknown activation name).
    #[error("unsupported value {value:?} for `{key}`: {reason}")]
    UnsupportedConfig {
        /// The config key, as in config.json.
        key: String,
        /// The value found.
        value: String,
        /// What is supported.
        reason: String,
    },
}

impl Error {
    /// Names the config file (and, in a BLIP-2 config, the section such as `vision_config`) in a
    /// [`Error::LimitExceeded`] raised by a `validate` that did not know them; other errors are returned as they
    /// are.
    #[must_use]
    pub fn in_config(self, file: &std::path::Path, section: Option<&str>) -> Self {
        match self {
            Self::LimitExceeded {
                path,
                key,
                value,
                limit,
            } => Self::LimitExceeded {
                path: path.or_else(|| Some(file.to_path_buf())),
                key: match section {
                    Some(section) if !key.starts_with(section) => format!("{section}.{key}"),
                    _ => key,
                },
                value,
                limit,
            },
            other => other,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
