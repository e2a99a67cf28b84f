//! `Blip2VisionConfig`: HF's `Blip2VisionConfig`, read from a `config.json` as it is.
//!
//! The same fields and defaults as transformers 5.24 (the defaults are the hub's ViT-g). A BLIP-2 `config.json`
//! holds it as `vision_config`; a standalone `Blip2VisionModel` directory holds it at the top level. Unknown keys
//! are ignored; values this port cannot run are rejected by [`Blip2VisionConfig::validate`] with the key named.

use std::path::{Path, PathBuf};

use blip2_nn::{Activation, limits};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The vision tower's hyper-parameters (HF `Blip2VisionConfig`; field names as in `config.json`).
///
/// `Default` is the ViT-g of every BLIP-2 hub checkpoint at 224 px.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Blip2VisionConfig {
    /// Width of the tower (`hidden`): 1408 for ViT-g.
    pub hidden_size: usize,
    /// Width of the MLP: 6144 for ViT-g.
    pub intermediate_size: usize,
    /// Encoder layers: 39 for ViT-g.
    pub num_hidden_layers: usize,
    /// Attention heads: 16 for ViT-g (head_dim 88).
    pub num_attention_heads: usize,
    /// Training resolution (square): the position table has `(image_size / patch_size)^2 + 1` rows.
    /// HF types it `int | list`; a list must be square (`[h, h]`), as HF's embeddings assume.
    #[serde(with = "square")]
    pub image_size: usize,
    /// Patch side (kernel = stride of the patch convolution).
    #[serde(with = "square")]
    pub patch_size: usize,
    /// MLP activation, an HF name (`gelu` = exact erf for every BLIP-2 checkpoint).
    pub hidden_act: String,
    /// LayerNorm epsilon. Hub configs do not store it; HF's default is 1e-6 since 4.46 (1e-5 before).
    pub layer_norm_eps: f64,
    /// Dropout on attention probabilities, used only when training.
    pub attention_dropout: f64,
    /// Std of the truncated-normal init of fresh weights (HF's 1e-10 keeps the tower near zero; random-weight
    /// benches override it).
    pub initializer_range: f64,
    /// Whether `qkv` has a bias (stored as `cat(q_bias, zeros, v_bias)` in real checkpoints).
    pub qkv_bias: bool,
}

impl Default for Blip2VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 1408,
            intermediate_size: 6144,
            num_hidden_layers: 39,
            num_attention_heads: 16,
            image_size: 224,
            patch_size: 14,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-6,
            attention_dropout: 0.0,
            initializer_range: 1e-10,
            qkv_bias: true,
        }
    }
}

impl Blip2VisionConfig {
    /// ViT-g as in every BLIP-2 hub checkpoint, at `image_size` (224, or 364 for the `-coco` fine-tunes).
    pub fn vit_g(image_size: usize) -> Self {
        Self {
            image_size,
            ..Self::default()
        }
    }

    /// Parses a vision config from JSON text: either a standalone vision config or a whole BLIP-2 config (its
    /// `vision_config` is taken). `source` names the text in errors.
    ///
    /// # Errors
    /// [`Error::Json`] on malformed JSON or a field of the wrong type; [`Error::NotAVisionConfig`];
    /// [`Error::UnsupportedConfig`] from [`Self::validate`].
    pub fn from_json_str(json: &str, source: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = source.into();
        let json_error = |source| Error::Json {
            path: path.clone(),
            source,
        };
        let value: serde_json::Value = serde_json::from_str(json).map_err(json_error)?;
        let (section, name) = match value.get("vision_config") {
            Some(vision) => (vision.clone(), Some("vision_config")),
            None if value.get("model_type").and_then(|t| t.as_str())
                == Some("blip_2_vision_model")
                || value.get("hidden_size").is_some() && value.get("patch_size").is_some() =>
            {
                (value, None)
            }
            None => return Err(Error::NotAVisionConfig { path }),
        };
        let config: Self = blip2_nn::config::from_section(section).map_err(json_error)?;
        config.validate().map_err(|e| match e {
            Error::Nn(e) => Error::Nn(e.in_config(&path, name)),
            other => other,
        })?;
        Ok(config)
    }

