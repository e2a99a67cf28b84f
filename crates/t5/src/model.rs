//! `T5Stack` (encoder, decoder), `T5ForConditionalGeneration`, the encoder-decoder cache, the loss, and loading
//! from a standalone T5 directory or the `language_model.` part of a BLIP-2 directory.
//!
//! Keys: `shared.weight`; `encoder.block.N.*`, `encoder.final_layer_norm.weight`; `decoder.block.N.*`,
//! `decoder.final_layer_norm.weight`; `lm_head.weight` (Flan-T5: its own; original T5: tied to `shared`, may be
//! absent: a stored one is always the head, as in transformers 5.24). `encoder.embed_tokens.weight` / `decoder.embed_tokens.weight` are copies of `shared` when present and
//! are ignored, as is transformers' unused `decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight`.

use std::path::Path;

use blip2_nn::backend::FloatDType;
use blip2_nn::loader::{Checkpoint, KeyMap, LoadOptions, LoadReport, WeightFormat, load_module};
use blip2_nn::mask::{MaskValue, additive_mask, causal_padding_mask, float_dtype_of, padding_mask};
use blip2_nn::{KvCache, linear_forward};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear, LinearConfig, LinearLayout,
};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::log_softmax;

use crate::layers::{T5DecoderBlock, T5EncoderBlock, T5LayerNorm};
use crate::{Error, T5Config};

/// The key map of a T5 (prefix `language_model` inside BLIP-2, none standalone). Renames (Rust field -> key
/// segment): `layer_0`/`layer_1`/`layer_2` -> `layer.0/1/2`, `self_attention` -> `SelfAttention`,
/// `enc_dec_attention` -> `EncDecAttention`, `dense_relu_dense` -> `DenseReluDense`.
pub fn t5_key_map(prefix: &str) -> KeyMap {
    let map = if prefix.is_empty() {
        KeyMap::new()
    } else {
        KeyMap::under(prefix)
    };
    map.rename("layer_0", "layer.0")
        .rename("layer_1", "layer.1")
        .rename("self_attention", "SelfAttention")
        .rename("enc_dec_attention", "EncDecAttention")
        .rename("layer_2", "layer.2")
        .rename("dense_relu_dense", "DenseReluDense")
}

/// What the encoder reads: token ids, or embeddings (BLIP-2 feeds `[projected queries; embed(prompt)]`).
#[derive(Debug, Clone)]
pub enum T5Input<B: Backend> {
    /// `[batch, len]`.
    Ids(Tensor<B, 2, Int>),
    /// `[batch, len, d_model]`.
    Embeds(Tensor<B, 3>),
}

/// Which decoder positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Every position.
    All,
    /// The last position only (generation).
    Last,
}

/// The decoder's cache: self-attention keys/values grow per step; cross-attention keys/values are computed from
/// the encoder output once and reused.
#[derive(Debug, Clone)]
pub struct T5Cache<B: Backend> {
    /// Decoder self-attention, one slot per block.
    pub self_attention: KvCache<B>,
    /// Cross-attention, one slot per block.
    pub cross_attention: KvCache<B>,
}

impl<B: Backend> T5Cache<B> {
    /// Decoded positions so far.
    pub fn seq_len(&self) -> usize {
        self.self_attention.seq_len()
    }

    /// Reorders both caches along the batch (beam search).
    pub fn reorder(&mut self, indices: Tensor<B, 1, Int>) {
        self.self_attention.reorder(indices.clone());
        self.cross_attention.reorder(indices);
    }
}

/// HF `T5Stack` as an encoder.
#[derive(Module, Debug)]
pub struct T5Encoder<B: Backend> {
    /// Blocks (block 0 holds the bidirectional position bias).
    pub block: Vec<T5EncoderBlock<B>>,
    /// Final RMS norm.
    pub final_layer_norm: T5LayerNorm<B>,
    /// Dropout on the input and output (training only).
    pub dropout: Dropout,
}

/// HF `T5Stack` as a decoder.
#[derive(Module, Debug)]
pub struct T5Decoder<B: Backend> {
    /// Blocks (block 0 holds the causal position bias).
    pub block: Vec<T5DecoderBlock<B>>,
    /// Final RMS norm.
    pub final_layer_norm: T5LayerNorm<B>,
    /// Dropout on the input and output (training only).
    pub dropout: Dropout,
}

/// HF `T5ForConditionalGeneration`.
#[derive(Module, Debug)]
pub struct T5ForConditionalGeneration<B: Backend> {
    /// `[vocab, d_model]`, the embeddings of both stacks.
    pub shared: Embedding<B>,
    /// The encoder.
    pub encoder: T5Encoder<B>,
    /// The decoder.
    pub decoder: T5Decoder<B>,
    /// The head's own weights (Flan-T5's, or any stored `lm_head.weight`); `None`: the head is `shared`.
    /// Whether decoder outputs are scaled first is the config's [`T5Config::scales_decoder_outputs`].
    pub lm_head: Option<Linear<B>>,
    /// The config it was built from.
    #[module(skip)]
    pub config: T5Config,
}

