//! `Blip2VisionModel`: embeddings, encoder, `post_layernorm`; and loading it from a BLIP-2 checkpoint.
//!
//! Keys: everything under `vision_model.` in a BLIP-2 checkpoint, or at the root in a standalone
//! `Blip2VisionModel` checkpoint (detected from `post_layernorm.weight`).
//!
//! Deliberate choice (matches HF): the pooler output is `post_layernorm` applied to the CLS row of
//! `last_hidden_state`, which has already been through `post_layernorm`: the same LayerNorm twice.

use blip2_nn::ops::layer_norm;
use std::path::Path;

use blip2_nn::backend::FloatDType;
use blip2_nn::loader::{Checkpoint, KeyMap, LoadOptions, LoadReport, WeightFormat, load_module};
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::prelude::*;

use crate::embeddings::Blip2VisionEmbeddings;
use crate::encoder::Blip2Encoder;
use crate::{Blip2VisionConfig, Error};

/// The checkpoint prefix of the vision tower inside a BLIP-2 checkpoint.
pub const VISION_PREFIX: &str = "vision_model";

/// What the vision tower returns (HF `BaseModelOutputWithPooling`).
#[derive(Debug, Clone)]
pub struct Blip2VisionOutput<B: Backend> {
    /// `post_layernorm(encoder output)`, `[batch, num_patches + 1, hidden]`: what the Q-Former reads.
    pub last_hidden_state: Tensor<B, 3>,
    /// `post_layernorm(last_hidden_state[:, 0])`, `[batch, hidden]`.
    pub pooler_output: Tensor<B, 2>,
    /// With [`Blip2VisionModel::forward_with_hidden_states`]: the embeddings, then each layer's output
    /// (HF's `hidden_states`: `num_hidden_layers + 1` tensors `[batch, num_patches + 1, hidden]`).
    pub hidden_states: Option<Vec<Tensor<B, 3>>>,
}

/// HF `Blip2VisionModel`: the EVA ViT-g image encoder of BLIP-2.
#[derive(Module, Debug)]
pub struct Blip2VisionModel<B: Backend> {
    /// Patch, CLS and position embeddings.
    pub embeddings: Blip2VisionEmbeddings<B>,
    /// Pre-LN transformer layers.
    pub encoder: Blip2Encoder<B>,
    /// Final LayerNorm (applied to every token, and again to the pooled CLS row).
    pub post_layernorm: LayerNorm<B>,
}

impl Blip2VisionConfig {
    /// A fresh vision tower. Parameters are lazy: nothing is allocated or randomised until first used, so
    /// `init` followed by [`Blip2VisionModel::load`] costs only the load.
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] from [`Blip2VisionConfig::validate`].
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Blip2VisionModel<B>, Error> {
        self.validate()?;
        let activation = self.activation()?;
        Ok(Blip2VisionModel {
            embeddings: Blip2VisionEmbeddings::new(self, device),
            encoder: Blip2Encoder::new(self, activation, device),
            post_layernorm: LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
        })
    }
}

impl<B: Backend> Blip2VisionModel<B> {
    /// Encodes images (HF `Blip2VisionModel.forward`).
    ///
    /// Images of the training size need no interpolation. For another size (e.g. a 224 checkpoint at 364, or a
    /// non-square image) pass `interpolate_pos_encoding = true`. Use [`Self::check_pixel_values`] (or
    /// [`Self::try_forward`]) first when the shape comes from a user.
    ///
    /// # Shapes
    /// - `pixel_values`: `[batch, 3, height, width]`
    /// - `last_hidden_state`: `[batch, num_patches + 1, hidden]`; `pooler_output`: `[batch, hidden]`
    ///
    /// # Panics
    /// On a shape [`Self::check_pixel_values`] rejects.
    pub fn forward(
        &self,
        pixel_values: Tensor<B, 4>,
        interpolate_pos_encoding: bool,
    ) -> Blip2VisionOutput<B> {
        self.run(pixel_values, interpolate_pos_encoding, false)
    }

    /// [`Self::forward`], also returning the embeddings and every layer's output in `hidden_states`.
    ///
    /// # Panics
    /// On a shape [`Self::check_pixel_values`] rejects.
    pub fn forward_with_hidden_states(
        &self,
        pixel_values: Tensor<B, 4>,
        interpolate_pos_encoding: bool,
    ) -> Blip2VisionOutput<B> {
        self.run(pixel_values, interpolate_pos_encoding, true)
    }

    /// [`Self::forward`] after [`Self::check_pixel_values`].
    ///
    /// # Errors
    /// [`Error::BadPixelValues`] for a shape the tower cannot take.
    pub fn try_forward(
        &self,
        pixel_values: Tensor<B, 4>,
        interpolate_pos_encoding: bool,
    ) -> Result<Blip2VisionOutput<B>, Error> {
        self.check_pixel_values(&pixel_values.dims(), interpolate_pos_encoding)?;
        Ok(self.forward(pixel_values, interpolate_pos_encoding))
    }

