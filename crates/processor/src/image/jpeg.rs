//! JPEG decoding with libjpeg-turbo (3.1.0, built from the sources vendored in `turbojpeg-sys`) through its
//! TurboJPEG 3 API, set up as Pillow's `JpegDecode.c` sets up libjpeg: the library's defaults (accurate
//! integer IDCT `JDCT_ISLOW`, fancy chroma upsampling), no scaling, output by component count as
//! `JpegImagePlugin` picks the mode: 1 component gives gray (`L`), 3 give RGB (YCbCr or RGB files), 4 give
//! CMYK, which Pillow reads as Adobe-inverted (`CMYK;I`) and blip2 converts to RGB with Pillow's formula
//! ([`cmyk_to_rgb`]). The pixels equal Pillow 13's bit for bit on the fixtures (baseline, progressive,
//! restart intervals, 4:4:4, 4:2:2, 4:2:0, gray, CMYK, odd sizes), with or without libjpeg-turbo's SIMD code.
//!
//! Warnings are handled as Pillow handles them. Pillow raises "image file is truncated" when libjpeg asks
//! for more data than the file has before every row is out, and `decode::jpeg_data` refuses such files
//! before decoding. Corrupt but complete data (a damaged scan, a marker in the middle of entropy-coded
//! data, stray bytes between segments) makes libjpeg warn and fill what it cannot decode; Pillow ignores the
//! warnings and returns those pixels, and so does blip2. A fatal libjpeg error is an [`Error::Decode`]
//! naming the file. The library never aborts the process (TurboJPEG catches libjpeg's errors with
//! `setjmp`/`longjmp` inside the C code and returns them) and never prints.

use std::ffi::{CStr, c_int, c_long};

use image::{DynamicImage, GrayImage, RgbImage};
use turbojpeg_sys as tj;

use super::convert::cmyk_to_rgb;
use super::decode::{JpegData, Limits};
use crate::error::Error;

