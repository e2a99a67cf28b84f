//! [`Blip2ForConditionalGeneration`] (and [`Blip2Model`], the same weights): the ViT, the Q-Former, the
//! projection into the language model, and OPT or T5 behind one type.

use std::collections::BTreeMap;
use std::path::Path;

use blip2_generation::{GenerationConfig, GenerationOutput, Generator, Prompt};
use blip2_nn::backend::FloatDType;
use blip2_nn::linear_forward;
use blip2_nn::loader::{
    Checkpoint, KeyMap, LoadOptions, LoadReport, SafetensorsWriter, expected_keys, load_module,
};
use blip2_opt::{LogitsFor, OptForCausalLm, OptInput};
use blip2_qformer::{QFormer, QFormerInput, QFormerOutput, qformer_key_map};
use blip2_t5::{T5ForConditionalGeneration, T5Input, t5_key_map};
use blip2_vision::{Blip2VisionModel, Blip2VisionOutput, VISION_PREFIX};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, LinearLayout};
use burn::prelude::{Backend, Int, Tensor};
use burn::tensor::TensorData;

use crate::loading::{incompatible, open_pretrained, part, union};
use crate::{Blip2Config, Error, Precision, TextConfig};

/// The language model of a BLIP-2 checkpoint.
// One value per model: the variants' sizes (a few hundred bytes of handles) do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum LanguageModel<B: Backend> {
    /// OPT (decoder-only).
    Opt(OptForCausalLm<B>),
    /// T5 / Flan-T5 (encoder-decoder).
    T5(T5ForConditionalGeneration<B>),
}

impl<B: Backend> LanguageModel<B> {
    /// The token embeddings (`[batch, len]` -> `[batch, len, hidden]`), in the model's dtype.
    pub fn embed(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        match self {
            Self::Opt(m) => m.embed_tokens(input_ids),
            Self::T5(m) => m.embed(input_ids),
        }
    }

    /// Whether this is an encoder-decoder model.
    pub fn is_encoder_decoder(&self) -> bool {
        matches!(self, Self::T5(_))
    }
}

/// HF `Blip2ForConditionalGeneration`: captioning, VQA and chat, the logits and the loss for training.
///
/// Images are encoded once into [`ImageFeatures`] (vision tower, Q-Former, projection), which a caller can keep
/// and ask many prompts against. A prompt holds `num_query_tokens` `<image>` tokens (the processor puts them
/// before the text); the model writes the projected queries over their embeddings. For configs without
/// `image_token_index` the queries are put in front of the text embeddings instead (the layout of older
/// transformers releases).
#[derive(Module, Debug)]
pub struct Blip2ForConditionalGeneration<B: Backend> {
    /// `vision_model.*`.
    pub vision_model: Blip2VisionModel<B>,
    /// `query_tokens` and `qformer.*`.
    pub qformer: QFormer<B>,
    /// `language_projection.*`: Q-Former width -> language model width.
    pub language_projection: Linear<B>,
    /// `language_model.*`.
    pub language_model: LanguageModel<B>,
    /// The config it was built from.
    #[module(skip)]
    pub config: Blip2Config,
    /// The dtype of each part.
    #[module(skip)]
    pub precision: Precision,
}

/// HF `Blip2Model`: the same weights and parts as [`Blip2ForConditionalGeneration`], used for its feature
/// methods ([`Blip2ForConditionalGeneration::get_image_features`],
/// [`Blip2ForConditionalGeneration::get_qformer_features`], [`Blip2ForConditionalGeneration::get_text_features`]).
pub type Blip2Model<B> = Blip2ForConditionalGeneration<B>;

/// An encoded batch of images: what every prompt about them reuses.
#[derive(Debug, Clone)]
pub struct ImageFeatures<B: Backend> {
    /// The vision tower's output (`last_hidden_state` `[batch, patches + 1, vision hidden]`, `pooler_output`).
    pub vision: Blip2VisionOutput<B>,
    /// The Q-Former's output on the queries (`last_hidden_state` `[batch, num_query_tokens, qformer hidden]`).
    pub qformer: QFormerOutput<B>,
    /// The projected queries, the language model's soft prompt: `[batch, num_query_tokens, lm hidden]`.
    pub language_inputs: Tensor<B, 3>,
}

impl<B: Backend> ImageFeatures<B> {
    /// Images in the batch.
    pub fn batch_size(&self) -> usize {
        self.language_inputs.dims()[0]
    }