impl T5Config {
    /// A fresh T5 (parameters lazy: nothing is allocated or randomised until used or loaded).
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] from [`T5Config::validate`].
    pub fn init<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<T5ForConditionalGeneration<B>, Error> {
        self.build(self.own_head_when_fresh(), device)
    }

    /// A T5 with or without its own `lm_head` (without: the head is `shared`).
    fn build<B: Backend>(
        &self,
        own_head: bool,
        device: &B::Device,
    ) -> Result<T5ForConditionalGeneration<B>, Error> {
        self.validate()?;
        let activation = self.activation()?;
        let norm = || T5LayerNorm::new(self.d_model, self.layer_norm_epsilon, device);
        let dropout = || DropoutConfig::new(self.dropout_rate).init();
        Ok(T5ForConditionalGeneration {
            shared: EmbeddingConfig::new(self.vocab_size, self.d_model).init(device),
            encoder: T5Encoder {
                block: (0..self.num_layers)
                    .map(|i| T5EncoderBlock::new(self, i, activation, device))
                    .collect(),
                final_layer_norm: norm(),
                dropout: dropout(),
            },
            decoder: T5Decoder {
                block: (0..self.decoder_layers())
                    .map(|i| T5DecoderBlock::new(self, i, activation, device))
                    .collect(),
                final_layer_norm: norm(),
                dropout: dropout(),
            },
            lm_head: own_head.then(|| {
                LinearConfig::new(self.d_model, self.vocab_size)
                    .with_bias(false)
                    .with_layout(LinearLayout::Col)
                    .init(device)
            }),
            config: self.clone(),
        })
    }
}

impl<B: Backend> T5ForConditionalGeneration<B> {
    /// An empty decoder cache.
    pub fn new_cache(&self) -> T5Cache<B> {
        let n = self.decoder.block.len();
        T5Cache {
            self_attention: KvCache::new(n),
            cross_attention: KvCache::new(n),
        }
    }