/// Decodes a JPEG that is not truncated (`layout` from `decode::jpeg_data`) as Pillow does.
pub(crate) fn decode(
    bytes: &[u8],
    name: &str,
    limits: &Limits,
    layout: JpegData,
) -> Result<DynamicImage, Error> {
    let decode_error = |reason: String| Error::Decode {
        name: name.to_string(),
        reason,
    };
    let size = tj::size_t::try_from(bytes.len())
        .map_err(|_| decode_error("the file is too large for libjpeg-turbo".to_string()))?;
    // A memory backstop for libjpeg's coefficient buffers, in megabytes, rounded up: the estimate below
    // is an upper bound of them and is checked first, with the error naming the limit. TurboJPEG
    // multiplies it by 2^20 in a C `long`; a limit past that (32-bit `long` on Windows) means none (0).
    let megabytes = limits.max_alloc.div_ceil(1 << 20).max(1);
    let fits = megabytes
        .checked_mul(1 << 20)
        .is_some_and(|bytes| c_long::try_from(bytes).is_ok());
    let megabytes = c_int::try_from(megabytes)
        .ok()
        .filter(|_| fits)
        .unwrap_or(0);

    // The header alone gives the size: check it before anything is allocated for the pixels.
    // SAFETY: `bytes` is a live slice of `size` bytes; the handle is valid during the call.
    let handle = run(megabytes, |h| unsafe {
        tj::tj3DecompressHeader(h, bytes.as_ptr(), size)
    })
    .map_err(decode_error)?;
    let width = handle.get(tj::TJPARAM_TJPARAM_JPEGWIDTH);
    let height = handle.get(tj::TJPARAM_TJPARAM_JPEGHEIGHT);
    let (Ok(width_u), Ok(height_u)) = (u32::try_from(width), u32::try_from(height)) else {
        // libjpeg found tables but no frame before the end-of-image marker.
        return Err(decode_error("the JPEG data holds no image".to_string()));
    };
    limits.check(name, u64::from(width_u), u64::from(height_u))?;

    let precision = handle.get(tj::TJPARAM_TJPARAM_PRECISION);
    if precision != 8 {
        // Pillow refuses these too ("cannot handle 12-bit layers").
        return Err(Error::UnsupportedFormat {
            name: name.to_string(),
            reason: format!("{precision}-bit JPEG samples; only 8-bit JPEGs are supported"),
        });
    }
    let colorspace = handle.get(tj::TJPARAM_TJPARAM_COLORSPACE);
    let (format, channels) = match u32::try_from(colorspace) {
        Ok(tj::TJCS_TJCS_GRAY) => (tj::TJPF_TJPF_GRAY, 1u64),
        Ok(tj::TJCS_TJCS_RGB | tj::TJCS_TJCS_YCbCr) => (tj::TJPF_TJPF_RGB, 3),
        Ok(tj::TJCS_TJCS_CMYK | tj::TJCS_TJCS_YCCK) => (tj::TJPF_TJPF_CMYK, 4),
        _ => {
            return Err(Error::UnsupportedFormat {
                name: name.to_string(),
                reason: format!("JPEG colour space {colorspace}"),
            });
        }
    };
    let (w, h) = (u64::from(width_u), u64::from(height_u));
    let output = w * h * channels;
    // A progressive (or multi-scan) JPEG keeps every DCT coefficient until its last scan: 2 bytes per
    // sample, for at most all components at full size plus a padded MCU row and column.
    let coefficients = if layout == JpegData::SingleScan {
        0
    } else {
        (w + 32) * (h + 32) * channels * 2
    };
    if output + coefficients > limits.max_alloc {
        return Err(Error::TooLarge {
            name: name.to_string(),
            width: w,
            height: h,
            limit: limits.max_alloc,
            what: "bytes of memory",
        });
    }
    let len = usize::try_from(output)
        .map_err(|_| decode_error("the image does not fit in memory".to_string()))?;
    let mut pixels = Vec::new();
    pixels
        .try_reserve_exact(len)
        .map_err(|e| Error::DecoderLimit {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
    pixels.resize(len, 0u8);
    drop(handle);
    // SAFETY: `pixels` holds `width * height * channels` bytes, the size of a `width x height` image in
    // `format` with the default pitch (0: rows packed); `bytes` as above. TurboJPEG reads the same header
    // again (it is the same data).
    run(megabytes, |h| unsafe {
        tj::tj3Decompress8(h, bytes.as_ptr(), size, pixels.as_mut_ptr(), 0, format)
    })
    .map_err(decode_error)?;

    let image = match channels {
        1 => GrayImage::from_raw(width_u, height_u, pixels).map(DynamicImage::ImageLuma8),
        3 => RgbImage::from_raw(width_u, height_u, pixels).map(DynamicImage::ImageRgb8),
        _ => {
            // libjpeg returns the stored CMYK samples; Pillow reads them as Adobe-inverted ("CMYK;I")
            // and converts that to RGB.
            let rgb = pixels
                .chunks_exact(4)
                .flat_map(|p| {
                    let k = !p[3];
                    [
                        cmyk_to_rgb(!p[0], k),
                        cmyk_to_rgb(!p[1], k),
                        cmyk_to_rgb(!p[2], k),
                    ]
                })
                .collect();
            RgbImage::from_raw(width_u, height_u, rgb).map(DynamicImage::ImageRgb8)
        }
    };
    // The buffers have exactly `width * height * channels` bytes by construction.
    image.ok_or_else(|| decode_error("decoded buffer of the wrong size".to_string()))
}

/// A TurboJPEG decompression instance, destroyed on drop.
struct Handle(tj::tjhandle);

impl Handle {
    fn new(megabytes: c_int, stop_on_warning: bool) -> Result<Self, String> {
        // SAFETY: plain constructor; a null handle is an error, checked below.
        let handle = Self(unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as c_int) });
        if handle.0.is_null() {
            // SAFETY: with a null handle the message is the global (thread-local) one.
            let reason = unsafe { message(std::ptr::null_mut()) };
            return Err(format!("cannot start libjpeg-turbo: {reason}"));
        }
        // No ICC profile extraction: neither Pillow's conversion nor HF applies it.
        handle.set(tj::TJPARAM_TJPARAM_SAVEMARKERS, 0)?;
        handle.set(tj::TJPARAM_TJPARAM_MAXMEMORY, megabytes)?;
        handle.set(
            tj::TJPARAM_TJPARAM_STOPONWARNING,
            c_int::from(stop_on_warning),
        )?;
        Ok(handle)
    }

    fn get(&self, param: tj::TJPARAM) -> c_int {
        // SAFETY: a valid handle and one of the library's parameters.
        unsafe { tj::tj3Get(self.0, param as c_int) }
    }

    fn set(&self, param: tj::TJPARAM, value: c_int) -> Result<(), String> {
        // SAFETY: as in `get`.
        if unsafe { tj::tj3Set(self.0, param as c_int, value) } == 0 {
            Ok(())
        } else {
            // SAFETY: a valid handle.
            Err(unsafe { message(self.0) })
        }
    }
}

