//! Decoding image files and bytes, the counterpart of `PIL.Image.open(...).load()`, with limits that refuse
//! decompression bombs before the decoder allocates the pixels.
//!
//! JPEG goes through libjpeg-turbo, the library Pillow uses, set up as Pillow sets it up (the `jpeg`
//! module; cargo feature `libjpeg-turbo`, on by default), so its pixels equal Pillow's bit for bit. The other
//! formats (PNG, WebP, GIF first frame, BMP, TIFF), and JPEG when the feature is off, go through the `image`
//! crate; its JPEG decoder (zune-jpeg) differs from Pillow's by a few levels (docs/numerics.md).
//! A truncated JPEG is refused either way, as Pillow refuses it.

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

use crate::error::{Error, MEMORY};

/// Size limits applied to every image before its pixels are allocated (decoded files and bytes, raw buffers,
/// and the output of a resize).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most pixels (`width * height`) an image may have. Default 89,478,485: Pillow's
    /// `Image.MAX_IMAGE_PIXELS` (`1024 * 1024 * 1024 // 4 // 3`), above which Pillow warns of a
    /// decompression bomb (and refuses at twice that); blip2 refuses at once.
    pub max_pixels: u64,
    /// Longest side in pixels. Default 65,535 (the largest side a JPEG or WebP can have).
    pub max_side: u32,
    /// Most bytes the decoder may allocate (the `image` crate's `Limits::max_alloc`; for libjpeg-turbo,
    /// the output plus an upper bound of a progressive JPEG's coefficient buffers). Default 1 GiB, enough
    /// for a 16-bit RGBA image at `max_pixels`.
    pub max_alloc: u64,
    /// Most bytes an encoded image (a file, or bytes in memory) may have: files are read whole before they
    /// are decoded, so this bounds the memory a file can take before its header is even checked. Default
    /// 512 MiB: an uncompressed 8-bit RGBA image at `max_pixels` takes 358 MB, a 50-megapixel camera JPEG about
    /// 30 MB. The format signature is checked first, on the first bytes, so `/dev/zero` or a text file is
    /// refused without being read.
    pub max_file_bytes: u64,
    /// Most pixels a resize may produce (the processor config's `size`: BLIP-2 uses 224 x 224 or 364 x 364).
    /// Default 16,777,216 (4096 x 4096, whose pixel values take 201 MB). A config asking for more is refused
    /// before any pixel is computed: resizing every image to 8000 x 8000 costs seconds and gigabytes per image
    /// for no model that exists (found by the `config_processor` fuzz target).
    pub max_resize_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pixels: 89_478_485,
            max_side: 65_535,
            max_alloc: 1 << 30,
            max_file_bytes: 512 << 20,
            max_resize_pixels: 1 << 24,
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
            max_file_bytes: u64::MAX,
            max_resize_pixels: u64::MAX,
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

    /// Checks the `width x height` output of a resize: [`check`](Self::check), then
    /// [`max_resize_pixels`](Self::max_resize_pixels).
    ///
    /// # Errors
    /// As [`check`](Self::check); [`Error::TooLarge`] past `max_resize_pixels`.
    pub fn check_resize(&self, name: &str, width: u64, height: u64) -> Result<(), Error> {
        self.check(name, width, height)?;
        if width.saturating_mul(height) > self.max_resize_pixels {
            return Err(Error::TooLarge {
                name: name.to_string(),
                width,
                height,
                limit: self.max_resize_pixels,
                what: "pixels of resize output",
            });
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
/// The file is read in two steps: its first bytes, whose format signature must be one the decoders know,
/// then the rest, at most [`Limits::max_file_bytes`] in all (a file the file system says is larger is refused
/// before it is read; a pipe or device, before it passes the limit).
///
/// # Errors
/// [`Error::Io`] for a missing or unreadable file; [`Error::UnsupportedFormat`], [`Error::FileTooLarge`],
/// [`Error::Decode`], [`Error::TooLarge`] or [`Error::ZeroSize`] naming the file.
pub fn decode_file(path: impl AsRef<Path>, limits: &Limits) -> Result<DynamicImage, Error> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let bytes = read_image_file(path, &name, limits)?;
    decode_named(&bytes, &name, limits)
}

/// Decodes an image held in memory (errors name `<memory>`).
///
/// # Errors
/// As [`decode_file`].
pub fn decode_bytes(bytes: &[u8], limits: &Limits) -> Result<DynamicImage, Error> {
    decode_named(bytes, MEMORY, limits)
}

/// Bytes enough for every signature `image::guess_format` knows (the longest, WebP's `RIFF....WEBP` and
/// AVIF's `ftyp` box, are 12 bytes).
const SIGNATURE_BYTES: usize = 32;

/// Reads an image file whole, after checking its signature and within [`Limits::max_file_bytes`].
fn read_image_file(path: &Path, name: &str, limits: &Limits) -> Result<Vec<u8>, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // A regular file's length is known up front; a pipe's or a device's (stdin, /dev/zero) is not.
    let known = file
        .metadata()
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len());
    let mut reader = file.take(limits.max_file_bytes.saturating_add(1));
    let mut bytes = Vec::with_capacity(SIGNATURE_BYTES);
    (&mut reader)
        .take(SIGNATURE_BYTES as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    check_signature(&bytes, name)?;
    let too_large = |size: u64| Error::FileTooLarge {
        name: name.to_string(),
        size,
        limit: limits.max_file_bytes,
    };
    if let Some(len) = known
        && len > limits.max_file_bytes
    {
        return Err(too_large(len));
    }
    if let Some(len) = known {
        bytes.reserve(
            usize::try_from(len)
                .unwrap_or(0)
                .saturating_sub(bytes.len()),
        );
    }
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Refuses bytes whose first bytes are no image signature the `image` crate knows.
fn check_signature(head: &[u8], name: &str) -> Result<(), Error> {
    match image::guess_format(head) {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::UnsupportedFormat {
            name: name.to_string(),
            reason: "unknown file signature".to_string(),
        }),
    }
}

