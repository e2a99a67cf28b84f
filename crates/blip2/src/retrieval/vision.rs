//! HF `Blip2VisionModelWithProjection`: the image side of contrast alone.

use std::path::Path;

use blip2_nn::loader::{Checkpoint, LoadOptions, LoadReport, load_module};
use blip2_qformer::{QFormer, qformer_key_map};
use blip2_vision::Blip2VisionModel;
use burn::module::Module;
use burn::nn::Linear;
use burn::prelude::{Backend, Tensor};

use crate::loading::{incompatible, open_pretrained, part, union};
use crate::{Blip2Config, Error, Precision};

use super::{head, image_side, load_head, queries_only};

/// HF `Blip2VisionModelWithProjection`: the image side of contrast alone, `normalize(vision_projection(queries))`.
///
/// Loads from a retrieval checkpoint and reads only what it uses: the vision tower, `query_tokens`, the
/// Q-Former without its text tower (the text embeddings and text feed-forwards are neither built nor read; the
/// queries never use them), and `vision_projection`. Every other key is listed in the report's `ignored`, as
/// transformers loads these classes from the same checkpoint, only warning about the unused keys; a missing or
/// mis-shaped tensor is still an error.
#[derive(Module, Debug)]
pub struct Blip2VisionModelWithProjection<B: Backend> {
    /// `vision_model.*`.
    pub vision_model: Blip2VisionModel<B>,
    /// `query_tokens` and `qformer.*` (without the text tower).
    pub qformer: QFormer<B>,
    /// `vision_projection.*`.
    pub vision_projection: Linear<B>,
    /// The config it was built from.
    #[module(skip)]
    pub config: Blip2Config,
    /// The dtype of each part (the projection takes `language_model`'s).
    #[module(skip)]
    pub precision: Precision,
}

/// HF `Blip2VisionModelOutput` (of [`Blip2VisionModelWithProjection`]; not the vision tower's
/// [`Blip2VisionOutput`]).
#[derive(Debug, Clone)]
pub struct Blip2VisionModelOutput<B: Backend> {
    /// `normalize(vision_projection(queries))`, `[batch, num_query_tokens, image_text_hidden_size]`.
    pub image_embeds: Tensor<B, 3>,
    /// The vision tower's `last_hidden_state` `[batch, num_patches + 1, vision hidden]` (transformers returns
    /// the ViT's, not the Q-Former's).
    pub last_hidden_state: Tensor<B, 3>,
}

impl<B: Backend> Blip2VisionModelWithProjection<B> {
    /// A fresh model (parameters lazy).
    ///
    /// # Errors
    /// A part's config errors.
    pub fn init(
        config: &Blip2Config,
        precision: Precision,
        device: &B::Device,
    ) -> Result<Self, Error> {
        Ok(Self {
            vision_model: config.vision_config.init::<B>(device)?,
            qformer: queries_only(&config.qformer).init::<B>(device)?,
            vision_projection: head(config, config.image_text_hidden_size, device),
            config: config.clone(),
            precision,
        })
    }

    /// Loads from a retrieval model directory or hub id (see the type's docs for the keys it reads).
    ///
    /// # Errors
    /// Reading the config or the weights, and the parts' load errors (a missing or mis-shaped tensor).
    pub fn from_pretrained(
        path: impl AsRef<Path>,
        precision: impl Into<Precision>,
        device: &B::Device,
    ) -> Result<Self, Error> {
        let (config, checkpoint) = open_pretrained(path.as_ref())?;
        Ok(Self::load(&config, &checkpoint, precision.into(), device)?.0)
    }

    /// Loads from an open checkpoint; the report lists the keys it did not use under `ignored`.
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
            precision.vision,
            device,
        ))?;
        // The text tower's keys sit under the Q-Former's prefixes: say that they may go unused.
        let options = LoadOptions::new(qformer_key_map())
            .with_dtype(precision.qformer)
            .with_ignored("embeddings.*")
            .with_ignored("qformer.encoder.layer.*.intermediate.*")
            .with_ignored("qformer.encoder.layer.*.output.*");
        let qformer = queries_only(&config.qformer).init::<B>(device)?;
        let (qformer, qformer_report) = part(load_module(qformer, checkpoint, &options, device))?;
        let (vision_projection, projection) = part(load_head(
            config,
            "vision_projection",
            config.image_text_hidden_size,
            checkpoint,
            precision.language_model,
            device,
        ))?;
        let report = union(checkpoint, [vision, qformer_report, projection], false)?;
        match (vision_model, qformer, vision_projection) {
            (Some(vision_model), Some(qformer), Some(vision_projection)) => Ok((
                Self {
                    vision_model,
                    qformer,
                    vision_projection,
                    config: config.clone(),
                    precision,
                },
                report,
            )),
            _ => Err(incompatible(report)),
        }
    }

    /// The image embeddings of a batch of images.
    ///
    /// # Errors
    /// Pixel values the vision tower cannot take.
    pub fn forward(
        &self,
        pixel_values: Tensor<B, 4>,
        interpolate_pos_encoding: bool,
    ) -> Result<Blip2VisionModelOutput<B>, Error> {
        let pixel_values = pixel_values.cast(self.precision.vision.dtype());
        let vision = self
            .vision_model
            .try_forward(pixel_values, interpolate_pos_encoding)?;
        let image_embeds = image_side(
            &self.qformer,
            &self.vision_projection,
            &self.precision,
            &vision.last_hidden_state,
        );
        Ok(Blip2VisionModelOutput {
            image_embeds,
            last_hidden_state: vision.last_hidden_state,
        })
    }
}
