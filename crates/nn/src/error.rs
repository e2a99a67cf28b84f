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
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
