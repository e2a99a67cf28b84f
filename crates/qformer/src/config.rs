//! `Blip2QFormerConfig` (HF's, from `config.json` as it is) and [`QFormerConfig`], which adds the number of
//! learned queries that a BLIP-2 config stores beside it.
//!
//! The same fields and defaults as transformers 5.24 (the defaults are the hub's Q-Former). A BLIP-2
//! `config.json` holds it as `qformer_config` with `num_query_tokens` at the top level. Unknown keys are ignored;
//! values this port cannot run are rejected with the key named.

use std::path::{Path, PathBuf};

use blip2_nn::{Activation, limits};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The Q-Former's hyper-parameters (HF `Blip2QFormerConfig`; field names as in `config.json`).
///
/// `Default` is the Q-Former of every BLIP-2 hub checkpoint (BERT-base sized, cross-attention every 2nd layer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Blip2QFormerConfig {
    /// Text vocabulary (used only with `use_qformer_text_input`): 30522, 30523 in the ITM checkpoints.
    pub vocab_size: usize,
    /// Width (`hidden`): 768.
    pub hidden_size: usize,
    /// Layers: 12.
    pub num_hidden_layers: usize,
    /// Attention heads: 12.
    pub num_attention_heads: usize,
    /// Feed-forward width: 3072.
    pub intermediate_size: usize,
    /// Feed-forward activation, an HF name (`gelu`, exact erf).
    pub hidden_act: String,
    /// Dropout after each dense layer and on the input layernorm (training only).
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training only).
    pub attention_probs_dropout_prob: f64,
    /// Rows of the text position table.
    pub max_position_embeddings: usize,
    /// Std of the init of fresh weights.
    pub initializer_range: f64,
    /// LayerNorm epsilon (1e-12, BERT's).
    pub layer_norm_eps: f64,
    /// Padding token of the text tower.
    pub pad_token_id: Option<usize>,
    /// Layers `N` with `N % cross_attention_frequency == 0` cross-attend to the image.
    pub cross_attention_frequency: usize,
    /// Width of the image embeddings the queries read (the vision tower's `hidden_size`, 1408).
    pub encoder_hidden_size: usize,
    /// Whether the text tower (word/position embeddings and the text feed-forward) exists: true in the ITM
    /// (retrieval) checkpoints.
    pub use_qformer_text_input: bool,
    /// BERT's position embedding type; only `absolute` exists in BLIP-2.
    pub position_embedding_type: String,
}

impl Default for Blip2QFormerConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: Some(0),
            cross_attention_frequency: 2,
            encoder_hidden_size: 1408,
            use_qformer_text_input: false,
            position_embedding_type: "absolute".into(),
        }
    }
}

impl Blip2QFormerConfig {
    /// Checks that this port can run the config, and that its sizes are within [`blip2_nn::limits`] (so that
    /// building the Q-Former cannot exhaust memory).
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] naming the first offending key; [`blip2_nn::Error::LimitExceeded`] (as
    /// [`Error::Nn`]) naming a size over its limit.
    pub fn validate(&self) -> Result<(), Error> {
        self.activation()?;
        limits::check_all(&[
            ("hidden_size", self.hidden_size, limits::MAX_HIDDEN_SIZE),
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
            (
                "intermediate_size",
                self.intermediate_size,
                limits::MAX_INTERMEDIATE_SIZE,
            ),
            (
                "encoder_hidden_size",
                self.encoder_hidden_size,
                limits::MAX_HIDDEN_SIZE,
            ),
        ])?;
        // The text tower's tables exist only with `use_qformer_text_input` (transformers builds them only then).
        if self.use_qformer_text_input {
            limits::check_all(&[
                ("vocab_size", self.vocab_size, limits::MAX_VOCAB_SIZE),
                (
                    "max_position_embeddings",
                    self.max_position_embeddings,
                    limits::MAX_POSITIONS,
                ),
            ])?;
        }
        limits::check_u64(
            "parameters",
            self.estimated_parameters(),
            limits::MAX_PARAMETERS,
        )?;
        for (key, value) in [
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("cross_attention_frequency", self.cross_attention_frequency),
            ("encoder_hidden_size", self.encoder_hidden_size),
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
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(Error::unsupported(
                "layer_norm_eps",
                self.layer_norm_eps,
                "must be a positive number",
            ));
        }
        for (key, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::unsupported(key, p, "must be in [0, 1)"));
            }
        }
        if self.position_embedding_type != "absolute" {
            return Err(Error::unsupported(
                "position_embedding_type",
                format!("{:?}", self.position_embedding_type),
                "BLIP-2's Q-Former uses absolute positions only",
            ));
        }
        if self.use_qformer_text_input
            && (self.vocab_size == 0 || self.max_position_embeddings == 0)
        {
            return Err(Error::unsupported(
                "vocab_size",
                self.vocab_size,
                "the text tower needs a vocabulary and max_position_embeddings",
            ));
        }
        Ok(())
    }

    /// The feed-forward activation.
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] for a name blip2 does not implement.
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

    /// The Q-Former's parameters as the config describes them, the learned queries aside (about 105 million
    /// for the hub's, 186 million with the ITM text tower and its embeddings), in `u128` so that no config can overflow it: what
    /// [`Self::validate`] holds against [`MAX_PARAMETERS`](blip2_nn::limits::MAX_PARAMETERS).
    pub fn estimated_parameters(&self) -> u128 {
        let (h, i, e) = (
            self.hidden_size,
            self.intermediate_size,
            self.encoder_hidden_size,
        );
        let layers = self.num_hidden_layers;
        let cross = match self.cross_attention_frequency {
            0 => 0,
            every => layers.div_ceil(every),
        };
        let text = usize::from(self.use_qformer_text_input);
        limits::parameter_count(&[
            // The input LayerNorm; text embeddings (words, positions).
            &[2, h],
            &[text, self.vocab_size, h],
            &[text, self.max_position_embeddings, h],
            // Per layer: self-attention (q, k, v, output, LayerNorm), the query feed-forward.
            &[layers, 4, h, h],
            &[layers, 9, h],
            &[layers, 2, h, i],
            &[layers, i],
            // Cross-attention layers: q and output from the queries, k and v from the image.
            &[cross, 2, h, h],
            &[cross, 2, h, e],
            &[cross, 6, h],
            // The text feed-forward.
            &[text, layers, 2, h, i],
            &[text, layers, i],
            &[text, layers, 3, h],
        ])
    }

    /// Whether layer `index` has cross-attention (`index % cross_attention_frequency == 0`).
    pub fn has_cross_attention(&self, index: usize) -> bool {
        index.is_multiple_of(self.cross_attention_frequency)
    }
}

