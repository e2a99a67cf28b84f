//! HF `Blip2TextModelWithProjection`: the text side of contrast alone.

use std::path::Path;

use blip2_nn::linear_forward;
use blip2_nn::loader::{Checkpoint, LoadReport};
use blip2_qformer::{QFormer, QFormerInput};
use burn::module::Module;
use burn::nn::Linear;
use burn::prelude::{Backend, Int, Tensor};

use crate::loading::{incompatible, open_pretrained, part, union};
use crate::{Blip2Config, Error, Precision};

use super::{head, load_head, normalize, require_text_tower, text_mask};

/// HF `Blip2TextModelWithProjection`: the Q-Former's text tower and `text_projection`, applied to **every**
/// text row, `normalize(text_projection(last_hidden_state))` (contrast uses the CLS row, row 0).
///
/// Loads from a retrieval checkpoint: `query_tokens` (unused, as in transformers), the text `embeddings.*`, all
/// of `qformer.*` (its cross-attention goes unused on text alone, as in transformers) and `text_projection`.
/// Every other key is listed in the report's `ignored`, as transformers loads these classes from the same
/// checkpoint, only warning about the unused keys; a missing or mis-shaped tensor is still an error.
#[derive(Module, Debug)]
pub struct Blip2TextModelWithProjection<B: Backend> {
    /// `query_tokens`, `embeddings.*` and `qformer.*`.
    pub qformer: QFormer<B>,
    /// `text_projection.*`.
    pub text_projection: Linear<B>,
    /// The config it was built from.
    #[module(skip)]
    pub config: Blip2Config,
    /// The dtype of each part (the projection takes `language_model`'s).
    #[module(skip)]
    pub precision: Precision,
}

/// HF `Blip2TextModelOutput`.
#[derive(Debug, Clone)]
pub struct Blip2TextModelOutput<B: Backend> {
    /// `normalize(text_projection(every row))`, `[batch, text_len, image_text_hidden_size]`.
    pub text_embeds: Tensor<B, 3>,
    /// The Q-Former's `last_hidden_state` on the text, `[batch, text_len, qformer hidden]`.
    pub last_hidden_state: Tensor<B, 3>,
}

impl<B: Backend> Blip2TextModelWithProjection<B> {
    /// A fresh model (parameters lazy).
    ///
    /// # Errors
    /// A part's config errors, and [`Error::UnsupportedConfig`] for a Q-Former without its text tower.
    pub fn init(
        config: &Blip2Config,
        precision: Precision,
        device: &B::Device,
    ) -> Result<Self, Error> {
        require_text_tower(config)?;
        Ok(Self {
            qformer: config.qformer.init::<B>(device)?,
            text_projection: head(config, config.image_text_hidden_size, device),
            config: config.clone(),
            precision,
        })
    }

    /// Loads from a retrieval model directory or hub id (see the type's docs for the keys it reads).
    ///
    /// # Errors
    /// Reading the config or the weights, those of [`Self::init`], and the parts' load errors.
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
        require_text_tower(config)?;
        let (qformer, qformer_report) = part(QFormer::load(
            &config.qformer,
            checkpoint,
            precision.qformer,
            device,
        ))?;
        let (text_projection, projection) = part(load_head(
            config,
            "text_projection",
            config.image_text_hidden_size,
            checkpoint,
            precision.language_model,
            device,
        ))?;
        let report = union(checkpoint, [qformer_report, projection], false)?;
        match (qformer, text_projection) {
            (Some(qformer), Some(text_projection)) => Ok((
                Self {
                    qformer,
                    text_projection,
                    config: config.clone(),
                    precision,
                },
                report,
            )),
            _ => Err(incompatible(report)),
        }
    }

    /// The text embeddings of every row of text-only ids (no `<image>` tokens; transformers does not remove
    /// them here either); a missing mask means no padding.
    ///
    /// # Errors
    /// [`Error::BadInput`] for a mask of another shape, and the Q-Former's checks (empty or too long text, ids
    /// outside its vocabulary).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<Blip2TextModelOutput<B>, Error> {
        let attention_mask = text_mask(&input_ids, attention_mask)?;
        let output = self.qformer.try_forward(
            QFormerInput::Text {
                input_ids,
                attention_mask,
            },
            false,
        )?;
        let rows = output
            .last_hidden_state
            .clone()
            .cast(self.precision.language_model.dtype());
        Ok(Blip2TextModelOutput {
            text_embeds: normalize(linear_forward(&self.text_projection, rows)),
            last_hidden_state: output.last_hidden_state,
        })
    }
}
