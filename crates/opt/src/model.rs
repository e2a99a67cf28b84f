//! `OPTDecoder`, `OPTModel`, `OPTForCausalLM`: embeddings with learned positions, the layers, the tied LM head, the
//! loss; and loading from a standalone OPT directory or the `language_model.` part of a BLIP-2 directory.
//!
//! Keys: `model.decoder.{embed_tokens, embed_positions, project_in?, project_out?, final_layer_norm?, layers.N.*}`,
//! and `lm_head.weight`, which is tied to `embed_tokens` and usually absent; when present it is the head (as in
//! transformers 5.24, which unties a stored head whose values differ from `embed_tokens`). In a BLIP-2
//! checkpoint, all under `language_model.`.
//!
//! Deliberate choices (as HF): positions are `cumsum(mask) * mask - 1` looked up at `+ 2`, so pads use row 1 and
//! left padding (and BLIP-2's pads between the image tokens and BOS) does not shift real tokens; with a cache
//! they continue from the cached length. No embedding scale.

use std::path::Path;

use blip2_nn::backend::FloatDType;
use blip2_nn::loader::{Checkpoint, KeyMap, LoadOptions, LoadReport, WeightFormat, load_module};
use blip2_nn::mask::{MaskValue, additive_mask, causal_padding_mask, float_dtype_of};
use blip2_nn::ops;
use blip2_nn::{KvCache, linear_forward};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::log_softmax;

use crate::decoder::{OptDecoderLayer, layer_norm, linear};
use crate::{Error, OptConfig};

/// HF's offset of the position table: row `position + 2`.
const POSITION_OFFSET: usize = 2;

/// What the decoder reads: token ids, or embeddings (BLIP-2 feeds `embed_tokens(ids)` with the `<image>` rows
/// replaced by projected queries).
#[derive(Debug, Clone)]
pub enum OptInput<B: Backend> {
    /// `[batch, new_len]`.
    Ids(Tensor<B, 2, Int>),
    /// `[batch, new_len, word_embed_proj_dim]`.
    Embeds(Tensor<B, 3>),
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Every position (training, scoring).
    All,
    /// The last position only (generation: no full-vocabulary product for the prompt).
    Last,
}

/// HF `OPTDecoder`.
#[derive(Module, Debug)]
pub struct OptDecoder<B: Backend> {
    /// `[vocab, word_embed_proj_dim]`. `None` when the lookups read the language-model head, an int8 copy of the
    /// table (a tied head loaded or quantized in int8: [`OptForCausalLm::embeddings_from_head`]).
    pub embed_tokens: Option<Embedding<B>>,
    /// `[max_position_embeddings + 2, hidden]`.
    pub embed_positions: Embedding<B>,
    /// `hidden -> word_embed_proj_dim` when they differ (no bias).
    pub project_out: Option<Linear<B>>,
    /// `word_embed_proj_dim -> hidden` when they differ (no bias).
    pub project_in: Option<Linear<B>>,
    /// Final LayerNorm (pre-LN models without `_remove_final_layer_norm`).
    pub final_layer_norm: Option<LayerNorm<B>>,
    /// The layers.
    pub layers: Vec<OptDecoderLayer<B>>,
}

/// HF `OPTModel`.
#[derive(Module, Debug)]
pub struct OptModel<B: Backend> {
    /// The decoder.
    pub decoder: OptDecoder<B>,
}

/// HF `OPTForCausalLM`: the decoder and the language-model head, tied to `embed_tokens` unless the checkpoint
/// stores `lm_head.weight` or the config says `tie_word_embeddings: false`.
#[derive(Module, Debug)]
pub struct OptForCausalLm<B: Backend> {
    /// `model.decoder.*`.
    pub model: OptModel<B>,
    /// The head's own weights (a stored `lm_head.weight`); `None`: logits use `embed_tokens`' weight, as HF's
    /// tied head does.
    pub lm_head: Option<Linear<B>>,
    /// The config it was built from.
    #[module(skip)]
    pub config: OptConfig,
}

