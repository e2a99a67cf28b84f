//! PIL's bicubic resize of an 8-bit image, `Image.resize(size, Image.BICUBIC)` with the default box and
//! `reducing_gap=None`, reproduced bit for bit (Pillow's `libImaging/Resample.c`, read for its arithmetic;
//! the code here is our own).
//!
//! The algorithm, as Pillow runs it on uint8 images:
//! - separable: two passes, each rounded and clamped to uint8; horizontal first (only over the rows the
//!   vertical pass will read), except when the height shrinks by more than twice as many pixels as the width
//!   (Pillow 13, see [`vertical_first`]); a pass is skipped when that side keeps its size;
//! - for each output index `i` of a side going from `n` to `m` pixels: `scale = n / m`, the filter is
//!   widened by `max(scale, 1)` when downscaling (antialiasing), `center = (i + 0.5) * scale`, the input
//!   window is `[trunc(center - support + 0.5), trunc(center + support + 0.5))` clipped to the image, with
//!   `support = 2 * max(scale, 1)`;
//! - the weights are the Keys cubic with `a = -0.5` at `(j - center + 0.5) / max(scale, 1)`, divided by their
//!   sum (in f64), then turned into fixed point with 22 fractional bits (`PRECISION_BITS = 32 - 8 - 2`),
//!   rounding half away from zero;
//! - each output value is `(2^21 + sum(pixel * weight)) >> 22`, clamped to `0..=255`.

use image::RgbImage;

/// Fractional bits of Pillow's fixed-point weights for 8-bit images.
const PRECISION_BITS: u32 = 22;

/// The Keys cubic convolution kernel with `a = -0.5` (Pillow's `bicubic_filter`); support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The fixed-point weights of one side: for output index `i`, input pixels `start[i]..start[i] + len[i]`
/// with weights `weights[i * stride..][..len[i]]`.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    stride: usize,
    weights: Vec<i32>,
}

impl Taps {
    /// Weights for resizing a side of `in_size` pixels to `out_size` (both at least 1).
    fn new(in_size: usize, out_size: usize) -> Self {
        // Pillow takes the side from a float box (exact for any realistic size) and divides in f64.
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = 2.0 * filter_scale;
        let stride = support.ceil() as usize * 2 + 1;
        let inv = 1.0 / filter_scale;
        let mut taps = Self {
            start: Vec::with_capacity(out_size),
            len: Vec::with_capacity(out_size),
            stride,
            weights: vec![0; out_size * stride],
        };
        let mut w = vec![0.0f64; stride];
        for i in 0..out_size {
            let center = (i as f64 + 0.5) * scale;
            // `as` truncates toward zero, like C's (int) cast; a negative start clips to 0 either way.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let len = hi.saturating_sub(lo).min(stride);
            let mut sum = 0.0;
            for (j, wj) in w.iter_mut().enumerate().take(len) {
                // Same operation order as Pillow: (index - center + 0.5) * (1 / filter_scale).
                *wj = bicubic(((j + lo) as f64 - center + 0.5) * inv);
                sum += *wj;
            }
            let row = &mut taps.weights[i * stride..][..len];
            for (k, &wj) in row.iter_mut().zip(&w) {
                let wj = if sum != 0.0 { wj / sum } else { wj };
                *k = to_fixed(wj);
            }
            taps.start.push(lo);
            taps.len.push(len);
        }
        taps
    }

    fn row(&self, i: usize) -> (usize, &[i32]) {
        (
            self.start[i],
            &self.weights[i * self.stride..][..self.len[i]],
        )
    }
}