    /// Checks that `[batch, channels, height, width]` can be encoded: 3 channels, at least one patch per side,
    /// and, without interpolation, no more patches than the position table has (HF adds the first
    /// `num_patches + 1` positions to smaller images; so do we).
    ///
    /// # Errors
    /// [`Error::BadPixelValues`] saying what is wrong.
    pub fn check_pixel_values(
        &self,
        dims: &[usize; 4],
        interpolate_pos_encoding: bool,
    ) -> Result<(), Error> {
        let [batch, channels, height, width] = *dims;
        let patch = self.embeddings.patch_size;
        let bad = |reason: String| Error::BadPixelValues {
            shape: dims.to_vec(),
            reason,
        };
        if batch == 0 {
            return Err(bad("the batch is empty".into()));
        }
        if channels != 3 {
            return Err(bad(format!("expected 3 (RGB) channels, found {channels}")));
        }
        if height < patch || width < patch {
            return Err(bad(format!(
                "the image is smaller than one {patch}x{patch} patch"
            )));
        }
        let num_patches = (height / patch) * (width / patch);
        let table = self.embeddings.position_embedding.lazy_shape().to_vec()[1] - 1;
        if !interpolate_pos_encoding && num_patches > table {
            let side = ((table as f64).sqrt().round() as usize) * patch;
            return Err(bad(format!(
                "{num_patches} patches but the position table has {table}: resize to {side}x{side} or pass \
                 interpolate_pos_encoding"
            )));
        }
        Ok(())
    }

    fn run(
        &self,
        pixel_values: Tensor<B, 4>,
        interpolate: bool,
        keep_hidden: bool,
    ) -> Blip2VisionOutput<B> {
        let dims = pixel_values.dims();
        if let Err(e) = self.check_pixel_values(&dims, interpolate) {
            panic!("{e}");
        }
        let embeddings = self.embeddings.forward(pixel_values, interpolate); // [batch, seq_len, hidden]
        let mut hidden_states = keep_hidden.then(|| vec![embeddings.clone()]);
        let encoded = self.encoder.forward_inspect(embeddings, |h| {
            if let Some(states) = hidden_states.as_mut() {
                states.push(h.clone());
            }
        });
        let last_hidden_state = layer_norm(&self.post_layernorm, encoded);
        let [batch, _, hidden] = last_hidden_state.dims();
        let cls = last_hidden_state
            .clone()
            .narrow(1, 0, 1)
            .reshape([batch, hidden]); // [batch, hidden]
        // HF applies post_layernorm a second time to the (already normalised) CLS row.
        let pooler_output = layer_norm(&self.post_layernorm, cls);
        Blip2VisionOutput {
            last_hidden_state,
            pooler_output,
            hidden_states,
        }
    }

    /// Loads the vision tower from `path`: a BLIP-2 model directory (its `config.json` `vision_config` and the
    /// `vision_model.*` weights; the Q-Former and language model are not read), a standalone
    /// `Blip2VisionModel` directory, or a `config.json` next to the weights. Parameters get `dtype` in memory,
    /// whatever the dtype on disk.
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
        let config = Blip2VisionConfig::from_file(path.as_ref())?;
        let checkpoint = Checkpoint::open(&dir)?;
        let (model, _report) = Self::load(&config, &checkpoint, dtype, device)?;
        Ok(model)
    }

    /// Loads the vision tower described by `config` from an open checkpoint, under `vision_model.` when the
    /// checkpoint is a whole BLIP-2 model, at the root for a standalone vision checkpoint.
    ///
    /// # Errors
    /// As [`Self::from_pretrained`], without the config part.
    pub fn load(
        config: &Blip2VisionConfig,
        checkpoint: &Checkpoint,
        format: impl Into<WeightFormat>,
        device: &B::Device,
    ) -> Result<(Self, LoadReport), Error> {
        let options = LoadOptions::new(key_map_for(checkpoint)).with_format(format);
        let module = config.init::<B>(device)?;
        Ok(load_module(module, checkpoint, &options, device)?)
    }
}

/// The key map for the vision tower in `checkpoint`: `vision_model.*` unless the checkpoint stores a standalone
/// tower at its root.
pub fn key_map_for(checkpoint: &Checkpoint) -> KeyMap {
    let standalone = checkpoint.contains("post_layernorm.weight")
        && !checkpoint.contains(&format!("{VISION_PREFIX}.post_layernorm.weight"));
    if standalone {
        KeyMap::new()
    } else {
        KeyMap::under(VISION_PREFIX)
    }
}
