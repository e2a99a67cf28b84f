//! [`Blip2Retrieval`]: a retrieval checkpoint with its processor: image-text matching and contrastive scores,
//! image / text / multimodal features, from image files and strings.

use std::path::Path;

use blip2_processor::{Blip2Processor, EncodeOptions, Limits};
use blip2_qformer::QFormerInput;
use burn::prelude::{Backend, Tensor};
use burn::tensor::activation::softmax;
use image::RgbImage;

use crate::host::host_rows;
use crate::pipeline::to_tensor;
use crate::{Blip2ForImageTextRetrieval, EncodedImages, EncodedTexts, Error, Precision};

/// Scores of images against texts, `[images][texts]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Image-text contrast (ITC): the cosine of the best-matching query with the text, in `[-1, 1]`.
    pub itc: Vec<Vec<f32>>,
    /// Image-text matching (ITM): the probability that the text describes the image (softmax of the ITM head,
    /// "match" column).
    pub itm: Vec<Vec<f32>>,
}

/// A BLIP-2 retrieval model (`Blip2ForImageTextRetrieval`, e.g. `Salesforce/blip2-itm-vit-g`) with its
/// processor.
///
/// ```no_run
/// use blip2::Blip2Retrieval;
/// use blip2_nn::backend::{DefaultBackend, FloatDType};
///
/// let r = Blip2Retrieval::<DefaultBackend>::from_pretrained("Salesforce/blip2-itm-vit-g", FloatDType::F32, &Default::default())?;
/// let images = r.encode_image_files(&["cat.jpg", "dog.jpg"])?;
/// let texts = r.encode_texts(&["a cat on a sofa", "a dog in the snow"])?;
/// let scores = r.scores(&images, &texts)?; // ITC cosines and ITM probabilities, [image][text]
/// println!("{:?}", scores.itm);
/// # Ok::<(), blip2::Error>(())
/// ```
#[derive(Debug)]
pub struct Blip2Retrieval<B: Backend> {
    model: Blip2ForImageTextRetrieval<B>,
    processor: Blip2Processor,
    device: B::Device,
}

impl<B: Backend> Blip2Retrieval<B> {
    /// Loads a retrieval model directory or hub id, and its processor (images held to the default
    /// [`Limits`]).
    ///
    /// # Errors
    /// Locating or downloading the files, the config, the weights, the processor files.
    pub fn from_pretrained(
        model: impl AsRef<Path>,
        precision: impl Into<Precision>,
        device: &B::Device,
    ) -> Result<Self, Error> {
        Self::from_pretrained_with_limits(model, precision, device, Limits::default())
    }

    /// [`Self::from_pretrained`] with other image [`Limits`].
    ///
    /// # Errors
    /// As [`Self::from_pretrained`]; [`blip2_processor::Error::UnsupportedConfig`] naming the processor
    /// config file and `size` when the size every image is resized to is over `limits`.
    pub fn from_pretrained_with_limits(
        model: impl AsRef<Path>,
        precision: impl Into<Precision>,
        device: &B::Device,
        limits: Limits,
    ) -> Result<Self, Error> {
        let dir = blip2_hub::locate(model.as_ref())?;
        let processor = crate::pipeline::processor_with_limits(&dir, limits)?;
        let model = Blip2ForImageTextRetrieval::from_pretrained(&dir, precision, device)?;
        Ok(Self::new(model, processor, device))
    }

    /// From a loaded model and processor.
    pub fn new(
        model: Blip2ForImageTextRetrieval<B>,
        processor: Blip2Processor,
        device: &B::Device,
    ) -> Self {
        Self {
            model,
            processor,
            device: device.clone(),
        }
    }

    /// The model.
    pub fn model(&self) -> &Blip2ForImageTextRetrieval<B> {
        &self.model
    }

    /// The processor.
    pub fn processor(&self) -> &Blip2Processor {
        &self.processor
    }

    /// Preprocesses and encodes images (kept for any number of texts).
    ///
    /// # Errors
    /// An empty batch, an image without pixels, preprocessing errors.
    pub fn encode_images(&self, images: &[RgbImage]) -> Result<EncodedImages<B>, Error> {
        crate::pipeline::check_not_empty(images)?;
        let pixels = self.processor.image_processor().preprocess(images)?;
        self.model
            .encode_images(pixels.to_tensor(&self.device), false)
    }

