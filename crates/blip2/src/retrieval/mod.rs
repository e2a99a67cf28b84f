//! The retrieval models of the `blip2-itm-vit-g` checkpoints: HF `Blip2ForImageTextRetrieval` (image-text
//! matching and image-text contrast), `Blip2VisionModelWithProjection` and `Blip2TextModelWithProjection`, all
//! three loading from the same checkpoint.
//!
//! Keys: `vision_model.*`, `query_tokens`, `embeddings.*` and `qformer.*` (loaded by the vision and Q-Former
//! crates with their key maps), `vision_projection.*`, `text_projection.*` and `itm_head.*` (PyTorch `Linear`s,
//! no renames).
//!
//! Deviations from transformers 5.24, all on inputs it mishandles:
//! - with `image_token_index` in the config, transformers drops the first `num_query_tokens` columns of
//!   `input_ids` (and of the mask, for contrast) without looking at them; here they must be `<image>` tokens
//!   with mask 1, else [`Error::BadInput`] (text-only ids would silently lose their first tokens there);
//! - a missing `attention_mask` crashes transformers on the paths that slice or extend it; here it means "no
//!   padding";
//! - transformers' matching branch returns the Q-Former's hidden state as `text_embeds` and the ViT's as
//!   `image_embeds`; here both embeddings are `None` on that branch and those tensors are in
//!   `text_model_output` / `vision_model_output`, where transformers also puts them.
//!
//! Precision: loading in f16, transformers keeps `query_tokens` and `qformer.*` in f32 (`_keep_in_fp32_modules`)
//! and runs `vision_projection`, `text_projection` and `itm_head` in the model dtype, casting the Q-Former's
//! output to their dtype first. Here they take `precision.language_model`, the model dtype of
//! [`Precision::half`] (the slot [`Precision`] documents for them), so `Precision::from(FloatDType::F16)` gives
//! transformers' `dtype=torch.float16` layout, with one difference: the text `embeddings.*` load with the
//! Q-Former in its dtype (transformers leaves them in f16, and rounds the queries to f16 before the Q-Former
//! reads `[queries; text]`).

mod itm;
mod text;
mod vision;

use blip2_nn::linear_forward;
use blip2_nn::loader::{Checkpoint, KeyMap, LoadOptions, LoadReport, load_module};
use blip2_qformer::{QFormer, QFormerConfig, QFormerInput};
use burn::nn::{Linear, LinearConfig, LinearLayout};
use burn::prelude::{Backend, Int, Tensor};

use crate::{Blip2Config, Error, Precision};

pub use itm::{
    Blip2ForImageTextRetrieval, Blip2ImageTextMatchingModelOutput, EncodedImages, EncodedTexts,
};
pub use text::{Blip2TextModelOutput, Blip2TextModelWithProjection};
pub use vision::{Blip2VisionModelOutput, Blip2VisionModelWithProjection};

/// `[batch, len]` token ids or mask.
type Ids<B> = Tensor<B, 2, Int>;

/// A head on the Q-Former's output (`[out, in]` weights, as stored).
fn head<B: Backend>(config: &Blip2Config, out: usize, device: &B::Device) -> Linear<B> {
    LinearConfig::new(config.qformer.qformer.hidden_size, out)
        .with_layout(LinearLayout::Col)
        .init(device)
}

fn load_head<B: Backend>(
    config: &Blip2Config,
    name: &str,
    out: usize,
    checkpoint: &Checkpoint,
    dtype: blip2_nn::backend::FloatDType,
    device: &B::Device,
) -> Result<(Linear<B>, LoadReport), Error> {
    let options = LoadOptions::new(KeyMap::under(name)).with_dtype(dtype);
    Ok(load_module(
        head(config, out, device),
        checkpoint,
        &options,
        device,
    )?)
}

/// transformers builds the text tower's layers only with `use_qformer_text_input`, and the retrieval models run
/// them.
fn require_text_tower(config: &Blip2Config) -> Result<(), Error> {
    if config.qformer.qformer.use_qformer_text_input {
        Ok(())
    } else {
        Err(Error::unsupported(
            "qformer_config.use_qformer_text_input",
            false,
            "the retrieval models run the Q-Former's text tower, which only retrieval checkpoints \
             (Salesforce/blip2-itm-vit-g) have",
        ))
    }
}

/// The Q-Former config without the text tower: what the queries alone use.
fn queries_only(config: &QFormerConfig) -> QFormerConfig {
    let mut config = config.clone();
    config.qformer.use_qformer_text_input = false;
    config
}

/// The queries reading the images, projected and normalised: `[images, num_query_tokens, dim]`.
fn image_side<B: Backend>(
    qformer: &QFormer<B>,
    projection: &Linear<B>,
    precision: &Precision,
    image: &Tensor<B, 3>,
) -> Tensor<B, 3> {
    let image = image.clone().cast(precision.qformer.dtype());
    let queries = qformer
        .forward(QFormerInput::Image(image), false)
        .last_hidden_state
        .cast(precision.language_model.dtype()); // [images, num_query_tokens, hidden]
    normalize(linear_forward(projection, queries))
}

/// transformers' `nn.functional.normalize(x, dim=-1)`: `x / max(||x||_2, 1e-12)` over the last dimension.
fn normalize<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let norm = (x.clone() * x.clone())
        .sum_dim(D - 1)
        .sqrt()
        .clamp_min(1e-12); // [..., 1]
    x / norm
}

/// The largest cosine over each image's queries: `[images, n, dim]`, `[texts, dim]` -> `[images, texts]`.
fn contrast<B: Backend>(image_embeds: Tensor<B, 3>, text_embeds: Tensor<B, 2>) -> Tensor<B, 2> {
    let [images, n, dim] = image_embeds.dims();
    let texts = text_embeds.dims()[0];
    image_embeds
        .reshape([images * n, dim])
        .matmul(text_embeds.transpose()) // [images * n, texts]
        .reshape([images, n, texts])
        .max_dim(1) // [images, 1, texts]
        .squeeze_dim::<2>(1)
}

/// The mask of a text batch (all ones when absent), checked against the ids.
fn text_mask<B: Backend>(
    input_ids: &Tensor<B, 2, Int>,
    attention_mask: Option<Tensor<B, 2, Int>>,
) -> Result<Tensor<B, 2, Int>, Error> {
    let [batch, len] = input_ids.dims();
    if batch == 0 {
        return Err(Error::bad_input(
            "input_ids hold no rows: give at least one text",
        ));
    }
    match attention_mask {
        Some(mask) if mask.dims() != [batch, len] => Err(Error::bad_input(format!(
            "attention_mask is {:?}, input_ids [{batch}, {len}]",
            mask.dims()
        ))),
        Some(mask) => Ok(mask),
        None => Ok(Tensor::ones([batch, len], &input_ids.device())),
    }
}
