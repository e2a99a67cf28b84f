//! [`Blip2Processor`]: HF `Blip2Processor` (transformers 5.24): the image processor, the tokenizer and
//! `num_query_tokens`; prompts become `[<image> x num_query_tokens] + tokenized text`.
//!
//! What transformers does, step by step, and so what this does:
//! - the text is tokenized, padded and truncated on its own, with `max_length` reduced by `num_query_tokens`;
//! - then `num_query_tokens` image-token ids (attention 1) are put *before* every row, padding included: a
//!   left-padded row reads `<image> x n, <pad>..., </s>, text` with mask `1 x n, 0..., 1...`;
//! - OPT's tokenizer adds its BOS `</s>` before the text, T5's appends `</s>`, BERT's wraps it in
//!   `[CLS] ... [SEP]`; the `<image>` tokens come before all of these.
//!
//! Captioning without a prompt is [`caption_inputs`](Blip2Processor::caption_inputs): the empty text, tokenized
//! with its special tokens, after the image tokens. For OPT that is `[<image> x n, </s>]`, the
//! `[<image> x n, bos]` transformers' `generate` builds itself; for T5 it is `[<image> x n, </s>]`, what
//! LAVIS feeds (transformers 5.24 cannot caption a T5 model without a prompt).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::config::read_object;
use super::tokenizer::{BatchEncoding, Blip2Tokenizer, EncodeOptions};
use crate::error::Error;
use crate::image::BlipImageProcessor;

/// HF `Blip2Processor`: image preprocessing plus prompt tokenization with the `<image>` placeholders.
#[derive(Clone, Debug)]
pub struct Blip2Processor {
    image_processor: BlipImageProcessor,
    tokenizer: Blip2Tokenizer,
    num_query_tokens: usize,
}

impl Blip2Processor {
    /// A processor from its parts.
    pub fn new(
        image_processor: BlipImageProcessor,
        tokenizer: Blip2Tokenizer,
        num_query_tokens: usize,
    ) -> Self {
        Self {
            image_processor,
            tokenizer,
            num_query_tokens,
        }
    }

    /// Reads a model directory as `Blip2Processor.from_pretrained` does: the image processor
    /// ([`BlipImageProcessor::from_model_dir`]), the tokenizer ([`Blip2Tokenizer::from_model_dir`]) and
    /// `num_query_tokens` ([`num_query_tokens_from_model_dir`]).
    ///
    /// # Errors
    /// Those of the three readers.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let tokenizer = Blip2Tokenizer::from_model_dir(dir)?;
        let num_query_tokens = num_query_tokens_from_model_dir(dir)?;
        let image_processor = BlipImageProcessor::from_model_dir(dir)?;
        Ok(Self::new(image_processor, tokenizer, num_query_tokens))
    }

    /// The image processor.
    pub fn image_processor(&self) -> &BlipImageProcessor {
        &self.image_processor
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Blip2Tokenizer {
        &self.tokenizer
    }

    /// How many `<image>` tokens go before each prompt (the Q-Former's query count).
    pub fn num_query_tokens(&self) -> usize {
        self.num_query_tokens
    }

    /// The `<image>` token's id (the model config's `image_token_index` must equal it).
    pub fn image_token_id(&self) -> u32 {
        self.tokenizer.image_token_id()
    }

    /// Tokenizes prompts as `Blip2Processor(images=..., text=prompts)` does: the text as the tokenizer
    /// encodes it (padding, truncation and `max_length` as in `options`, where `max_length` counts the
    /// `<image>` tokens), then `num_query_tokens` `<image>` ids before every row.
    ///
    /// # Errors
    /// [`Error::EmptyPrompts`]; [`Error::MaxLengthTooSmall`] when `max_length` cannot hold the `<image>`
    /// tokens; [`Error::PromptTooLong`] (lengths with the `<image>` tokens); and the other errors of
    /// [`Blip2Tokenizer::encode_batch`].
    pub fn encode_prompts<S: AsRef<str>>(
        &self,
        prompts: &[S],
        options: &EncodeOptions,
    ) -> Result<BatchEncoding, Error> {
        let n = self.num_query_tokens;
        let mut text_options = *options;
        if let Some(max_length) = options.max_length {
            text_options.max_length =
                Some(max_length.checked_sub(n).ok_or(Error::MaxLengthTooSmall {
                    max_length,
                    needed: n,
                })?);
        }
        let text = self
            .tokenizer
            .encode_batch(prompts, &text_options)
            .map_err(|e| match e {
                Error::PromptTooLong {
                    index,
                    length,
                    limit,
                } => Error::PromptTooLong {
                    index,
                    length: length + n,
                    limit: limit + n,
                },
                Error::MaxLengthTooSmall { max_length, needed } if options.max_length.is_some() => {
                    Error::MaxLengthTooSmall {
                        max_length: max_length + n,
                        needed: needed + n,
                    }
                }
                other => other,
            })?;
        Ok(self.prepend_image_tokens(text))
    }

    /// Tokenizes one prompt ([`encode_prompts`](Self::encode_prompts) with a batch of one).
    ///
    /// # Errors
    /// As [`encode_prompts`](Self::encode_prompts).
    pub fn encode_prompt(
        &self,
        prompt: &str,
        options: &EncodeOptions,
    ) -> Result<BatchEncoding, Error> {
        self.encode_prompts(&[prompt], options)
    }

    /// The inputs for captioning `batch_size` images without a prompt: `[<image> x n]` followed by the
    /// empty text with the tokenizer's special tokens (OPT: BOS `</s>`; T5: `</s>`), or by the BOS token
    /// where the empty text gives no token.
    ///
    /// # Errors
    /// [`Error::EmptyBatch`] for `batch_size` 0; [`Error::MissingSpecialToken`] when the empty text gives
    /// no token and there is no `bos_token`; [`Error::Tokenize`].
    pub fn caption_inputs(&self, batch_size: usize) -> Result<BatchEncoding, Error> {
        if batch_size == 0 {
            return Err(Error::EmptyBatch);
        }
        let mut start = self.tokenizer.encode("", true)?;
        if start.is_empty() {
            let bos = self
                .tokenizer
                .special_tokens()
                .bos
                .as_ref()
                .ok_or_else(|| Error::MissingSpecialToken {
                    name: self.tokenizer.name().to_string(),
                    key: "bos_token".to_string(),
                    needed_for: "captioning without a prompt",
                })?;
            start.push(bos.id);
        }
        let row: Vec<i64> = start.into_iter().map(i64::from).collect();
        let text = BatchEncoding {
            attention_mask: vec![vec![1; row.len()]; batch_size],
            input_ids: vec![row; batch_size],
        };
        Ok(self.prepend_image_tokens(text))
    }

    fn prepend_image_tokens(&self, text: BatchEncoding) -> BatchEncoding {
        let n = self.num_query_tokens;
        let image = i64::from(self.image_token_id());
        let prepend = |rows: Vec<Vec<i64>>, value: i64| -> Vec<Vec<i64>> {
            rows.into_iter()
                .map(|row| std::iter::repeat_n(value, n).chain(row).collect())
                .collect()
        };
        BatchEncoding {
            input_ids: prepend(text.input_ids, image),
            attention_mask: prepend(text.attention_mask, 1),
        }
    }

    /// Decodes generated ids ([`Blip2Tokenizer::decode`]); with `skip_special_tokens` the `<image>`, pad, BOS
    /// and EOS tokens are dropped.
    ///
    /// # Errors
    /// As [`Blip2Tokenizer::decode`].
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String, Error> {
        self.tokenizer.decode(ids, skip_special_tokens)
    }

    /// Decodes every row ([`Blip2Tokenizer::batch_decode`]).
    ///
    /// # Errors
    /// As [`Blip2Tokenizer::decode`].
    pub fn batch_decode<R: AsRef<[i64]>>(
        &self,
        rows: &[R],
        skip_special_tokens: bool,
    ) -> Result<Vec<String>, Error> {
        self.tokenizer.batch_decode(rows, skip_special_tokens)
    }
}

