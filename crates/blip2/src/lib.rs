//! BLIP-2 on Burn: the composed models, loading HF hub checkpoints unchanged, and a high-level API.
//!
//! - [`Blip2`]: the model with its processor: caption images, ask questions, chat about an image, text
//!   features; ids, text and beam scores out. Images are encoded once ([`ImageFeatures`]) and reused by
//!   every prompt about them. Inputs the model cannot take are typed errors before any work: empty images,
//!   prompts and questions, a prompt holding `<image>`, OPT prompts over the position table (which must also
//!   hold `max_new_tokens`), Flan-T5 prompts over the tokenizer's `model_max_length`, a processor that
//!   disagrees with the model ([`Error::Mismatch`]) or resizes to a size over the image limits
//!   ([`Blip2::from_pretrained_with_limits`] raises them). A [`Chat`] forgets its oldest turns when they no
//!   longer fit.
//! - [`Blip2ForConditionalGeneration`] (also [`Blip2Model`]): transformers' class of the same name over the
//!   parts (`blip2-vision`, `blip2-qformer`, `blip2-opt` or `blip2-t5`): the feature methods, the merged
//!   `inputs_embeds` (`<image>` tokens, or the older layout with the queries in front), logits and loss for
//!   training (gradients match transformers'), and generation with every option of `blip2-generation`.
//! - [`Blip2Config`] from a hub `config.json`; [`Precision`] for the dtype of each part (the Q-Former stays in
//!   f32 in half modes, as in transformers).
//! - Loading takes a model directory or a hub id ([`hub`]: the standard HF cache, `HF_HOME`, `HF_ENDPOINT`,
//!   `HF_TOKEN`, offline mode) and is strict over the whole checkpoint: every problem is reported with its key.
//!
//! ```
//! use blip2::Blip2;
//! use blip2_generation::GenerationConfig;
//! use blip2_nn::backend::{DefaultBackend, FloatDType};
//!
//! # let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
//! # let (model, image) = (format!("{root}/tiny-opt"), format!("{root}/images/rgb_37x29.png"));
//! // `model`: a directory or a hub id such as "Salesforce/blip2-opt-2.7b".
//! let mut blip2 = Blip2::<DefaultBackend>::from_pretrained(&model, FloatDType::F32, &Default::default())?;
//! blip2.set_generation_config(GenerationConfig { max_new_tokens: Some(8), ..blip2.generation_config().clone() })?;
//! let image = blip2.encode_image_files(&[&image])?;     // vision tower + Q-Former, once
//! let caption = blip2.caption(&image, None)?;             // [<image> x 32, bos] -> new tokens
//! let answer = blip2.ask(&image, &["what is this?"])?;   // "Question: what is this? Answer:"
//! assert_eq!(caption[0].token_ids.len(), 8);
//! println!("{} / {}", caption[0].text, answer[0].text);
//! # Ok::<(), blip2::Error>(())
//! ```

mod config;
mod error;
mod host;
mod loading;
mod model;
mod pipeline;
mod precision;
mod retrieval;
mod retrieval_pipeline;

/// The generation crate (`GenerationConfig`, `Generator`, logits processors), re-exported for users of the
/// composed models.
pub use blip2_generation as generation;
/// The hub crate (`resolve`: a model directory or a hub id to a local directory, through the HF cache),
/// re-exported: `from_pretrained` takes either.
pub use blip2_hub as hub;
/// The processor crate (image preprocessing, tokenizer, prompt templates), re-exported.
pub use blip2_processor as processor;
/// The vision crate (its error type, for matching on [`Error::Vision`]), re-exported.
pub use blip2_vision as vision;

pub use config::{Blip2Config, TextConfig};
pub use error::Error;
pub use model::{
    Blip2ForConditionalGeneration, Blip2Model, Blip2Output, ImageFeatures, LanguageInputs,
    LanguageModel,
};
pub use pipeline::{Blip2, Chat, Generated};
pub use precision::{Int8, Precision};
pub use retrieval::{
    Blip2ForImageTextRetrieval, Blip2ImageTextMatchingModelOutput, Blip2TextModelOutput,
    Blip2TextModelWithProjection, Blip2VisionModelOutput, Blip2VisionModelWithProjection,
    EncodedImages, EncodedTexts,
};
pub use retrieval_pipeline::{Blip2Retrieval, Scores};