/// A normalised weight in fixed point, rounded half away from zero (Pillow's `normalize_coeffs_8bpc`).
fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Rounds and clamps an accumulated fixed-point sum (which started at one half) to a byte.
#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL `Image.resize((width, height), Image.BICUBIC)` of an RGB image. Returns the image unchanged (a copy)
/// when the size is the same. `width` and `height` must be at least 1; a zero gives an empty image. No
/// [`Limits`](crate::Limits) apply here: the output takes `width * height * 3` bytes
/// ([`BlipImageProcessor::resize`](crate::BlipImageProcessor::resize) checks them first).
pub fn resize_bicubic(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    if (out_w, out_h) == (in_w, in_h) {
        return image.clone();
    }
    let src = image.as_raw();
    let out = if vertical_first(in_w, in_h, out_w, out_h) {
        let tmp = vertical(src, in_w, &Taps::new(in_h, out_h), 0);
        horizontal(&tmp, in_w, out_w, &Taps::new(in_w, out_w), 0..out_h)
    } else if out_h == in_h {
        horizontal(src, in_w, out_w, &Taps::new(in_w, out_w), 0..in_h)
    } else {
        let taps = Taps::new(in_h, out_h);
        if out_w == in_w {
            vertical(src, in_w, &taps, 0)
        } else {
            // Only the rows the vertical pass reads go through the horizontal pass.
            let first = taps.start[0];
            let last = taps.start[out_h - 1] + taps.len[out_h - 1];
            let tmp = horizontal(src, in_w, out_w, &Taps::new(in_w, out_w), first..last);
            vertical(&tmp, out_w, &taps, first)
        }
    };
    RgbImage::from_raw(width, height, out).unwrap_or_else(|| RgbImage::new(width, height))
}

/// The order of the two passes. Pillow resizes horizontally first, except (since Pillow 13,
/// python-pillow/Pillow#9549, "if height is scaled down significantly more than width, resize vertically
/// first") when the height shrinks by more than twice as many pixels as the width does. The order changes
/// the result because the intermediate image is rounded to uint8. The rule and its strict inequality were
/// established on Pillow 13.0.0 (the pinned reference) over 550 random sizes and the boundary cases; the
/// `pil-image` fixture holds cases on both sides of it.
fn vertical_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    out_h < in_h && (in_h - out_h) as i64 > 2 * (in_w as i64 - out_w as i64)
}

/// Horizontal pass over the input rows `rows` of an image `in_w` pixels wide: `rows.len()` rows of `out_w`.
fn horizontal(
    src: &[u8],
    in_w: usize,
    out_w: usize,
    taps: &Taps,
    rows: std::ops::Range<usize>,
) -> Vec<u8> {
    let mut out = vec![0u8; rows.len() * out_w * 3];
    for (y, dst) in rows.zip(out.chunks_exact_mut(out_w * 3)) {
        let line = &src[y * in_w * 3..][..in_w * 3];
        for (x, px) in dst.chunks_exact_mut(3).enumerate() {
            let (start, k) = taps.row(x);
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (j, &kj) in k.iter().enumerate() {
                let p = &line[(start + j) * 3..][..3];
                for c in 0..3 {
                    acc[c] += i64::from(p[c]) * i64::from(kj);
                }
            }
            for c in 0..3 {
                px[c] = clip8(acc[c]);
            }
        }
    }
    out
}

/// Vertical pass over an image `w` pixels wide whose first row is input row `row0`.
fn vertical(src: &[u8], w: usize, taps: &Taps, row0: usize) -> Vec<u8> {
    let stride = w * 3;
    let mut out = vec![0u8; taps.start.len() * stride];
    for (y, dst) in out.chunks_exact_mut(stride).enumerate() {
        let (start, k) = taps.row(y);
        for (i, d) in dst.iter_mut().enumerate() {
            let mut acc = 1i64 << (PRECISION_BITS - 1);
            for (j, &kj) in k.iter().enumerate() {
                acc += i64::from(src[(start + j - row0) * stride + i]) * i64::from(kj);
            }
            *d = clip8(acc);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point_within_rounding() {
        for (n, m) in [(97, 5), (5, 97), (30, 30), (37, 26), (1, 7), (7, 1)] {
            let taps = Taps::new(n, m);
            for i in 0..m {
                let (_, k) = taps.row(i);
                let total: i64 = k.iter().map(|&v| i64::from(v)).sum();
                assert!(
                    (total - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{n}->{m} at {i}: {total}"
                );
            }
        }
    }

    #[test]
    fn kernel_values() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert_eq!(bicubic(0.5), 0.5625);
        assert_eq!(bicubic(-1.5), -0.0625);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(13, 9, image::Rgb([7, 128, 250]));
        let out = resize_bicubic(&img, 5, 21);
        assert!(out.pixels().all(|p| p.0 == [7, 128, 250]));
    }
}
