//! `OptConfig`: HF's `OPTConfig`, read from a `config.json` as it is (a standalone OPT, or the `text_config` of a
//! BLIP-2 config). HF field names and defaults; unknown keys ignored; values this port cannot run are rejected
//! with the key named.

use std::path::{Path, PathBuf};

use blip2_nn::{Activation, limits};
use serde::{Deserialize, Serialize};

pub use blip2_nn::config::TokenIds;

use crate::Error;

/// OPT's hyper-parameters (HF `OPTConfig`; field names as in `config.json`). `Default` is HF's (opt-125m sizes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptConfig {
    /// Vocabulary (`vocab`): 50272, 50304 in BLIP-2 (resized for `<image>`).
    pub vocab_size: usize,
    /// Width of the decoder (`hidden`).
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub ffn_dim: usize,
    /// Positions; the table has two more rows (HF's offset of 2).
    pub max_position_embeddings: usize,
    /// Pre-LN (true for every size but opt-350m).
    pub do_layer_norm_before: bool,
    /// Width of the token embeddings when it differs from `hidden_size` (opt-350m: 512 with `project_in`/`out`);
    /// `None` means `hidden_size`.
    pub word_embed_proj_dim: Option<usize>,
    /// Feed-forward activation, an HF name (`relu`).
    pub activation_function: String,
    /// Biases on the attention and feed-forward projections.
    pub enable_bias: bool,
    /// LayerNorms with weight and bias (false: plain normalisation).
    pub layer_norm_elementwise_affine: bool,
    /// Drops the decoder's `final_layer_norm` (old OPT checkpoints).
    #[serde(rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    /// Whether an absent `lm_head.weight` means `embed_tokens`' weight (true for every OPT); a stored head is
    /// used either way.
    pub tie_word_embeddings: bool,
    /// Beginning of sequence (`</s>`, 2).
    pub bos_token_id: Option<u32>,
    /// End of sequence (2; 50118, `"\n"`, in BLIP-2's OPT).
    pub eos_token_id: Option<TokenIds>,
    /// Padding (1).
    pub pad_token_id: Option<u32>,
    /// Dropout on hidden states (training only).
    pub dropout: f64,
    /// Dropout on attention probabilities (training only).
    pub attention_dropout: f64,
    /// Probability of skipping a whole layer in training (HF's LayerDrop); only 0 is supported (every released
    /// OPT; it has no effect on inference).
    pub layerdrop: f64,
    /// Std of the init of fresh weights.
    pub init_std: f64,
}

impl Default for OptConfig {
    fn default() -> Self {
        Self {
            vocab_size: 50272,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            ffn_dim: 3072,
            max_position_embeddings: 2048,
            do_layer_norm_before: true,
            word_embed_proj_dim: None,
            activation_function: "relu".into(),
            enable_bias: true,
            layer_norm_elementwise_affine: true,
            remove_final_layer_norm: false,
            tie_word_embeddings: true,
            bos_token_id: Some(2),
            eos_token_id: Some(TokenIds::One(2)),
            pad_token_id: Some(1),
            dropout: 0.1,
            attention_dropout: 0.0,
            layerdrop: 0.0,
            init_std: 0.02,
        }
    }
}

impl OptConfig {
    /// OPT-2.7b as BLIP-2 uses it (vocabulary 50304, eos 50118).
    pub fn opt_2_7b_blip2() -> Self {
        Self {
            vocab_size: 50304,
            hidden_size: 2560,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            ffn_dim: 10240,
            eos_token_id: Some(TokenIds::One(50118)),
            ..Self::default()
        }
    }

    /// Parses JSON text: an OPT config, or a BLIP-2 config whose `text_config` is OPT. `source` names the text in
    /// errors.
    ///
    /// # Errors
    /// [`Error::Json`], [`Error::NotAnOptConfig`], [`Error::UnsupportedConfig`].
    pub fn from_json_str(json: &str, source: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = source.into();
        let json_error = |source| Error::Json {
            path: path.clone(),
            source,
        };
        let value: serde_json::Value = serde_json::from_str(json).map_err(json_error)?;
        let name = value.get("text_config").map(|_| "text_config");
        let section = value.get("text_config").unwrap_or(&value);
        if section.get("model_type").and_then(|t| t.as_str()) != Some("opt") {
            return Err(Error::NotAnOptConfig { path });
        }
        // A BLIP-2 config's top-level `tie_word_embeddings` is not the language model's: transformers 5.24 ties
        // OPT's head by `text_config` alone.
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
            ("ffn_dim", self.ffn_dim, limits::MAX_INTERMEDIATE_SIZE),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                limits::MAX_POSITIONS,
            ),
            (
                "word_embed_proj_dim",
                self.embed_dim(),
                limits::MAX_HIDDEN_SIZE,
            ),
        ])?;
        limits::check_u64(
            "parameters",
            self.estimated_parameters(),
            limits::MAX_PARAMETERS,
        )?;
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("ffn_dim", self.ffn_dim),
            ("max_position_embeddings", self.max_position_embeddings),
            ("word_embed_proj_dim", self.embed_dim()),
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
        if !self.layer_norm_elementwise_affine {
            return Err(Error::unsupported(
                "layer_norm_elementwise_affine",
                false,
                "LayerNorms without weight and bias are not implemented (no released OPT uses them)",
            ));
        }
        for (key, p) in [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::unsupported(key, p, "must be in [0, 1)"));
            }
        }
        if self.layerdrop != 0.0 {
            return Err(Error::unsupported(
                "layerdrop",
                self.layerdrop,
                "blip2 does not skip layers in training; set it to 0.0 (transformers ignores it in inference)",
            ));
        }
        Ok(())
    }

    /// The feed-forward activation.
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] for a name blip2 does not implement.
    pub fn activation(&self) -> Result<Activation, Error> {
        Activation::parse("activation_function", &self.activation_function).map_err(|e| match e {
            blip2_nn::Error::UnsupportedConfig { key, value, reason } => Error::UnsupportedConfig {
                key,
                value: format!("{value:?}"),
                reason,
            },
            other => Error::Nn(other),
        })
    }

    /// The model's parameters as the config describes them, the head counted as a matrix of its own even when
    /// it is tied (an upper bound), in `u128` so that no config can overflow it: what [`Self::validate`] holds
    /// against [`MAX_PARAMETERS`](blip2_nn::limits::MAX_PARAMETERS).
    pub fn estimated_parameters(&self) -> u128 {
        let (h, f, e) = (self.hidden_size, self.ffn_dim, self.embed_dim());
        let layers = self.num_hidden_layers;
        let projected = usize::from(e != h);
        limits::parameter_count(&[
            // Token embeddings (and the head, which is tied or as large), positions (two more rows).
            &[2, self.vocab_size, e],
            &[self.max_position_embeddings.saturating_add(2), h],
            // project_in / project_out, the final LayerNorm.
            &[projected, 2, e, h],
            &[2, h],
            // Per layer: q, k, v, out_proj, fc1, fc2, their biases and the two LayerNorms.
            &[layers, 4, h, h],
            &[layers, 2, h, f],
            &[layers, 9, h],
            &[layers, f],
        ])
    }

    /// Width of the token embeddings (`word_embed_proj_dim`, else `hidden_size`).
    pub fn embed_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }

    /// Whether the decoder has its final LayerNorm (`do_layer_norm_before` and not `_remove_final_layer_norm`).
    pub fn has_final_layer_norm(&self) -> bool {
        self.do_layer_norm_before && !self.remove_final_layer_norm
    }
}
