//! The shard index of a sharded checkpoint (`model.safetensors.index.json`): which file holds each tensor.

use std::collections::BTreeMap;
use std::path::Path;

use crate::Error;

/// A parsed `model.safetensors.index.json`: its `weight_map` and the shard files it names. Read by
/// [`super::Checkpoint::open`] and by `blip2-hub` (which downloads the shards), so both refuse the same indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIndex {
    /// Tensor key -> shard file name.
    pub weight_map: BTreeMap<String, String>,
    /// The shard file names, sorted, each once.
    pub shards: Vec<String>,
}

impl ShardIndex {
    /// Reads and checks an index file: JSON with a non-empty `weight_map` object whose values are plain file
    /// names in the index's own directory (no separators, no `..`: anything else could reach outside the model
    /// directory or the cache snapshot). The file is read with the JSON size bound of [`crate::limits`].
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read, [`Error::BadIndex`] naming the file and what is wrong.
    pub fn read(index: &Path) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadIndex {
            path: index.to_path_buf(),
            reason,
        };
        let text = crate::limits::read_to_string_bounded(index, crate::limits::MAX_JSON_BYTES)
            .map_err(|e| Error::io(index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no `weight_map` object".to_string()))?;
        let mut weight_map = BTreeMap::new();
        for (key, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("the shard of `{key}` is not a file name")))?;
            let plain = !file.is_empty()
                && !file.contains("..")
                && !file.contains(['/', '\\'])
                && Path::new(file).components().count() == 1;
            if !plain {
                return Err(bad(format!(
                    "the shard of `{key}` is `{file}`, not a file name in the same directory"
                )));
            }
            weight_map.insert(key.clone(), file.to_string());
        }
        if weight_map.is_empty() {
            return Err(bad("`weight_map` is empty".to_string()));
        }
        let mut shards: Vec<String> = weight_map.values().cloned().collect();
        shards.sort();
        shards.dedup();
        Ok(Self { weight_map, shards })
    }
}
