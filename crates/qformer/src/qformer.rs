//! [`QFormer`]: the Q-Former as BLIP-2 uses it, with its learned queries and (in the retrieval checkpoints) its
//! text embeddings; the three ways BLIP-2 runs it; and loading it from a BLIP-2 directory.
//!
//! Keys: `query_tokens [1, num_query_tokens, hidden]` and `embeddings.*` at the checkpoint root, the rest under
//! `qformer.`. Renames (Rust field -> checkpoint segment), the crate's only one:
//!
//! | field | key segment |
//! |---|---|
//! | `layer_norm` | `LayerNorm` (in `attention.output`, `crossattention.output`, `output`, `output_query`) |

use std::path::Path;

use blip2_nn::backend::FloatDType;
use blip2_nn::loader::{Checkpoint, KeyMap, LoadOptions, LoadReport, WeightFormat, load_module};
use burn::module::{Initializer, Param};
use burn::prelude::*;

use crate::model::{Blip2QFormerModel, Blip2TextEmbeddings, QFormerOutput};
use crate::{Error, QFormerConfig};

/// The key map of a Q-Former inside a BLIP-2 checkpoint.
pub fn qformer_key_map() -> KeyMap {
    KeyMap::new()
        .route("qformer", "qformer")
        .route("query_tokens", "query_tokens")
        .route("embeddings", "embeddings")
        .rename("layer_norm", "LayerNorm")
}

/// What the Q-Former reads, one variant per way BLIP-2 runs it.
#[derive(Debug, Clone)]
pub enum QFormerInput<B: Backend> {
    /// Captioning / VQA / image features: the queries read the image. `image`: the vision tower's
    /// `last_hidden_state`, `[batch, num_patches + 1, encoder_hidden]`.
    Image(Tensor<B, 3>),
    /// Image-text matching: `[queries; text]` with the queries reading the image. `input_ids` and
    /// `attention_mask` (1 = keep, 0 = padding) are the text's own, `[batch, text_len]`, without `<image>` tokens.
    ImageText {
        /// `[batch, num_patches + 1, encoder_hidden]`.
        image: Tensor<B, 3>,
        /// `[batch, text_len]`.
        input_ids: Tensor<B, 2, Int>,
        /// `[batch, text_len]`.
        attention_mask: Tensor<B, 2, Int>,
    },
    /// The text side of image-text contrast: the text alone (`query_length` 0, no image).
    Text {
        /// `[batch, text_len]`.
        input_ids: Tensor<B, 2, Int>,
        /// `[batch, text_len]`.
        attention_mask: Tensor<B, 2, Int>,
    },
}

/// The BLIP-2 Q-Former with its learned queries (HF: `query_tokens`, `embeddings` and `qformer` of the BLIP-2
/// models).
#[derive(Module, Debug)]
pub struct QFormer<B: Backend> {
    /// The learned queries, `[1, num_query_tokens, hidden]`.
    pub query_tokens: Param<Tensor<B, 3>>,
    /// The text tower's embeddings (with `use_qformer_text_input`).
    pub embeddings: Option<Blip2TextEmbeddings<B>>,
    /// Input LayerNorm and layers.
    pub qformer: Blip2QFormerModel<B>,
    /// The config it was built from (input checks read the sizes from here).
    #[module(skip)]
    pub config: QFormerConfig,
}

impl QFormerConfig {
    /// A fresh Q-Former with its queries (lazy: nothing is allocated or randomised until used or loaded).
    ///
    /// # Errors
    /// [`Error::UnsupportedConfig`] (or a size over its limit) for a config [`QFormerConfig::validate`] rejects.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<QFormer<B>, Error> {
        self.validate()?;
        let hidden = self.qformer.hidden_size;
        let normal = Initializer::Normal {
            mean: 0.0,
            std: self.qformer.initializer_range,
        };
        Ok(QFormer {
            query_tokens: normal.init([1, self.num_query_tokens, hidden], device),
            embeddings: self
                .qformer
                .use_qformer_text_input
                .then(|| Blip2TextEmbeddings::new(&self.qformer, device)),
            qformer: self.qformer.init(device)?,
            config: self.clone(),
        })
    }
}

impl<B: Backend> QFormer<B> {
    /// The number of learned queries.
    pub fn num_query_tokens(&self) -> usize {
        self.config.num_query_tokens
    }

    /// The queries reading an image: the captioning path (`language_projection` takes it from here).
    ///
    /// # Shapes
    /// `image`: `[batch, num_patches + 1, encoder_hidden]` -> `last_hidden_state` `[batch, num_query_tokens, hidden]`
    ///
    /// # Panics
    /// On inputs [`Self::check`] rejects; use [`Self::try_forward`] for inputs from users.
    pub fn forward_image(&self, image: Tensor<B, 3>) -> QFormerOutput<B> {
        self.forward(QFormerInput::Image(image), false)
    }

