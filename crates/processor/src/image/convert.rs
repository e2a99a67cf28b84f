//! Conversion to 8-bit RGB as transformers' `convert_to_rgb` (`image_transforms.py`, 5.24) does it on a PIL
//! image, with PIL's own pixel arithmetic:
//!
//! - an image with an alpha band (RGBA, LA, a palette or colour key with transparency) becomes RGBA and is
//!   composited onto opaque white with `PIL.Image.alpha_composite` (integer arithmetic, see
//!   [`over_white`]), then the alpha is dropped;
//! - grayscale is replicated to the three channels;
//! - 16 bits per channel are reduced the way PIL opens such PNGs: 16-bit grayscale becomes PIL mode `I;16`,
//!   whose conversion to RGB clips at 255 (`min(v, 255)`, not a rescale); 16-bit RGB, RGBA and gray+alpha are
//!   opened as 8-bit modes keeping the high byte (`v >> 8`).
//!
//! The `image` crate has already expanded palettes, colour keys (`tRNS`) and sub-byte gray levels the way
//! PIL's conversions do; the fixtures check it on every kind of image.

use image::{DynamicImage, RgbImage};

use crate::error::{Error, MEMORY};

/// PIL's `Image.alpha_composite(white, pixel)` for one channel value `c` with alpha `a`, as Pillow's
/// `AlphaComposite.c` computes it: with an opaque white destination its coefficients become `a * 128` for
/// the source and `(255 - a) * 128` for the destination (7 fractional bits), and the sum is divided by 255
/// with rounding through `((t >> 8) + t) >> 8`. A fully transparent pixel is plain white.
///
/// Over an opaque white background this integer arithmetic comes out equal to rounding the exact
/// `(c * a + 255 * (255 - a)) / 255` to the nearest integer (a unit test checks all 65,536 pairs, the
/// `pil-image` fixture checks them against Pillow); a float blend that truncates, or that works in
/// premultiplied or 0..1 units and rounds late, is off by one in places.
#[inline]
pub fn over_white(c: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    let (c, a) = (u32::from(c), u32::from(a));
    let t = c * a * 128 + 255 * (255 - a) * 128 + (0x80 << 7);
    // At most 255 * 255 * 128 + 0x80 * 128, so the result fits in a byte.
    ((((t >> 8) + t) >> 8) >> 7) as u8
}

/// Pillow's `cmyk2rgb` (`Convert.c`) for one channel: `ink` is C, M or Y and `black` is K, as PIL holds them
/// in mode `CMYK`; the result is R, G or B. With `nk = 255 - black` it is `nk - ink * nk / 255`, the
/// division rounded through Pillow's `MULDIV255` (`t = a * b + 128; ((t >> 8) + t) >> 8`). PIL reads a CMYK
/// JPEG as Adobe-inverted (raw mode `CMYK;I`), so a JPEG's stored samples are inverted before this.
/// The `pil-image` fixture checks all 65,536 (ink, black) pairs against Pillow.
#[inline]
pub fn cmyk_to_rgb(ink: u8, black: u8) -> u8 {
    let nk = 255 - u32::from(black);
    let t = u32::from(ink) * nk + 128;
    // `((t >> 8) + t) >> 8` is at most `nk`: the result is in 0..=255, as Pillow's CLIP8 keeps it.
    nk.saturating_sub(((t >> 8) + t) >> 8) as u8
}

/// HF `convert_to_rgb` for a decoded image (see the module doc for the rules). `name` (a file or
/// `<memory>`) is only used in errors.
///
/// # Errors
/// [`Error::ZeroSize`] for an image without pixels; [`Error::UnsupportedPixels`] for floating-point
/// images, which PIL would not open as RGB either.
pub fn convert_to_rgb(image: &DynamicImage) -> Result<RgbImage, Error> {
    convert_named(image, MEMORY)
}

pub(crate) fn convert_named(image: &DynamicImage, name: &str) -> Result<RgbImage, Error> {
    let (width, height) = (image.width(), image.height());
    if width == 0 || height == 0 {
        return Err(Error::ZeroSize {
            name: name.to_string(),
            width: u64::from(width),
            height: u64::from(height),
        });
    }
    let pixels = width as usize * height as usize;
    let mut out = Vec::with_capacity(pixels * 3);
    match image {
        DynamicImage::ImageRgb8(img) => out.extend_from_slice(img.as_raw()),
        DynamicImage::ImageLuma8(img) => {
            for &v in img.as_raw() {
                out.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageLumaA8(img) => {
            for p in img.as_raw().chunks_exact(2) {
                let v = over_white(p[0], p[1]);
                out.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageRgba8(img) => {
            for p in img.as_raw().chunks_exact(4) {
                let a = p[3];
                out.extend_from_slice(&[
                    over_white(p[0], a),
                    over_white(p[1], a),
                    over_white(p[2], a),
                ]);
            }
        }
        // PIL opens 16-bit grayscale as `I;16`; its RGB conversion clips.
        DynamicImage::ImageLuma16(img) => {
            for &v in img.as_raw() {
                let v = v.min(255) as u8;
                out.extend_from_slice(&[v, v, v]);
            }
        }
        // The other 16-bit layouts PIL reads as 8-bit modes keeping the high byte.
        DynamicImage::ImageLumaA16(img) => {
            for p in img.as_raw().chunks_exact(2) {
                let v = over_white(high(p[0]), high(p[1]));
                out.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageRgb16(img) => out.extend(img.as_raw().iter().map(|&v| high(v))),
        DynamicImage::ImageRgba16(img) => {
            for p in img.as_raw().chunks_exact(4) {
                let a = high(p[3]);
                out.extend_from_slice(&[
                    over_white(high(p[0]), a),
                    over_white(high(p[1]), a),
                    over_white(high(p[2]), a),
                ]);
            }
        }
        other => {
            return Err(Error::UnsupportedPixels {
                name: name.to_string(),
                format: format!("{:?}", other.color()),
            });
        }
    }
    // The buffer has exactly `width * height * 3` bytes by construction.
    RgbImage::from_raw(width, height, out).ok_or_else(|| Error::ZeroSize {
        name: name.to_string(),
        width: u64::from(width),
        height: u64::from(height),
    })
}

#[inline]
fn high(v: u16) -> u8 {
    (v >> 8) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_is_identity_and_transparent_is_white() {
        for c in 0..=255u8 {
            assert_eq!(over_white(c, 255), c);
            assert_eq!(over_white(c, 0), 255);
        }
    }

    #[test]
    fn cmyk_without_ink_is_the_inverted_black() {
        for v in 0..=255u8 {
            assert_eq!(cmyk_to_rgb(0, v), 255 - v);
            assert_eq!(cmyk_to_rgb(v, 0), 255 - v);
            assert_eq!(cmyk_to_rgb(v, 255), 0);
        }
    }

    #[test]
    fn equals_exact_rounding_over_white() {
        for c in 0..=255u32 {
            for a in 1..=255u32 {
                // Round half up of n / 255 in integers (255 is odd: no exact halves).
                let n = c * a + 255 * (255 - a);
                let exact = (2 * n + 255) / 510;
                assert_eq!(
                    u32::from(over_white(c as u8, a as u8)),
                    exact,
                    "c {c}, a {a}"
                );
            }
        }
    }
}