    /// Decodes, preprocesses and encodes image files.
    ///
    /// # Errors
    /// A file that cannot be read or decoded, named.
    pub fn encode_image_files<P: AsRef<Path>>(
        &self,
        paths: &[P],
    ) -> Result<EncodedImages<B>, Error> {
        let ip = self.processor.image_processor();
        let images: Vec<RgbImage> = paths.iter().map(|p| ip.open(p)).collect::<Result<_, _>>()?;
        self.encode_images(&images)
    }

    /// Tokenizes and encodes texts (kept for any number of images).
    ///
    /// # Errors
    /// An empty list, an empty text ([`Error::EmptyText`]), a text longer than the Q-Former's positions
    /// ([`Error::TooLong`] naming it).
    pub fn encode_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<EncodedTexts<B>, Error> {
        if let Some(index) = texts.iter().position(|t| t.as_ref().trim().is_empty()) {
            return Err(Error::EmptyText {
                what: format!("text {index}"),
                remedy: "give some text to match",
            });
        }
        let enc = self
            .processor
            .tokenizer()
            .encode_batch(texts, &EncodeOptions::default())?;
        let limit = self.model.config.qformer.qformer.max_position_embeddings;
        for (index, mask) in enc.attention_mask.iter().enumerate() {
            let length = mask.iter().filter(|&&m| m != 0).count();
            if length > limit {
                return Err(Error::TooLong {
                    what: "text",
                    index,
                    start: crate::pipeline::start_of(texts[index].as_ref()),
                    length,
                    limit,
                    key: "qformer_config.max_position_embeddings",
                    file: "config.json".to_string(),
                });
            }
        }
        let ids = to_tensor::<B>(&enc.input_ids, &self.device)?;
        let mask = to_tensor::<B>(&enc.attention_mask, &self.device)?;
        self.model.encode_texts(ids, Some(mask))
    }

    /// ITC cosines and ITM probabilities of every image against every text.
    ///
    /// # Errors
    /// Images encoded without their vision output (ITM reads it).
    pub fn scores(
        &self,
        images: &EncodedImages<B>,
        texts: &EncodedTexts<B>,
    ) -> Result<Scores, Error> {
        let itc: Vec<Vec<f32>> = host_rows(images.similarity(texts)?, "scores")?;
        let pairs: Vec<(usize, usize)> = (0..images.len())
            .flat_map(|i| (0..texts.len()).map(move |t| (i, t)))
            .collect();
        let logits = self.model.match_pairs(images, texts, &pairs)?;
        let probs: Vec<Vec<f32>> = host_rows(softmax(logits, 1), "scores")?;
        let itm = probs
            .chunks(texts.len())
            .map(|row| row.iter().map(|p| p[1]).collect())
            .collect();
        Ok(Scores { itc, itm })
    }

    /// Multimodal features: the Q-Former's query rows after reading image `i` together with text `i`
    /// (`[pairs, num_query_tokens, qformer hidden]`), what the ITM head scores.
    ///
    /// # Errors
    /// Counts that differ, images encoded without their vision output.
    pub fn multimodal_features(
        &self,
        images: &EncodedImages<B>,
        texts: &EncodedTexts<B>,
    ) -> Result<Tensor<B, 3>, Error> {
        if images.len() != texts.len() {
            return Err(Error::bad_input(format!(
                "{} images and {} texts: multimodal features pair image i with text i",
                images.len(),
                texts.len()
            )));
        }
        let Some(vision) = &images.vision else {
            return Err(Error::bad_input(
                "these images were encoded without their vision output (without_vision)",
            ));
        };
        let image = vision
            .last_hidden_state
            .clone()
            .cast(self.model.precision.qformer.dtype());
        let out = self.model.qformer.try_forward(
            QFormerInput::ImageText {
                image,
                input_ids: texts.input_ids.clone(),
                attention_mask: texts.attention_mask.clone(),
            },
            false,
        )?;
        let n = self.model.config.num_query_tokens();
        Ok(out.last_hidden_state.narrow(1, 0, n))
    }
}
