//! [`HubError`]: everything that can go wrong resolving a model.

use std::path::PathBuf;

use crate::DEFAULT_REVISION;

/// Everything that can go wrong resolving a model. Messages are lowercase and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// Neither an existing directory, nor a path, nor a valid hub id.
    #[error(
        "`{model}` is neither a model directory nor a hub id: {reason}; pass a directory with config.json and the \
         weights, or a hub id like `Salesforce/blip2-opt-2.7b` (optionally `@revision`)"
    )]
    InvalidModel {
        /// What was passed.
        model: String,
        /// What is wrong with it as a hub id.
        reason: String,
    },

    /// A path (it starts with `/`, `.` or `~`, or is absolute) that does not exist.
    #[error(
        "model directory {path} does not exist: pass a directory with config.json and the weights, or a hub id like \
         `Salesforce/blip2-opt-2.7b`"
    )]
    DirectoryNotFound {
        /// The path, with `~` expanded.
        path: PathBuf,
    },

    /// A path that exists but is not a directory.
    #[error(
        "{path} is not a directory: pass the model directory, the one with config.json and the weights"
    )]
    NotADirectory {
        /// The path, with `~` expanded.
        path: PathBuf,
    },

    /// Offline, or the hub cannot be reached, and the cache does not have the model.
    #[error(
        "`{repo}`{at} is not in the HF cache {cache_dir} and {reason}: download it where there is network with \
         `huggingface-cli download {repo}{flag}` (or `hf download`; same cache, set HF_HOME to use another), or pass \
         the model directory",
        at = if .revision == DEFAULT_REVISION { String::new() } else { format!(" at revision `{}`", .revision) },
        flag = if .revision == DEFAULT_REVISION { String::new() } else { format!(" --revision {}", .revision) }
    )]
    NotCached {
        /// `owner/name`.
        repo: String,
        /// The revision.
        revision: String,
        /// The hub cache that was searched.
        cache_dir: PathBuf,
        /// Why nothing was downloaded: offline mode, or the network error.
        reason: String,
    },

    /// The hub refused access (HTTP 401 or 403): a private or gated repo, a bad token, or (without a token) a repo
    /// that does not exist.
    #[error(
        "the hub at {endpoint} refused access to `{repo}` (HTTP {status}{token_note}): the repo may be private, gated \
         or misspelled; set HF_TOKEN to a token that can read it (https://huggingface.co/settings/tokens), or pass \
         a local model directory",
        token_note = if *.token_sent { ", with a token" } else { ", no token set" }
    )]
    Unauthorized {
        /// `owner/name`.
        repo: String,
        /// The endpoint.
        endpoint: String,
        /// 401 or 403.
        status: u16,
        /// Whether a token was sent.
        token_sent: bool,
    },

    /// The hub says the repo or the revision does not exist.
    #[error(
        "`{repo}` at revision `{revision}` is not on the hub at {endpoint}: check the id and revision, or pass a local \
         model directory"
    )]
    NotOnHub {
        /// `owner/name`.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The endpoint.
        endpoint: String,
    },

    /// A file a BLIP-2 model directory needs is not in the repo.
    #[error(
        "{file} is not in the hub repo `{repo}` at revision `{revision}`: a BLIP-2 model directory needs config.json \
         and safetensors weights (model.safetensors, or model.safetensors.index.json and its shards)"
    )]
    MissingFile {
        /// The file.
        file: String,
        /// `owner/name`.
        repo: String,
        /// The revision.
        revision: String,
    },

    /// `model.safetensors.index.json` cannot be used.
    #[error("invalid safetensors index {path}: {reason}")]
    BadIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The hub answered with an HTTP error other than 401, 403 and 404.
    #[error("the hub at {endpoint} answered HTTP {status} for {file} of `{repo}`{}: try again later, or pass a \
             local model directory", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Http {
        /// The file.
        file: String,
        /// `owner/name`.
        repo: String,
        /// The endpoint.
        endpoint: String,
        /// The status.
        status: u16,
        /// The hub's `x-error-message`, if any.
        message: Option<String>,
    },

    /// A download failed: a network error after the hub was reached, or a response that is not the hub's.
    #[error("downloading {file} of `{repo}` from {endpoint} failed: {reason}")]
    Download {
        /// The file.
        file: String,
        /// `owner/name`.
        repo: String,
        /// The endpoint.
        endpoint: String,
        /// The client's message.
        reason: String,
    },

    /// A file or directory in the cache could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl HubError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
