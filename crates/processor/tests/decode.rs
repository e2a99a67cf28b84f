//! Decoding: every supported format round-trips, and broken, hostile or unsupported inputs give typed errors
//! naming the file (or `<memory>`) instead of panicking or allocating.

use std::io::Cursor;
use std::path::PathBuf;

use blip2_processor::{
    BlipImageProcessor, Error, ImageProcessorConfig, Limits, MEMORY, Size, convert_to_rgb,
};
use blip2_testkit::fixtures_root;
use image::codecs::gif::{GifDecoder, GifEncoder};
use image::{AnimationDecoder, DynamicImage, ImageFormat, RgbImage, RgbaImage};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("blip2-processor-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn image_path(file: &str) -> PathBuf {
    fixtures_root().join("images").join(file)
}

fn processor() -> BlipImageProcessor {
    BlipImageProcessor::default()
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

/// A PNG with a valid signature and IHDR claiming `width x height`, and a tiny IDAT.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn lossless_formats_round_trip() {
    let p = processor();
    let rgba = image::open(fixtures_root().join("images/rgba_31x23.png")).unwrap();
    let rgb = DynamicImage::ImageRgb8(rgba.to_rgb8());
    // WebP (the `image` crate encodes lossless only), BMP and TIFF: the same pixels come back.
    for format in [
        ImageFormat::WebP,
        ImageFormat::Bmp,
        ImageFormat::Tiff,
        ImageFormat::Png,
    ] {
        for source in [&rgb, &rgba] {
            if format == ImageFormat::Bmp && source.color().has_alpha() {
                continue; // BMP alpha support differs between encoders; RGB is what matters
            }
            let bytes = encode(source, format);
            let got = p.decode(&bytes).unwrap();
            let want = convert_to_rgb(source).unwrap();
            assert_eq!(got, want, "{format:?} {:?}", source.color());
        }
    }
}

#[test]
fn gif_decodes_its_first_frame() {
    let p = processor();
    // 16 colours: a GIF palette holds them exactly.
    let palette = p.open(image_path("palette_25x19.png")).unwrap();
    let first = DynamicImage::ImageRgb8(palette.clone()).to_rgba8();
    let second = RgbaImage::from_pixel(25, 19, image::Rgba([9, 200, 30, 255]));
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        encoder
            .encode_frames([first, second].map(image::Frame::new))
            .unwrap();
    }
    let frames = GifDecoder::new(Cursor::new(&bytes))
        .unwrap()
        .into_frames()
        .count();
    assert_eq!(frames, 2);
    let got = p.decode(&bytes).unwrap();
    assert_eq!((got.width(), got.height()), (25, 19));
    assert_eq!(got, palette, "first frame, palette colours exact");
}

#[test]
fn raw_buffers_and_dynamic_images() {
    let p = processor();
    let rgb = p.open(image_path("rgb_37x29.png")).unwrap();
    let raw = p.from_raw_rgb(37, 29, rgb.as_raw()).unwrap();
    assert_eq!(raw, rgb);
    assert_eq!(
        p.to_rgb(&DynamicImage::ImageRgb8(rgb.clone())).unwrap(),
        rgb
    );

    match p.from_raw_rgb(37, 29, &rgb.as_raw()[1..]) {
        Err(Error::BufferLength {
            width: 37,
            height: 29,
            expected,
            found,
        }) => {
            assert_eq!((expected, found), (37 * 29 * 3, 37 * 29 * 3 - 1));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        p.from_raw_rgb(0, 5, &[]),
        Err(Error::ZeroSize {
            width: 0,
            height: 5,
            ..
        })
    ));
    assert!(matches!(
        p.from_raw_rgb(5, 0, &[]),
        Err(Error::ZeroSize { .. })
    ));
    let huge = p.from_raw_rgb(100_000, 100_000, &[]).unwrap_err();
    assert!(matches!(huge, Error::TooLarge { .. }), "{huge}");

    let float = DynamicImage::ImageRgb32F(image::Rgb32FImage::new(2, 2));
    assert!(matches!(
        p.to_rgb(&float),
        Err(Error::UnsupportedPixels { .. })
    ));
    let empty = DynamicImage::ImageRgb8(RgbImage::new(0, 3));
    assert!(matches!(p.to_rgb(&empty), Err(Error::ZeroSize { .. })));
}