pub(crate) fn decode_named(
    bytes: &[u8],
    name: &str,
    limits: &Limits,
) -> Result<DynamicImage, Error> {
    check_signature(bytes.get(..SIGNATURE_BYTES).unwrap_or(bytes), name)?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(Error::FileTooLarge {
            name: name.to_string(),
            size: bytes.len() as u64,
            limit: limits.max_file_bytes,
        });
    }
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
    if reader.format() == Some(ImageFormat::Jpeg) {
        let data = jpeg_data(bytes);
        if data == JpegData::Truncated {
            // Both decoders would fill the missing part of a truncated JPEG (libjpeg with a warning,
            // zune-jpeg silently); PIL refuses it ("image file is truncated"), and so do we.
            return Err(Error::Decode {
                name: name.to_string(),
                reason: "the JPEG data ends before the image does (truncated file)".to_string(),
            });
        }
        #[cfg(feature = "libjpeg-turbo")]
        return super::jpeg::decode(bytes, name, limits, data);
    }
    if reader.format() == Some(ImageFormat::Png)
        && let Some(reason) = png_palette_error(bytes)
    {
        return Err(Error::Decode {
            name: name.to_string(),
            reason,
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

/// What is wrong with a PNG's palette, for the two faults the `png` crate (0.18) lets through and then panics
/// on while expanding the palette to RGBA (found by the `image` fuzz target): a `PLTE` chunk whose length is not
/// a whole number of RGB entries, and a `tRNS` chunk of an indexed image with more alpha values than the
/// palette has entries. The PNG specification forbids both; libpng refuses them too. Walks the chunks up to the
/// first `IDAT` (both must come before it); a file that ends early is left to the decoder.
fn png_palette_error(bytes: &[u8]) -> Option<String> {
    const IHDR_COLOR_TYPE: usize = 8 + 8 + 9;
    const INDEXED: u8 = 3;
    let indexed = bytes.get(IHDR_COLOR_TYPE) == Some(&INDEXED);
    let mut entries = None;
    let mut pos = 8; // after the signature
    while let Some(head) = bytes.get(pos..pos + 8) {
        let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        match &head[4..8] {
            b"PLTE" if !length.is_multiple_of(3) => {
                return Some(format!(
                    "corrupt PNG palette: the PLTE chunk holds {length} bytes, not a whole number of RGB entries"
                ));
            }
            b"PLTE" => entries = Some(length / 3),
            b"tRNS" if indexed => {
                if let Some(entries) = entries.filter(|&e| length > e) {
                    return Some(format!(
                        "corrupt PNG transparency: the tRNS chunk holds {length} alpha values for a palette of \
                         {entries} entries"
                    ));
                }
            }
            b"IDAT" | b"IEND" => break,
            _ => {}
        }
        // Length, type, data and CRC.
        pos = pos.checked_add(length)?.checked_add(12)?;
    }
    None
}

/// How a JPEG's data is laid out, as far as truncation is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JpegData {
    /// The data ends before libjpeg has read what it needs: Pillow raises "image file is truncated".
    Truncated,
    /// One sequential scan holds every component: libjpeg decodes it row by row, and all rows are out once
    /// that scan's data ends at a marker.
    SingleScan,
    /// Progressive, or sequential with a scan per component: libjpeg keeps every coefficient and needs the
    /// data up to the end-of-image marker.
    MultiScan,
}

/// Walks a JPEG's segments as libjpeg reads them (skipping stray bytes between segments, segments by their
/// length, entropy-coded data up to the next marker that is not a restart marker), so that an embedded
/// thumbnail or an `FF D9` inside a segment does not count as the end.
///
/// Pillow feeds libjpeg the file through a suspending source and raises "image file is truncated" when
/// libjpeg asks for bytes the file does not have before every row is out; after the last row it stops
/// reading. So a multi-scan JPEG is complete when the walk reaches the end-of-image marker, and a
/// single-scan one as soon as its scan's data ends at a marker (a marker inside damaged data ends the scan
/// early; libjpeg fills the rest, with a warning). A file that ends inside its last scan is truncated here;
/// Pillow accepts some of those when libjpeg's read-ahead happens not to ask for more (a gray file without
/// its final `FF D9`, say), and blip2 refuses them all. Bytes after the end are ignored, as in Pillow.
pub(crate) fn jpeg_data(bytes: &[u8]) -> JpegData {
    let mut pos = 2; // after SOI (`FF D8`), which the format detection has seen
    // From the frame header: progressive, number of components.
    let mut frame = (false, 0u8);
    // Whether the first scan is a single sequential scan of every component (known at the first SOS).
    let mut single = None;
    loop {
        // The next marker: stray bytes and fill bytes (`FF FF`) are skipped, as libjpeg does (with a
        // warning); `FF 00` outside entropy-coded data is a stray pair too.
        let Some(offset) = bytes
            .get(pos..)
            .and_then(|b| b.iter().position(|&v| v == 0xFF))
        else {
            return JpegData::Truncated;
        };
        pos += offset;
        while bytes.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = bytes.get(pos) else {
            return JpegData::Truncated;
        };
        pos += 1;
        match marker {
            0xD9 if single == Some(true) => return JpegData::SingleScan,
            0xD9 => return JpegData::MultiScan,
            // Markers without a length: stray pair, TEM, RSTn, SOI.
            0x00 | 0x01 | 0xD0..=0xD8 => {}
            _ => {
                let Some(length) = bytes.get(pos..pos + 2) else {
                    return JpegData::Truncated;
                };
                let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
                if length < 2 {
                    // Malformed: libjpeg reports it.
                    return JpegData::MultiScan;
                }
                let segment = pos + 2;
                pos += length;
                if pos > bytes.len() {
                    return JpegData::Truncated;
                }
                match marker {
                    // Start of frame (not DHT `C4`, JPG `C8`, DAC `CC`): progressive `C2 C6 CA CE`.
                    0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                        let components = bytes.get(segment + 5).copied().unwrap_or(0);
                        frame = (matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE), components);
                    }
                    0xDA => {
                        let components = bytes.get(segment).copied().unwrap_or(0);
                        let first = single.is_none();
                        let whole = !frame.0 && components == frame.1;
                        single.get_or_insert(whole);
                        // Entropy-coded data: `FF 00` is a stuffed byte and `FF D0`..`FF D7` restart
                        // markers; any other `FF xx` (after fill bytes) ends the scan.
                        let mut i = pos;
                        loop {
                            match (bytes.get(i), bytes.get(i + 1)) {
                                (Some(0xFF), Some(0x00 | 0xD0..=0xD7 | 0xFF)) => i += 1,
                                (Some(0xFF), Some(_)) => break,
                                (Some(_), _) => i += 1,
                                (None, _) => return JpegData::Truncated,
                            }
                        }
                        if first && whole {
                            return JpegData::SingleScan;
                        }
                        pos = i;
                    }
                    _ => {}
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A PNG of `chunks` (type, data) after a signature, each with its CRC.
    fn png(chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in bytes {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 {
                        (crc >> 1) ^ 0xEDB8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in chunks {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let start = out.len();
            out.extend_from_slice(*kind);
            out.extend_from_slice(data);
            let crc = crc32(&out[start..]);
            out.extend_from_slice(&crc.to_be_bytes());
        }
        out
    }

    /// A 2 x 1 indexed PNG (8 bits a pixel) with this palette and transparency.
    fn indexed_png(palette: Vec<u8>, trns: Option<Vec<u8>>) -> Vec<u8> {
        // IHDR: width 2, height 1, bit depth 8, color type 3, deflate, filter 0, no interlace.
        let ihdr = vec![0, 0, 0, 2, 0, 0, 0, 1, 8, 3, 0, 0, 0];
        // One row (filter byte 0, pixels 0 and 1) in a stored deflate block, zlib-wrapped.
        let row = [0u8, 0, 1];
        let mut idat = vec![0x78, 0x01, 0x01, 3, 0, !3, 0xFF];
        idat.extend_from_slice(&row);
        let (mut a, mut b) = (1u32, 0u32);
        for &x in &row {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        idat.extend_from_slice(&((b << 16) | a).to_be_bytes());
        let mut chunks: Vec<(&[u8; 4], Vec<u8>)> = vec![(b"IHDR", ihdr), (b"PLTE", palette)];
        if let Some(trns) = trns {
            chunks.push((b"tRNS", trns));
        }
        chunks.push((b"IDAT", idat));
        chunks.push((b"IEND", Vec::new()));
        png(&chunks)
    }

    #[test]
    fn corrupt_png_palettes_are_errors_not_panics() {
        let limits = Limits::default();
        // A valid palette and transparency decode.
        let good = indexed_png(vec![255, 0, 0, 0, 0, 255], Some(vec![128]));
        let image = decode_bytes(&good, &limits).expect("a valid indexed PNG decodes");
        assert_eq!(image.to_rgba8().as_raw(), &[255, 0, 0, 128, 0, 0, 255, 255]);
        // A palette of 7 bytes (the fuzz target's find was 206), and more alpha values than entries: the
        // `png` crate panics on both; here they are errors naming the chunk.
        for (bytes, chunk) in [
            (indexed_png(vec![255, 0, 0, 0, 0, 255, 7], None), "PLTE"),
            (
                indexed_png(vec![255, 0, 0, 0, 0, 255], Some(vec![1, 2, 3])),
                "tRNS",
            ),
        ] {
            match decode_bytes(&bytes, &limits) {
                Err(Error::Decode { reason, .. }) => assert!(reason.contains(chunk), "{reason}"),
                other => panic!("expected a decode error naming {chunk}, got {other:?}"),
            }
        }
        // Truncated inside the chunk walk: left to the decoder, which reports it.
        assert!(decode_bytes(&good[..40], &limits).is_err());
    }

    #[test]
    fn the_walk_follows_segments_and_scans() {
        use JpegData::{MultiScan, SingleScan, Truncated};

        // SOI, a COM segment holding `FF D9`, a progressive frame of one component, SOS with entropy data
        // holding a stuffed byte, a restart marker and fill bytes, EOI.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xFE, 0x00, 0x04, 0xFF, 0xD9];
        jpeg.extend_from_slice(&[0xFF, 0xC2, 0x00, 0x0B, 8, 0, 1, 0, 1, 1, 1, 0x11, 0]);
        jpeg.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 1, 1, 0, 0, 0x3F, 0]);
        jpeg.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56, 0xFF, 0xFF]);
        assert_eq!(jpeg_data(&jpeg), Truncated, "no EOI yet");
        jpeg.extend_from_slice(&[0xFF, 0xD9]);
        assert_eq!(jpeg_data(&jpeg), MultiScan);
        // Trailing bytes after EOI are fine.
        jpeg.extend_from_slice(b"trailer");
        assert_eq!(jpeg_data(&jpeg), MultiScan);
        // Cut inside the COM segment (its `FF D9` is not an end marker), the frame header, the scan, at
        // the EOI.
        for cut in [7, 12, 22, 30, 41] {
            assert_eq!(jpeg_data(&jpeg[..cut]), Truncated, "cut at {cut}");
        }
        // A marker inside the scan (damaged data) whose segment runs past the end: libjpeg needs more.
        let mut damaged = jpeg[..42].to_vec();
        damaged[41] = 0xE1;
        damaged.extend_from_slice(&[0x40, 0x00]);
        assert_eq!(jpeg_data(&damaged), Truncated);
        // As a sequential (baseline) frame, one scan holds the component: every row is out once its data
        // ends at a marker, whatever follows.
        jpeg[9] = 0xC0;
        damaged[9] = 0xC0;
        assert_eq!(jpeg_data(&jpeg), SingleScan);
        assert_eq!(jpeg_data(&damaged), SingleScan);
        assert_eq!(jpeg_data(&jpeg[..41]), Truncated);
        // A segment length running past the end.
        assert_eq!(
            jpeg_data(&[0xFF, 0xD8, 0xFF, 0xE1, 0x10, 0x00, 0x00]),
            Truncated
        );
        assert_eq!(jpeg_data(&[0xFF, 0xD8]), Truncated);
    }
}
