//! `T5Config`: HF's `T5Config`, read from a `config.json` as it is (a standalone T5/Flan-T5, or the `text_config`
//! of a BLIP-2 config). HF field names and defaults; unknown keys ignored; unsupported values rejected with the
//! key named.
//!
//! Two derived settings follow HF exactly:
//! - the feed-forward: `feed_forward_proj` is `"<act>"` (plain `wo(act(wi x))`) or `"gated-<act>"`
//!   (`wo(act(wi_0 x) * wi_1 x)`); the activation is `dense_act_fn` when the file states it (the BLIP-2 Flan-T5
//!   configs say exact `"gelu"`), else the one `feed_forward_proj` names, with `gated-gelu` meaning `gelu_new`;
//!   `is_gated_act`, when the file states it (transformers 5.x writes it), decides the gating over the prefix;
//! - the output scaling (HF's `scale_decoder_outputs`): decoder outputs are multiplied by `d_model^-0.5` before
//!   the head when the file says `scale_decoder_outputs: true` (transformers 5.x writes the key), or, in configs
//!   without that key (the hub's 4.x files), unless `tie_word_embeddings` is `false` (T5 v1.1, Flan-T5).
//!
//! Which weights the head uses is not the config's to decide: transformers 5.24 uses a stored `lm_head.weight`
//! whenever the file has one, and `shared` otherwise, whatever `tie_word_embeddings` says (it forces that flag
//! to `true` and unties only a head stored with its own values). [`crate::T5ForConditionalGeneration::load`]
//! does the same; docs/weights.md has the table.

use std::path::{Path, PathBuf};

use blip2_nn::{Activation, limits};
use serde::{Deserialize, Serialize};

pub use blip2_nn::config::TokenIds;

use crate::Error;

/// T5's hyper-parameters (HF `T5Config`; field names as in `config.json`). `Default` is HF's (t5-small sizes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct T5Config {
    /// Vocabulary (`vocab`): 32128.
    pub vocab_size: usize,
    /// Width (`hidden`).
    pub d_model: usize,
    /// Per-head width (`head_dim`); heads * d_kv may differ from d_model.
    pub d_kv: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Decoder blocks (`None`: `num_layers`).
    pub num_decoder_layers: Option<usize>,
    /// Attention heads.
    pub num_heads: usize,
    /// Relative position buckets.
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions share the last bucket.
    pub relative_attention_max_distance: usize,
    /// Dropout (training only).
    pub dropout_rate: f64,
    /// RMS norm epsilon.
    pub layer_norm_epsilon: f64,
    /// `relu`, `gated-gelu`, `gated-silu`, ...
    pub feed_forward_proj: String,
    /// The feed-forward activation when stated (see the module doc).
    pub dense_act_fn: Option<String>,
    /// Whether the feed-forward is gated, when stated (transformers 5.x writes it; it wins over
    /// `feed_forward_proj`'s `gated-` prefix, as in transformers).
    pub is_gated_act: Option<bool>,
    /// The 4.x way of saying whether decoder outputs are scaled: `false` (T5 v1.1, Flan-T5) means unscaled when
    /// `scale_decoder_outputs` is absent. A fresh model ([`Self::init`]) gets its own `lm_head` when this is
    /// `false`; a loaded one uses whatever head the file holds.
    pub tie_word_embeddings: Option<bool>,
    /// Whether decoder outputs are multiplied by `d_model^-0.5` before the head, when stated (transformers 5.x
    /// writes it, with `tie_word_embeddings: true` on every T5); see [`Self::scales_decoder_outputs`].
    pub scale_decoder_outputs: Option<bool>,
    /// First decoder input (the pad id, 0).
    pub decoder_start_token_id: Option<u32>,
    /// Padding (0).
    pub pad_token_id: Option<u32>,
    /// End of sequence (1).
    pub eos_token_id: Option<TokenIds>,
}

impl Default for T5Config {
    fn default() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_decoder_layers: None,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            dropout_rate: 0.1,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
            dense_act_fn: None,
            is_gated_act: None,
            tie_word_embeddings: None,
            scale_decoder_outputs: None,
            decoder_start_token_id: Some(0),
            pad_token_id: Some(0),
            eos_token_id: Some(TokenIds::One(1)),
        }
    }
}

impl T5Config {
    /// Flan-T5-XL as BLIP-2 uses it (exact gelu, untied head).
    pub fn flan_t5_xl_blip2() -> Self {
        Self {
            d_model: 2048,
            d_kv: 64,
            d_ff: 5120,
            num_layers: 24,
            num_decoder_layers: Some(24),
            num_heads: 32,
            feed_forward_proj: "gated-gelu".into(),
            dense_act_fn: Some("gelu".into()),
            tie_word_embeddings: Some(false),
            ..Self::default()
        }
    }