/// A Q-Former as BLIP-2 uses it: [`Blip2QFormerConfig`] plus the number of learned query tokens
/// (`num_query_tokens` at the top of a BLIP-2 `config.json`; 32 in every hub checkpoint).
#[derive(Clone, Debug, PartialEq)]
pub struct QFormerConfig {
    /// The Q-Former itself.
    pub qformer: Blip2QFormerConfig,
    /// Learned queries (`query_tokens` is `[1, num_query_tokens, hidden]`).
    pub num_query_tokens: usize,
}

impl Default for QFormerConfig {
    fn default() -> Self {
        Self {
            qformer: Blip2QFormerConfig::default(),
            num_query_tokens: 32,
        }
    }
}

impl QFormerConfig {
    /// Checks the Q-Former ([`Blip2QFormerConfig::validate`]) and the number of queries (positive, at most
    /// [`MAX_QUERY_TOKENS`](blip2_nn::limits::MAX_QUERY_TOKENS)).
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] or [`blip2_nn::Error::LimitExceeded`] (as [`Error::Nn`]), naming the key.
    pub fn validate(&self) -> Result<(), Error> {
        if self.num_query_tokens == 0 {
            return Err(Error::unsupported(
                "num_query_tokens",
                0,
                "must be a positive integer",
            ));
        }
        limits::check(
            "num_query_tokens",
            self.num_query_tokens,
            limits::MAX_QUERY_TOKENS,
        )?;
        self.qformer.validate()
    }

    /// Parses JSON text: a whole BLIP-2 config (`qformer_config` and `num_query_tokens`) or a standalone
    /// Q-Former config (`model_type: "blip_2_qformer"`; `num_query_tokens` then defaults to 32). `source` names
    /// the text in errors.
    ///
    /// # Errors
    /// [`Error::Json`], [`Error::NotAQFormerConfig`], [`Error::UnsupportedConfig`].
    pub fn from_json_str(json: &str, source: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = source.into();
        let json_error = |source| Error::Json {
            path: path.clone(),
            source,
        };
        let value: serde_json::Value = serde_json::from_str(json).map_err(json_error)?;
        let (section, name) = match value.get("qformer_config") {
            Some(section) => (section.clone(), Some("qformer_config")),
            None if value.get("model_type").and_then(|t| t.as_str()) == Some("blip_2_qformer") => {
                (value.clone(), None)
            }
            None => return Err(Error::NotAQFormerConfig { path }),
        };
        let mut qformer: Blip2QFormerConfig =
            blip2_nn::config::from_section(section).map_err(json_error)?;
        let located = |e: Error| match e {
            Error::Nn(e) => Error::Nn(e.in_config(&path, name)),
            other => other,
        };
        // In a whole BLIP-2 config the Q-Former reads the vision tower's width whatever `encoder_hidden_size`
        // says: transformers' `Blip2Config` overwrites it with `vision_config.hidden_size` (1408 by default).
        if let Some(vision) = value.get("vision_config") {
            let width = match vision.get("hidden_size") {
                None | Some(serde_json::Value::Null) => 1408,
                Some(w) => w.as_u64().filter(|&w| w > 0).ok_or_else(|| {
                    Error::unsupported("vision_config.hidden_size", w, "must be a positive integer")
                })?,
            };
            limits::check_u64(
                "vision_config.hidden_size",
                width,
                limits::MAX_HIDDEN_SIZE as u64,
            )
            .map_err(|e| Error::Nn(e.in_config(&path, None)))?;
            qformer.encoder_hidden_size = width as usize;
        }
        let num_query_tokens = match value.get("num_query_tokens") {
            None | Some(serde_json::Value::Null) => 32,
            Some(n) => n.as_u64().filter(|&n| n > 0).ok_or_else(|| {
                Error::unsupported("num_query_tokens", n, "must be a positive integer")
            })?,
        };
        limits::check_u64(
            "num_query_tokens",
            num_query_tokens,
            limits::MAX_QUERY_TOKENS as u64,
        )
        .map_err(|e| Error::Nn(e.in_config(&path, None)))?;
        let config = Self {
            qformer,
            num_query_tokens: num_query_tokens as usize,
        };
        config.validate().map_err(located)?;
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
}
