//! HF `BlipImageProcessor` (transformers 5.24, PIL backend `BlipImageProcessorPil`): decode, convert to RGB
//! (alpha over white), PIL bicubic resize on uint8, rescale in f64, normalize in f32, batch as
//! `[batch, 3, height, width]`.
//!
//! JPEG is decoded by libjpeg-turbo, set up as Pillow sets it up (`jpeg.rs`, feature `libjpeg-turbo`, on
//! by default), the other formats by the `image` crate (`decode.rs`); both give PIL's pixels on the fixtures.
//! Deliberate deviations: without the `libjpeg-turbo` feature JPEG pixels differ from PIL's by a few levels
//! (see docs/numerics.md); EXIF orientation is not applied (neither does HF for an image it is handed);
//! only bicubic resampling and the `{height, width}` / `{shortest_edge}` sizes are implemented (others are
//! rejected when the config is read).

mod config;
mod convert;
mod decode;
#[cfg(feature = "libjpeg-turbo")]
mod jpeg;
mod resize;

use std::path::Path;

use burn::prelude::{Backend, Tensor};
use burn::tensor::TensorData;
use image::{DynamicImage, RgbImage};

pub use config::{ImageProcessorConfig, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Resample, Size};
pub use convert::{cmyk_to_rgb, convert_to_rgb, over_white};
pub use decode::{Limits, decode_bytes, decode_file};
pub use resize::resize_bicubic;

use crate::error::{Error, MEMORY};

/// Preprocessed images, `pixel_values` of HF's processor output: f32, `[batch, 3, height, width]`,
/// row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelValues {
    /// The values, `batch * 3 * height * width` of them.
    pub data: Vec<f32>,
    /// `[batch, 3, height, width]`.
    pub shape: [usize; 4],
}

impl PixelValues {
    /// As Burn `TensorData` (f32, `[batch, 3, height, width]`).
    pub fn to_data(&self) -> TensorData {
        TensorData::new(self.data.clone(), self.shape)
    }

    /// As a tensor on `device`.
    ///
    /// # Shapes
    /// `[batch, 3, height, width]`.
    pub fn to_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 4> {
        Tensor::from_data(self.to_data(), device)
    }
}

/// HF `BlipImageProcessor` (PIL backend): turns images into the vision tower's `pixel_values`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BlipImageProcessor {
    config: ImageProcessorConfig,
    limits: Limits,
}

impl BlipImageProcessor {
    /// A processor with `config` and the default [`Limits`].
    pub fn new(config: ImageProcessorConfig) -> Self {
        Self {
            config,
            limits: Limits::default(),
        }
    }

    /// Reads the config of a model directory ([`ImageProcessorConfig::from_model_dir`]).
    ///
    /// # Errors
    /// As [`ImageProcessorConfig::from_model_dir`].
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self, Error> {
        Ok(Self::new(ImageProcessorConfig::from_model_dir(dir)?))
    }

    /// The same processor with other limits.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The settings.
    pub fn config(&self) -> &ImageProcessorConfig {
        &self.config
    }