    /// Keeps images `rows` (in that order; indices may repeat, e.g. one image for several prompts).
    ///
    /// # Errors
    /// [`Error::NoSuchRow`] for a row past the batch; [`Error::BadInput`] for no rows.
    pub fn select(&self, rows: &[usize]) -> Result<Self, Error> {
        let batch = self.batch_size();
        if let Some(&row) = rows.iter().find(|&&r| r >= batch) {
            return Err(Error::NoSuchRow { row, batch });
        }
        if rows.is_empty() {
            return Err(Error::bad_input("no rows to select: give at least one"));
        }
        let device = self.language_inputs.device();
        let data: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(data, [rows.len()]), &device);
        let pick3 = |t: &Tensor<B, 3>| t.clone().select(0, index.clone());
        let pick2 = |t: &Tensor<B, 2>| t.clone().select(0, index.clone());
        Ok(Self {
            vision: Blip2VisionOutput {
                last_hidden_state: pick3(&self.vision.last_hidden_state),
                pooler_output: pick2(&self.vision.pooler_output),
                hidden_states: None,
            },
            qformer: QFormerOutput {
                last_hidden_state: pick3(&self.qformer.last_hidden_state),
                pooler_output: pick2(&self.qformer.pooler_output),
                hidden_states: None,
            },
            language_inputs: pick3(&self.language_inputs),
        })
    }
}

/// Logits, and the loss when labels were given.
#[derive(Debug, Clone)]
pub struct Blip2Output<B: Backend> {
    /// `[batch, len, vocab]`: over the prompt positions (OPT) or the decoder positions (T5).
    pub logits: Tensor<B, 3>,
    /// HF's loss (mean over the labels that are not -100), `[1]`.
    pub loss: Option<Tensor<B, 1>>,
}