    /// Runs the Q-Former on `input`; with `output_hidden_states`, also returns the input layernorm's output and
    /// every layer's.
    ///
    /// # Panics
    /// On inputs [`Self::check`] rejects.
    pub fn forward(&self, input: QFormerInput<B>, output_hidden_states: bool) -> QFormerOutput<B> {
        let queries = |batch: usize| {
            let [_, n, hidden] = self.query_tokens.lazy_shape().dims();
            self.query_tokens.val().expand([batch, n, hidden])
        };
        let embeddings = || {
            self.embeddings
                .as_ref()
                .expect("text inputs need the text tower (use_qformer_text_input)")
        };
        match input {
            QFormerInput::Image(image) => {
                let batch = image.dims()[0];
                let queries = queries(batch);
                let n = queries.dims()[1];
                self.qformer
                    .forward(queries, n, None, Some(image), output_hidden_states)
            }
            QFormerInput::ImageText {
                image,
                input_ids,
                attention_mask,
            } => {
                let batch = image.dims()[0];
                let queries = queries(batch);
                let n = queries.dims()[1];
                let text = embeddings().forward(input_ids).cast(queries.dtype());
                let embedded = Tensor::cat(vec![queries, text], 1); // [batch, n + text_len, hidden]
                let device = attention_mask.device();
                let ones = Tensor::<B, 2, Int>::ones([batch, n], &device);
                let mask = Tensor::cat(vec![ones, attention_mask], 1); // queries are never padding
                self.qformer
                    .forward(embedded, n, Some(mask), Some(image), output_hidden_states)
            }
            QFormerInput::Text {
                input_ids,
                attention_mask,
            } => {
                let text = embeddings().forward(input_ids);
                self.qformer
                    .forward(text, 0, Some(attention_mask), None, output_hidden_states)
            }
        }
    }

    /// [`Self::forward`] after [`Self::check`].
    ///
    /// # Errors
    /// [`Error::BadInput`] saying what is wrong.
    pub fn try_forward(
        &self,
        input: QFormerInput<B>,
        output_hidden_states: bool,
    ) -> Result<QFormerOutput<B>, Error> {
        self.check(&input)?;
        Ok(self.forward(input, output_hidden_states))
    }

    /// Checks an input: image width, batch sizes, text length against the position table, mask shape, token ids
    /// inside the vocabulary (read back from the device), and that text inputs have a text tower.
    ///
    /// # Errors
    /// [`Error::BadInput`].
    pub fn check(&self, input: &QFormerInput<B>) -> Result<(), Error> {
        let check_image = |image: &Tensor<B, 3>| {
            let [batch, len, width] = image.dims();
            let expected = self.config.qformer.encoder_hidden_size;
            if batch == 0 || len == 0 {
                return Err(Error::bad_input(format!(
                    "image embeddings of shape {:?} are empty",
                    image.dims()
                )));
            }
            if width != expected {
                return Err(Error::bad_input(format!(
                    "image embeddings are {width} wide, the cross-attention expects encoder_hidden_size {expected}"
                )));
            }
            Ok(batch)
        };
        let check_text = |ids: &Tensor<B, 2, Int>, mask: &Tensor<B, 2, Int>| {
            if self.embeddings.is_none() {
                return Err(Error::bad_input(
                    "this Q-Former has no text tower (use_qformer_text_input is false)".to_string(),
                ));
            }
            let [batch, len] = ids.dims();
            if mask.dims() != [batch, len] {
                return Err(Error::bad_input(format!(
                    "attention_mask {:?} does not match input_ids {:?}",
                    mask.dims(),
                    ids.dims()
                )));
            }
            let (max_len, vocab) = (
                self.config.qformer.max_position_embeddings,
                self.config.qformer.vocab_size,
            );
            if batch == 0 || len == 0 || len > max_len {
                return Err(Error::bad_input(format!(
                    "text of shape [{batch}, {len}]: need at least one token and at most {max_len} \
                     (max_position_embeddings)"
                )));
            }
            let ids: Vec<i64> = ids.to_data().convert::<i64>().to_vec().unwrap_or_default();
            if let Some(bad) = ids.iter().find(|&&id| id < 0 || id >= vocab as i64) {
                return Err(Error::bad_input(format!(
                    "token id {bad} is outside the vocabulary (0..{vocab})"
                )));
            }
            Ok(batch)
        };
        match input {
            QFormerInput::Image(image) => check_image(image).map(|_| ()),
            QFormerInput::ImageText {
                image,
                input_ids,
                attention_mask,
            } => {
                let images = check_image(image)?;
                let texts = check_text(input_ids, attention_mask)?;
                if images != texts {
                    return Err(Error::bad_input(format!(
                        "{images} images but {texts} texts"
                    )));
                }
                Ok(())
            }
            QFormerInput::Text {
                input_ids,
                attention_mask,
            } => check_text(input_ids, attention_mask).map(|_| ()),
        }
    }

    /// Loads the Q-Former, its queries and (if the config has it) its text tower from a BLIP-2 model directory
    /// (or its `config.json`), in f32: HF keeps the Q-Former in f32 even when the rest of BLIP-2 runs in half
    /// precision (`_keep_in_fp32_modules`). The vision tower and language model weights are not read.
    ///
    /// # Errors
    /// Reading or parsing the config, opening the weights, and [`blip2_nn::Error::Incompatible`] listing every
    /// missing, unexpected or mis-shaped key.
    pub fn from_pretrained(path: impl AsRef<Path>, device: &B::Device) -> Result<Self, Error> {
        let dir = blip2_nn::config::model_dir(path.as_ref());
        let config = QFormerConfig::from_file(path.as_ref())?;
        let checkpoint = Checkpoint::open(&dir)?;
        let (model, _report) = Self::load(&config, &checkpoint, FloatDType::F32, device)?;
        Ok(model)
    }

    /// Loads from an open checkpoint in `dtype` (whatever the dtype on disk).
    ///
    /// # Errors
    /// As [`Self::from_pretrained`], without the config part.
    pub fn load(
        config: &QFormerConfig,
        checkpoint: &Checkpoint,
        format: impl Into<WeightFormat>,
        device: &B::Device,
    ) -> Result<(Self, LoadReport), Error> {
        let options = LoadOptions::new(qformer_key_map()).with_format(format);
        let module = config.init::<B>(device)?;
        Ok(load_module(module, checkpoint, &options, device)?)
    }
}
