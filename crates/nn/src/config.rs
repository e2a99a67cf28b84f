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

/// Reads the config that `path` names (see [`config_path`]), at most
/// [`MAX_JSON_BYTES`](crate::limits::MAX_JSON_BYTES).
///
/// # Errors
/// The file's path with the OS error (`FileTooLarge` past the limit), for the caller's own error type.
pub fn read_config(path: &Path) -> Result<(PathBuf, String), (PathBuf, std::io::Error)> {
    let path = config_path(path);
    match crate::limits::read_to_string_bounded(&path, crate::limits::MAX_JSON_BYTES) {
        Ok(text) => Ok((path, text)),
        Err(source) => Err((path, source)),
    }
}

/// One token id or several: HF configs allow both for `eos_token_id`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl<'de> serde::Deserialize<'de> for TokenIds {
    /// An id or a list of ids, each an integer in `0..=u32::MAX`; anything else is refused saying so (an
    /// untagged enum would only say "data did not match any variant").
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = serde_json::Value::deserialize(deserializer)?;
        let id = |v: &serde_json::Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    D::Error::custom(format!(
                        "expected a token id (an integer from 0 to {}), found {v}",
                        u32::MAX
                    ))
                })
        };
        match &value {
            serde_json::Value::Array(ids) => {
                ids.iter().map(id).collect::<Result<_, _>>().map(Self::Many)
            }
            other => id(other).map(Self::One),
        }
    }
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

/// Deserializes one section of a config (a JSON object) into `T`, whose fields all have defaults
/// (`#[serde(default)]`). serde's own message does not say which field is wrong ("invalid type: floating point
/// `1.5`, expected usize"); this one does: on failure each key is tried alone, and the error names the first one
/// that fails with its value (`` `num_hidden_layers` = 1e9: invalid type: floating point `1000000000.0`, expected
/// usize ``).
///
/// # Errors
/// serde's error, with the key and value in front when one key alone fails.
pub fn from_section<T: serde::de::DeserializeOwned>(
    section: serde_json::Value,
) -> Result<T, serde_json::Error> {
    use serde::de::Error as _;
    let error = match T::deserialize(&section) {
        Ok(value) => return Ok(value),
        Err(error) => error,
    };
    if let serde_json::Value::Object(map) = &section {
        for (key, value) in map {
            let mut probe = serde_json::Map::new();
            probe.insert(key.clone(), value.clone());
            if let Err(e) = T::deserialize(&serde_json::Value::Object(probe)) {
                let mut shown = value.to_string();
                if shown.chars().count() > 80 {
                    shown = format!("{}...", shown.chars().take(77).collect::<String>());
                }
                return Err(serde_json::Error::custom(format!("`{key}` = {shown}: {e}")));
            }
        }
    }
    Err(error)
}