    /// Parses JSON text: a T5 config, or a BLIP-2 config whose `text_config` is T5. `source` names the text in
    /// errors.
    ///
    /// # Errors
    /// [`Error::Json`], [`Error::NotAT5Config`], [`Error::UnsupportedConfig`].
    pub fn from_json_str(json: &str, source: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = source.into();
        let json_error = |source| Error::Json {
            path: path.clone(),
            source,
        };
        let value: serde_json::Value = serde_json::from_str(json).map_err(json_error)?;
        let name = value.get("text_config").map(|_| "text_config");
        let section = value.get("text_config").unwrap_or(&value);
        if section.get("model_type").and_then(|t| t.as_str()) != Some("t5") {
            return Err(Error::NotAT5Config { path });
        }
        let config: Self = blip2_nn::config::from_section(section.clone()).map_err(json_error)?;
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
    /// building the model cannot exhaust memory).
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] naming the first offending key; [`blip2_nn::Error::LimitExceeded`] (as
    /// [`Error::Nn`]) naming a size over its limit.
    pub fn validate(&self) -> Result<(), Error> {
        self.activation()?;
        limits::check_all(&[
            ("vocab_size", self.vocab_size, limits::MAX_VOCAB_SIZE),
            ("d_model", self.d_model, limits::MAX_HIDDEN_SIZE),
            ("d_kv", self.d_kv, limits::MAX_HEAD_DIM),
            ("d_ff", self.d_ff, limits::MAX_INTERMEDIATE_SIZE),
            ("num_layers", self.num_layers, limits::MAX_LAYERS),
            (
                "num_decoder_layers",
                self.decoder_layers(),
                limits::MAX_LAYERS,
            ),
            ("num_heads", self.num_heads, limits::MAX_HEADS),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
                limits::MAX_RELATIVE_BUCKETS,
            ),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
                limits::MAX_POSITIONS,
            ),
        ])?;
        limits::check_u64(
            "parameters",
            self.estimated_parameters(),
            limits::MAX_PARAMETERS,
        )?;
        for (key, value) in [
            // Block 0 of each stack holds the relative attention bias the others share.
            ("num_layers", self.num_layers),
            ("num_decoder_layers", self.decoder_layers()),
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
        ] {
            if value == 0 {
                return Err(Error::unsupported(key, value, "must be positive"));
            }
        }
        if self.relative_attention_num_buckets < 4
            || self.relative_attention_max_distance * 2 < self.relative_attention_num_buckets
        {
            return Err(Error::unsupported(
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
                "needs at least 4 buckets and a max distance of at least half the buckets",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout_rate) {
            return Err(Error::unsupported(
                "dropout_rate",
                self.dropout_rate,
                "must be in [0, 1)",
            ));
        }
        Ok(())
    }

    /// The model's parameters as the config describes them, the head counted as a matrix of its own even when
    /// it is `shared` (an upper bound), in `u128` so that no config can overflow it: what [`Self::validate`]
    /// holds against [`MAX_PARAMETERS`](blip2_nn::limits::MAX_PARAMETERS).
    pub fn estimated_parameters(&self) -> u128 {
        let d = self.d_model;
        let inner = self.num_heads.saturating_mul(self.d_kv);
        let (encoder, decoder) = (self.num_layers, self.decoder_layers());
        let ff = if self.is_gated() { 3 } else { 2 };
        limits::parameter_count(&[
            // shared and lm_head; the two relative attention biases; the two final norms.
            &[2, self.vocab_size, d],
            &[2, self.relative_attention_num_buckets, self.num_heads],
            &[2, d],
            // Encoder blocks: self-attention, feed-forward, two norms.
            &[encoder, 4, d, inner],
            &[encoder, ff, d, self.d_ff],
            &[encoder, 2, d],
            // Decoder blocks: self- and cross-attention, feed-forward, three norms.
            &[decoder, 8, d, inner],
            &[decoder, ff, d, self.d_ff],
            &[decoder, 3, d],
        ])
    }

    /// Whether the feed-forward is gated: `is_gated_act` when stated, else `feed_forward_proj` `gated-<act>`.
    pub fn is_gated(&self) -> bool {
        self.is_gated_act
            .unwrap_or_else(|| self.feed_forward_proj.starts_with("gated-"))
    }

    /// The feed-forward activation (see the module doc).
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] for a malformed `feed_forward_proj` or an activation blip2 lacks.
    pub fn activation(&self) -> Result<Activation, Error> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let named = match parts.as_slice() {
            [act] => *act,
            ["gated", "gelu"] => "gelu_new",
            ["gated", act] => *act,
            _ => {
                return Err(Error::unsupported(
                    "feed_forward_proj",
                    format!("{:?}", self.feed_forward_proj),
                    "expected `<activation>` or `gated-<activation>`",
                ));
            }
        };
        let (key, name) = match &self.dense_act_fn {
            Some(stated) => ("dense_act_fn", stated.as_str()),
            None => ("feed_forward_proj", named),
        };
        Activation::parse(key, name).map_err(|e| match e {
            blip2_nn::Error::UnsupportedConfig { key, value, reason } => Error::UnsupportedConfig {
                key,
                value: format!("{value:?}"),
                reason,
            },
            other => Error::Nn(other),
        })
    }

    /// Decoder blocks.
    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// HF's `scale_decoder_outputs`: whether decoder outputs are multiplied by `d_model^-0.5` before the head.
    /// The stated `scale_decoder_outputs` when present (transformers 5.x), else `tie_word_embeddings != false`
    /// (transformers 5.24's `T5Config.__post_init__` on a 4.x file: original T5 scales, v1.1 and Flan-T5 do not).
    pub fn scales_decoder_outputs(&self) -> bool {
        self.scale_decoder_outputs
            .unwrap_or(self.tie_word_embeddings != Some(false))
    }

    /// Whether a fresh model ([`Self::init`]) gets its own `lm_head`: configs stating
    /// `tie_word_embeddings: false`. Loading decides from the file instead (see the module doc).
    pub fn own_head_when_fresh(&self) -> bool {
        self.tie_word_embeddings == Some(false)
    }
}
