//! The `pil-image` fixture: Pillow's own pixels for bicubic resizes at many sizes, alpha compositing onto
//! white for every (value, alpha) pair, CMYK to RGB for every (ink, black) pair, and how PIL opens and
//! converts files in modes the shared fixture images do not cover (16-bit RGB/RGBA/LA, colour keys, palette
//! alpha, 1-bit, GIF, WebP, BMP, TIFF) and JPEGs of every kind (gray, 4:2:0, 4:2:2, 4:4:4, RGB, progressive,
//! restart intervals, CMYK, EXIF orientation, damaged scans), all bit-exact.

use blip2_processor::{BlipImageProcessor, cmyk_to_rgb, over_white, resize_bicubic};
use blip2_testkit::{Fixture, Tol, assert_close};
use burn::tensor::TensorData;
use image::RgbImage;

fn rgb_from(data: &TensorData) -> RgbImage {
    let shape = data.shape.to_vec();
    let bytes: Vec<u8> = data.clone().to_vec().unwrap();
    RgbImage::from_raw(shape[1] as u32, shape[0] as u32, bytes).unwrap()
}

fn hwc(image: &RgbImage) -> TensorData {
    TensorData::new(
        image.as_raw().clone(),
        [image.height() as usize, image.width() as usize, 3],
    )
}

#[test]
fn bicubic_resize_equals_pil_at_every_size() {
    let fixture = Fixture::open("pil-image");
    let keys: Vec<&str> = fixture
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("resize/"))
        .collect();
    assert!(keys.len() >= 20, "{keys:?}");
    for key in keys {
        let mut parts = key.split('/').skip(1);
        let (source, size) = (parts.next().unwrap(), parts.next().unwrap());
        let (w, h) = size.split_once('x').unwrap();
        let src = rgb_from(fixture.data(&format!("source/{source}")));
        let got = resize_bicubic(&src, w.parse().unwrap(), h.parse().unwrap());
        assert_close(key, &hwc(&got), fixture.data(key), Tol::EXACT);
    }
}

#[test]
fn alpha_over_white_equals_pil_for_every_value_and_alpha() {
    let fixture = Fixture::open("pil-image");
    let want: Vec<u8> = fixture.data("alpha/over_white").clone().to_vec().unwrap();
    for alpha in 0..=255u8 {
        for value in 0..=255u8 {
            assert_eq!(
                over_white(value, alpha),
                want[usize::from(alpha) * 256 + usize::from(value)],
                "value {value}, alpha {alpha}"
            );
        }
    }
}

#[test]
fn cmyk_to_rgb_equals_pil_for_every_ink_and_black() {
    let fixture = Fixture::open("pil-image");
    let want: Vec<u8> = fixture.data("cmyk/to_rgb").clone().to_vec().unwrap();
    for black in 0..=255u8 {
        for ink in 0..=255u8 {
            assert_eq!(
                cmyk_to_rgb(ink, black),
                want[usize::from(black) * 256 + usize::from(ink)],
                "ink {ink}, black {black}"
            );
        }
    }
}

fn is_jpeg(file: &str) -> bool {
    file.ends_with(".jpg")
}

#[test]
fn files_convert_to_rgb_as_pil_opens_them() {
    let fixture = Fixture::open("pil-image");
    let processor = BlipImageProcessor::default();
    let files = fixture.manifest()["files"].as_array().unwrap();
    assert_eq!(files.len(), 24);
    assert_eq!(
        files
            .iter()
            .filter(|f| is_jpeg(f.as_str().unwrap()))
            .count(),
        13
    );
    for file in files {
        let file = file.as_str().unwrap();
        // Without libjpeg-turbo, JPEGs go through zune-jpeg, which is not Pillow's decoder (see
        // `parity.rs` for its measured difference).
        if cfg!(not(feature = "libjpeg-turbo")) && is_jpeg(file) {
            continue;
        }
        let got = processor.open(fixture.dir().join(file)).unwrap();
        assert_close(
            &format!("rgb/{file}"),
            &hwc(&got),
            fixture.data(&format!("rgb/{file}")),
            Tol::EXACT,
        );
    }
}

/// The JPEGs through `decode_bytes` (the `image` crate's types): gray stays gray (PIL mode `L`), colour and
/// CMYK come back as RGB.
#[cfg(feature = "libjpeg-turbo")]
#[test]
fn jpeg_pixel_types() {
    use blip2_processor::{Limits, decode_bytes};
    use image::DynamicImage;

    let fixture = Fixture::open("pil-image");
    for (file, gray) in [
        ("gray_13x11.jpg", true),
        ("gray_progressive_21x13.jpg", true),
        ("yuv420_17x9.jpg", false),
        ("rgb_11x9.jpg", false),
        ("cmyk_15x13.jpg", false),
    ] {
        let bytes = std::fs::read(fixture.dir().join(file)).unwrap();
        let image = decode_bytes(&bytes, &Limits::default()).unwrap();
        match (&image, gray) {
            (DynamicImage::ImageLuma8(_), true) | (DynamicImage::ImageRgb8(_), false) => {}
            (other, _) => panic!("{file}: {:?}", other.color()),
        }
    }
}
