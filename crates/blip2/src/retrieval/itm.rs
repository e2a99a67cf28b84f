//! HF `Blip2ForImageTextRetrieval`: matching (ITM) and contrast (ITC), with images and texts embedded once.

use std::path::Path;

use blip2_nn::linear_forward;
use blip2_nn::loader::{Checkpoint, LoadReport};
use blip2_qformer::{QFormer, QFormerInput, QFormerOutput};
use blip2_vision::{Blip2VisionModel, Blip2VisionOutput};
use burn::module::Module;
use burn::nn::Linear;
use burn::prelude::{Backend, Int, Tensor};
use burn::tensor::TensorData;

use crate::host::host_rows;
use crate::loading::{incompatible, open_pretrained, part, union};
use crate::{Blip2Config, Error, Precision};

use super::{Ids, contrast, head, image_side, load_head, normalize, require_text_tower, text_mask};

/// HF `Blip2ForImageTextRetrieval`: image-text matching (ITM, a binary classifier over an image and a text read
/// together) and image-text contrast (ITC, cosines between separately embedded images and texts).
///
/// [`Self::forward`] is transformers' `forward` on the processor's output. For retrieval over many images and
/// texts, embed each side once ([`Self::encode_images`], [`Self::encode_texts`]), score every pair by contrast
/// ([`EncodedImages::similarity`]), and re-rank chosen pairs with the matching head ([`Self::match_pairs`]),
/// as BLIP-2's retrieval evaluation does.
///
/// ```
/// use blip2::{Blip2ForImageTextRetrieval, Precision};
/// use blip2_nn::backend::DefaultBackend;
/// use blip2_processor::{Blip2Processor, EncodeOptions};
///
/// # let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
/// # let (dir, cat, photo) =
/// #     (format!("{root}/tiny-itm"), format!("{root}/images/rgb_37x29.png"), format!("{root}/images/photo_45x33.jpg"));
/// // `dir`: a model directory or the hub id "Salesforce/blip2-itm-vit-g".
/// let device = Default::default();
/// let model = Blip2ForImageTextRetrieval::<DefaultBackend>::from_pretrained(&dir, Precision::F32, &device)?;
/// let processor = Blip2Processor::from_model_dir(&dir)?;
///
/// let pixels = processor.image_processor().preprocess_files(&[cat, photo])?;
/// let images = model.encode_images(pixels.to_tensor(&device), false)?; // once per image
/// let text = ["a cat", "two dogs", "a red couch"];
/// let text = processor.tokenizer().encode_batch(&text, &EncodeOptions::default())?;
/// let texts = model.encode_texts(
///     text.input_ids_tensor(&device)?,
///     Some(text.attention_mask_tensor(&device)?),
/// )?; // once per text
///
/// let cosines = images.similarity(&texts)?; // ITC: [2 images, 3 texts]
/// assert_eq!(cosines.dims(), [2, 3]);
/// let logits = model.match_pairs(&images, &texts, &[(0, 2), (1, 1)])?; // ITM: [2 pairs, (no match, match)]
/// assert_eq!(logits.dims(), [2, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Module, Debug)]
pub struct Blip2ForImageTextRetrieval<B: Backend> {
    /// `vision_model.*`.
    pub vision_model: Blip2VisionModel<B>,
    /// `query_tokens`, the text tower's `embeddings.*` and `qformer.*`.
    pub qformer: QFormer<B>,
    /// `vision_projection.*`: Q-Former width -> `image_text_hidden_size`.
    pub vision_projection: Linear<B>,
    /// `text_projection.*`: Q-Former width -> `image_text_hidden_size`.
    pub text_projection: Linear<B>,
    /// `itm_head.*`: Q-Former width -> 2 (no match, match).
    pub itm_head: Linear<B>,
    /// The config it was built from.
    #[module(skip)]
    pub config: Blip2Config,
    /// The dtype of each part (the heads take `language_model`'s; see the module docs).
    #[module(skip)]
    pub precision: Precision,
}

