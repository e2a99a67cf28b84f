//! From a Burn parameter path to the checkpoint key, in one place.
//!
//! Module fields carry the HF attribute names, so a parameter path is already the checkpoint key except for:
//! - the part of the checkpoint a module owns (`qformer.`, `language_model.`, ... : [`KeyMap::route`]);
//! - names Rust cannot spell as a field, renamed segment by segment ([`KeyMap::rename`]);
//! - Burn's norm parameters `gamma`/`beta`, which are HF's `weight`/`bias` (always, for every norm).

/// Maps Burn parameter paths to checkpoint keys; see the module doc.
///
/// ```
/// use blip2_nn::loader::KeyMap;
///
/// // A Q-Former inside a full BLIP-2 checkpoint: its parameters live under `qformer.`, except the
/// // learned queries, stored at the root.
/// let map = KeyMap::under("qformer").route("query_tokens", "query_tokens").rename("layer_norm", "LayerNorm");
/// assert_eq!(map.to_file_key("encoder.layer.0.output.layer_norm.gamma"), "qformer.encoder.layer.0.output.LayerNorm.weight");
/// assert_eq!(map.to_file_key("query_tokens"), "query_tokens");
/// assert!(map.owns("qformer.layernorm.bias") && map.owns("query_tokens") && !map.owns("vision_model.post_layernorm.bias"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyMap {
    /// (module path prefix, checkpoint key prefix); the longest matching module prefix wins.
    routes: Vec<(String, String)>,
    /// (Rust segment, checkpoint segment); the checkpoint side may hold dots (`layer_0` -> `layer.0`).
    renames: Vec<(String, String)>,
}

impl KeyMap {
    /// Identity: a standalone checkpoint whose keys are the module's own paths.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every parameter under the checkpoint prefix `prefix` (e.g. `"vision_model"`; a trailing dot is optional).
    pub fn under(prefix: &str) -> Self {
        Self::new().route("", prefix)
    }

    /// Parameters whose path starts with `module_prefix` live under `file_prefix` in the checkpoint.
    /// Both are dotted paths; `""` is the root. An exact match maps the whole path (a single key).
    pub fn route(mut self, module_prefix: &str, file_prefix: &str) -> Self {
        let clean = |s: &str| s.trim_end_matches('.').to_string();
        self.routes.retain(|(m, _)| *m != clean(module_prefix));
        self.routes.push((clean(module_prefix), clean(file_prefix)));
        self
    }

    /// A field named `rust` in the module is `hf` in the checkpoint (whole segments only).
    pub fn rename(mut self, rust: &str, hf: &str) -> Self {
        self.renames.push((rust.to_string(), hf.to_string()));
        self
    }

    /// The checkpoint key of the parameter at `module_path` (Burn's dotted path).
    pub fn to_file_key(&self, module_path: &str) -> String {
        let (module_prefix, file_prefix) = self.route_for(module_path);
        let rest = if module_prefix.is_empty() {
            module_path
        } else {
            module_path[module_prefix.len()..].trim_start_matches('.')
        };
        let mut segments: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('.').collect()
        };
        // Burn's LayerNorm/RmsNorm call their parameters gamma/beta; HF calls them weight/bias.
        if let Some(last) = segments.last_mut() {
            *last = match *last {
                "gamma" => "weight",
                "beta" => "bias",
                other => other,
            };
        }
        let renamed = segments.iter().map(|s| {
            self.renames
                .iter()
                .find(|(rust, _)| rust == s)
                .map_or(*s, |(_, hf)| hf.as_str())
        });
        let mut key = file_prefix.to_string();
        for segment in renamed {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(segment);
        }
        key
    }

    /// Whether a checkpoint key belongs to the part of the checkpoint this map covers (so that an unused key
    /// there is unexpected rather than someone else's).
    pub fn owns(&self, file_key: &str) -> bool {
        if self.routes.is_empty() {
            return true;
        }
        self.routes.iter().any(|(_, file_prefix)| {
            file_prefix.is_empty()
                || file_key == file_prefix
                || (file_key.starts_with(file_prefix.as_str())
                    && file_key[file_prefix.len()..].starts_with('.'))
        })
    }

    fn route_for<'a>(&'a self, module_path: &str) -> (&'a str, &'a str) {
        self.routes
            .iter()
            .filter(|(m, _)| {
                m.is_empty()
                    || module_path == m
                    || (module_path.starts_with(m.as_str())
                        && module_path[m.len()..].starts_with('.'))
            })
            .max_by_key(|(m, _)| m.len())
            .map_or(("", ""), |(m, f)| (m.as_str(), f.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_maps_norms_only() {
        let map = KeyMap::new();
        assert_eq!(
            map.to_file_key("encoder.layers.0.fc1.weight"),
            "encoder.layers.0.fc1.weight"
        );
        assert_eq!(
            map.to_file_key("post_layernorm.gamma"),
            "post_layernorm.weight"
        );
        assert_eq!(
            map.to_file_key("post_layernorm.beta"),
            "post_layernorm.bias"
        );
        assert!(map.owns("anything.at.all"));
    }

    #[test]
    fn prefix_and_multi_segment_rename() {
        let map = KeyMap::under("language_model.").rename("layer_0", "layer.0");
        assert_eq!(
            map.to_file_key("encoder.block.1.layer_0.SelfAttention.q.weight"),
            "language_model.encoder.block.1.layer.0.SelfAttention.q.weight"
        );
        assert!(map.owns("language_model.shared.weight"));
        assert!(!map.owns("language_model_extra.weight"));
        assert!(!map.owns("qformer.layernorm.weight"));
    }

    #[test]
    fn longest_route_wins() {
        let map = KeyMap::under("qformer")
            .route("query_tokens", "query_tokens")
            .route("head", "itm_head");
        assert_eq!(map.to_file_key("query_tokens"), "query_tokens");
        assert_eq!(map.to_file_key("head.weight"), "itm_head.weight");
        assert_eq!(
            map.to_file_key("layernorm.gamma"),
            "qformer.layernorm.weight"
        );
        assert!(map.owns("query_tokens") && map.owns("itm_head.bias"));
        assert!(!map.owns("vision_model.embeddings.class_embedding"));
    }
}
