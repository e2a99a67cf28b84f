//! [`Blip2Config`]: a hub `config.json` (HF `Blip2Config`), each part parsed by its own crate.

use std::path::{Path, PathBuf};

use blip2_opt::OptConfig;
use blip2_qformer::{Blip2QFormerConfig, QFormerConfig};
use blip2_t5::T5Config;
use blip2_vision::Blip2VisionConfig;
use serde_json::Value;

use crate::Error;

/// The language model of a BLIP-2 checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum TextConfig {
    /// A decoder-only OPT (`blip2-opt-*`).
    Opt(OptConfig),
    /// An encoder-decoder T5 / Flan-T5 (`blip2-flan-t5-*`).
    T5(T5Config),
}

impl TextConfig {
    /// Width of the language model's input embeddings (what `language_projection` writes).
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Opt(c) => c.embed_dim(),
            Self::T5(c) => c.d_model,
        }
    }

    /// Output vocabulary.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Opt(c) => c.vocab_size,
            Self::T5(c) => c.vocab_size,
        }
    }

    /// Whether this is an encoder-decoder model (T5).
    pub fn is_encoder_decoder(&self) -> bool {
        matches!(self, Self::T5(_))
    }

    /// `model_type` as in `config.json`.
    pub fn model_type(&self) -> &'static str {
        match self {
            Self::Opt(_) => "opt",
            Self::T5(_) => "t5",
        }
    }

    /// The special tokens transformers generates with: `language_model.generate` reads the language model's own
    /// generation config, made from `text_config`, and never the checkpoint's top-level
    /// `generation_config.json`.
    pub fn generation_config(&self) -> blip2_generation::GenerationConfig {
        let (eos, pad, bos, start) = match self {
            Self::Opt(c) => (&c.eos_token_id, c.pad_token_id, c.bos_token_id, None),
            Self::T5(c) => (
                &c.eos_token_id,
                c.pad_token_id,
                None,
                c.decoder_start_token_id,
            ),
        };
        blip2_generation::GenerationConfig {
            eos_token_id: eos.as_ref().map(|t| t.to_vec()).unwrap_or_default(),
            pad_token_id: pad,
            bos_token_id: bos,
            decoder_start_token_id: start,
            ..Default::default()
        }
    }
}

/// HF `Blip2Config`: the vision tower, the Q-Former with its queries, the language model, and how they meet.
#[derive(Debug, Clone, PartialEq)]
pub struct Blip2Config {
    /// The ViT.
    pub vision_config: Blip2VisionConfig,
    /// The Q-Former and `num_query_tokens`.
    pub qformer: QFormerConfig,
    /// The language model (a retrieval checkpoint carries an unused default OPT config here, as HF writes it).
    pub text_config: TextConfig,
    /// The id of `<image>` in the tokenizer: the processor puts `num_query_tokens` of them before the text and
    /// the model writes the projected queries over them. `None` in configs older than that (the queries are
    /// then put in front of the text embeddings).
    pub image_token_index: Option<u32>,
    /// Width of the shared image-text space of the retrieval heads (ITC).
    pub image_text_hidden_size: usize,
    /// `architectures` of config.json, as written (e.g. `Blip2ForConditionalGeneration`).
    pub architectures: Vec<String>,
}

