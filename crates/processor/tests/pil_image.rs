//! The `pil-image` fixture: Pillow's own pixels for bicubic resizes at many sizes, alpha compositing onto
//! white for every (value, alpha) pair, and how PIL opens and converts files in modes the shared fixture
//! images do not cover (16-bit RGB/RGBA/LA, colour keys, palette alpha, 1-bit, GIF, WebP, BMP, TIFF).

use blip2_processor::{BlipImageProcessor, over_white, resize_bicubic};
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
fn files_convert_to_rgb_as_pil_opens_them() {
    let fixture = Fixture::open("pil-image");
    let processor = BlipImageProcessor::default();
    let files = fixture.manifest()["files"].as_array().unwrap();
    assert_eq!(files.len(), 11);
    for file in files {
        let file = file.as_str().unwrap();
        let got = processor.open(fixture.dir().join(file)).unwrap();
        assert_close(
            &format!("rgb/{file}"),
            &hwc(&got),
            fixture.data(&format!("rgb/{file}")),
            Tol::EXACT,
        );
    }
}
