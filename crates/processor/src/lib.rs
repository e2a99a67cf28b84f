//! BLIP-2 input preprocessing on Burn: ports of HF transformers' `BlipImageProcessor` (5.24, PIL backend),
//! reproducing its uint8 pixels exactly, and of `Blip2Processor`'s text side, reproducing its `input_ids` and
//! `attention_mask` exactly.
//!
//! Images:
//! - [`BlipImageProcessor`]: decode (JPEG with libjpeg-turbo, Pillow's own decoder, so the pixels equal
//!   Pillow's; PNG, WebP, GIF, BMP, TIFF via the `image` crate; [`Limits`] against decompression bombs),
//!   convert to RGB compositing transparency onto white as PIL does ([`convert_to_rgb`]), resize with
//!   Pillow's fixed-point bicubic ([`resize_bicubic`]), rescale and normalize, and batch into
//!   [`PixelValues`] (`[batch, 3, height, width]`, as a Burn tensor or plain data);
//! - [`ImageProcessorConfig`]: its settings from `preprocessor_config.json` or the `image_processor` object
//!   of `processor_config.json`, with HF's defaults.
//!
//! ```
//! use blip2_processor::{BlipImageProcessor, ImageProcessorConfig, Size};
//! use blip2_nn::backend::DefaultBackend;
//!
//! let config = ImageProcessorConfig::from_json_str(r#"{"size": {"height": 4, "width": 6}}"#)?;
//! assert_eq!(config.size, Size::Fixed { height: 4, width: 6 });
//! let processor = BlipImageProcessor::new(config);
//!
//! // A 3x2 image from raw RGB bytes (the `image` crate's types work too: `processor.to_rgb(&dynamic)`).
//! let image = processor.from_raw_rgb(3, 2, &[255; 3 * 2 * 3])?;
//! let pixels = processor.preprocess(&[image])?;
//! assert_eq!(pixels.shape, [1, 3, 4, 6]);
//! let tensor = pixels.to_tensor::<DefaultBackend>(&Default::default());
//! assert_eq!(tensor.dims(), [1, 3, 4, 6]);
//! // White, rescaled to 1.0 and normalized with CLIP's red mean and std.
//! assert!((pixels.data[0] - (1.0 - 0.48145466) / 0.26862954).abs() < 1e-6);
//! # Ok::<(), blip2_processor::Error>(())
//! ```
//!
//! The numeric traps (PIL's alpha rounding, 16-bit images, fixed-point bicubic, JPEG decoding and
//! truncation, f64 rescale) are written down in `docs/numerics.md`, "Image preprocessing".
//!
//! Cargo features: a backend (`flex` by default; `ndarray`, `wgpu`, `vulkan`, `metal`, `cuda`), and
//! `libjpeg-turbo` (default): JPEG decoded by libjpeg-turbo 3.1.0, compiled from the C sources vendored in
//! `turbojpeg-sys`, bit-exact with Pillow 13 on the fixtures. Building it needs a C compiler and cmake; nasm
//! is optional (libjpeg-turbo's x86 SIMD code, same pixels, faster). Without the feature, JPEG goes through
//! the `image` crate's pure-Rust decoder, up to a few levels away from Pillow's pixels.
//!
//! Text:
//! - [`Blip2Tokenizer`]: `tokenizer.json` through the `tokenizers` crate (OPT's byte-level BPE, T5's Unigram,
//!   BERT's WordPiece), set up from `tokenizer_config.json` / `special_tokens_map.json` as transformers 5.24
//!   sets it up ([`TokenizerConfig`], [`SpecialTokens`]), with the `<image>` token ensured; batch encoding
//!   with padding and truncation ([`EncodeOptions`], [`BatchEncoding`]), decoding with
//!   `skip_special_tokens`;
//! - [`Blip2Processor`]: the image processor, the tokenizer and `num_query_tokens`; prompts become
//!   `num_query_tokens` `<image>` ids followed by the tokenized text ([`encode_prompts`]), captioning
//!   without a prompt gets `[<image> x n, </s>]` ([`caption_inputs`]); [`vqa_prompt`] and
//!   [`vqa_prompt_with_context`] write BLIP-2's question templates.
//!
//! ```
//! use blip2_nn::backend::DefaultBackend;
//! use blip2_processor::{Blip2Processor, EncodeOptions, vqa_prompt};
//!
//! // A model directory: tokenizer.json, tokenizer_config.json, processor_config.json, image processor config.
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny-opt");
//! let processor = Blip2Processor::from_model_dir(dir)?;
//! let question = vqa_prompt("what is on the table?");
//! assert_eq!(question, "Question: what is on the table? Answer:");
//!
//! let inputs = processor.encode_prompts(&[question.as_str(), "a photo of"], &EncodeOptions::default())?;
//! let n = processor.num_query_tokens(); // 5 in this tiny fixture, 32 in the hub checkpoints
//! let image = i64::from(processor.image_token_id());
//! let bos = i64::from(processor.tokenizer().special_tokens().bos.as_ref().unwrap().id);
//! // `<image>` x n first; OPT's BOS `</s>` starts the text; this tokenizer pads on the left, after the
//! // image tokens (as transformers does).
//! assert!(inputs.input_ids.iter().all(|row| row[..n].iter().all(|&id| id == image)));
//! assert_eq!(inputs.input_ids[0][n], bos);
//! assert_eq!(inputs.attention_mask[1][n], 0);
//! let input_ids = inputs.input_ids_tensor::<DefaultBackend>(&Default::default())?;
//! assert_eq!(input_ids.dims(), [2, inputs.input_ids[0].len()]);
//!
//! // Decoding drops the `<image>`, pad and BOS/EOS tokens.
//! assert_eq!(processor.decode(&inputs.input_ids[0], true)?, question);
//! # Ok::<(), blip2_processor::Error>(())
//! ```
//!
//! The tokenizer traps (where the `<image>` tokens go relative to padding, which config keys transformers
//! ignores, what it adds and at which id) are written down in `docs/processor.md`.
//!
//! [`encode_prompts`]: Blip2Processor::encode_prompts
//! [`caption_inputs`]: Blip2Processor::caption_inputs

mod error;
mod image;
mod text;

pub use crate::error::{Error, MEMORY};
pub use crate::image::{
    BlipImageProcessor, ImageProcessorConfig, Limits, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
    PixelValues, Resample, Size, cmyk_to_rgb, convert_to_rgb, decode_bytes, decode_file,
    over_white, resize_bicubic,
};
pub use crate::text::{
    BatchEncoding, Blip2Processor, Blip2Tokenizer, DEFAULT_IMAGE_TOKEN, EncodeOptions, Padding,
    PaddingSide, SpecialToken, SpecialTokens, TokenizerConfig, TruncationSide,
    clean_up_tokenization, num_query_tokens_from_model_dir, vqa_prompt, vqa_prompt_with_context,
};