    /// Reads `path`: a `config.json` file, or a model directory holding one.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read, and those of [`Self::from_json_str`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let (path, text) = blip2_nn::config::read_config(path.as_ref())
            .map_err(|(path, source)| Error::Io { path, source })?;
        Self::from_json_str(&text, path)
    }

    /// Checks that this port can run the config, and that its sizes are within [`blip2_nn::limits`] (so that
    /// building the tower cannot exhaust memory).
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] naming the first offending key; [`blip2_nn::Error::LimitExceeded`] (as
    /// [`Error::Nn`]) naming a size over its limit.
    pub fn validate(&self) -> Result<(), Error> {
        self.activation()?;
        limits::check_all(&[
            ("hidden_size", self.hidden_size, limits::MAX_HIDDEN_SIZE),
            (
                "intermediate_size",
                self.intermediate_size,
                limits::MAX_INTERMEDIATE_SIZE,
            ),
            (
                "num_hidden_layers",
                self.num_hidden_layers,
                limits::MAX_LAYERS,
            ),
            (
                "num_attention_heads",
                self.num_attention_heads,
                limits::MAX_HEADS,
            ),
            ("image_size", self.image_size, limits::MAX_IMAGE_SIZE),
            ("patch_size", self.patch_size, limits::MAX_PATCH_SIZE),
        ])?;
        for (key, value) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
        ] {
            if value == 0 {
                return Err(Error::unsupported(key, value, "must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::unsupported(
                "num_attention_heads",
                self.num_attention_heads,
                format!("must divide hidden_size ({})", self.hidden_size),
            ));
        }
        if self.patch_size > self.image_size {
            return Err(Error::unsupported(
                "patch_size",
                self.patch_size,
                format!("larger than image_size ({})", self.image_size),
            ));
        }
        limits::check(
            "num_patches ((image_size / patch_size)^2)",
            self.grid_size() * self.grid_size(),
            limits::MAX_PATCHES,
        )?;
        limits::check_u64(
            "parameters",
            self.estimated_parameters(),
            limits::MAX_PARAMETERS,
        )?;
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(Error::unsupported(
                "layer_norm_eps",
                self.layer_norm_eps,
                "must be a positive number",
            ));
        }
        if !(0.0..1.0).contains(&self.attention_dropout) {
            return Err(Error::unsupported(
                "attention_dropout",
                self.attention_dropout,
                "must be in [0, 1)",
            ));
        }
        Ok(())
    }

    /// The MLP activation.
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] for a name HF's `ACT2FN` has but blip2 does not implement.
    pub fn activation(&self) -> Result<Activation, Error> {
        Activation::parse("hidden_act", &self.hidden_act).map_err(|e| match e {
            blip2_nn::Error::UnsupportedConfig { key, value, reason } => Error::UnsupportedConfig {
                key,
                value: format!("{value:?}"),
                reason,
            },
            other => Error::Nn(other),
        })
    }

    /// The tower's parameters as the config describes them (about 986 million for ViT-g), in `u128` so that
    /// no config can overflow it: what [`Self::validate`] holds against
    /// [`MAX_PARAMETERS`](blip2_nn::limits::MAX_PARAMETERS).
    pub fn estimated_parameters(&self) -> u128 {
        let (h, i, layers) = (
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
        );
        let p = self.patch_size;
        let grid = self.image_size / p.max(1);
        limits::parameter_count(&[
            // Patch convolution and its bias, the class embedding, the position table (grid^2 + 1 rows).
            &[3, p, p, h],
            &[3, h],
            &[grid, grid, h],
            // Per layer: qkv, projection, fc1, fc2; their biases and the two LayerNorms.
            &[layers, 4, h, h],
            &[layers, 2, h, i],
            &[layers, if self.qkv_bias { 9 } else { 6 }, h],
            &[layers, i],
            // post_layernorm.
            &[2, h],
        ])
    }

    /// Per-head width (`head_dim`): 88 for ViT-g.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Patches per side of the training resolution: 16 for ViT-g at 224.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Rows of the position table: patches + 1 (CLS): 257 at 224, 677 at 364.
    pub fn num_positions(&self) -> usize {
        self.grid_size() * self.grid_size() + 1
    }
}

/// `image_size` / `patch_size`: an integer, or a square `[n, n]` list (HF's type allows lists; its embeddings
/// only work with squares).
mod square {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(
        value: &usize,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(*value as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<usize, D::Error> {
        // Through a JSON value rather than an untagged enum, whose error ("data did not match any variant")
        // would not say what is wrong.
        let value = serde_json::Value::deserialize(deserializer)?;
        let int = |v: &serde_json::Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
        match &value {
            serde_json::Value::Number(_) => int(&value).ok_or_else(|| {
                D::Error::custom(format!("expected a non-negative integer, found {value}"))
            }),
            serde_json::Value::Array(pair) => match pair.as_slice() {
                [a, b] if int(a).is_some() && int(a) == int(b) => Ok(int(a).unwrap_or_default()),
                _ => Err(D::Error::custom(format!(
                    "expected an integer or a square [n, n] pair of them, found {value} (non-square training \
                     sizes are not supported; run non-square images with interpolate_pos_encoding instead)"
                ))),
            },
            _ => Err(D::Error::custom(format!(
                "expected an integer or a square [n, n] pair, found {value}"
            ))),
        }
    }
}
