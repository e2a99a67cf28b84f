//! [`Blip2`]: the model with its processor and a generation config, for the common tasks in a line each:
//! captions, questions, multi-turn chat, features.

use std::path::Path;

use blip2_generation::{GenerationConfig, GenerationOutput, Generator};
use blip2_processor::{
    BatchEncoding, Blip2Processor, EncodeOptions, ImageProcessorConfig, Limits, vqa_prompt,
    vqa_prompt_with_context,
};
use burn::prelude::{Backend, Int, Tensor};
use burn::tensor::TensorData;
use image::RgbImage;

use crate::{Blip2ForConditionalGeneration, Error, ImageFeatures, Precision};

/// One generated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The new text (special tokens skipped, surrounding spaces trimmed).
    pub text: String,
    /// The new token ids, up to the end-of-sequence token (excluded).
    pub token_ids: Vec<u32>,
    /// The whole row as transformers' `generate()` returns it: prompt ids (OPT) or the decoder start token
    /// (T5), the new ids, padding.
    pub sequence: Vec<u32>,
    /// Beam search: the hypothesis's length-normalised log-probability.
    pub score: Option<f32>,
}

/// A BLIP-2 model ready for captioning and questions: the model, its processor (image preprocessing and
/// tokenizer), and the generation config used by default.
///
/// ```no_run
/// use blip2::Blip2;
/// use blip2_nn::backend::{DefaultBackend, FloatDType};
///
/// let blip2 = Blip2::<DefaultBackend>::from_pretrained("Salesforce/blip2-opt-2.7b", FloatDType::F32, &Default::default())?;
/// let images = blip2.encode_image_files(&["cat.jpg"])?;           // encode once...
/// let caption = blip2.caption(&images, None)?;                      // ...caption...
/// let answer = blip2.ask(&images, &["what is the cat doing?"])?;    // ...and ask
/// println!("{} / {}", caption[0].text, answer[0].text);
/// # Ok::<(), blip2::Error>(())
/// ```
#[derive(Debug)]
pub struct Blip2<B: Backend> {
    model: Blip2ForConditionalGeneration<B>,
    processor: Blip2Processor,
    generation: GenerationConfig,
    device: B::Device,
}

/// Refuses images without pixels (a 0x0 `RgbImage` would be resized into a black picture).
pub(crate) fn check_not_empty(images: &[RgbImage]) -> Result<(), Error> {
    match images
        .iter()
        .enumerate()
        .find(|(_, image)| image.width() == 0 || image.height() == 0)
    {
        Some((index, image)) => Err(blip2_processor::Error::ZeroSize {
            name: format!("image {index} of the batch"),
            width: u64::from(image.width()),
            height: u64::from(image.height()),
        }
        .into()),
        None => Ok(()),
    }
}

/// Rows of ids (of one length) as a `[rows, len]` tensor.
pub(crate) fn to_tensor<B: Backend>(
    rows: &[Vec<i64>],
    device: &B::Device,
) -> Result<Tensor<B, 2, Int>, Error> {
    let len = rows.first().map_or(0, Vec::len);
    if rows.iter().any(|r| r.len() != len) {
        return Err(Error::bad_input(
            "prompts of different lengths need padding",
        ));
    }
    let data: Vec<i64> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_data(
        TensorData::new(data, [rows.len(), len]),
        device,
    ))
}

/// The processor of `dir` with image `limits`, its fixed resize size checked against them.
pub(crate) fn processor_with_limits(dir: &Path, limits: Limits) -> Result<Blip2Processor, Error> {
    let processor = Blip2Processor::from_model_dir(dir)?;
    let image = processor.image_processor().clone().with_limits(limits);
    let file =
        ImageProcessorConfig::file_in(dir).unwrap_or_else(|| dir.join("preprocessor_config.json"));
    image
        .config()
        .check_limits(&limits, &file.display().to_string())?;
    Ok(Blip2Processor::new(
        image,
        processor.tokenizer().clone(),
        processor.num_query_tokens(),
    ))
}

