//! BLIP-2 input preprocessing on Burn: a port of HF transformers' `BlipImageProcessor` (5.24, PIL backend)
//! that reproduces its uint8 pixels exactly.
//!
//! - [`BlipImageProcessor`]: decode (PNG, JPEG, WebP, GIF, BMP, TIFF via the `image` crate, with
//!   [`Limits`] against decompression bombs), convert to RGB compositing transparency onto white as PIL
//!   does ([`convert_to_rgb`]), resize with Pillow's fixed-point bicubic ([`resize_bicubic`]), rescale and
//!   normalize, and batch into [`PixelValues`] (`[batch, 3, height, width]`, as a Burn tensor or plain
//!   data);
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
//! The numeric traps (PIL's alpha rounding, 16-bit images, fixed-point bicubic, JPEG decoders, f64
//! rescale) are written down in `docs/numerics.md`, "Image preprocessing".

mod error;
mod image;
mod text;

pub use crate::error::{Error, MEMORY};
pub use crate::image::{
    BlipImageProcessor, ImageProcessorConfig, Limits, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
    PixelValues, Resample, Size, convert_to_rgb, decode_bytes, decode_file, over_white,
    resize_bicubic,
};
pub use crate::text::{
    BatchEncoding, Blip2Processor, Blip2Tokenizer, DEFAULT_IMAGE_TOKEN, EncodeOptions, Padding,
    PaddingSide, SpecialToken, SpecialTokens, TokenizerConfig, TruncationSide,
    clean_up_tokenization, num_query_tokens_from_model_dir, vqa_prompt, vqa_prompt_with_context,
};
