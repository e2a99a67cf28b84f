//! [`Blip2Tokenizer`]: a `tokenizers` tokenizer set up as transformers 5.24's `TokenizersBackend` sets it up
//! from `tokenizer.json` + `tokenizer_config.json`, with BLIP-2's `<image>` token ensured as
//! `Blip2Processor.__init__` ensures it.
//!
//! Set-up order (each step as transformers does it, so that any token it has to add gets the same id):
//! 1. tokens of `added_tokens_decoder` that tokenizer.json lacks, in id order, then the named special tokens
//!    (`bos_token`, ..., and model-specific ones such as `image_token`) and `extra_special_tokens` that are not
//!    added tokens yet, all in one `add_tokens` call;
//! 2. `split_special_tokens`;
//! 3. the image token (`image_token` if the config names one, else `<image>`) is added as a special token
//!    (`add_special_tokens`) unless the config named it.
//!
//! tokenizer.json's post-processor is used as it is: transformers 5.24 drops `add_bos_token` and
//! `add_eos_token` from the config whenever a tokenizer.json exists, so they change nothing here either.

use std::collections::HashSet;
use std::path::Path;

use tokenizers::models::ModelWrapper;
use tokenizers::utils::truncation::{
    TruncationDirection, TruncationParams, TruncationStrategy, truncate_encodings,
};
use tokenizers::{AddedToken, PostProcessor, Tokenizer};

use super::config::{NAMED_SPECIAL_TOKENS, PaddingSide, TokenizerConfig, TruncationSide};
use crate::error::{Error, MEMORY};

/// The image placeholder BLIP-2 uses when the tokenizer config names no `image_token`.
pub const DEFAULT_IMAGE_TOKEN: &str = "<image>";

/// One special token: its text and id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpecialToken {
    /// The token's text (`"</s>"`).
    pub content: String,
    /// Its id.
    pub id: u32,
}

/// A tokenizer's special tokens with their ids; `None` where the config names none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `bos_token` (OPT: `</s>`; T5: none).
    pub bos: Option<SpecialToken>,
    /// `eos_token` (`</s>`).
    pub eos: Option<SpecialToken>,
    /// `unk_token`.
    pub unk: Option<SpecialToken>,
    /// `sep_token` (BERT-style tokenizers).
    pub sep: Option<SpecialToken>,
    /// `pad_token`.
    pub pad: Option<SpecialToken>,
    /// `cls_token` (BERT-style tokenizers).
    pub cls: Option<SpecialToken>,
    /// `mask_token` (BERT-style tokenizers).
    pub mask: Option<SpecialToken>,
    /// The image placeholder (`<image>`), always there: the processor puts `num_query_tokens` of them before
    /// the text and the model overwrites their embeddings with the Q-Former's output.
    pub image: SpecialToken,
}

impl SpecialTokens {
    /// A special token by its HF attribute name (`"pad_token"`, `"image_token"`, ...); `None` for a name
    /// that is not such an attribute or a token the config does not name.
    pub fn get(&self, key: &str) -> Option<&SpecialToken> {
        match key {
            "bos_token" => self.bos.as_ref(),
            "eos_token" => self.eos.as_ref(),
            "unk_token" => self.unk.as_ref(),
            "sep_token" => self.sep.as_ref(),
            "pad_token" => self.pad.as_ref(),
            "cls_token" => self.cls.as_ref(),
            "mask_token" => self.mask.as_ref(),
            "image_token" => Some(&self.image),
            _ => None,
        }
    }
}

/// How the text is padded in [`Blip2Tokenizer::encode_batch`] (HF `padding`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Padding {
    /// Pad every row to the longest one (HF `padding=True` / `"longest"`): what a batch needs to become a
    /// tensor, and a no-op for one prompt.
    #[default]
    Longest,
    /// Pad every row to `max_length` (or the tokenizer's `model_max_length`) (HF `"max_length"`).
    MaxLength,
    /// No padding (HF `padding=False`): rows keep their lengths.
    DoNotPad,
}

/// The largest `tokenizer.json` read (256 MiB; the hub's largest are a few tens of MB). A bigger file is refused
/// from its size before it is read.
pub const MAX_TOKENIZER_FILE_BYTES: u64 = 256 << 20;

