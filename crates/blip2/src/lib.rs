//! BLIP-2 on Burn: the composed models, loading HF hub checkpoints unchanged, and a high-level API.

mod config;
mod error;
pub mod hub;
mod model;
mod pipeline;
mod precision;

pub use config::{Blip2Config, TextConfig};
pub use error::Error;
pub use model::{
    Blip2ForConditionalGeneration, Blip2Model, Blip2Output, ImageFeatures, LanguageInputs,
    LanguageModel,
};
pub use pipeline::{Blip2, Chat, Generated};
pub use precision::Precision;