/// HF `Blip2ImageTextMatchingModelOutput`: what [`Blip2ForImageTextRetrieval::forward`] returns.
#[derive(Debug, Clone)]
pub struct Blip2ImageTextMatchingModelOutput<B: Backend> {
    /// Matching: the logits `[batch, 2]` (no match, match) of image `b` with text `b`. Contrast: the cosines
    /// `[images, texts]`, each the best over the image's queries (no temperature).
    pub logits_per_image: Tensor<B, 2>,
    /// The transpose of `logits_per_image` (`[2, batch]` for matching, as transformers returns it).
    pub logits_per_text: Tensor<B, 2>,
    /// Contrast only: `normalize(text_projection(CLS row))`, `[texts, image_text_hidden_size]`.
    pub text_embeds: Option<Tensor<B, 2>>,
    /// Contrast only: `normalize(vision_projection(queries))`, `[images, num_query_tokens, image_text_hidden_size]`.
    pub image_embeds: Option<Tensor<B, 3>>,
    /// The Q-Former's output: on `[queries; text]` reading the images (matching), on the text alone (contrast).
    pub text_model_output: QFormerOutput<B>,
    /// The vision tower's output.
    pub vision_model_output: Blip2VisionOutput<B>,
}

/// Images embedded once by [`Blip2ForImageTextRetrieval::encode_images`], to score against any texts.
#[derive(Debug, Clone)]
pub struct EncodedImages<B: Backend> {
    /// The vision tower's output, which image-text matching reads ([`Blip2ForImageTextRetrieval::match_pairs`]).
    /// At ViT-g size that is 257 x 1408 values per image: set it to `None` ([`Self::without_vision`]) to keep
    /// only what contrast needs.
    pub vision: Option<Blip2VisionOutput<B>>,
    /// `normalize(vision_projection(queries))`, `[images, num_query_tokens, image_text_hidden_size]`.
    pub image_embeds: Tensor<B, 3>,
}

/// Texts embedded once by [`Blip2ForImageTextRetrieval::encode_texts`], to score against any images.
#[derive(Debug, Clone)]
pub struct EncodedTexts<B: Backend> {
    /// The text-only ids, `[texts, text_len]` (what image-text matching reads with each image).
    pub input_ids: Tensor<B, 2, Int>,
    /// Their mask (1 = token, 0 = padding), `[texts, text_len]`.
    pub attention_mask: Tensor<B, 2, Int>,
    /// `normalize(text_projection(CLS row))`, `[texts, image_text_hidden_size]`.
    pub text_embeds: Tensor<B, 2>,
}