impl OptConfig {
    /// A fresh OPT (parameters lazy: nothing is allocated or randomised until used or loaded).
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] from [`OptConfig::validate`].
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<OptForCausalLm<B>, Error> {
        self.build(!self.tie_word_embeddings, true, device)
    }

    /// An OPT with or without its own `lm_head` (without: the head is `embed_tokens`), with or without the
    /// embedding table (without: the lookups read the head).
    fn build<B: Backend>(
        &self,
        own_head: bool,
        table: bool,
        device: &B::Device,
    ) -> Result<OptForCausalLm<B>, Error> {
        self.validate()?;
        let activation = self.activation()?;
        let (hidden, embed) = (self.hidden_size, self.embed_dim());
        let projected = embed != hidden;
        let decoder = OptDecoder {
            embed_tokens: table.then(|| EmbeddingConfig::new(self.vocab_size, embed).init(device)),
            embed_positions: EmbeddingConfig::new(
                self.max_position_embeddings + POSITION_OFFSET,
                hidden,
            )
            .init(device),
            project_out: projected.then(|| linear(hidden, embed, false, device)),
            project_in: projected.then(|| linear(embed, hidden, false, device)),
            final_layer_norm: self
                .has_final_layer_norm()
                .then(|| layer_norm(hidden, device)),
            layers: (0..self.num_hidden_layers)
                .map(|_| OptDecoderLayer::new(self, activation, device))
                .collect(),
        };
        Ok(OptForCausalLm {
            model: OptModel { decoder },
            lm_head: own_head.then(|| linear(embed, self.vocab_size, false, device)),
            config: self.clone(),
        })
    }
}

impl<B: Backend> OptForCausalLm<B> {
    /// The same model with a tied head made its own `lm_head`: a `Linear` whose weight is the embedding table
    /// (shared, not copied, until one of them changes). Logits are unchanged; it lets
    /// [`blip2_nn::quantize_linears`] quantize the head, as loading with an int8 format does. A model with its own
    /// head is returned as it is.
    pub fn untie_head(self) -> Self {
        let (None, Some(embed_tokens)) = (&self.lm_head, &self.model.decoder.embed_tokens) else {
            return self;
        };
        let table = embed_tokens.weight.val(); // [vocab, dim]: PyTorch's head layout
        let [vocab, dim] = table.dims();
        let mut lm_head = linear(dim, vocab, false, &table.device());
        let id = lm_head.weight.id;
        // As the loader does: the `Col` layout's load mapper makes the `[out, in]` table a transposed view.
        lm_head.weight = lm_head.weight.transform_for_load(table, id);
        Self {
            lm_head: Some(lm_head),
            ..self
        }
    }

    /// Drops the embedding table when the head is an int8 copy of it, so that the lookups read the head
    /// ([`blip2_nn::embed_from_q8`]: `q * scale`, then the model's dtype) and the table's memory is freed: 0.41 GB
    /// of bf16 for OPT-6.7b. Loading a tied OPT in int8 does this; after [`Self::untie_head`] and
    /// [`blip2_nn::quantize_linears`], call it to get the same model. A model whose head is not in int8, or whose
    /// table is already gone, is returned as it is.
    ///
    /// Only for a head made from the table: a checkpoint's own `lm_head.weight` with other values would replace
    /// the embeddings with the head's.
    pub fn embeddings_from_head(mut self) -> Self {
        let int8_head = self
            .lm_head
            .as_ref()
            .is_some_and(|head| matches!(head.weight.val().dtype(), DType::QFloat(_)));
        if int8_head {
            self.model.decoder.embed_tokens = None;
        }
        self
    }

