//! [`Blip2`]: the model with its processor and a generation config, for the common tasks in a line each:
//! captions, questions, multi-turn chat, features.

use std::path::Path;

use blip2_generation::{GenerationConfig, GenerationOutput, Generator};
use blip2_processor::{
    BatchEncoding, Blip2Processor, EncodeOptions, vqa_prompt, vqa_prompt_with_context,
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

impl<B: Backend> Blip2<B> {
    /// Loads a model directory or a hub id (downloaded into the HF cache; see [`crate::hub`]): the model in
    /// `precision`, its processor, and the generation config transformers generates with
    /// ([`Blip2ForConditionalGeneration::generation_config`]: the language model's special tokens, greedy,
    /// 20 new tokens).
    ///
    /// # Errors
    /// Locating or downloading the files, the config, the weights, the processor files.
    pub fn from_pretrained(
        model: impl AsRef<Path>,
        precision: impl Into<Precision>,
        device: &B::Device,
    ) -> Result<Self, Error> {
        let dir = crate::model::locate(model.as_ref())?;
        let model = Blip2ForConditionalGeneration::from_pretrained(&dir, precision, device)?;
        let processor = Blip2Processor::from_model_dir(&dir)?;
        Ok(Self::new(model, processor, device))
    }

    /// From a loaded model and processor.
    pub fn new(
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
    /// An empty batch, preprocessing errors.
    pub fn encode_images(&self, images: &[RgbImage]) -> Result<ImageFeatures<B>, Error> {
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
    /// Tokenizing, generating.
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
        Ok(if self.model.config.image_token_index.is_some() {
            self.processor
                .encode_prompts(prompts, &EncodeOptions::default())?
        } else {
            // Configs without `<image>` tokens: the model puts the queries in front of the text itself.
            self.processor
                .tokenizer()
                .encode_batch(prompts, &EncodeOptions::default())?
        })
    }

    /// Asks one question per image with the VQA template `Question: {q} Answer:`.
    ///
    /// # Errors
    /// A count of questions other than the count of images; tokenizing, generating.
    pub fn ask<S: AsRef<str>>(
        &self,
        images: &ImageFeatures<B>,
        questions: &[S],
    ) -> Result<Vec<Generated>, Error> {
        let prompts: Vec<String> = questions.iter().map(|q| vqa_prompt(q.as_ref())).collect();
        self.generate(images, &prompts)
    }

    /// Generates from one raw prompt per image (no template).
    ///
    /// # Errors
    /// A count of prompts other than the count of images, an empty prompt list; tokenizing, generating.
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
        })
    }

    /// The language model's features of texts (HF `get_text_features`: the OPT decoder's or the T5 encoder's
    /// output), `[texts, len, hidden]`, with the mask of the padded batch.
    ///
    /// # Errors
    /// Tokenizing, an empty list.
    pub fn text_features<S: AsRef<str>>(
        &self,
        texts: &[S],
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2, Int>), Error> {
        let enc = self
            .processor
            .tokenizer()
            .encode_batch(texts, &EncodeOptions::default())?;
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
#[derive(Debug)]
pub struct Chat<'a, B: Backend> {
    blip2: &'a Blip2<B>,
    image: ImageFeatures<B>,
    history: Vec<(String, String)>,
}

impl<B: Backend> Chat<'_, B> {
    /// Asks the next question; the answer joins the history.
    ///
    /// # Errors
    /// An empty question; tokenizing, generating.
    pub fn ask(&mut self, question: &str) -> Result<Generated, Error> {
        if question.trim().is_empty() {
            return Err(Error::bad_input("the question is empty"));
        }
        let prompt = vqa_prompt_with_context(&self.history, question);
        let mut answer = self.blip2.generate(&self.image, &[prompt])?;
        let answer = answer.remove(0);
        self.history
            .push((question.to_string(), answer.text.clone()));
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
        if question.trim().is_empty() {
            return Err(Error::bad_input("the question is empty"));
        }
        let prompt = vqa_prompt_with_context(&self.history, question);
        let answer = self
            .blip2
            .generate_streaming(&self.image, &prompt, on_text)?;
        self.history
            .push((question.to_string(), answer.text.clone()));
        Ok(answer)
    }

    /// The questions and answers so far.
    pub fn history(&self) -> &[(String, String)] {
        &self.history
    }

    /// Forgets the history (the image stays encoded).
    pub fn clear(&mut self) {
        self.history.clear();
    }
}
