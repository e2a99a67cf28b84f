//! The text side of BLIP-2's processor: the tokenizer ([`Blip2Tokenizer`], over the `tokenizers` crate) and
//! prompt assembly with the `<image>` placeholders ([`Blip2Processor`]), as transformers 5.24 does them.

mod config;
mod processor;
mod tokenizer;

pub use config::{PaddingSide, TokenizerConfig, TruncationSide};
pub use processor::{
    Blip2Processor, num_query_tokens_from_model_dir, vqa_prompt, vqa_prompt_with_context,
};
pub use tokenizer::{
    BatchEncoding, Blip2Tokenizer, DEFAULT_IMAGE_TOKEN, EncodeOptions, Padding, SpecialToken,
    SpecialTokens, clean_up_tokenization,
};