impl Blip2Config {
    /// Reads a model directory's `config.json` (or the file itself).
    ///
    /// # Errors
    /// [`Error::Io`], and those of [`Self::from_json_str`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let (path, text) = blip2_nn::config::read_config(path.as_ref())
            .map_err(|(path, source)| Error::Io { path, source })?;
        Self::from_json_str(&text, path)
    }

    /// Parses a BLIP-2 `config.json`; `source` names it in errors.
    ///
    /// # Errors
    /// [`Error::Json`], [`Error::NotABlip2Config`], [`Error::UnknownLanguageModel`], the parts' config errors,
    /// and [`Error::UnsupportedConfig`] when the parts do not fit together.
    pub fn from_json_str(json: &str, source: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = source.into();
        let value: Value = serde_json::from_str(json).map_err(|e| Error::Json {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let is_blip2 = value.get("model_type").and_then(Value::as_str) == Some("blip-2")
            || (value.get("vision_config").is_some() && value.get("qformer_config").is_some());
        if !is_blip2 {
            return Err(Error::NotABlip2Config { path });
        }
        let vision_config = Blip2VisionConfig::from_json_str(json, path.clone())?;
        let qformer = QFormerConfig::from_json_str(json, path.clone())?;
        let text_type = value
            .get("text_config")
            .map(|t| t.get("model_type").and_then(Value::as_str).unwrap_or("opt"))
            .unwrap_or("opt");
        let text_config = match (text_type, value.get("text_config")) {
            // HF's default language model is OPT's default config.
            (_, None) => TextConfig::Opt(OptConfig::default()),
            ("opt", Some(_)) => TextConfig::Opt(OptConfig::from_json_str(json, path.clone())?),
            ("t5", Some(_)) => TextConfig::T5(T5Config::from_json_str(json, path.clone())?),
            (other, Some(_)) => {
                return Err(Error::UnknownLanguageModel {
                    model_type: other.to_string(),
                    path,
                });
            }
        };
        // transformers maps `image_token_id` onto `image_token_index` (`attribute_map`); with both in the
        // file, `image_token_id` wins (transformers 5.24, whatever their order).
        let mut image_token_index = None;
        for key in ["image_token_index", "image_token_id"] {
            match value.get(key) {
                None | Some(Value::Null) => {}
                Some(v) => {
                    image_token_index = Some(
                        v.as_u64()
                            .and_then(|v| u32::try_from(v).ok())
                            .ok_or_else(|| Error::unsupported(key, v, "must be a token id"))?,
                    );
                }
            }
        }
        let image_text_hidden_size = match value.get("image_text_hidden_size") {
            None | Some(Value::Null) => 256,
            Some(v) => v.as_u64().filter(|&v| v > 0).ok_or_else(|| {
                Error::unsupported("image_text_hidden_size", v, "must be a positive integer")
            })?,
        };
        blip2_nn::limits::check_u64(
            "image_text_hidden_size",
            image_text_hidden_size,
            blip2_nn::limits::MAX_HIDDEN_SIZE as u64,
        )
        .map_err(|e| e.in_config(&path, None))?;
        let image_text_hidden_size = image_text_hidden_size as usize;
        let architectures = value
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let config = Self {
            vision_config,
            qformer,
            text_config,
            image_token_index,
            image_text_hidden_size,
            architectures,
        };
        config.validate().map_err(|e| match e {
            Error::Nn(e) => Error::Nn(e.in_config(&path, None)),
            other => other,
        })?;
        Ok(config)
    }

    /// HF's `Blip2Config.from_vision_qformer_text_configs`: the three parts, `num_query_tokens` 32, no
    /// `<image>` token (the legacy prompt layout), the default retrieval width 256. The Q-Former's
    /// `encoder_hidden_size` is set to the vision width, as transformers does.
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] when the parts do not fit together.
    pub fn from_vision_qformer_text_configs(
        vision_config: Blip2VisionConfig,
        qformer_config: Blip2QFormerConfig,
        text_config: TextConfig,
    ) -> Result<Self, Error> {
        let mut qformer_config = qformer_config;
        // As transformers' `Blip2Config`: the Q-Former reads the vision tower's width.
        qformer_config.encoder_hidden_size = vision_config.hidden_size;
        let config = Self {
            vision_config,
            qformer: QFormerConfig {
                qformer: qformer_config,
                num_query_tokens: 32,
            },
            text_config,
            image_token_index: None,
            image_text_hidden_size: 256,
            architectures: Vec::new(),
        };
        config.validate()?;
        Ok(config)
    }

    /// The same config with every dropout probability at 0.
    ///
    /// Burn applies dropout whenever the backend records gradients (an `Autodiff` backend), which is
    /// transformers' `train()` mode. Build a model from this config for gradients in transformers' `eval()` mode
    /// (saliency, gradient checks) or for deterministic fine-tuning.
    pub fn without_dropout(&self) -> Self {
        let mut config = self.clone();
        config.vision_config.attention_dropout = 0.0;
        config.qformer.qformer.hidden_dropout_prob = 0.0;
        config.qformer.qformer.attention_probs_dropout_prob = 0.0;
        match &mut config.text_config {
            TextConfig::Opt(c) => {
                c.dropout = 0.0;
                c.attention_dropout = 0.0;
            }
            TextConfig::T5(c) => c.dropout_rate = 0.0,
        }
        config
    }

    /// The parameters of the three parts, the queries and the projections as the config describes them (about
    /// 3.9 billion for blip2-opt-2.7b), in `u128` so that no config can overflow it.
    pub fn estimated_parameters(&self) -> u128 {
        let q = self.qformer.qformer.hidden_size;
        let text = match &self.text_config {
            TextConfig::Opt(c) => c.estimated_parameters(),
            TextConfig::T5(c) => c.estimated_parameters(),
        };
        self.vision_config
            .estimated_parameters()
            .saturating_add(self.qformer.qformer.estimated_parameters())
            .saturating_add(text)
            .saturating_add(blip2_nn::limits::parameter_count(&[
                // query_tokens, language_projection, the retrieval heads.
                &[self.qformer.num_query_tokens, q],
                &[q.saturating_add(1), self.text_config.hidden_size()],
                &[2, q.saturating_add(1), self.image_text_hidden_size],
                &[q.saturating_add(1), 2],
            ]))
    }

    /// Learned queries (`query_tokens` is `[1, num_query_tokens, qformer hidden]`).
    pub fn num_query_tokens(&self) -> usize {
        self.qformer.num_query_tokens
    }

    /// Checks each part (its own `validate`: supported values, sizes within [`blip2_nn::limits`]), the sizes
    /// of the parts together (at most [`MAX_PARAMETERS`](blip2_nn::limits::MAX_PARAMETERS)), and that they fit
    /// together: the Q-Former reads the vision tower's width.
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] naming the key; the parts' errors; [`blip2_nn::Error::LimitExceeded`]
    /// (as [`Error::Nn`]) for a size over its limit.
    pub fn validate(&self) -> Result<(), Error> {
        self.vision_config.validate()?;
        self.qformer.validate()?;
        match &self.text_config {
            TextConfig::Opt(c) => c.validate()?,
            TextConfig::T5(c) => c.validate()?,
        }
        blip2_nn::limits::check(
            "image_text_hidden_size",
            self.image_text_hidden_size,
            blip2_nn::limits::MAX_HIDDEN_SIZE,
        )?;
        blip2_nn::limits::check_u64(
            "parameters",
            self.estimated_parameters(),
            blip2_nn::limits::MAX_PARAMETERS,
        )?;
        let vision = self.vision_config.hidden_size;
        let reads = self.qformer.qformer.encoder_hidden_size;
        if vision != reads {
            return Err(Error::unsupported(
                "qformer_config.encoder_hidden_size",
                reads,
                format!(
                    "the Q-Former must read the vision tower's width, vision_config.hidden_size = {vision}"
                ),
            ));
        }
        Ok(())
    }
}
