//! Finding and reading a model's `config.json`, the same way for every model crate.

use std::path::{Path, PathBuf};

/// The `config.json` that `path` names: `path` itself, or `config.json` inside it when it is a directory.
pub fn config_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    }
}

/// The directory whose weights a `from_pretrained(path)` reads: `path` when it is a directory, else the directory
/// of the config file it names.
pub fn model_dir(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

/// Reads the config that `path` names (see [`config_path`]).
///
/// # Errors
/// The file's path with the OS error, for the caller's own error type.
pub fn read_config(path: &Path) -> Result<(PathBuf, String), (PathBuf, std::io::Error)> {
    let path = config_path(path);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((path, text)),
        Err(source) => Err((path, source)),
    }
}

/// One token id or several: HF configs allow both for `eos_token_id`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}