#[test]
fn missing_garbage_truncated_and_unsupported_files() {
    let p = processor();
    let dir = temp_dir("decode");

    let missing = dir.join("missing.png");
    assert!(matches!(p.open(&missing), Err(Error::Io { path, .. }) if path == missing));

    let garbage = dir.join("garbage.png");
    std::fs::write(&garbage, b"this is not an image, just some text bytes").unwrap();
    let err = p.open(&garbage).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedFormat { name, .. } if name.ends_with("garbage.png")),
        "{err}"
    );

    // PNM is a real format, but not one blip2 decodes.
    let pnm = dir.join("image.ppm");
    std::fs::write(&pnm, b"P6\n2 2\n255\n\0\0\0\0\0\0\0\0\0\0\0\0").unwrap();
    let err = p.open(&pnm).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedFormat { name, .. } if name.ends_with("image.ppm")),
        "{err}"
    );
    assert!(err.to_string().contains("use PNG, JPEG"), "{err}");

    for file in [
        "rgb_37x29.png",
        "photo_45x33.jpg",
        "gray_27x35.jpg",
        "palette_25x19.png",
    ] {
        let bytes = std::fs::read(image_path(file)).unwrap();
        for keep in [bytes.len() / 2, 40, 12] {
            let cut = dir.join(format!("cut_{keep}_{file}"));
            std::fs::write(&cut, &bytes[..keep]).unwrap();
            let err = p.open(&cut).unwrap_err();
            let named = match &err {
                Error::Decode { name, .. } | Error::UnsupportedFormat { name, .. } => name,
                other => panic!("{file} cut to {keep} bytes: {other:?}"),
            };
            assert!(named.ends_with(&format!("cut_{keep}_{file}")), "{err}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bombs_are_refused_before_decoding() {
    let p = processor();
    // Over the side limit.
    match p.decode(&png_claiming(100_000, 100_000)) {
        Err(Error::TooLarge {
            name,
            width: 100_000,
            height: 100_000,
            limit: 65_535,
            ..
        }) => {
            assert_eq!(name, MEMORY)
        }
        other => panic!("{other:?}"),
    }
    // Within the side limit but over Pillow's MAX_IMAGE_PIXELS.
    match p.decode(&png_claiming(60_000, 60_000)) {
        Err(Error::TooLarge { limit, what, .. }) => {
            assert_eq!((limit, what), (89_478_485, "pixels"))
        }
        other => panic!("{other:?}"),
    }
    // A memory limit smaller than the decoded image.
    refused_over_a_tight_memory_limit("large_97x71.png");
    // A shortest-edge resize of a thin image that would exceed the limits.
    let config = ImageProcessorConfig {
        size: Size::ShortestEdge(224),
        ..Default::default()
    };
    let thin = BlipImageProcessor::new(config).with_limits(Limits {
        max_side: 10_000,
        ..Limits::default()
    });
    let image = thin.from_raw_rgb(1, 100, &[0; 300]).unwrap();
    assert!(matches!(thin.resize(&image), Err(Error::TooLarge { .. })));
}

#[test]
fn batch_errors() {
    let p = processor();
    assert!(matches!(p.preprocess(&[]), Err(Error::EmptyBatch)));
    let no_paths: [&str; 0] = [];
    assert!(matches!(
        p.preprocess_files(&no_paths),
        Err(Error::EmptyBatch)
    ));

    let config = ImageProcessorConfig {
        size: Size::ShortestEdge(8),
        ..Default::default()
    };
    let shortest = BlipImageProcessor::new(config);
    let a = shortest.from_raw_rgb(10, 20, &[0; 600]).unwrap();
    let b = shortest.from_raw_rgb(20, 10, &[0; 600]).unwrap();
    assert_eq!(
        shortest.preprocess(std::slice::from_ref(&a)).unwrap().shape,
        [1, 3, 16, 8]
    );
    assert!(matches!(
        shortest.preprocess(&[a, b]),
        Err(Error::BatchSizeMismatch {
            index: 1,
            height: 8,
            width: 16,
            ..
        })
    ));

    let no_convert = BlipImageProcessor::new(ImageProcessorConfig {
        do_convert_rgb: false,
        ..Default::default()
    });
    assert!(matches!(
        no_convert.open(image_path("gray_19x41.png")),
        Err(Error::NotRgb { .. })
    ));
    assert!(no_convert.open(image_path("rgb_37x29.png")).is_ok());
}

/// Every JPEG the fixtures hold (the shared images and the `pil-image` kinds: gray, 4:2:0, 4:2:2, 4:4:4,
/// RGB, progressive, restart intervals, CMYK).
fn fixture_jpegs() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = ["images", "pil-image"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(fixtures_root().join(dir)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    out.sort();
    assert!(out.len() >= 15, "{out:?}");
    out
}

/// A JPEG cut anywhere before its end-of-image marker is refused, as PIL refuses it ("image file is
/// truncated"), with an error naming the file; decoding never panics.
#[test]
fn truncated_jpegs_are_refused_at_every_length() {
    let p = processor();
    for path in fixture_jpegs() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if file.starts_with("cut_scan") {
            continue; // its scan is already cut (before its end marker): see `damaged_jpegs_...`
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(p.decode(&bytes).is_ok(), "{file}");
        let end = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]).unwrap();
        for keep in 0..=end + 1 {
            match p.decode(&bytes[..keep]) {
                Err(Error::Decode { name, reason }) => {
                    assert_eq!(name, MEMORY);
                    if keep > 3 {
                        assert!(
                            reason.contains("truncated file"),
                            "{file} cut to {keep}: {reason}"
                        );
                    }
                }
                Err(Error::UnsupportedFormat { .. }) if keep < 3 => {}
                other => panic!("{file} cut to {keep} bytes: {other:?}"),
            }
        }
        // Bytes after the end marker are ignored, as in PIL.
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b"\0\0trailing bytes\xFF\xD8");
        assert_eq!(
            p.decode(&trailing).unwrap(),
            p.decode(&bytes).unwrap(),
            "{file}"
        );
    }
}