/// Options of text encoding (HF's text kwargs). The default adds special tokens, pads to the longest row on
/// the tokenizer's `padding_side`, and does not truncate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EncodeOptions {
    /// Add the tokenizer's special tokens (OPT's BOS `</s>` before the text, T5's `</s>` after it).
    pub add_special_tokens: bool,
    /// How to pad.
    pub padding: Padding,
    /// Overrides the tokenizer config's `padding_side`.
    pub padding_side: Option<PaddingSide>,
    /// Cut rows longer than [`max_length`](Self::max_length) (or `model_max_length`). When false, a row over
    /// an explicit `max_length` is an error ([`Error::PromptTooLong`]) instead of HF's silent truncation.
    pub truncation: bool,
    /// Overrides the tokenizer config's `truncation_side`.
    pub truncation_side: Option<TruncationSide>,
    /// The maximum row length, special tokens included (for the processor: `<image>` tokens included).
    pub max_length: Option<usize>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            add_special_tokens: true,
            padding: Padding::Longest,
            padding_side: None,
            truncation: false,
            truncation_side: None,
            max_length: None,
        }
    }
}

impl EncodeOptions {
    /// The same options with another padding.
    #[must_use]
    pub fn with_padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// The same options with padding on `side`.
    #[must_use]
    pub fn with_padding_side(mut self, side: PaddingSide) -> Self {
        self.padding_side = Some(side);
        self
    }

    /// The same options with truncation on or off.
    #[must_use]
    pub fn with_truncation(mut self, truncation: bool) -> Self {
        self.truncation = truncation;
        self
    }

    /// The same options with truncation on `side`.
    #[must_use]
    pub fn with_truncation_side(mut self, side: TruncationSide) -> Self {
        self.truncation_side = Some(side);
        self
    }

    /// The same options with a maximum length.
    #[must_use]
    pub fn with_max_length(mut self, max_length: usize) -> Self {
        self.max_length = Some(max_length);
        self
    }

    /// The same options with or without the tokenizer's special tokens.
    #[must_use]
    pub fn with_special_tokens(mut self, add: bool) -> Self {
        self.add_special_tokens = add;
        self
    }
}

/// Token ids and attention masks of a batch (HF `BatchEncoding` with `input_ids` and `attention_mask`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchEncoding {
    /// One row of ids per prompt.
    pub input_ids: Vec<Vec<i64>>,
    /// 1 for a real token, 0 for padding; same shape as `input_ids`.
    pub attention_mask: Vec<Vec<i64>>,
}

impl BatchEncoding {
    /// The number of rows.
    pub fn batch_size(&self) -> usize {
        self.input_ids.len()
    }

    /// The common row length.
    ///
    /// # Errors
    /// [`Error::RaggedBatch`] when rows differ in length (encoded with [`Padding::DoNotPad`]).
    pub fn seq_len(&self) -> Result<usize, Error> {
        let expected = self.input_ids.first().map_or(0, Vec::len);
        for (index, row) in self.input_ids.iter().enumerate() {
            if row.len() != expected {
                return Err(Error::RaggedBatch {
                    index,
                    length: row.len(),
                    expected,
                });
            }
        }
        Ok(expected)
    }

    /// `input_ids` as a `[batch, seq_len]` Burn tensor.
    ///
    /// # Errors
    /// [`Error::RaggedBatch`] for rows of different lengths.
    pub fn input_ids_tensor<B: burn::prelude::Backend>(
        &self,
        device: &B::Device,
    ) -> Result<burn::prelude::Tensor<B, 2, burn::prelude::Int>, Error> {
        to_tensor(&self.input_ids, self.seq_len()?, device)
    }

    /// `attention_mask` as a `[batch, seq_len]` Burn tensor.
    ///
    /// # Errors
    /// [`Error::RaggedBatch`] for rows of different lengths.
    pub fn attention_mask_tensor<B: burn::prelude::Backend>(
        &self,
        device: &B::Device,
    ) -> Result<burn::prelude::Tensor<B, 2, burn::prelude::Int>, Error> {
        to_tensor(&self.attention_mask, self.seq_len()?, device)
    }
}

fn to_tensor<B: burn::prelude::Backend>(
    rows: &[Vec<i64>],
    seq_len: usize,
    device: &B::Device,
) -> Result<burn::prelude::Tensor<B, 2, burn::prelude::Int>, Error> {
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    let data = burn::tensor::TensorData::new(flat, [rows.len(), seq_len]);
    Ok(burn::prelude::Tensor::from_data(data, device))
}