    /// An empty KV cache with one slot per layer.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.model.decoder.layers.len())
    }

    /// `embed_tokens(ids)`: what BLIP-2 overwrites at the `<image>` positions before calling with
    /// [`OptInput::Embeds`].
    ///
    /// # Shapes
    /// `[batch, len]` -> `[batch, len, word_embed_proj_dim]`
    pub fn embed_tokens(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let decoder = &self.model.decoder;
        match (&decoder.embed_tokens, &self.lm_head) {
            (Some(table), _) => table.forward(input_ids),
            (None, Some(head)) => blip2_nn::embed_from_q8(&head.weight, input_ids)
                .cast(decoder.embed_positions.weight.val().dtype()),
            (None, None) => unreachable!("a model without its embedding table reads its head"),
        }
    }

    /// The decoder: hidden states after the final LayerNorm and `project_out`.
    ///
    /// `attention_mask` covers the cached and the new positions (HF's convention; `None`: nothing is padding).
    /// With `cache`, the new keys and values are appended to it and positions continue from its length.
    ///
    /// # Shapes
    /// - `input`: `[batch, new_len]` ids or `[batch, new_len, word_embed_proj_dim]` embeddings
    /// - `attention_mask`: `[batch, cached + new_len]`
    /// - returns `[batch, new_len, word_embed_proj_dim]`
    ///
    /// # Panics
    /// On inconsistent shapes; [`Self::check`] returns errors for them instead.
    pub fn decode(
        &self,
        input: OptInput<B>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let decoder = &self.model.decoder;
        let embeds = match input {
            OptInput::Ids(ids) => self.embed_tokens(ids),
            OptInput::Embeds(embeds) => embeds.cast(decoder.embed_positions.weight.val().dtype()),
        };
        let [batch, new_len, _] = embeds.dims();
        let device = embeds.device();
        let past = cache.as_ref().map_or(0, |c| c.seq_len());
        let mask = attention_mask.unwrap_or_else(|| Tensor::ones([batch, past + new_len], &device));

        // Positions from the mask: cumsum(mask) * mask - 1, the new ones only, at row + 2.
        let keep = mask.clone().float();
        let positions = (keep.clone().cumsum(1) * keep - 1.0).int(); // [batch, cached + new_len]
        let positions = positions
            .narrow(1, past, new_len)
            .add_scalar(POSITION_OFFSET as i64);
        let positions = decoder.embed_positions.forward(positions); // [batch, new_len, hidden]

        let embeds = match &decoder.project_in {
            Some(project) => linear_forward(project, embeds),
            None => embeds,
        };
        let dtype = embeds.dtype();
        let mut h = embeds + positions.cast(dtype);
        let additive = additive_mask(
            causal_padding_mask(mask, new_len),
            MaskValue::DtypeMin,
            float_dtype_of(&h),
        );
        for (i, layer) in decoder.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| c.layer_mut(i));
            h = layer.forward(h, additive.clone(), layer_cache);
        }
        if let Some(norm) = &decoder.final_layer_norm {
            h = ops::layer_norm(norm, h);
        }
        match &decoder.project_out {
            Some(project) => linear_forward(project, h),
            None => h,
        }
    }

    /// The language-model head: `hidden · embed_tokensᵀ` (tied) or the untied `lm_head`.
    ///
    /// # Shapes
    /// `[batch, len, word_embed_proj_dim]` -> `[batch, len, vocab]`
    pub fn lm_head(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => linear_forward(head, hidden),
            None => {
                let [batch, len, dim] = hidden.dims();
                let weight = self
                    .model
                    .decoder
                    .embed_tokens
                    .as_ref()
                    .expect("a model without its embedding table has a head")
                    .weight
                    .val(); // [vocab, dim]
                let vocab = weight.dims()[0];
                blip2_nn::matmul_nt(hidden.reshape([batch * len, dim]), &weight)
                    .reshape([batch, len, vocab])
            }
        }
    }

    /// [`Self::decode`] then [`Self::lm_head`] on every position or the last one only.
    ///
    /// # Shapes
    /// returns `[batch, new_len, vocab]` (`All`) or `[batch, 1, vocab]` (`Last`)
    pub fn forward(
        &self,
        input: OptInput<B>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        cache: Option<&mut KvCache<B>>,
        logits_for: LogitsFor,
    ) -> Tensor<B, 3> {
        let hidden = self.decode(input, attention_mask, cache);
        let hidden = match logits_for {
            LogitsFor::All => hidden,
            LogitsFor::Last => {
                let len = hidden.dims()[1];
                hidden.narrow(1, len - 1, 1)
            }
        };
        self.lm_head(hidden)
    }

    /// HF's causal-LM loss: logits at position `t` predict `labels[t + 1]`; labels of -100 are ignored; the mean
    /// over the counted tokens, in f32.
    ///
    /// # Shapes
    /// `logits`: `[batch, len, vocab]`, `labels`: `[batch, len]` -> `[1]`
    pub fn loss(&self, logits: Tensor<B, 3>, labels: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        let [batch, len, vocab] = logits.dims();
        let logits = logits
            .narrow(1, 0, len - 1)
            .cast(DType::F32)
            .reshape([batch * (len - 1), vocab]);
        let targets = labels.narrow(1, 1, len - 1).reshape([batch * (len - 1)]); // [n]
        let counted = targets.clone().not_equal_elem(-100); // [n]
        let safe = targets
            .mask_fill(counted.clone().bool_not(), 0)
            .unsqueeze_dim::<2>(1); // [n, 1]
        let picked = log_softmax(logits, 1)
            .gather(1, safe)
            .reshape([batch * (len - 1)]); // [n]
        let counted = counted.float();
        let total = (picked * counted.clone()).sum().neg();
        total / counted.sum()
    }

    /// Checks an input against the config and the cache: ids inside the vocabulary (read back from the device),
    /// embedding width, a mask covering cached + new positions, and positions within the table.
    ///
    /// # Errors
    /// [`Error::BadInput`].
    pub fn check(
        &self,
        input: &OptInput<B>,
        attention_mask: Option<&Tensor<B, 2, Int>>,
        cache: Option<&KvCache<B>>,
    ) -> Result<(), Error> {
        let (batch, new_len) = match input {
            OptInput::Ids(ids) => {
                let [b, l] = ids.dims();
                let vocab = self.config.vocab_size as i64;
                let values: Vec<i64> = ids.to_data().convert::<i64>().to_vec().unwrap_or_default();
                if let Some(bad) = values.iter().find(|&&id| id < 0 || id >= vocab) {
                    return Err(Error::bad_input(format!(
                        "token id {bad} is outside the vocabulary (0..{vocab})"
                    )));
                }
                (b, l)
            }
            OptInput::Embeds(embeds) => {
                let [b, l, d] = embeds.dims();
                if d != self.config.embed_dim() {
                    return Err(Error::bad_input(format!(
                        "inputs_embeds are {d} wide, the model expects {}",
                        self.config.embed_dim()
                    )));
                }
                (b, l)
            }
        };
        if batch == 0 || new_len == 0 {
            return Err(Error::bad_input(
                "the input is empty: give at least one token",
            ));
        }
        let past = cache.map_or(0, KvCache::seq_len);
        if let Some(cache) = cache
            && past > 0
            && cache
                .layer(0)
                .get()
                .is_some_and(|(k, _)| k.dims()[0] != batch)
        {
            return Err(Error::bad_input(
                "the cache holds another batch size: reorder or clear it",
            ));
        }
        if let Some(mask) = attention_mask
            && mask.dims() != [batch, past + new_len]
        {
            return Err(Error::bad_input(format!(
                "attention_mask {:?} must cover the {past} cached and {new_len} new positions: [{batch}, {}]",
                mask.dims(),
                past + new_len
            )));
        }
        if past + new_len > self.config.max_position_embeddings {
            return Err(Error::bad_input(format!(
                "{} positions exceed max_position_embeddings ({})",
                past + new_len,
                self.config.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// Loads a standalone OPT directory (`model.decoder.*`) or the language model of a BLIP-2 directory
    /// (`language_model.*`), with `lm_head.weight` present or absent, in `dtype`.
    ///
    /// # Errors
    /// Reading or parsing the config, opening the weights, and [`blip2_nn::Error::Incompatible`] listing every
    /// missing, unexpected or mis-shaped key.
    pub fn from_pretrained(
        path: impl AsRef<Path>,
        dtype: FloatDType,
        device: &B::Device,
    ) -> Result<Self, Error> {
        let dir = blip2_nn::config::model_dir(path.as_ref());
        let config = OptConfig::from_file(path.as_ref())?;
        let checkpoint = Checkpoint::open(&dir)?;
        let (model, _report) = Self::load(&config, &checkpoint, dtype, device)?;
        Ok(model)
    }

    /// Loads from an open checkpoint (prefix detected: `language_model.` in a BLIP-2 checkpoint, none in a
    /// standalone one).
    ///
    /// # Errors
    /// As [`Self::from_pretrained`], without the config part.
    pub fn load(
        config: &OptConfig,
        checkpoint: &Checkpoint,
        format: impl Into<WeightFormat>,
        device: &B::Device,
    ) -> Result<(Self, LoadReport), Error> {
        // Any `language_model.` key means a BLIP-2 checkpoint (its `embed_tokens` may be absent, tied to the head).
        let prefix = if checkpoint.keys().any(|k| k.starts_with("language_model.")) {
            "language_model."
        } else {
            ""
        };
        let key_map = if prefix.is_empty() {
            KeyMap::new()
        } else {
            KeyMap::under("language_model")
        };
        let format = format.into();
        let options = LoadOptions::new(key_map).with_format(format);
        // transformers 5.24: with `tie_word_embeddings` (every OPT) the head is `embed_tokens` unless the file
        // stores an `lm_head.weight` with values of its own, which it then uses; without it, the file must hold
        // the head. So a stored head is always the head (equal to `embed_tokens` it gives the same logits), and an
        // absent one is `embed_tokens` when tied, a missing key otherwise.
        let head = format!("{prefix}lm_head.weight");
        let embeddings = format!("{prefix}model.decoder.embed_tokens.weight");
        // And the other way round when tied: a file with the head but no `embed_tokens` gets its embeddings from
        // the head (transformers' `tie_weights` swaps source and target when only the target is stored).
        let options = if config.tie_word_embeddings {
            options.with_tied(&embeddings, &head)
        } else {
            options
        };
        let stored_head = !config.tie_word_embeddings || checkpoint.contains(&head);
        // With the `Linear` weights in int8, a tied head gets an int8 copy of the embeddings of its own (as
        // torch's `quantize_dynamic` quantizes OPT's `lm_head`): the largest product of a decoding step, read
        // in half the bytes of bf16. The lookups then read that copy too (`embeddings_from_head`), and the float
        // table is never loaded: 0.41 GB of bf16 less for OPT-6.7b.
        let int8_head = !stored_head
            && format
                .int8_group
                .is_some_and(|group| blip2_nn::q8_group_for(config.vocab_size, group).is_some());
        let options = if int8_head {
            options.with_tied(&head, &embeddings)
        } else {
            options
        };
        let module = config.build::<B>(stored_head || int8_head, !int8_head, device)?;
        let (model, mut report) = load_module(module, checkpoint, &options, device)?;
        if !stored_head && !int8_head {
            report.tied.push((head, embeddings));
        }
        Ok((model, report))
    }
}