/// A text's first characters, for error messages.
pub(crate) fn start_of(text: &str) -> String {
    const SHOWN: usize = 30;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// Whether `err` says that a prompt does not fit the model (too many tokens, or no room for the new ones).
fn is_too_long(err: &Error) -> bool {
    use blip2_generation::Error as G;
    matches!(
        err,
        Error::TooLong { .. }
            | Error::Generation(G::PromptTooLong { .. } | G::TooManyNewTokens { .. })
    )
}

/// Checks that `processor` fits `model`: the same query count and `<image>` id, an `<image>` id in the
/// vocabulary. `dir` names the files when known.
fn check_processor<B: Backend>(
    model: &Blip2ForConditionalGeneration<B>,
    processor: &Blip2Processor,
    dir: Option<&Path>,
) -> Result<(), Error> {
    let file = |name: &str| match dir {
        Some(dir) => dir.join(name).display().to_string(),
        None => name.to_string(),
    };
    let config = &model.config;
    let queries = config.num_query_tokens();
    if processor.num_query_tokens() != queries {
        let source = match dir {
            Some(dir) if !dir.join("processor_config.json").is_file() => "config.json",
            _ => "processor_config.json",
        };
        return Err(Error::Mismatch {
            file: file(source),
            key: "num_query_tokens",
            found: processor.num_query_tokens().to_string(),
            expected: format!(
                "the model's Q-Former has {queries} queries (`num_query_tokens` in config.json)"
            ),
        });
    }
    if let Some(index) = config.image_token_index {
        let vocab = config.text_config.vocab_size();
        if index as usize >= vocab {
            return Err(Error::Mismatch {
                file: file("config.json"),
                key: "image_token_index",
                found: index.to_string(),
                expected: format!(
                    "the language model's vocabulary has {vocab} tokens (ids 0..{vocab}, `text_config.vocab_size`)"
                ),
            });
        }
        let token = &processor.tokenizer().special_tokens().image;
        if token.id != index {
            return Err(Error::Mismatch {
                file: file("config.json"),
                key: "image_token_index",
                found: index.to_string(),
                expected: format!(
                    "the tokenizer's image token `{}` is id {} (tokenizer.json)",
                    token.content, token.id
                ),
            });
        }
    }
    Ok(())
}

impl<B: Backend> Blip2<B> {
    /// Loads a model directory or a hub id (downloaded into the HF cache; see [`crate::hub`]): the model in
    /// `precision`, its processor, and the generation config transformers generates with
    /// ([`Blip2ForConditionalGeneration::generation_config`]: the language model's special tokens, greedy,
    /// 20 new tokens). Images are held to the default [`Limits`].
    ///
    /// # Errors
    /// Locating or downloading the files, the config, the weights, the processor files; as [`Self::new`].
    pub fn from_pretrained(
        model: impl AsRef<Path>,
        precision: impl Into<Precision>,
        device: &B::Device,
    ) -> Result<Self, Error> {
        Self::from_pretrained_with_limits(model, precision, device, Limits::default())
    }

    /// [`Self::from_pretrained`] with other image [`Limits`] (for larger images, or a processor config
    /// whose `size` is over the default limits).
    ///
    /// # Errors
    /// As [`Self::from_pretrained`]; [`blip2_processor::Error::UnsupportedConfig`] naming the processor
    /// config file and `size` when the size every image is resized to is over `limits` (checked before the
    /// weights load).
    pub fn from_pretrained_with_limits(
        model: impl AsRef<Path>,
        precision: impl Into<Precision>,
        device: &B::Device,
        limits: Limits,
    ) -> Result<Self, Error> {
        let dir = blip2_hub::locate(model.as_ref())?;
        let processor = processor_with_limits(&dir, limits)?;
        let model = Blip2ForConditionalGeneration::from_pretrained(&dir, precision, device)?;
        check_processor(&model, &processor, Some(&dir))?;
        Ok(Self::unchecked(model, processor, device))
    }

    /// From a loaded model and processor.
    ///
    /// # Errors
    /// [`Error::Mismatch`] when they do not fit: another `num_query_tokens`, an `image_token_index` that is
    /// not the tokenizer's `<image>` or is outside the vocabulary.
    pub fn new(
        model: Blip2ForConditionalGeneration<B>,
        processor: Blip2Processor,
        device: &B::Device,
    ) -> Result<Self, Error> {
        check_processor(&model, &processor, None)?;
        Ok(Self::unchecked(model, processor, device))
    }

    fn unchecked(
        model: Blip2ForConditionalGeneration<B>,
        processor: Blip2Processor,
        device: &B::Device,
    ) -> Self {
        let generation = model.generation_config();
        Self {
            model,
            processor,
            generation,
            device: device.clone(),
        }
    }

    /// The model.
    pub fn model(&self) -> &Blip2ForConditionalGeneration<B> {
        &self.model
    }

    /// The processor.
    pub fn processor(&self) -> &Blip2Processor {
        &self.processor
    }

    /// The generation config every call uses.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }

    /// Replaces the generation config (start from [`Self::generation_config`] and override fields).
    ///
    /// # Errors
    /// [`blip2_generation::Error::InvalidConfig`].
    pub fn set_generation_config(&mut self, config: GenerationConfig) -> Result<(), Error> {
        config.validate()?;
        self.generation = config;
        Ok(())
    }

    /// Decodes image files (PNG, JPEG, WebP, GIF, BMP, TIFF) as RGB, as the processor does.
    ///
    /// # Errors
    /// A file that cannot be read or decoded, named.
    pub fn open_images<P: AsRef<Path>>(&self, paths: &[P]) -> Result<Vec<RgbImage>, Error> {
        let ip = self.processor.image_processor();
        Ok(paths.iter().map(|p| ip.open(p)).collect::<Result<_, _>>()?)
    }

    /// Preprocesses and encodes images (vision tower, Q-Former, projection): keep the result and ask many
    /// prompts against it.
    ///
    /// # Errors
    /// An empty batch, an image without pixels ([`blip2_processor::Error::ZeroSize`]), preprocessing errors.
    pub fn encode_images(&self, images: &[RgbImage]) -> Result<ImageFeatures<B>, Error> {
        check_not_empty(images)?;
        let pixels = self.processor.image_processor().preprocess(images)?;
        self.model
            .encode_images(pixels.to_tensor(&self.device), false)
    }

    /// [`Self::open_images`] then [`Self::encode_images`].
    ///
    /// # Errors
    /// As both.
    pub fn encode_image_files<P: AsRef<Path>>(
        &self,
        paths: &[P],
    ) -> Result<ImageFeatures<B>, Error> {
        self.encode_images(&self.open_images(paths)?)
    }

    /// Captions every image: without a prompt, or continuing `prompt` (e.g. `"a photo of"`). Returns
    /// `num_return_sequences` results per image, image by image.
    ///
    /// # Errors
    /// An empty prompt ([`Error::EmptyText`]: pass `None` instead); a prompt too long for the model
    /// ([`Error::TooLong`], or [`blip2_generation::Error::TooManyNewTokens`] when it leaves no room for
    /// `max_new_tokens`); a prompt holding `<image>` ([`Error::ImageTokenInPrompt`]); tokenizing, generating.
    pub fn caption(
        &self,
        images: &ImageFeatures<B>,
        prompt: Option<&str>,
    ) -> Result<Vec<Generated>, Error> {
        let inputs = self.caption_inputs(images.batch_size(), prompt)?;
        self.generate_encoded(images, inputs)
    }

    /// [`Self::caption`] of one image, calling `on_text` with each new piece of the text as it is generated
    /// (greedy decoding or sampling; beam search cannot stream). The pieces add up to the result's `text`.
    ///
    /// # Errors
    /// Features of more than one image, beam search, `num_return_sequences` above 1; tokenizing, generating.
    pub fn caption_streaming(
        &self,
        image: &ImageFeatures<B>,
        prompt: Option<&str>,
        on_text: impl FnMut(&str),
    ) -> Result<Generated, Error> {
        let inputs = self.caption_inputs(image.batch_size(), prompt)?;
        self.stream_encoded(image, inputs, on_text)
    }

    /// [`Self::generate`] of one raw prompt about one image, calling `on_text` with each new piece of the text
    /// (see [`Self::caption_streaming`]).
    ///
    /// # Errors
    /// As [`Self::caption_streaming`].
    pub fn generate_streaming(
        &self,
        image: &ImageFeatures<B>,
        prompt: &str,
        on_text: impl FnMut(&str),
    ) -> Result<Generated, Error> {
        let inputs = self.prompt_inputs(image.batch_size(), &[prompt])?;
        self.stream_encoded(image, inputs, on_text)
    }

    /// The processor's output for captioning `batch` images without a prompt or continuing `prompt`.
    fn caption_inputs(&self, batch: usize, prompt: Option<&str>) -> Result<BatchEncoding, Error> {
        let Some(prompt) = prompt else {
            let mut inputs = self.processor.caption_inputs(batch)?;
            if self.model.config.image_token_index.is_none() {
                // Configs without `<image>` tokens: the model puts the queries in front itself.
                let n = self.processor.num_query_tokens();
                for row in inputs
                    .input_ids
                    .iter_mut()
                    .chain(&mut inputs.attention_mask)
                {
                    row.drain(..n);
                }
            }
            return Ok(inputs);
        };
        if prompt.trim().is_empty() {
            return Err(Error::EmptyText {
                what: "the prompt".to_string(),
                remedy: "give some text, or None to caption without a prompt",
            });
        }
        self.prompt_inputs(batch, &vec![prompt; batch])
    }

    /// The processor's output for one raw prompt per image.
    fn prompt_inputs<S: AsRef<str>>(
        &self,
        images: usize,
        prompts: &[S],
    ) -> Result<BatchEncoding, Error> {
        if prompts.len() != images {
            return Err(Error::bad_input(format!(
                "{} prompts for {images} images: give one prompt per image",
                prompts.len(),
            )));
        }
        let image_token = &self.processor.tokenizer().special_tokens().image.content;
        for (index, prompt) in prompts.iter().enumerate() {
            let prompt = prompt.as_ref();
            if prompt.trim().is_empty() {
                return Err(Error::EmptyText {
                    what: format!("prompt {index}"),
                    remedy: "give some text, or caption without a prompt",
                });
            }
            if prompt.contains(image_token.as_str()) {
                return Err(Error::ImageTokenInPrompt {
                    index,
                    token: image_token.clone(),
                });
            }
        }
        let legacy = self.model.config.image_token_index.is_none();
        let inputs = if legacy {
            // Configs without `<image>` tokens: the model puts the queries in front of the text itself.
            self.processor
                .tokenizer()
                .encode_batch(prompts, &EncodeOptions::default())?
        } else {
            self.processor
                .encode_prompts(prompts, &EncodeOptions::default())?
        };
        let queries = if legacy {
            0
        } else {
            self.processor.num_query_tokens()
        };
        self.check_lengths(&inputs, prompts, queries)?;
        Ok(inputs)
    }

    /// The length limits of a prompt: T5's tokenizer `model_max_length` for the text (transformers warns past
    /// it; T5's relative positions have no hard end, but its memory grows with the square of the length),
    /// OPT's position table for the prompt and the new tokens.
    fn check_lengths<S: AsRef<str>>(
        &self,
        inputs: &BatchEncoding,
        prompts: &[S],
        image_tokens: usize,
    ) -> Result<(), Error> {
        match &self.model.language_model {
            crate::LanguageModel::T5(_) => {
                self.check_model_max_length(inputs, prompts, image_tokens, "prompt")
            }
            crate::LanguageModel::Opt(m) => {
                let len = inputs.input_ids.first().map_or(0, Vec::len);
                let queries = self.model.config.num_query_tokens();
                let positions = if self.model.config.image_token_index.is_none() {
                    len + queries
                } else {
                    len
                };
                self.generation
                    .new_tokens_for(positions, Some(m.config.max_position_embeddings))?;
                Ok(())
            }
        }
    }

    /// T5: the text of every row (special tokens included, the `image_tokens` first tokens not) within the
    /// tokenizer's `model_max_length`.
    fn check_model_max_length<S: AsRef<str>>(
        &self,
        inputs: &BatchEncoding,
        texts: &[S],
        image_tokens: usize,
        what: &'static str,
    ) -> Result<(), Error> {
        let tokenizer = self.processor.tokenizer();
        let Some(limit) = tokenizer.config().model_max_length else {
            return Ok(());
        };
        for (index, mask) in inputs.attention_mask.iter().enumerate() {
            let length = mask.iter().filter(|&&m| m != 0).count() - image_tokens;
            if length > limit {
                let file = Path::new(tokenizer.name()).parent().map_or_else(
                    || "tokenizer_config.json".into(),
                    |dir| dir.join("tokenizer_config.json").display().to_string(),
                );
                return Err(Error::TooLong {
                    what,
                    index,
                    start: start_of(texts[index].as_ref()),
                    length,
                    limit,
                    key: "model_max_length",
                    file,
                });
            }
        }
        Ok(())
    }

    /// Asks one question per image with the VQA template `Question: {q} Answer:`.
    ///
    /// # Errors
    /// A count of questions other than the count of images; an empty question ([`Error::EmptyText`] naming
    /// it); as [`Self::generate`].
    pub fn ask<S: AsRef<str>>(
        &self,
        images: &ImageFeatures<B>,
        questions: &[S],
    ) -> Result<Vec<Generated>, Error> {
        if let Some(index) = questions.iter().position(|q| q.as_ref().trim().is_empty()) {
            return Err(Error::EmptyText {
                what: format!("question {index}"),
                remedy: "ask something about the image",
            });
        }
        let prompts: Vec<String> = questions.iter().map(|q| vqa_prompt(q.as_ref())).collect();
        self.generate(images, &prompts)
    }

    /// Generates from one raw prompt per image (no template).
    ///
    /// # Errors
    /// A count of prompts other than the count of images, an empty prompt list, an empty prompt; a prompt
    /// holding the image token `<image>` ([`Error::ImageTokenInPrompt`]: the processor puts the image tokens
    /// before the text itself); a prompt over the model's length ([`Error::TooLong`] for T5's tokenizer
    /// `model_max_length`; [`blip2_generation::Error::PromptTooLong`] and
    /// [`blip2_generation::Error::TooManyNewTokens`] for OPT's position table, which must also hold
    /// `max_new_tokens`); tokenizing, generating.
    pub fn generate<S: AsRef<str>>(
        &self,
        images: &ImageFeatures<B>,
        prompts: &[S],
    ) -> Result<Vec<Generated>, Error> {
        let inputs = self.prompt_inputs(images.batch_size(), prompts)?;
        self.generate_encoded(images, inputs)
    }

    /// Starts a conversation about one image (encoded once); each turn's question carries the earlier turns.
    ///
    /// # Errors
    /// Features of more than one image.
    pub fn chat(&self, image: ImageFeatures<B>) -> Result<Chat<'_, B>, Error> {
        if image.batch_size() != 1 {
            return Err(Error::bad_input(format!(
                "a chat is about one image, not {} (use ImageFeatures::select)",
                image.batch_size()
            )));
        }
        Ok(Chat {
            blip2: self,
            image,
            history: Vec::new(),
            forgotten: 0,
        })
    }

    /// The language model's features of texts (HF `get_text_features`: the OPT decoder's or the T5 encoder's
    /// output), `[texts, len, hidden]`, with the mask of the padded batch.
    ///
    /// # Errors
    /// Tokenizing, an empty list; a text over the model's length ([`Error::TooLong`]: T5's tokenizer
    /// `model_max_length`, OPT's position table).
    pub fn text_features<S: AsRef<str>>(
        &self,
        texts: &[S],
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2, Int>), Error> {
        let enc = self
            .processor
            .tokenizer()
            .encode_batch(texts, &EncodeOptions::default())?;
        match &self.model.language_model {
            crate::LanguageModel::T5(_) => self.check_model_max_length(&enc, texts, 0, "text")?,
            crate::LanguageModel::Opt(m) => {
                let limit = m.config.max_position_embeddings;
                let len = enc.input_ids.first().map_or(0, Vec::len);
                if len > limit {
                    // Rows are padded to the longest: name the longest.
                    let (index, length) = enc
                        .attention_mask
                        .iter()
                        .map(|mask| mask.iter().filter(|&&m| m != 0).count())
                        .enumerate()
                        .max_by_key(|&(_, n)| n)
                        .unwrap_or((0, len));
                    return Err(Error::TooLong {
                        what: "text",
                        index,
                        start: start_of(texts[index].as_ref()),
                        length,
                        limit,
                        key: "text_config.max_position_embeddings",
                        file: "config.json".to_string(),
                    });
                }
            }
        }
        let ids = to_tensor::<B>(&enc.input_ids, &self.device)?;
        let mask = to_tensor::<B>(&enc.attention_mask, &self.device)?;
        let features = self.model.get_text_features(ids, Some(mask.clone()))?;
        Ok((features, mask))
    }

    fn generate_encoded(
        &self,
        images: &ImageFeatures<B>,
        inputs: BatchEncoding,
    ) -> Result<Vec<Generated>, Error> {
        let ids = to_tensor::<B>(&inputs.input_ids, &self.device)?;
        let mask = to_tensor::<B>(&inputs.attention_mask, &self.device)?;
        let mut generator = Generator::new(self.generation.clone())?;
        let out = self
            .model
            .generate_with(&mut generator, images, ids, Some(mask))?;
        self.results(&out)
    }

    fn stream_encoded(
        &self,
        image: &ImageFeatures<B>,
        inputs: BatchEncoding,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generated, Error> {
        if image.batch_size() != 1 {
            return Err(Error::bad_input(format!(
                "streaming is for one image, not {} (use ImageFeatures::select)",
                image.batch_size()
            )));
        }
        if self.generation.num_return_sequences > 1 {
            return Err(Error::bad_input(
                "streaming gives one sequence: set num_return_sequences to 1",
            ));
        }
        let ids = to_tensor::<B>(&inputs.input_ids, &self.device)?;
        let mask = to_tensor::<B>(&inputs.attention_mask, &self.device)?;
        let mut generator = Generator::new(self.generation.clone())?;
        let mut stream = self.model.stream(&mut generator, image, ids, Some(mask))?;
        let eos = &self.generation.eos_token_id;
        let (mut new, mut shown) = (Vec::<i64>::new(), 0usize);
        for step in stream.by_ref() {
            let Some(token) = step?.tokens[0] else {
                break;
            };
            if eos.contains(&token) {
                continue;
            }
            new.push(i64::from(token));
            let text = self.processor.decode(&new, true)?;
            // What `results` will return: trimmed. Hold back trailing whitespace and an unfinished UTF-8
            // sequence (decoded as U+FFFD) until the next token settles them.
            let text = text.trim_start();
            let ready = text.trim_end().trim_end_matches('\u{FFFD}');
            if ready.len() > shown
                && text.is_char_boundary(shown)
                && ready.starts_with(&text[..shown])
            {
                on_text(&ready[shown..]);
                shown = ready.len();
            }
        }
        let out = stream.finish()?;
        let mut result = self.results(&out)?.remove(0);
        if result.text.len() > shown && result.text.is_char_boundary(shown) {
            on_text(&result.text[shown..]);
        }
        result.score = None;
        Ok(result)
    }

    /// Turns generated rows into text and ids.
    ///
    /// # Errors
    /// Decoding.
    pub fn results(&self, out: &GenerationOutput) -> Result<Vec<Generated>, Error> {
        let eos = &self.generation.eos_token_id;
        (0..out.sequences.len())
            .map(|i| {
                let new = out.new_tokens(i);
                let end = new
                    .iter()
                    .position(|t| eos.contains(t))
                    .unwrap_or(new.len());
                let token_ids = new[..end].to_vec();
                let ids: Vec<i64> = token_ids.iter().map(|&t| i64::from(t)).collect();
                let text = self.processor.decode(&ids, true)?.trim().to_string();
                Ok(Generated {
                    text,
                    token_ids,
                    sequence: out.sequences[i].clone(),
                    score: out.sequences_scores.as_ref().map(|s| s[i]),
                })
            })
            .collect()
    }
}

/// A conversation about one image: every question is asked with the earlier questions and answers before it
/// (`Question: q Answer: a. ... Question: {new} Answer:`, LAVIS's format).
///
/// When the earlier turns and the new question no longer fit the language model (OPT's position table with
/// room for `max_new_tokens`, T5's tokenizer `model_max_length`), the oldest turns are left out until they
/// do, and forgotten once the answer comes; [`Chat::forgotten`] says how many (a short-context model would
/// otherwise fail on every question after the first few).
#[derive(Debug)]
pub struct Chat<'a, B: Backend> {
    blip2: &'a Blip2<B>,
    image: ImageFeatures<B>,
    history: Vec<(String, String)>,
    forgotten: usize,
}