/// Runs a TurboJPEG call on a fresh instance (no ICC extraction, `megabytes` of memory at most), accepting
/// libjpeg warnings (non-fatal errors) as Pillow does and refusing fatal errors; returns the instance for
/// its header values.
///
/// TurboJPEG reports a warning like an error (-1), and its error code says "warning" whenever any warning
/// occurred, even when a fatal error followed. So the call first runs stopping at the first warning: no
/// warning is success, a fatal error without a warning is an error. Otherwise it runs again to the end on
/// another fresh instance (a stopped instance is left mid-header) and its message is compared with the
/// first warning's: libjpeg keeps the first warning's message, and a later fatal error replaces it.
fn run(megabytes: c_int, mut call: impl FnMut(tj::tjhandle) -> c_int) -> Result<Handle, String> {
    let handle = Handle::new(megabytes, true)?;
    if call(handle.0) == 0 {
        return Ok(handle);
    }
    // SAFETY: a valid handle, right after the failed call.
    let (code, first) = unsafe { (tj::tj3GetErrorCode(handle.0), message(handle.0)) };
    if code != tj::TJERR_TJERR_WARNING as c_int {
        return Err(first);
    }
    let handle = Handle::new(megabytes, false)?;
    if call(handle.0) == 0 {
        return Ok(handle);
    }
    // SAFETY: as above.
    let (code, last) = unsafe { (tj::tj3GetErrorCode(handle.0), message(handle.0)) };
    if code == tj::TJERR_TJERR_WARNING as c_int && last == first {
        Ok(handle)
    } else {
        Err(format!("{last} (after the warning: {first})"))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from `tj3Init` (possibly null, which tj3Destroy ignores) and is
        // destroyed once.
        unsafe { tj::tj3Destroy(self.0) }
    }
}

/// TurboJPEG's message for the last error of `handle` (or the global one for a null handle).
///
/// # Safety
/// `handle` is null or a live TurboJPEG handle.
unsafe fn message(handle: tj::tjhandle) -> String {
    // SAFETY: TurboJPEG returns a NUL-terminated string it owns (per handle or thread-local), valid until
    // the next call on the handle; it is copied at once.
    let ptr = unsafe { tj::tj3GetErrorStr(handle) };
    if ptr.is_null() {
        return "unknown libjpeg-turbo error".to_string();
    }
    // SAFETY: as above.
    let text = unsafe { CStr::from_ptr(ptr) }.to_string_lossy();
    format!("libjpeg-turbo: {}", text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_header_is_an_error() {
        let bytes = [0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x02, 0xFF, 0xD9];
        let err = decode(&bytes, "x.jpg", &Limits::default(), JpegData::MultiScan).unwrap_err();
        assert!(
            matches!(&err, Error::Decode { name, reason } if name == "x.jpg" && reason.starts_with("libjpeg-turbo: ")),
            "{err}"
        );
    }
}