impl<B: Backend> EncodedImages<B> {
    /// Images encoded.
    pub fn len(&self) -> usize {
        self.image_embeds.dims()[0]
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the vision tower's output: contrast still works, matching then is an error.
    #[must_use]
    pub fn without_vision(self) -> Self {
        Self {
            vision: None,
            ..self
        }
    }

    /// Image-text contrast: for every image and text, the largest cosine between one of the image's query
    /// embeddings and the text embedding (transformers' `logits_per_image`; no temperature).
    ///
    /// # Shapes
    /// `[images, num_query_tokens, dim]` and `[texts, dim]` -> `[images, texts]`
    ///
    /// # Errors
    /// [`Error::BadInput`] for an empty side, or embeddings of different widths (from different models).
    pub fn similarity(&self, texts: &EncodedTexts<B>) -> Result<Tensor<B, 2>, Error> {
        let [images, _, width] = self.image_embeds.dims();
        let [count, text_width] = texts.text_embeds.dims();
        if images == 0 || count == 0 {
            return Err(Error::bad_input(format!(
                "{images} images and {count} texts: give at least one of each"
            )));
        }
        if width != text_width {
            return Err(Error::bad_input(format!(
                "image embeddings are {width} wide, text embeddings {text_width}: encode both with one model"
            )));
        }
        let text = texts.text_embeds.clone().cast(self.image_embeds.dtype());
        Ok(contrast(self.image_embeds.clone(), text))
    }
}

impl<B: Backend> EncodedTexts<B> {
    /// Texts encoded.
    pub fn len(&self) -> usize {
        self.text_embeds.dims()[0]
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<B: Backend> Blip2ForImageTextRetrieval<B> {
    /// A fresh model (parameters lazy: nothing is allocated until loaded).
    ///
    /// # Errors
    /// A part's config errors, and [`Error::UnsupportedConfig`] for a Q-Former without its text tower
    /// (`use_qformer_text_input: false`, the captioning checkpoints).
    pub fn init(
        config: &Blip2Config,
        precision: Precision,
        device: &B::Device,
    ) -> Result<Self, Error> {
        require_text_tower(config)?;
        let width = config.image_text_hidden_size;
        Ok(Self {
            vision_model: config.vision_config.init::<B>(device)?,
            qformer: config.qformer.init::<B>(device)?,
            vision_projection: head(config, width, device),
            text_projection: head(config, width, device),
            itm_head: head(config, 2, device),
            config: config.clone(),
            precision,
        })
    }

    /// Loads a retrieval model directory (`config.json` and the safetensors weights) or hub id
    /// (`Salesforce/blip2-itm-vit-g`, through the HF cache: [`crate::hub`]), each part in the dtype
    /// `precision` gives it (a [`FloatDType`](blip2_nn::backend::FloatDType) means [`Precision::from`]).
    /// Strict over the whole checkpoint: a missing, unexpected or mis-shaped tensor anywhere is an error listing
    /// every one.
    ///
    /// # Errors
    /// Reading the config or the weights, those of [`Self::init`], the parts' load errors, and
    /// [`blip2_nn::Error::Incompatible`] for keys no part takes.
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
        require_text_tower(config)?;
        let (vision_model, vision) = part(Blip2VisionModel::load(
            &config.vision_config,
            checkpoint,
            precision.vision,
            device,
        ))?;
        let (qformer, qformer_report) = part(QFormer::load(
            &config.qformer,
            checkpoint,
            precision.qformer,
            device,
        ))?;
        let width = config.image_text_hidden_size;
        let dtype = precision.language_model;
        let head = |name, out| part(load_head(config, name, out, checkpoint, dtype, device));
        let (vision_projection, vp) = head("vision_projection", width)?;
        let (text_projection, tp) = head("text_projection", width)?;
        let (itm_head, itm) = head("itm_head", 2)?;
        let report = union(checkpoint, [vision, qformer_report, vp, tp, itm], true)?;
        match (
            vision_model,
            qformer,
            vision_projection,
            text_projection,
            itm_head,
        ) {
            (
                Some(vision_model),
                Some(qformer),
                Some(vision_projection),
                Some(text_projection),
                Some(itm_head),
            ) => Ok((
                Self {
                    vision_model,
                    qformer,
                    vision_projection,
                    text_projection,
                    itm_head,
                    config: config.clone(),
                    precision,
                },
                report,
            )),
            _ => Err(incompatible(report)),
        }
    }

    /// transformers' `forward` on the processor's output: `input_ids` (and `attention_mask`) as
    /// [`blip2_processor::Blip2Processor`] makes them, `<image>` tokens first when the config has
    /// `image_token_index` (see [`Self::text_inputs`]). With `use_image_text_matching_head`, image `b` is matched
    /// with text `b` (ITM logits `[batch, 2]`); without, every image is contrasted with every text (cosines
    /// `[images, texts]`).
    ///
    /// # Errors
    /// Those of [`Self::text_inputs`], pixel values the vision tower cannot take, ids the Q-Former cannot take,
    /// and for matching a number of texts other than the number of images.
    pub fn forward(
        &self,
        pixel_values: Tensor<B, 4>,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        use_image_text_matching_head: bool,
    ) -> Result<Blip2ImageTextMatchingModelOutput<B>, Error> {
        let (input_ids, attention_mask) = self.text_inputs(input_ids, attention_mask)?;
        let vision = self.vision(pixel_values, false)?;
        if use_image_text_matching_head {
            let (text_model_output, logits) =
                self.image_text_matching(&vision.last_hidden_state, input_ids, attention_mask)?;
            Ok(Blip2ImageTextMatchingModelOutput {
                logits_per_text: logits.clone().transpose(),
                logits_per_image: logits,
                text_embeds: None,
                image_embeds: None,
                text_model_output,
                vision_model_output: vision,
            })
        } else {
            let image_embeds = self.image_embeds(&vision.last_hidden_state);
            let (text_model_output, text_embeds) = self.text_embeds(input_ids, attention_mask)?;
            let logits = contrast(image_embeds.clone(), text_embeds.clone());
            Ok(Blip2ImageTextMatchingModelOutput {
                logits_per_text: logits.clone().transpose(),
                logits_per_image: logits,
                text_embeds: Some(text_embeds),
                image_embeds: Some(image_embeds),
                text_model_output,
                vision_model_output: vision,
            })
        }
    }

    /// The text part of the processor's output, what the Q-Former's text tower reads. With `image_token_index`
    /// in the config, the processor puts `num_query_tokens` `<image>` tokens before every row: they are
    /// checked (ids, and mask 1) and removed. Without it (older configs), the ids are the text already. A
    /// missing mask means no padding.
    ///
    /// # Shapes
    /// `[batch, len]` -> `[batch, len - num_query_tokens]` (or `[batch, len]`), twice
    ///
    /// # Errors
    /// [`Error::BadInput`] for an empty batch, a mask of another shape, rows that do not start with the
    /// `<image>` tokens, or no text after them.
    pub fn text_inputs(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<(Ids<B>, Ids<B>), Error> {
        let [batch, len] = input_ids.dims();
        let mask = text_mask(&input_ids, attention_mask)?;
        let Some(image_token) = self.config.image_token_index else {
            return Ok((input_ids, mask));
        };
        let n = self.config.num_query_tokens();
        if len <= n {
            return Err(Error::bad_input(format!(
                "input_ids are [{batch}, {len}]: nothing follows the {n} <image> tokens, give a text"
            )));
        }
        let ids: Vec<Vec<i64>> = host_rows(input_ids.clone().narrow(1, 0, n), "input_ids")?;
        if let Some(row) = ids
            .iter()
            .position(|r| r.iter().any(|&id| id != i64::from(image_token)))
        {
            return Err(Error::bad_input(format!(
                "row {row} of input_ids does not start with {n} <image> tokens (id {image_token}): pass the \
                 processor's output here, or text-only ids to encode_texts"
            )));
        }
        let kept: Vec<Vec<i64>> = host_rows(mask.clone().narrow(1, 0, n), "attention_mask")?;
        if let Some(row) = kept.iter().position(|r| r.iter().any(|&m| m != 1)) {
            return Err(Error::bad_input(format!(
                "row {row} of attention_mask masks some of its <image> tokens: the queries are never padding"
            )));
        }
        Ok((input_ids.narrow(1, n, len - n), mask.narrow(1, n, len - n)))
    }

    /// Vision tower, Q-Former on the queries, `vision_projection` and L2 normalisation: the image side of
    /// contrast, kept with the vision tower's output for matching.
    ///
    /// # Errors
    /// Pixel values the vision tower cannot take.
    pub fn encode_images(
        &self,
        pixel_values: Tensor<B, 4>,
        interpolate_pos_encoding: bool,
    ) -> Result<EncodedImages<B>, Error> {
        let vision = self.vision(pixel_values, interpolate_pos_encoding)?;
        let image_embeds = self.image_embeds(&vision.last_hidden_state);
        Ok(EncodedImages {
            vision: Some(vision),
            image_embeds,
        })
    }

    /// The Q-Former's text tower on text alone, `text_projection` of the CLS row, L2 normalisation: the text
    /// side of contrast, kept with the ids for matching. `input_ids` are text-only (the tokenizer's output, or
    /// [`Self::text_inputs`] of the processor's); a missing mask means no padding.
    ///
    /// # Errors
    /// [`Error::BadInput`] for a mask of another shape, and the Q-Former's checks (empty or too long text, ids
    /// outside its vocabulary, which `<image>` is).
    pub fn encode_texts(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<EncodedTexts<B>, Error> {
        let attention_mask = text_mask(&input_ids, attention_mask)?;
        let (_, text_embeds) = self.text_embeds(input_ids.clone(), attention_mask.clone())?;
        Ok(EncodedTexts {
            input_ids,
            attention_mask,
            text_embeds,
        })
    }

    /// Image-text matching of chosen pairs `(image, text)` of encoded images and texts: the Q-Former reads each
    /// text with its image's queries, `itm_head` scores the query rows, and the scores are averaged over the
    /// queries (transformers' `use_image_text_matching_head` path).
    ///
    /// # Shapes
    /// `pairs.len()` pairs -> logits `[pairs, 2]` (no match, match; a softmax gives the probabilities)
    ///
    /// # Errors
    /// [`Error::BadInput`] for no pairs, an index out of range, or images encoded without their vision output.
    pub fn match_pairs(
        &self,
        images: &EncodedImages<B>,
        texts: &EncodedTexts<B>,
        pairs: &[(usize, usize)],
    ) -> Result<Tensor<B, 2>, Error> {
        let Some(vision) = &images.vision else {
            return Err(Error::bad_input(
                "these images were encoded without their vision output (without_vision): matching reads it",
            ));
        };
        if pairs.is_empty() {
            return Err(Error::bad_input("no pairs to match"));
        }
        if let Some((i, t)) = pairs
            .iter()
            .find(|&&(i, t)| i >= images.len() || t >= texts.len())
        {
            return Err(Error::bad_input(format!(
                "pair ({i}, {t}) is out of range: there are {} images and {} texts",
                images.len(),
                texts.len()
            )));
        }
        let index = |rows: Vec<i64>| {
            let n = rows.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &texts.input_ids.device())
        };
        let image_rows = index(pairs.iter().map(|&(i, _)| i as i64).collect());
        let text_rows = index(pairs.iter().map(|&(_, t)| t as i64).collect());
        let image = vision
            .last_hidden_state
            .clone()
            .select(0, image_rows.to_device(&vision.last_hidden_state.device()));
        let input_ids = texts.input_ids.clone().select(0, text_rows.clone());
        let attention_mask = texts.attention_mask.clone().select(0, text_rows);
        let (_, logits) = self.image_text_matching(&image, input_ids, attention_mask)?;
        Ok(logits)
    }

    /// The vision tower in its dtype.
    fn vision(
        &self,
        pixel_values: Tensor<B, 4>,
        interpolate_pos_encoding: bool,
    ) -> Result<Blip2VisionOutput<B>, Error> {
        let pixel_values = pixel_values.cast(self.precision.vision.dtype());
        Ok(self
            .vision_model
            .try_forward(pixel_values, interpolate_pos_encoding)?)
    }

    /// `[images, patches + 1, vision hidden]` -> `[images, num_query_tokens, image_text_hidden_size]`.
    fn image_embeds(&self, image: &Tensor<B, 3>) -> Tensor<B, 3> {
        image_side(
            &self.qformer,
            &self.vision_projection,
            &self.precision,
            image,
        )
    }

    /// The Q-Former on text alone and the normalised projection of its CLS row `[texts, dim]`.
    fn text_embeds(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Result<(QFormerOutput<B>, Tensor<B, 2>), Error> {
        let output = self.qformer.try_forward(
            QFormerInput::Text {
                input_ids,
                attention_mask,
            },
            false,
        )?;
        let cls = output
            .pooler_output
            .clone()
            .cast(self.precision.language_model.dtype()); // [texts, hidden]
        let text_embeds = normalize(linear_forward(&self.text_projection, cls));
        Ok((output, text_embeds))
    }

    /// The Q-Former on `[queries; text]` reading the images, and the ITM logits `[batch, 2]`.
    fn image_text_matching(
        &self,
        image: &Tensor<B, 3>,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Result<(QFormerOutput<B>, Tensor<B, 2>), Error> {
        let (images, texts) = (image.dims()[0], input_ids.dims()[0]);
        if images != texts {
            return Err(Error::bad_input(format!(
                "{images} images but {texts} texts: image-text matching scores image b with text b (match_pairs \
                 scores any pairs)"
            )));
        }
        let output = self.qformer.try_forward(
            QFormerInput::ImageText {
                image: image.clone().cast(self.precision.qformer.dtype()),
                input_ids,
                attention_mask,
            },
            false,
        )?;
        let n = self.qformer.num_query_tokens();
        let queries = output
            .last_hidden_state
            .clone()
            .narrow(1, 0, n) // [batch, num_query_tokens, hidden]: the text rows are not scored
            .cast(self.precision.language_model.dtype());
        let logits = linear_forward(&self.itm_head, queries) // [batch, num_query_tokens, 2]
            .mean_dim(1)
            .squeeze_dim::<2>(1); // [batch, 2]
        Ok((output, logits))
    }
}