/// `num_query_tokens` of a model directory: `processor_config.json`'s (both layouts keep it at the top level),
/// else `config.json`'s (the model's query count, for directories saved without a processor config; transformers
/// would then put no `<image>` tokens in and the model would fail).
///
/// # Errors
/// [`Error::NoNumQueryTokens`] when neither file has it; [`Error::Io`], [`Error::BadTextConfig`] or
/// [`Error::BadTextConfigValue`] for a file that cannot be read or a value that is not a count.
pub fn num_query_tokens_from_model_dir(dir: impl AsRef<Path>) -> Result<usize, Error> {
    let dir = dir.as_ref();
    for file in ["processor_config.json", "config.json"] {
        let path: PathBuf = dir.join(file);
        if !path.is_file() {
            continue;
        }
        let obj = read_object(&path)?;
        match obj.get("num_query_tokens") {
            None | Some(Value::Null) => {}
            Some(value) => {
                let limit = blip2_nn::limits::MAX_QUERY_TOKENS;
                return value
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|&n| n <= limit)
                    .ok_or_else(|| Error::BadTextConfigValue {
                        name: path.display().to_string(),
                        key: "num_query_tokens".to_string(),
                        value: value.to_string(),
                        reason: format!("expected a count of query tokens, at most {limit}"),
                    });
            }
        }
    }
    Err(Error::NoNumQueryTokens {
        dir: dir.to_path_buf(),
    })
}

/// The VQA prompt of BLIP-2 (the paper, LAVIS and the HF model cards): `Question: {question} Answer:`.
pub fn vqa_prompt(question: &str) -> String {
    format!("Question: {question} Answer:")
}

/// A follow-up question with the earlier turns as context, in LAVIS's BLIP-2 format: every earlier turn as
/// `Question: {q} Answer: {a}.` (LAVIS's template ends the answer with a full stop), joined by spaces, then
/// ` Question: {question} Answer:`. Without earlier turns it is [`vqa_prompt`] (LAVIS's join would leave a
/// leading space, which tokenizes differently).
pub fn vqa_prompt_with_context<Q: AsRef<str>, A: AsRef<str>>(
    context: &[(Q, A)],
    question: &str,
) -> String {
    let mut prompt = context
        .iter()
        .map(|(q, a)| format!("Question: {} Answer: {}.", q.as_ref(), a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ");
    if !prompt.is_empty() {
        prompt.push(' ');
    }
    prompt.push_str(&vqa_prompt(question));
    prompt
}