/// Damaged JPEG data never panics or aborts the process: every single-byte change of a header or scan
/// either decodes (libjpeg warned and filled what it could not decode, which PIL accepts too) or is an
/// error naming the file.
#[test]
fn corrupt_jpegs_decode_or_fail_cleanly() {
    let p = processor();
    let dir = temp_dir("corrupt-jpeg");
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        // xorshift64*: a fixed, dependency-free sequence.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let (mut decoded, mut refused) = (0, 0);
    for path in fixture_jpegs() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        for _ in 0..150 {
            let mut broken = bytes.clone();
            // Mostly the first 700 bytes (markers, tables, the start of the scan), some anywhere.
            let span = if next() % 4 == 0 {
                bytes.len()
            } else {
                bytes.len().min(700)
            };
            let at = 2 + (next() as usize) % (span - 2);
            broken[at] = match next() % 3 {
                0 => 0xFF,
                1 => broken[at] ^ (1 << (next() % 8)),
                _ => next() as u8,
            };
            let cut = dir.join(format!("broken_{file}"));
            std::fs::write(&cut, &broken).unwrap();
            match p.open(&cut) {
                Ok(image) => {
                    decoded += 1;
                    assert!(image.width() > 0 && image.height() > 0);
                }
                Err(
                    Error::Decode { name, .. }
                    | Error::UnsupportedFormat { name, .. }
                    | Error::TooLarge { name, .. }
                    | Error::ZeroSize { name, .. },
                ) => {
                    refused += 1;
                    assert!(name.ends_with(&format!("broken_{file}")), "{name}");
                }
                Err(other) => panic!("{file}, byte {at}: {other:?}"),
            }
        }
    }
    // Both outcomes occur: the test exercises warnings and fatal errors.
    assert!(
        decoded > 100 && refused > 100,
        "{decoded} decoded, {refused} refused"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The header's size is checked before the pixels are allocated: a JPEG claiming 60000x60000 pixels (its
/// SOF patched) is refused at once, and so is one over a tight memory limit.
#[test]
fn jpeg_bombs_are_refused_before_decoding() {
    let p = processor();
    let mut bytes = std::fs::read(image_path("photo_45x33.jpg")).unwrap();
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    // FF C0, length (2), precision (1), height (2), width (2).
    bytes[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    match p.decode(&bytes) {
        Err(Error::TooLarge {
            width: 60_000,
            height: 60_000,
            limit: 89_478_485,
            what: "pixels",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    refused_over_a_tight_memory_limit("photo_45x33.jpg");
}

/// PIL opens only 8-bit JPEGs ("cannot handle 12-bit layers"); a 12-bit one is an unsupported format.
#[cfg(feature = "libjpeg-turbo")]
#[test]
fn twelve_bit_jpegs_are_unsupported() {
    let mut bytes = std::fs::read(image_path("gray_27x35.jpg")).unwrap();
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    bytes[sof + 4] = 12;
    let err = processor().decode(&bytes).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedFormat { reason, .. } if reason.contains("12-bit")),
        "{err}"
    );
}

/// `file` is refused with a memory limit (1000 bytes) smaller than its decoded pixels.
fn refused_over_a_tight_memory_limit(file: &str) {
    let tight = processor().with_limits(Limits {
        max_alloc: 1000,
        ..Limits::default()
    });
    let err = tight.open(image_path(file)).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::TooLarge {
                what: "bytes of memory",
                ..
            } | Error::DecoderLimit { .. }
        ),
        "{file}: {err}"
    );
}