    /// `shared(ids)`.
    ///
    /// # Shapes
    /// `[batch, len]` -> `[batch, len, d_model]`
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.shared.forward(ids)
    }

    /// The encoder.
    ///
    /// # Shapes
    /// `input` `[batch, len]` or `[batch, len, d_model]`, `attention_mask` `[batch, len]` -> `[batch, len, d_model]`
    pub fn encode(
        &self,
        input: T5Input<B>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let x = match input {
            T5Input::Ids(ids) => self.embed(ids),
            T5Input::Embeds(embeds) => embeds.cast(self.shared.weight.val().dtype()),
        };
        let [batch, len, _] = x.dims();
        let device = x.device();
        let mut x = self.encoder.dropout.forward(x);
        let first = &self.encoder.block[0].layer_0.self_attention;
        let mut bias = first.compute_bias(len, len, 0, &device).cast(x.dtype()); // [1, heads, len, len]
        if let Some(mask) = attention_mask {
            bias =
                bias + additive_mask(padding_mask(mask), MaskValue::DtypeMin, float_dtype_of(&x));
        }
        let bias = bias.expand([batch, first.num_heads, len, len]);
        for block in &self.encoder.block {
            x = block.forward(x, bias.clone());
        }
        self.encoder
            .dropout
            .forward(self.encoder.final_layer_norm.forward(x))
    }

    /// The decoder on `decoder_input_ids` (new positions only when `cache` holds earlier ones), then the head.
    ///
    /// # Shapes
    /// - `decoder_input_ids`: `[batch, new_len]`; `encoder`: `[batch, enc_len, d_model]`;
    ///   `encoder_mask`: `[batch, enc_len]`
    /// - returns `[batch, new_len, vocab]` (`All`) or `[batch, 1, vocab]` (`Last`)
    pub fn decode(
        &self,
        decoder_input_ids: Tensor<B, 2, Int>,
        encoder: Tensor<B, 3>,
        encoder_mask: Option<Tensor<B, 2, Int>>,
        mut cache: Option<&mut T5Cache<B>>,
        logits_for: LogitsFor,
    ) -> Tensor<B, 3> {
        let [batch, new_len] = decoder_input_ids.dims();
        let device = decoder_input_ids.device();
        let past = cache.as_ref().map_or(0, |c| c.seq_len());
        let mut x = self.decoder.dropout.forward(self.embed(decoder_input_ids));
        let dtype = float_dtype_of(&x);
        let first = &self.decoder.block[0].layer_0.self_attention;
        let kv_len = past + new_len;
        let causal = causal_padding_mask::<B>(Tensor::ones([batch, kv_len], &device), new_len);
        let self_bias = first
            .compute_bias(new_len, kv_len, past, &device)
            .cast(x.dtype())
            + additive_mask(causal, MaskValue::DtypeMin, dtype); // [batch, heads, new_len, kv_len]
        let enc_len = encoder.dims()[1];
        let cross_mask = match encoder_mask {
            Some(mask) => additive_mask(padding_mask(mask), MaskValue::DtypeMin, dtype),
            None => Tensor::zeros([batch, 1, 1, enc_len], (&device, x.dtype())),
        };
        let encoder = encoder.cast(x.dtype());
        for (i, block) in self.decoder.block.iter().enumerate() {
            let (self_cache, cross_cache) = match cache.as_deref_mut() {
                Some(c) => (
                    Some(c.self_attention.layer_mut(i)),
                    Some(c.cross_attention.layer_mut(i)),
                ),
                None => (None, None),
            };
            x = block.forward(
                x,
                self_bias.clone(),
                encoder.clone(),
                cross_mask.clone(),
                self_cache,
                cross_cache,
            );
        }
        let mut x = self
            .decoder
            .dropout
            .forward(self.decoder.final_layer_norm.forward(x));
        if logits_for == LogitsFor::Last {
            x = x.narrow(1, new_len - 1, 1);
        }
        self.lm_head(x)
    }

    /// The head: decoder outputs scaled by `d_model^-0.5` when the config says so (original T5), then the own
    /// `lm_head` (Flan-T5) or `shared`'s weight.
    ///
    /// # Shapes
    /// `[batch, len, d_model]` -> `[batch, len, vocab]`
    pub fn lm_head(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = if self.config.scales_decoder_outputs() {
            x.mul_scalar((self.config.d_model as f64).powf(-0.5))
        } else {
            x
        };
        match &self.lm_head {
            Some(head) => linear_forward(head, x),
            None => {
                let [batch, len, d] = x.dims();
                let weight = self.shared.weight.val(); // [vocab, d_model]
                let vocab = weight.dims()[0];
                blip2_nn::matmul_nt(x.reshape([batch * len, d]), &weight)
                    .reshape([batch, len, vocab])
            }
        }
    }

    /// HF's `_shift_right`: `[decoder_start_token_id, labels[:-1]]` with -100 replaced by the pad id.
    ///
    /// # Shapes
    /// `[batch, len]` -> `[batch, len]`
    pub fn shift_right(&self, labels: Tensor<B, 2, Int>) -> Tensor<B, 2, Int> {
        let [batch, len] = labels.dims();
        let start = self.config.decoder_start_token_id.unwrap_or(0) as i64;
        let pad = self.config.pad_token_id.unwrap_or(0) as i64;
        let device = labels.device();
        let starts = Tensor::<B, 2, Int>::full([batch, 1], start, &device);
        let shifted = Tensor::cat(vec![starts, labels.narrow(1, 0, len - 1)], 1);
        let ignored = shifted.clone().equal_elem(-100);
        shifted.mask_fill(ignored, pad)
    }

    /// HF's loss: cross-entropy of the logits against `labels` (no shift: the decoder inputs were shifted), -100
    /// ignored, mean over counted tokens, in f32.
    ///
    /// # Shapes
    /// `logits`: `[batch, len, vocab]`, `labels`: `[batch, len]` -> `[1]`
    pub fn loss(&self, logits: Tensor<B, 3>, labels: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        let [batch, len, vocab] = logits.dims();
        let logits = logits.cast(DType::F32).reshape([batch * len, vocab]);
        let targets = labels.reshape([batch * len]);
        let counted = targets.clone().not_equal_elem(-100);
        let safe = targets
            .mask_fill(counted.clone().bool_not(), 0)
            .unsqueeze_dim::<2>(1);
        let picked = log_softmax(logits, 1)
            .gather(1, safe)
            .reshape([batch * len]);
        let counted = counted.float();
        (picked * counted.clone()).sum().neg() / counted.sum()
    }

    /// Checks encoder inputs: token ids inside the vocabulary (read back from the device), embedding width, mask
    /// shape.
    ///
    /// # Errors
    /// [`Error::BadInput`].
    pub fn check_encode(
        &self,
        input: &T5Input<B>,
        attention_mask: Option<&Tensor<B, 2, Int>>,
    ) -> Result<(), Error> {
        let (batch, len) = match input {
            T5Input::Ids(ids) => {
                self.check_ids(ids)?;
                let [b, l] = ids.dims();
                (b, l)
            }
            T5Input::Embeds(embeds) => {
                let [b, l, d] = embeds.dims();
                if d != self.config.d_model {
                    return Err(Error::bad_input(format!(
                        "inputs_embeds are {d} wide, the model expects d_model {}",
                        self.config.d_model
                    )));
                }
                (b, l)
            }
        };
        if batch == 0 || len == 0 {
            return Err(Error::bad_input("the encoder input is empty"));
        }
        match attention_mask {
            Some(mask) if mask.dims() != [batch, len] => Err(Error::bad_input(format!(
                "attention_mask {:?} does not match the input [{batch}, {len}]",
                mask.dims()
            ))),
            _ => Ok(()),
        }
    }

    /// Checks decoder inputs against the encoder output and the cache.
    ///
    /// # Errors
    /// [`Error::BadInput`].
    pub fn check_decode(
        &self,
        decoder_input_ids: &Tensor<B, 2, Int>,
        encoder: &Tensor<B, 3>,
        encoder_mask: Option<&Tensor<B, 2, Int>>,
        cache: Option<&T5Cache<B>>,
    ) -> Result<(), Error> {
        self.check_ids(decoder_input_ids)?;
        let [batch, len] = decoder_input_ids.dims();
        let [enc_batch, enc_len, width] = encoder.dims();
        if batch == 0 || len == 0 {
            return Err(Error::bad_input("the decoder input is empty"));
        }
        if enc_batch != batch || width != self.config.d_model {
            return Err(Error::bad_input(format!(
                "encoder output {:?} does not fit decoder input {:?} and d_model {}",
                encoder.dims(),
                decoder_input_ids.dims(),
                self.config.d_model
            )));
        }
        if let Some(mask) = encoder_mask
            && mask.dims() != [batch, enc_len]
        {
            return Err(Error::bad_input(format!(
                "encoder mask {:?} must be [{batch}, {enc_len}]",
                mask.dims()
            )));
        }
        if let Some(cache) = cache
            && cache.seq_len() > 0
            && cache
                .self_attention
                .layer(0)
                .get()
                .is_some_and(|(k, _)| k.dims()[0] != batch)
        {
            return Err(Error::bad_input(
                "the cache holds another batch size: reorder or clear it",
            ));
        }
        Ok(())
    }

    fn check_ids(&self, ids: &Tensor<B, 2, Int>) -> Result<(), Error> {
        let vocab = self.config.vocab_size as i64;
        let values: Vec<i64> = ids.to_data().convert::<i64>().to_vec().unwrap_or_default();
        match values.iter().find(|&&id| id < 0 || id >= vocab) {
            Some(bad) => Err(Error::bad_input(format!(
                "token id {bad} is outside the vocabulary (0..{vocab})"
            ))),
            None => Ok(()),
        }
    }

    /// Loads a standalone T5/Flan-T5 directory or the language model of a BLIP-2 directory, in `dtype`.
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
        let config = T5Config::from_file(path.as_ref())?;
        let checkpoint = Checkpoint::open(&dir)?;
        let (model, _report) = Self::load(&config, &checkpoint, dtype, device)?;
        Ok(model)
    }

    /// Loads from an open checkpoint (prefix detected: `language_model.` in a BLIP-2 checkpoint, none standalone).
    ///
    /// # Errors
    /// As [`Self::from_pretrained`], without the config part.
    pub fn load(
        config: &T5Config,
        checkpoint: &Checkpoint,
        format: impl Into<WeightFormat>,
        device: &B::Device,
    ) -> Result<(Self, LoadReport), Error> {
        // Any `language_model.` key means a BLIP-2 checkpoint (its `shared.weight` may be absent, tied to the head).
        let prefix = if checkpoint.keys().any(|k| k.starts_with("language_model.")) {
            "language_model"
        } else {
            ""
        };
        let key = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        let options = LoadOptions::new(t5_key_map(prefix))
            .with_format(format)
            .with_ignored(&key("encoder.embed_tokens.weight"))
            .with_ignored(&key("decoder.embed_tokens.weight"))
            .with_ignored(&key(
                "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
            ));
        // transformers 5.24 ties `lm_head` to `shared` unless the file stores a head with values of its own, and
        // never reads `tie_word_embeddings` for this (its T5Config forces the flag to true): a stored
        // `lm_head.weight` is the head (equal to `shared` it gives the same logits), an absent one is `shared`.
        // Never ignore a stored head: transformers 5.x saves Flan-T5 with `tie_word_embeddings: true` and its own
        // `lm_head.weight`.
        let head = key("lm_head.weight");
        // And the other way round: a file with the head but no `shared` gets its embeddings from the head
        // (transformers' `tie_weights` swaps source and target when only the target is stored).
        let options = options.with_tied(&key("shared.weight"), &head);
        let own_head = checkpoint.contains(&head);
        let module = config.build::<B>(own_head, device)?;
        let (model, mut report) = load_module(module, checkpoint, &options, device)?;
        if !own_head {
            report.tied.push((head, key("shared.weight")));
        }
        Ok((model, report))
    }
}
