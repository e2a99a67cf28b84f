//! Decoding image files and bytes with the `image` crate (PNG, JPEG, WebP, GIF first frame, BMP, TIFF), the
//! counterpart of `PIL.Image.open(...).load()`, with limits that refuse decompression bombs before the decoder
//! allocates the pixels.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

use crate::error::{Error, MEMORY};

/// Size limits applied to every image before its pixels are allocated (decoded files and bytes, raw buffers,
/// and the output of a shortest-edge resize).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most pixels (`width * height`) an image may have. Default 89,478,485: Pillow's
    /// `Image.MAX_IMAGE_PIXELS` (`1024 * 1024 * 1024 // 4 // 3`), above which Pillow warns of a
    /// decompression bomb (and refuses at twice that); blip2 refuses at once.
    pub max_pixels: u64,
    /// Longest side in pixels. Default 65,535 (the largest side a JPEG or WebP can have).
    pub max_side: u32,
    /// Most bytes the decoder may allocate (the `image` crate's `Limits::max_alloc`). Default 1 GiB, enough
    /// for a 16-bit RGBA image at `max_pixels`.
    pub max_alloc: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pixels: 89_478_485,
            max_side: 65_535,
            max_alloc: 1 << 30,
        }
    }
}

impl Limits {
    /// No practical limit (for trusted inputs only).
    pub fn none() -> Self {
        Self {
            max_pixels: u64::MAX,
            max_side: u32::MAX,
            max_alloc: u64::MAX,
        }
    }

    /// Checks a `width x height` image against the limits; `name` is the file or `<memory>`.
    ///
    /// # Errors
    /// [`Error::ZeroSize`] for an empty image, [`Error::TooLarge`] naming the limit exceeded.
    pub fn check(&self, name: &str, width: u64, height: u64) -> Result<(), Error> {
        let too_large = |limit: u64, what: &'static str| Error::TooLarge {
            name: name.to_string(),
            width,
            height,
            limit,
            what,
        };
        if width == 0 || height == 0 {
            return Err(Error::ZeroSize {
                name: name.to_string(),
                width,
                height,
            });
        }
        if width > u64::from(self.max_side) {
            return Err(too_large(u64::from(self.max_side), "pixels of width"));
        }
        if height > u64::from(self.max_side) {
            return Err(too_large(u64::from(self.max_side), "pixels of height"));
        }
        if width.saturating_mul(height) > self.max_pixels {
            return Err(too_large(self.max_pixels, "pixels"));
        }
        Ok(())
    }

    /// The decoder's own limit: memory only. Width and height are checked by [`Limits::check`] right after
    /// the header is read, so that the error can name the size.
    fn for_image_crate(&self) -> image::Limits {
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(self.max_alloc);
        limits
    }
}

/// Reads and decodes an image file (format from its content, not its name).
///
/// # Errors
/// [`Error::Io`] for a missing or unreadable file; [`Error::UnsupportedFormat`], [`Error::Decode`],
/// [`Error::TooLarge`] or [`Error::ZeroSize`] naming the file.
pub fn decode_file(path: impl AsRef<Path>, limits: &Limits) -> Result<DynamicImage, Error> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_named(&bytes, &path.display().to_string(), limits)
}

/// Decodes an image held in memory (errors name `<memory>`).
///
/// # Errors
/// As [`decode_file`].
pub fn decode_bytes(bytes: &[u8], limits: &Limits) -> Result<DynamicImage, Error> {
    decode_named(bytes, MEMORY, limits)
}

pub(crate) fn decode_named(
    bytes: &[u8],
    name: &str,
    limits: &Limits,
) -> Result<DynamicImage, Error> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Decode {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
    if reader.format().is_none() {
        return Err(Error::UnsupportedFormat {
            name: name.to_string(),
            reason: "unknown file signature".to_string(),
        });
    }
    if reader.format() == Some(ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        // zune-jpeg fills the missing part of a truncated JPEG with gray; PIL refuses it ("image file is
        // truncated"), and so do we.
        return Err(Error::Decode {
            name: name.to_string(),
            reason: "the JPEG data ends before its end-of-image marker".to_string(),
        });
    }
    reader.limits(limits.for_image_crate());
    // The header alone gives the size: check it before anything is allocated for the pixels.
    let decoder = reader.into_decoder().map_err(|e| image_error(name, e))?;
    let (width, height) = decoder.dimensions();
    limits.check(name, u64::from(width), u64::from(height))?;
    if decoder.total_bytes() > limits.max_alloc {
        return Err(Error::TooLarge {
            name: name.to_string(),
            width: u64::from(width),
            height: u64::from(height),
            limit: limits.max_alloc,
            what: "bytes of memory",
        });
    }
    DynamicImage::from_decoder(decoder).map_err(|e| image_error(name, e))
}

/// Whether a JPEG's last scan is followed by an end-of-image marker (`FF D9`). Markers cannot occur inside
/// entropy-coded data (an `FF` there is followed by `00` or a restart marker), so the last `FF DA` (start of
/// scan) is the main image's, after any embedded thumbnail, and a complete file has `FF D9` after it;
/// trailing bytes after the marker are allowed.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

fn image_error(name: &str, e: ImageError) -> Error {
    let name = name.to_string();
    match e {
        ImageError::Unsupported(u) => Error::UnsupportedFormat {
            name,
            reason: u.to_string(),
        },
        ImageError::Limits(l) => Error::DecoderLimit {
            name,
            reason: l.to_string(),
        },
        other => Error::Decode {
            name,
            reason: other.to_string(),
        },
    }
}