    /// The size limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Reads an image file and converts it to RGB (`Image.open(path)` then HF `convert_to_rgb`).
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::UnsupportedFormat`], [`Error::Decode`], [`Error::TooLarge`], ... naming the
    /// file.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<RgbImage, Error> {
        let path = path.as_ref();
        let image = decode_file(path, &self.limits)?;
        self.to_rgb_named(&image, &path.display().to_string())
    }

    /// Decodes an image held in memory and converts it to RGB.
    ///
    /// # Errors
    /// As [`open`](Self::open), naming `<memory>`.
    pub fn decode(&self, bytes: &[u8]) -> Result<RgbImage, Error> {
        let image = decode_bytes(bytes, &self.limits)?;
        self.to_rgb_named(&image, MEMORY)
    }

    /// Converts an already-decoded image to RGB (HF `convert_to_rgb`), after checking the limits.
    ///
    /// # Errors
    /// [`Error::TooLarge`], [`Error::ZeroSize`], [`Error::UnsupportedPixels`], or [`Error::NotRgb`] with
    /// `do_convert_rgb: false` and an image that is not RGB.
    pub fn to_rgb(&self, image: &DynamicImage) -> Result<RgbImage, Error> {
        self.to_rgb_named(image, MEMORY)
    }

    /// Wraps a raw RGB8 buffer (`width * height * 3` bytes, row-major, HWC).
    ///
    /// # Errors
    /// [`Error::BufferLength`] for a buffer of the wrong length, [`Error::ZeroSize`] or
    /// [`Error::TooLarge`] for its size.
    pub fn from_raw_rgb(&self, width: u32, height: u32, data: &[u8]) -> Result<RgbImage, Error> {
        let (w, h) = (u64::from(width), u64::from(height));
        self.limits.check(MEMORY, w, h)?;
        let expected = w * h * 3;
        if data.len() as u64 != expected {
            return Err(Error::BufferLength {
                width: w,
                height: h,
                expected,
                found: data.len() as u64,
            });
        }
        RgbImage::from_raw(width, height, data.to_vec()).ok_or(Error::BufferLength {
            width: w,
            height: h,
            expected,
            found: data.len() as u64,
        })
    }

    /// The uint8 image the pixel values are computed from: resized to the config's size with PIL bicubic
    /// (or unchanged with `do_resize: false`).
    ///
    /// # Errors
    /// [`Error::TooLarge`] when the resize would exceed the limits ([`Limits::check_resize`]).
    pub fn resize(&self, image: &RgbImage) -> Result<RgbImage, Error> {
        if !self.config.do_resize {
            return Ok(image.clone());
        }
        let (h, w) = self.config.size.output_size(image.height(), image.width());
        self.limits.check_resize(MEMORY, w, h)?;
        // `check` bounds both sides by `max_side` (a u32).
        Ok(resize_bicubic(image, w as u32, h as u32))
    }

    /// Rescale and normalize a (resized) uint8 RGB image into `[3, height, width]` f32 values, exactly as
    /// numpy computes them in HF: `x = f32(v as f64 * rescale_factor)`, then `(x - f32(mean)) / f32(std)`
    /// in f32.
    pub fn normalize(&self, image: &RgbImage) -> Vec<f32> {
        let mut out = Vec::new();
        self.normalize_into(image, &mut out);
        out
    }

    /// [`normalize`](Self::normalize), appending to `data` (a batch is built in place, without a second copy
    /// of each image's values).
    fn normalize_into(&self, image: &RgbImage, data: &mut Vec<f32>) {
        let c = &self.config;
        let plane = image.width() as usize * image.height() as usize;
        let start = data.len();
        data.resize(start + 3 * plane, 0.0);
        let out = &mut data[start..];
        let mean = c.image_mean.map(|m| m as f32);
        let std = c.image_std.map(|s| s as f32);
        for (i, p) in image.as_raw().chunks_exact(3).enumerate() {
            for ch in 0..3 {
                let mut x = if c.do_rescale {
                    (f64::from(p[ch]) * c.rescale_factor) as f32
                } else {
                    f32::from(p[ch])
                };
                if c.do_normalize {
                    x = (x - mean[ch]) / std[ch];
                }
                out[ch * plane + i] = x;
            }
        }
    }

    /// Resize, rescale and normalize a batch of RGB images into `pixel_values`.
    ///
    /// # Errors
    /// [`Error::EmptyBatch`]; [`Error::BatchSizeMismatch`] when the images end up at different sizes (only
    /// with `size: {shortest_edge}`, or `do_resize: false`); errors of [`resize`](Self::resize).
    pub fn preprocess(&self, images: &[RgbImage]) -> Result<PixelValues, Error> {
        if images.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let mut data = Vec::new();
        let mut shape = [0, 3, 0, 0];
        for (index, image) in images.iter().enumerate() {
            let resized = self.resize(image)?;
            let (h, w) = (resized.height() as usize, resized.width() as usize);
            if index == 0 {
                (shape[2], shape[3]) = (h, w);
                data.reserve(images.len() * 3 * h * w);
            } else if (h, w) != (shape[2], shape[3]) {
                return Err(Error::BatchSizeMismatch {
                    index,
                    height: h as u64,
                    width: w as u64,
                    expected_height: shape[2] as u64,
                    expected_width: shape[3] as u64,
                });
            }
            self.normalize_into(&resized, &mut data);
        }
        shape[0] = images.len();
        Ok(PixelValues { data, shape })
    }

    /// Opens, converts and preprocesses image files as one batch.
    ///
    /// # Errors
    /// Those of [`open`](Self::open) (naming the file) and [`preprocess`](Self::preprocess).
    pub fn preprocess_files<P: AsRef<Path>>(&self, paths: &[P]) -> Result<PixelValues, Error> {
        let images = paths
            .iter()
            .map(|p| self.open(p))
            .collect::<Result<Vec<_>, _>>()?;
        self.preprocess(&images)
    }

    fn to_rgb_named(&self, image: &DynamicImage, name: &str) -> Result<RgbImage, Error> {
        self.limits
            .check(name, u64::from(image.width()), u64::from(image.height()))?;
        if !self.config.do_convert_rgb {
            return match image {
                DynamicImage::ImageRgb8(rgb) => Ok(rgb.clone()),
                other => Err(Error::NotRgb {
                    name: name.to_string(),
                    format: format!("{:?}", other.color()),
                }),
            };
        }
        convert::convert_named(image, name)
    }
}