impl<B: Backend> Chat<'_, B> {
    /// The prompt for `question` with as many of the latest turns as fit, and how many oldest turns were left
    /// out.
    fn fit(&self, question: &str) -> Result<(String, usize), Error> {
        if question.trim().is_empty() {
            return Err(Error::EmptyText {
                what: "the question".to_string(),
                remedy: "ask something about the image",
            });
        }
        let mut skip = 0;
        loop {
            let prompt = vqa_prompt_with_context(&self.history[skip..], question);
            match self.blip2.prompt_inputs(1, &[prompt.as_str()]) {
                Ok(_) => return Ok((prompt, skip)),
                Err(e) if is_too_long(&e) && skip < self.history.len() => skip += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn remember(&mut self, question: &str, answer: &Generated, skip: usize) {
        self.history.drain(..skip);
        self.forgotten = skip;
        self.history
            .push((question.to_string(), answer.text.clone()));
    }

    /// Asks the next question; the answer joins the history. The oldest turns are forgotten when the history
    /// and the question do not fit the model (see [`Chat::forgotten`]).
    ///
    /// # Errors
    /// An empty question; a question that does not fit the model even alone; tokenizing, generating. The
    /// history is unchanged after an error.
    pub fn ask(&mut self, question: &str) -> Result<Generated, Error> {
        let (prompt, skip) = self.fit(question)?;
        let answer = self.blip2.generate(&self.image, &[prompt])?.remove(0);
        self.remember(question, &answer, skip);
        Ok(answer)
    }

    /// [`Self::ask`], calling `on_text` with each new piece of the answer as it is generated (greedy decoding
    /// or sampling).
    ///
    /// # Errors
    /// As [`Self::ask`], and beam search (which cannot stream).
    pub fn ask_streaming(
        &mut self,
        question: &str,
        on_text: impl FnMut(&str),
    ) -> Result<Generated, Error> {
        let (prompt, skip) = self.fit(question)?;
        let answer = self
            .blip2
            .generate_streaming(&self.image, &prompt, on_text)?;
        self.remember(question, &answer, skip);
        Ok(answer)
    }

    /// How many of the oldest turns the last answered question forgot to fit the model (0 when all fitted).
    pub fn forgotten(&self) -> usize {
        self.forgotten
    }

    /// The questions and answers so far.
    pub fn history(&self) -> &[(String, String)] {
        &self.history
    }

    /// Forgets the history (the image stays encoded).
    pub fn clear(&mut self) {
        self.history.clear();
        self.forgotten = 0;
    }
}