/// What the language model reads: embeddings with the images written in, and their mask.
#[derive(Debug, Clone)]
pub struct LanguageInputs<B: Backend> {
    /// `[batch, len, lm hidden]`.
    pub inputs_embeds: Tensor<B, 3>,
    /// `[batch, len]`.
    pub attention_mask: Tensor<B, 2, Int>,
    /// The ids behind the embeddings when every position has one (the `<image>` layout); what a decoder-only
    /// model's generation returns and what its repetition processors see.
    pub input_ids: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> Blip2ForConditionalGeneration<B> {
    /// A fresh model (parameters lazy: nothing is allocated until loaded).
    ///
    /// # Errors
    /// A part's config errors.
    pub fn init(
        config: &Blip2Config,
        precision: Precision,
        device: &B::Device,
    ) -> Result<Self, Error> {
        let vision_model = config.vision_config.init::<B>(device)?;
        let qformer = config.qformer.init::<B>(device)?;
        let language_model = match &config.text_config {
            TextConfig::Opt(c) => LanguageModel::Opt(c.init::<B>(device)?),
            TextConfig::T5(c) => LanguageModel::T5(c.init::<B>(device)?),
        };
        Ok(Self {
            vision_model,
            qformer,
            language_projection: projection(config, device),
            language_model,
            config: config.clone(),
            precision,
        })
    }

    /// Loads a BLIP-2 model directory (`config.json` and the safetensors weights) or a hub id such as
    /// `Salesforce/blip2-opt-2.7b` (downloaded into the HF cache on first use, see [`crate::hub`]), each part in the dtype
    /// `precision` gives it (a `FloatDType` means [`Precision::from`]). Strict over the whole checkpoint: a
    /// missing, unexpected or mis-shaped tensor anywhere is an error listing every one.
    ///
    /// # Errors
    /// Reading the config or the weights, a part's load errors, and [`blip2_nn::Error::Incompatible`] for keys
    /// no part takes.
    pub fn from_pretrained(
        path: impl AsRef<Path>,
        precision: impl Into<Precision>,
        device: &B::Device,
    ) -> Result<Self, Error> {
        let (config, checkpoint) = open_pretrained(path.as_ref())?;
        Ok(Self::load(&config, &checkpoint, precision.into(), device)?.0)
    }

    /// Loads from an open checkpoint; returns the combined report of the parts.
    ///
    /// # Errors
    /// As [`Self::from_pretrained`], without the config part.
    pub fn load(
        config: &Blip2Config,
        checkpoint: &Checkpoint,
        precision: Precision,
        device: &B::Device,
    ) -> Result<(Self, LoadReport), Error> {
        precision.ensure_supported::<B>(device)?;
        let (vision_model, vision) = part(Blip2VisionModel::load(
            &config.vision_config,
            checkpoint,
            precision.vision_format(),
            device,
        ))?;
        let (qformer, qformer_report) = part(QFormer::load(
            &config.qformer,
            checkpoint,
            precision.qformer,
            device,
        ))?;
        let (language_projection, projection) = part(load_module(
            projection(config, device),
            checkpoint,
            &LoadOptions::new(KeyMap::under("language_projection"))
                .with_dtype(precision.language_model),
            device,
        ))?;
        let dtype = precision.language_model_format();
        let (language_model, lm) = match &config.text_config {
            TextConfig::Opt(c) => {
                let (m, r) = part(OptForCausalLm::load(c, checkpoint, dtype, device))?;
                (m.map(LanguageModel::Opt), r)
            }
            TextConfig::T5(c) => {
                let (m, r) = part(T5ForConditionalGeneration::load(
                    c, checkpoint, dtype, device,
                ))?;
                (m.map(LanguageModel::T5), r)
            }
        };
        let report = union(checkpoint, [vision, qformer_report, projection, lm], true)?;
        match (vision_model, qformer, language_projection, language_model) {
            (
                Some(vision_model),
                Some(qformer),
                Some(language_projection),
                Some(language_model),
            ) => {
                let model = Self {
                    vision_model,
                    qformer,
                    language_projection,
                    language_model,
                    config: config.clone(),
                    precision,
                };
                Ok((model, report))
            }
            _ => Err(incompatible(report)),
        }
    }

    /// Every checkpoint key this model reads, with its shape (PyTorch layout): what a matching
    /// `model.safetensors` holds, tied copies aside (OPT's `lm_head.weight`, T5's per-stack `embed_tokens`).
    pub fn expected_keys(&self) -> BTreeMap<String, Vec<usize>> {
        let mut keys = expected_keys(&self.vision_model, &KeyMap::under(VISION_PREFIX));
        keys.extend(expected_keys(&self.qformer, &qformer_key_map()));
        keys.extend(expected_keys(
            &self.language_projection,
            &KeyMap::under("language_projection"),
        ));
        match &self.language_model {
            LanguageModel::Opt(m) => {
                keys.extend(expected_keys(m, &KeyMap::under("language_model")))
            }
            LanguageModel::T5(m) => keys.extend(expected_keys(m, &t5_key_map("language_model."))),
        }
        keys
    }

    /// Writes every parameter to the safetensors file `path` (conventionally `model.safetensors` in a model
    /// directory) under the hub checkpoint's keys and layouts, in `dtype`: what `from_pretrained` here and in
    /// transformers reads back to the same outputs, next to the directory's `config.json`. Tied heads are not
    /// written (OPT's `lm_head.weight`, T5's `embed_tokens`); a head of its own is (Flan-T5's `lm_head.weight`).
    ///
    /// # Errors
    /// [`blip2_nn::Error::Io`] naming the file.
    pub fn save_weights(&self, path: impl AsRef<Path>, dtype: FloatDType) -> Result<(), Error> {
        let mut writer = SafetensorsWriter::new();
        writer
            .add(&self.vision_model, &KeyMap::under(VISION_PREFIX))
            .add(&self.qformer, &qformer_key_map())
            .add(
                &self.language_projection,
                &KeyMap::under("language_projection"),
            );
        match &self.language_model {
            LanguageModel::Opt(m) => writer.add(m, &KeyMap::under("language_model")),
            LanguageModel::T5(m) => writer.add(m, &t5_key_map("language_model.")),
        };
        let metadata = BTreeMap::from([(
            "producer".to_string(),
            format!("blip2 {}", env!("CARGO_PKG_VERSION")),
        )]);
        Ok(writer.write(path, dtype, &metadata)?)
    }

    /// The generation config transformers uses for this model: the language model's special tokens (from
    /// `text_config`, not the checkpoint's `generation_config.json`, which transformers does not read here);
    /// override fields on it.
    pub fn generation_config(&self) -> GenerationConfig {
        self.config.text_config.generation_config()
    }

    /// HF `get_image_features`: the vision tower's output.
    ///
    /// # Errors
    /// Pixel values the tower cannot take.
    pub fn get_image_features(
        &self,
        pixel_values: Tensor<B, 4>,
        interpolate_pos_encoding: bool,
    ) -> Result<Blip2VisionOutput<B>, Error> {
        let pixel_values = pixel_values.cast(self.precision.vision.dtype());
        Ok(self
            .vision_model
            .try_forward(pixel_values, interpolate_pos_encoding)?)
    }

    /// HF `get_qformer_features`: the Q-Former's output on the queries reading the images (in the Q-Former's
    /// dtype).
    ///
    /// # Errors
    /// Pixel values the tower cannot take.
    pub fn get_qformer_features(
        &self,
        pixel_values: Tensor<B, 4>,
        interpolate_pos_encoding: bool,
    ) -> Result<QFormerOutput<B>, Error> {
        let vision = self.get_image_features(pixel_values, interpolate_pos_encoding)?;
        Ok(self.qformer_on(&vision))
    }

    fn qformer_on(&self, vision: &Blip2VisionOutput<B>) -> QFormerOutput<B> {
        let image = vision
            .last_hidden_state
            .clone()
            .cast(self.precision.qformer.dtype());
        self.qformer.forward(QFormerInput::Image(image), false)
    }

    /// Vision tower, Q-Former and projection: what every prompt about these images reuses.
    ///
    /// # Errors
    /// Pixel values the tower cannot take.
    pub fn encode_images(
        &self,
        pixel_values: Tensor<B, 4>,
        interpolate_pos_encoding: bool,
    ) -> Result<ImageFeatures<B>, Error> {
        let vision = self.get_image_features(pixel_values, interpolate_pos_encoding)?;
        let qformer = self.qformer_on(&vision);
        // transformers casts the Q-Former's output to the vision dtype, then projects in the model dtype.
        let queries = qformer
            .last_hidden_state
            .clone()
            .cast(self.precision.vision.dtype())
            .cast(self.precision.language_model.dtype());
        let language_inputs = linear_forward(&self.language_projection, queries);
        Ok(ImageFeatures {
            vision,
            qformer,
            language_inputs,
        })
    }

    /// HF `get_text_features`: the OPT decoder's output, or the T5 encoder's, on text alone.
    ///
    /// # Errors
    /// Ids or a mask the language model cannot take.
    pub fn get_text_features(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<Tensor<B, 3>, Error> {
        match &self.language_model {
            LanguageModel::Opt(m) => {
                let input = OptInput::Ids(input_ids);
                m.check(&input, attention_mask.as_ref(), None)?;
                Ok(m.decode(input, attention_mask, None))
            }
            LanguageModel::T5(m) => {
                let input = T5Input::Ids(input_ids);
                m.check_encode(&input, attention_mask.as_ref())?;
                Ok(m.encode(input, attention_mask))
            }
        }
    }

    /// The language model's inputs: the prompt's embeddings with the images written over the `<image>` tokens
    /// (or, without `image_token_index`, the images put in front), and the mask.
    ///
    /// # Errors
    /// A batch size that differs from the images', a row without exactly `num_query_tokens` `<image>` tokens, a
    /// mask of another shape, ids outside the vocabulary.
    pub fn language_inputs(
        &self,
        images: &ImageFeatures<B>,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<LanguageInputs<B>, Error> {
        let [batch, len] = input_ids.dims();
        let device = input_ids.device();
        if batch != images.batch_size() {
            return Err(Error::bad_input(format!(
                "{batch} prompts for {} images: give one prompt per image (ImageFeatures::select repeats images)",
                images.batch_size()
            )));
        }
        if len == 0 {
            return Err(Error::bad_input(
                "the prompt is empty: give at least one token",
            ));
        }
        let mask = match attention_mask {
            Some(mask) if mask.dims() != [batch, len] => {
                return Err(Error::bad_input(format!(
                    "attention_mask is {:?}, input_ids [{batch}, {len}]",
                    mask.dims()
                )));
            }
            Some(mask) => mask,
            None => Tensor::ones([batch, len], &device),
        };
        let rows: Vec<Vec<i64>> = crate::host::host_rows(input_ids.clone(), "input_ids")?;
        let vocab = self.config.text_config.vocab_size() as i64;
        if let Some(bad) = rows.iter().flatten().find(|&&id| id < 0 || id >= vocab) {
            return Err(Error::bad_input(format!(
                "token id {bad} is outside the language model's vocabulary (0..{vocab})"
            )));
        }
        let queries = images.language_inputs.clone();
        let n = queries.dims()[1];
        let text = self.language_model.embed(input_ids.clone());
        let hidden = text.dims()[2];
        let queries = queries.cast(text.dtype());
        match self.config.image_token_index {
            Some(image_token) => {
                // Row b's k-th `<image>` takes query k of image b (transformers' masked_scatter, row by row).
                let mut index = Vec::with_capacity(batch * len);
                for (b, row) in rows.iter().enumerate() {
                    let mut k = 0;
                    for (i, &id) in row.iter().enumerate() {
                        if id == i64::from(image_token) {
                            index.push((len + k) as i64);
                            k += 1;
                        } else {
                            index.push(i as i64);
                        }
                    }
                    if k != n {
                        return Err(Error::bad_input(format!(
                            "prompt {b} holds {k} <image> tokens (id {image_token}), the model writes {n} queries: \
                             build prompts with the processor, which puts num_query_tokens of them first"
                        )));
                    }
                }
                let index =
                    Tensor::<B, 2, Int>::from_data(TensorData::new(index, [batch, len]), &device)
                        .unsqueeze_dim::<3>(2)
                        .expand([batch, len, hidden]);
                let inputs_embeds = Tensor::cat(vec![text, queries], 1).gather(1, index);
                Ok(LanguageInputs {
                    inputs_embeds,
                    attention_mask: mask,
                    input_ids: Some(input_ids),
                })
            }
            None => {
                let ones = Tensor::<B, 2, Int>::ones([batch, n], &device);
                Ok(LanguageInputs {
                    inputs_embeds: Tensor::cat(vec![queries, text], 1),
                    attention_mask: Tensor::cat(vec![ones, mask], 1),
                    input_ids: None,
                })
            }
        }
    }

    /// HF `forward`: the logits over the prompt (OPT) or over the decoder positions (T5), and with `labels`
    /// the loss. OPT's labels cover the prompt (`-100` at `<image>` and padding positions); T5's are the target
    /// text, shifted right into the decoder's input unless `decoder_input_ids` are given.
    ///
    /// # Errors
    /// As [`Self::language_inputs`], and a T5 call with neither labels nor decoder ids.
    pub fn forward(
        &self,
        images: &ImageFeatures<B>,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        decoder_input_ids: Option<Tensor<B, 2, Int>>,
        labels: Option<Tensor<B, 2, Int>>,
    ) -> Result<Blip2Output<B>, Error> {
        let inputs = self.language_inputs(images, input_ids, attention_mask)?;
        match &self.language_model {
            LanguageModel::Opt(m) => {
                let logits = m.forward(
                    OptInput::Embeds(inputs.inputs_embeds),
                    Some(inputs.attention_mask),
                    None,
                    LogitsFor::All,
                );
                let labels = match (labels, self.config.image_token_index) {
                    (Some(labels), None) => {
                        // The queries come first in the legacy layout: they predict nothing.
                        let [batch, _] = labels.dims();
                        let n = self.config.num_query_tokens();
                        let ignore = Tensor::<B, 2, Int>::full([batch, n], -100, &labels.device());
                        Some(Tensor::cat(vec![ignore, labels], 1))
                    }
                    (labels, _) => labels,
                };
                let loss = labels.map(|l| m.loss(logits.clone(), l));
                Ok(Blip2Output { logits, loss })
            }
            LanguageModel::T5(m) => {
                let decoder_input_ids = match (decoder_input_ids, &labels) {
                    (Some(ids), _) => ids,
                    (None, Some(labels)) => m.shift_right(labels.clone()),
                    (None, None) => {
                        return Err(Error::bad_input(
                            "T5 needs labels or decoder_input_ids for the decoder",
                        ));
                    }
                };
                let encoder = m.encode(
                    T5Input::Embeds(inputs.inputs_embeds),
                    Some(inputs.attention_mask.clone()),
                );
                let logits = m.decode(
                    decoder_input_ids,
                    encoder,
                    Some(inputs.attention_mask),
                    None,
                    blip2_t5::LogitsFor::All,
                );
                let loss = labels.map(|l| m.loss(logits.clone(), l));
                Ok(Blip2Output { logits, loss })
            }
        }
    }

    /// Generates from the images and the prompt with every option of [`GenerationConfig`]; start from
    /// [`Self::generation_config`] and override fields. Decoder-only models return the prompt's ids followed
    /// by the new ones (transformers 5.x); T5 returns the decoder start token followed by the new ones.
    ///
    /// # Errors
    /// As [`Self::language_inputs`], and generation errors.
    pub fn generate(
        &self,
        images: &ImageFeatures<B>,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        config: GenerationConfig,
    ) -> Result<GenerationOutput, Error> {
        let mut generator = Generator::new(config)?;
        self.generate_with(&mut generator, images, input_ids, attention_mask)
    }

    /// [`Self::generate`] with a prepared [`Generator`] (a caller's logits processors and stopping criteria).
    ///
    /// # Errors
    /// As [`Self::generate`].
    pub fn generate_with(
        &self,
        generator: &mut Generator,
        images: &ImageFeatures<B>,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<GenerationOutput, Error> {
        let prompt = self.prompt(images, input_ids, attention_mask)?;
        Ok(match &self.language_model {
            LanguageModel::Opt(m) => generator.generate(m, prompt)?,
            LanguageModel::T5(m) => generator.generate_seq2seq(m, prompt)?,
        })
    }

    /// Greedy decoding or sampling, one step per iteration (for streaming text).
    ///
    /// # Errors
    /// As [`Self::generate`], and beam search (which cannot stream).
    pub fn stream<'a>(
        &'a self,
        generator: &'a mut Generator,
        images: &ImageFeatures<B>,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<blip2_generation::TokenStream<'a, B>, Error> {
        let prompt = self.prompt(images, input_ids, attention_mask)?;
        Ok(match &self.language_model {
            LanguageModel::Opt(m) => generator.stream(m, prompt)?,
            LanguageModel::T5(m) => generator.stream_seq2seq(m, prompt)?,
        })
    }

    fn prompt(
        &self,
        images: &ImageFeatures<B>,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<Prompt<B>, Error> {
        let inputs = self.language_inputs(images, input_ids, attention_mask)?;
        let mut prompt =
            Prompt::embeds(inputs.inputs_embeds).with_attention_mask(inputs.attention_mask);
        if !self.language_model.is_encoder_decoder()
            && let Some(ids) = inputs.input_ids
        {
            prompt = prompt.with_input_ids(ids);
        }
        Ok(prompt)
    }

    /// Casts every part to the dtypes of `precision` (parameters are cast on the device), and quantizes the
    /// `Linear` weights of the parts `precision.int8` names (`blip2_nn::quantize_linears`). For a model read
    /// from disk, loading in the wanted precision never holds the float weights of a quantized part.
    ///
    /// # Errors
    /// A dtype the backend does not support.
    pub fn with_precision(self, precision: Precision, device: &B::Device) -> Result<Self, Error> {
        use blip2_nn::backend::cast_module;
        let vision_model = cast_module(self.vision_model, precision.vision, device)?;
        let language_model = cast_module(self.language_model, precision.language_model, device)?;
        Ok(Self {
            vision_model: if precision.int8.vision {
                blip2_nn::quantize_linears(vision_model, precision.int8.group).0
            } else {
                vision_model
            },
            qformer: cast_module(self.qformer, precision.qformer, device)?,
            language_projection: cast_module(
                self.language_projection,
                precision.language_model,
                device,
            )?,
            language_model: if precision.int8.language_model {
                // OPT's tied head in int8 too, and the lookups reading it in place of the float table, as
                // loading in int8 does (`OptForCausalLm::load`).
                let (language_model, tied) = match language_model {
                    LanguageModel::Opt(opt)
                        if opt.lm_head.is_none()
                            && blip2_nn::q8_group_for(
                                opt.config.vocab_size,
                                precision.int8.group,
                            )
                            .is_some() =>
                    {
                        (LanguageModel::Opt(opt.untie_head()), true)
                    }
                    other => (other, false),
                };
                match blip2_nn::quantize_linears(language_model, precision.int8.group).0 {
                    LanguageModel::Opt(opt) if tied => {
                        LanguageModel::Opt(opt.embeddings_from_head())
                    }
                    other => other,
                }
            } else {
                language_model
            },
            config: self.config,
            precision,
        })
    }
}

/// `language_projection`: Q-Former width -> the language model's embedding width (lazy).
fn projection<B: Backend>(config: &Blip2Config, device: &B::Device) -> Linear<B> {
    LinearConfig::new(
        config.qformer.qformer.hidden_size,
        config.text_config.hidden_size(),
    )
    .with_layout(LinearLayout::Col)
    .init(device)
}