/// A BLIP-2 tokenizer: `tokenizer.json` read by the `tokenizers` crate, set up from `tokenizer_config.json` as
/// transformers 5.24 does, with the `<image>` token ensured (see the module docs for the order).
#[derive(Clone, Debug)]
pub struct Blip2Tokenizer {
    inner: Tokenizer,
    name: String,
    config: TokenizerConfig,
    special: SpecialTokens,
    is_bpe: bool,
}

impl Blip2Tokenizer {
    /// Reads `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` of a model directory (the
    /// last two are optional).
    ///
    /// # Errors
    /// [`Error::NoTokenizer`] without tokenizer.json; [`Error::Io`], [`Error::BadTokenizer`],
    /// [`Error::BadTextConfig`] or [`Error::BadTextConfigValue`] for a file that cannot be read or used.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::NoTokenizer {
                dir: dir.to_path_buf(),
            });
        }
        let config = TokenizerConfig::from_model_dir(dir)?;
        Self::from_file(&path, config)
    }

    /// Reads a `tokenizer.json` file and sets it up with `config`.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::BadTokenizer`] or [`Error::BadTextConfigValue`].
    pub fn from_file(path: impl AsRef<Path>, config: TokenizerConfig) -> Result<Self, Error> {
        let path = path.as_ref();
        let bytes = blip2_nn::limits::read_bounded(path, MAX_TOKENIZER_FILE_BYTES)
            .map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, config, &path.display().to_string())
    }

    /// Parses a `tokenizer.json` string and sets it up with `config`.
    ///
    /// # Errors
    /// [`Error::BadTokenizer`] or [`Error::BadTextConfigValue`], naming `<memory>`.
    pub fn from_json_str(tokenizer_json: &str, config: TokenizerConfig) -> Result<Self, Error> {
        Self::from_bytes(tokenizer_json.as_bytes(), config, MEMORY)
    }

    fn from_bytes(bytes: &[u8], config: TokenizerConfig, name: &str) -> Result<Self, Error> {
        let inner = Tokenizer::from_bytes(bytes).map_err(|e| Error::BadTokenizer {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        Self::new(inner, config, name)
    }

    /// Sets up an already loaded `tokenizers` tokenizer with `config`; `name` shows in error messages.
    ///
    /// # Errors
    /// [`Error::BadTokenizer`] when the config's tokens cannot be added (a normalizer that fails on them).
    pub fn new(mut inner: Tokenizer, config: TokenizerConfig, name: &str) -> Result<Self, Error> {
        // 1. Missing added tokens, named/model-specific special tokens and extra special tokens, one call.
        let mut known: HashSet<String> = inner
            .get_added_tokens_decoder()
            .into_values()
            .map(|t| t.content)
            .collect();
        let mut to_add: Vec<AddedToken> = Vec::new();
        for (_, token) in &config.added_tokens_decoder {
            if known.insert(token.content.clone()) {
                to_add.push(token.clone());
            }
        }
        for token in config
            .named
            .iter()
            .map(|(_, t)| t)
            .chain(config.extra.iter())
        {
            if known.insert(token.content.clone()) {
                to_add.push(token.clone());
            }
        }
        if !to_add.is_empty() {
            inner.add_tokens(to_add).map_err(|e| Error::BadTokenizer {
                name: name.to_string(),
                reason: format!("cannot add the config's special tokens: {e}"),
            })?;
        }
        // 2. Special-token text in prompts as text, where asked.
        inner.set_encode_special_tokens(config.split_special_tokens);
        // 3. The image token, as Blip2Processor ensures it.
        let image_content = match config.token("image_token") {
            Some(content) => content.to_string(),
            None => {
                let mut token = AddedToken::from(DEFAULT_IMAGE_TOKEN, true);
                token.normalized = false;
                inner
                    .add_special_tokens([token])
                    .map_err(|e| Error::BadTokenizer {
                        name: name.to_string(),
                        reason: format!("cannot add {DEFAULT_IMAGE_TOKEN}: {e}"),
                    })?;
                DEFAULT_IMAGE_TOKEN.to_string()
            }
        };
        let resolve = |content: &str| -> Option<SpecialToken> {
            inner.token_to_id(content).map(|id| SpecialToken {
                content: content.to_string(),
                id,
            })
        };
        let named = |key: &str| config.token(key).and_then(resolve);
        let image = resolve(&image_content).ok_or_else(|| Error::Tokenize {
            name: name.to_string(),
            reason: format!("the image token {image_content:?} has no id after being added"),
        })?;
        let special = SpecialTokens {
            bos: named("bos_token"),
            eos: named("eos_token"),
            unk: named("unk_token"),
            sep: named("sep_token"),
            pad: named("pad_token"),
            cls: named("cls_token"),
            mask: named("mask_token"),
            image,
        };
        let is_bpe = matches!(inner.get_model(), ModelWrapper::BPE(_));
        Ok(Self {
            inner,
            name: name.to_string(),
            config,
            special,
            is_bpe,
        })
    }

    /// The file it was read from, or `<memory>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its config.
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// Its special tokens with their ids.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// A special token's id by HF attribute name (`"pad_token"`, `"image_token"`, ...).
    ///
    /// # Errors
    /// [`Error::UnknownSpecialToken`] for a name that is not a special-token attribute;
    /// [`Error::MissingSpecialToken`] when the config names no such token.
    pub fn special_token_id(&self, key: &str) -> Result<u32, Error> {
        if key != "image_token" && !NAMED_SPECIAL_TOKENS.contains(&key) {
            return Err(Error::UnknownSpecialToken {
                name: self.name.clone(),
                key: key.to_string(),
            });
        }
        self.special
            .get(key)
            .map(|t| t.id)
            .ok_or_else(|| Error::MissingSpecialToken {
                name: self.name.clone(),
                key: key.to_string(),
                needed_for: "this lookup",
            })
    }

    /// The image token's id (`<image>`).
    pub fn image_token_id(&self) -> u32 {
        self.special.image.id
    }

    /// The padding side of the config.
    pub fn padding_side(&self) -> PaddingSide {
        self.config.padding_side
    }

    /// The number of tokens, added tokens included (HF `len(tokenizer)`).
    pub fn len(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A token's id, if it is in the vocabulary or among the added tokens.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// An id's token text, if the id is known.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The underlying `tokenizers` tokenizer (set up, with the added tokens).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// How many special tokens the post-processor adds around one text (OPT: 1, T5: 1, BERT: 2).
    pub fn num_special_tokens_to_add(&self) -> usize {
        self.inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false))
    }

    fn tokenize_error(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenize {
            name: self.name.clone(),
            reason: e.to_string(),
        }
    }

    /// Token ids of one text, with the special tokens when `add_special_tokens`.
    ///
    /// # Errors
    /// [`Error::Tokenize`] when the `tokenizers` crate fails.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, Error> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| self.tokenize_error(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of one text truncated to `max_length` tokens in all (special tokens kept), as the
    /// `tokenizers` crate truncates: the text's tokens are cut to `max_length - special tokens` on `side`, then
    /// the special tokens are added.
    ///
    /// # Errors
    /// [`Error::MaxLengthTooSmall`] when `max_length` cannot hold the special tokens; [`Error::Tokenize`].
    pub fn encode_truncated(
        &self,
        text: &str,
        add_special_tokens: bool,
        max_length: usize,
        side: TruncationSide,
    ) -> Result<Vec<u32>, Error> {
        let added = if add_special_tokens {
            self.num_special_tokens_to_add()
        } else {
            0
        };
        if max_length < added {
            return Err(Error::MaxLengthTooSmall {
                max_length,
                needed: added,
            });
        }
        let raw = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| self.tokenize_error(e))?;
        let params = TruncationParams {
            max_length: max_length - added,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: match side {
                TruncationSide::Left => TruncationDirection::Left,
                TruncationSide::Right => TruncationDirection::Right,
            },
        };
        let (raw, _) =
            truncate_encodings(raw, None, &params).map_err(|e| self.tokenize_error(e))?;
        let encoding = match self.inner.get_post_processor() {
            Some(processor) => processor
                .process(raw, None, add_special_tokens)
                .map_err(|e| self.tokenize_error(e))?,
            None => raw,
        };
        Ok(encoding.get_ids().to_vec())
    }

    /// Encodes a batch of texts as HF's tokenizer call does (no `<image>` tokens: that is
    /// [`Blip2Processor`](crate::Blip2Processor)'s job).
    ///
    /// # Errors
    /// [`Error::EmptyPrompts`]; [`Error::PromptTooLong`] for a row over an explicit `max_length` without
    /// truncation; [`Error::MaxLengthTooSmall`]; [`Error::NoMaxLength`] for [`Padding::MaxLength`] with no
    /// length; [`Error::MissingSpecialToken`] when a row needs padding and there is no `pad_token`;
    /// [`Error::Tokenize`].
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        options: &EncodeOptions,
    ) -> Result<BatchEncoding, Error> {
        if texts.is_empty() {
            return Err(Error::EmptyPrompts);
        }
        let limit = options.max_length.or(self.config.model_max_length);
        let side = options
            .truncation_side
            .unwrap_or(self.config.truncation_side);
        let mut rows = Vec::with_capacity(texts.len());
        for (index, text) in texts.iter().enumerate() {
            let text = text.as_ref();
            let ids = match (options.truncation, limit) {
                (true, Some(limit)) => {
                    self.encode_truncated(text, options.add_special_tokens, limit, side)?
                }
                _ => {
                    let ids = self.encode(text, options.add_special_tokens)?;
                    if let Some(limit) = options.max_length
                        && ids.len() > limit
                    {
                        return Err(Error::PromptTooLong {
                            index,
                            length: ids.len(),
                            limit,
                        });
                    }
                    ids
                }
            };
            rows.push(ids);
        }
        let target = match options.padding {
            Padding::DoNotPad => None,
            Padding::Longest => rows.iter().map(Vec::len).max(),
            Padding::MaxLength => Some(limit.ok_or_else(|| Error::NoMaxLength {
                name: self.name.clone(),
                what: "padding to max_length",
            })?),
        };
        let side = options.padding_side.unwrap_or(self.config.padding_side);
        let needs_pad = target.is_some_and(|t| rows.iter().any(|r| r.len() < t));
        let pad_id = match (&self.special.pad, needs_pad) {
            (Some(pad), _) => i64::from(pad.id),
            (None, false) => 0,
            (None, true) => {
                return Err(Error::MissingSpecialToken {
                    name: self.name.clone(),
                    key: "pad_token".to_string(),
                    needed_for: "padding a batch",
                });
            }
        };
        let mut out = BatchEncoding::default();
        for row in rows {
            let pads = target.map_or(0, |t| t.saturating_sub(row.len()));
            let ids = row.iter().map(|&id| i64::from(id));
            let (ids, mask): (Vec<i64>, Vec<i64>) = match side {
                PaddingSide::Left => std::iter::repeat_n((pad_id, 0), pads)
                    .chain(ids.map(|id| (id, 1)))
                    .unzip(),
                PaddingSide::Right => ids
                    .map(|id| (id, 1))
                    .chain(std::iter::repeat_n((pad_id, 0), pads))
                    .unzip(),
            };
            out.input_ids.push(ids);
            out.attention_mask.push(mask);
        }
        Ok(out)
    }

    /// Decodes ids to text (HF `decode`): special tokens (the `<image>` token among them) dropped when
    /// `skip_special_tokens`; ids the tokenizer does not know are dropped, as the `tokenizers` crate does;
    /// `clean_up_tokenization_spaces` applied where the config asks for it (never for BPE, as in transformers).
    ///
    /// # Errors
    /// [`Error::InvalidTokenId`] for a negative id or one past `u32`; [`Error::Tokenize`].
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String, Error> {
        let ids = ids
            .iter()
            .enumerate()
            .map(|(index, &id)| u32::try_from(id).map_err(|_| Error::InvalidTokenId { id, index }))
            .collect::<Result<Vec<u32>, Error>>()?;
        let text = self
            .inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| self.tokenize_error(e))?;
        let clean = self.config.clean_up_tokenization_spaces
            && (!self.is_bpe || self.config.clean_up_for_bpe);
        Ok(if clean {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// Decodes every row (HF `batch_decode`).
    ///
    /// # Errors
    /// As [`decode`](Self::decode).
    pub fn batch_decode<R: AsRef<[i64]>>(
        &self,
        rows: &[R],
        skip_special_tokens: bool,
    ) -> Result<Vec<String>, Error> {
        rows.iter()
            .map(|row| self.decode(row.as_ref(), skip_special_tokens))
            .collect()
    }
}

/// transformers' `clean_up_tokenization`: drops the space tokenizers put before punctuation and English
/// contractions.
pub fn clean_up_tokenization(text: &str) -> String {
    const RULES: [(&str, &str); 10] = [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ];
    RULES
        .iter()
        .fold(text.to_string(), |acc, (from, to)| acc.replace(from, to))
}
