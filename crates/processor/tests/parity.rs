//! Parity with HF `BlipImageProcessorPil` (transformers 5.24, Pillow 13) on every image in `fixtures/images`,
//! for each BLIP-2 fixture's processor size: RGB conversion and PIL bicubic resize (uint8, exact), pixel
//! values (f32, `Tol::STAGE`), the batches, and the non-square `vision_interp` size. JPEGs are decoded by
//! libjpeg-turbo as Pillow decodes them and go through the same exact checks; without the `libjpeg-turbo`
//! feature they are checked against the pure-Rust decoder's measured bound instead.

use std::path::PathBuf;

use blip2_processor::{BlipImageProcessor, ImageProcessorConfig, Size};
use blip2_testkit::{Fixture, Tol, assert_close, assert_tensor_close, fixtures_root};
use burn::prelude::Backend;
use burn::tensor::{DType, TensorData};
use image::RgbImage;

const MODEL_FIXTURES: [&str; 3] = ["tiny-opt", "tiny-t5", "tiny-itm"];

/// Largest difference between the fallback JPEG decoding (zune-jpeg, in the `image` crate; without the
/// `libjpeg-turbo` feature) and PIL's (libjpeg-turbo), in 8-bit levels. Observed on the fixture JPEGs: `photo_45x33.jpg` (colour, 4:2:0) differs by at most
/// 2 in 1135 of 4455 values, `gray_27x35.jpg` by at most 1 in 57 of 2835. The decoders round their integer
/// IDCTs differently, and for colour also the chroma upsampling and YCbCr -> RGB conversion. Everything
/// after decoding is exact (tested from PIL's decoded pixels below), so this is the only loose bound.
#[cfg(not(feature = "libjpeg-turbo"))]
const JPEG_RGB_MAX_DIFF: f64 = 2.0;

/// The same difference after PIL bicubic resizing, in 8-bit levels: the cubic's negative lobes make the
/// weights' absolute sum exceed 1, so a 2-level input difference can grow. Observed: 3 at 30x30 and 26x26
/// (918 of 2700 and 720 of 2028 values of `photo_45x33`), 2 at 24x24; `gray_27x35` at most 1.
#[cfg(not(feature = "libjpeg-turbo"))]
const JPEG_RESIZED_MAX_DIFF: f64 = 3.0;

fn images() -> Vec<(String, PathBuf)> {
    let dir = fixtures_root().join("images");
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    out.sort();
    assert_eq!(out.len(), 9, "fixtures/images changed: {out:?}");
    out
}

fn is_jpeg(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "jpg")
}

/// Whether this build decodes the file exactly as PIL does: everything with libjpeg-turbo, all but JPEG
/// without it.
fn decoded_as_pil(path: &std::path::Path) -> bool {
    cfg!(feature = "libjpeg-turbo") || !is_jpeg(path)
}

fn hwc(image: &RgbImage) -> TensorData {
    TensorData::new(
        image.as_raw().clone(),
        [image.height() as usize, image.width() as usize, 3],
    )
}

fn rgb_from(data: &TensorData) -> RgbImage {
    let shape = data.shape.to_vec();
    let bytes: Vec<u8> = data.clone().to_vec().unwrap();
    RgbImage::from_raw(shape[1] as u32, shape[0] as u32, bytes).unwrap()
}

fn processor(fixture: &Fixture) -> BlipImageProcessor {
    BlipImageProcessor::from_model_dir(fixture.dir()).unwrap()
}

#[test]
fn configs_of_both_layouts_are_read() {
    for (name, side) in [("tiny-opt", 30), ("tiny-t5", 26), ("tiny-itm", 24)] {
        let p = processor(&Fixture::open(name));
        assert_eq!(
            p.config().size,
            Size::Fixed {
                height: side,
                width: side
            },
            "{name}"
        );
    }
}

#[test]
fn rgb_conversion_is_exact_for_every_image() {
    let fixture = Fixture::open("tiny-opt");
    let p = processor(&fixture);
    if cfg!(feature = "libjpeg-turbo") {
        assert_eq!(images().iter().filter(|(_, p)| is_jpeg(p)).count(), 2);
    }
    for (stem, path) in images().into_iter().filter(|(_, p)| decoded_as_pil(p)) {
        let rgb = p.open(&path).unwrap();
        assert_close(
            &format!("rgb/{stem}"),
            &hwc(&rgb),
            fixture.data(&format!("processor/rgb/{stem}")),
            Tol::EXACT,
        );
    }
}

#[cfg(not(feature = "libjpeg-turbo"))]
#[test]
fn jpeg_decoders_differ_by_at_most() {
    let fixture = Fixture::open("tiny-opt");
    let p = processor(&fixture);
    for (stem, path) in images().into_iter().filter(|(_, p)| is_jpeg(p)) {
        let rgb = p.open(&path).unwrap();
        let want = fixture.data(&format!("processor/rgb/{stem}"));
        let got = hwc(&rgb);
        let tol = Tol {
            name: "jpeg decoders",
            rel: 0.0,
            abs: JPEG_RGB_MAX_DIFF,
        };
        assert_close(&format!("rgb/{stem}"), &got, want, tol);
    }
}

#[cfg(not(feature = "libjpeg-turbo"))]
#[test]
fn jpeg_files_end_to_end_within_the_decoder_bound() {
    for name in MODEL_FIXTURES {
        let fixture = Fixture::open(name);
        let p = processor(&fixture);
        for (stem, path) in images().into_iter().filter(|(_, p)| is_jpeg(p)) {
            let resized = p.resize(&p.open(&path).unwrap()).unwrap();
            let tol = Tol {
                name: "jpeg decoders, resized",
                rel: 0.0,
                abs: JPEG_RESIZED_MAX_DIFF,
            };
            let want = fixture.data(&format!("processor/resized/{stem}"));
            assert_close(
                &format!("{name}: file -> resized/{stem}"),
                &hwc(&resized),
                want,
                tol,
            );
            let pixels = p.preprocess_files(&[&path]).unwrap();
            let want = fixture.data(&format!("processor/pixel_values/{stem}"));
            assert_close(
                &format!("{name}: file -> pixel_values/{stem}"),
                &pixels.to_data(),
                want,
                jpeg_pixel_tol(),
            );
        }
    }
}

#[test]
fn resize_is_exact_for_every_image_and_size() {
    for name in MODEL_FIXTURES {
        let fixture = Fixture::open(name);
        let p = processor(&fixture);
        for (stem, path) in images() {
            // From PIL's RGB, so that a decoder difference could not hide or fake a resize difference.
            let rgb = rgb_from(fixture.data(&format!("processor/rgb/{stem}")));
            let resized = p.resize(&rgb).unwrap();
            let want = fixture.data(&format!("processor/resized/{stem}"));
            assert_close(
                &format!("{name}: resized/{stem}"),
                &hwc(&resized),
                want,
                Tol::EXACT,
            );
            if decoded_as_pil(&path) {
                let ours = p.resize(&p.open(&path).unwrap()).unwrap();
                assert_close(
                    &format!("{name}: file -> resized/{stem}"),
                    &hwc(&ours),
                    want,
                    Tol::EXACT,
                );
            }
        }
    }
}

#[test]
fn pixel_values_of_every_image() {
    for name in MODEL_FIXTURES {
        let fixture = Fixture::open(name);
        let p = processor(&fixture);
        for (stem, path) in images() {
            let want = fixture.data(&format!("processor/pixel_values/{stem}"));
            let rgb = rgb_from(fixture.data(&format!("processor/rgb/{stem}")));
            let got = p.preprocess(&[rgb]).unwrap();
            let close = assert_close(
                &format!("{name}: pixel_values/{stem}"),
                &got.to_data(),
                want,
                Tol::STAGE,
            );
            // numpy's f64 rescale and f32 normalize are reproduced operation for operation: bit-equal.
            assert_eq!(close.max_abs_diff, 0.0, "{name}: pixel_values/{stem}");
            if decoded_as_pil(&path) {
                let from_file = p.preprocess_files(&[&path]).unwrap();
                assert_close(
                    &format!("{name}: file -> pixel_values/{stem}"),
                    &from_file.to_data(),
                    want,
                    Tol::EXACT,
                );
            }
        }
    }
}

/// `pixel_values` (the batch of two) and `vision_interp/pixel_values` (the same two images at a non-square
/// size), from the files, as Burn tensors.
fn batches<B: Backend>(device: &B::Device) {
    for name in MODEL_FIXTURES {
        let fixture = Fixture::open(name);
        let p = processor(&fixture);
        let stems: Vec<String> = fixture.manifest()["images"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        // The batch's order is in the description ("... images ['a', 'b'] ..."); the manifest's map is sorted.
        let order: Vec<&str> = fixture
            .description("pixel_values")
            .split('\'')
            .skip(1)
            .step_by(2)
            .collect();
        assert_eq!(
            order.len(),
            2,
            "{name}: {}",
            fixture.description("pixel_values")
        );
        assert!(order.iter().all(|s| stems.iter().any(|t| t == s)));
        let paths: Vec<PathBuf> = order
            .iter()
            .map(|s| {
                fixtures_root()
                    .join("images")
                    .join(fixture.manifest()["images"][s].as_str().unwrap())
            })
            .collect();
        // Without libjpeg-turbo, a JPEG in the batch goes through the decoder difference measured above.
        #[cfg(not(feature = "libjpeg-turbo"))]
        let tol = if paths.iter().any(|p| is_jpeg(p)) {
            jpeg_pixel_tol()
        } else {
            Tol::STAGE
        };
        #[cfg(feature = "libjpeg-turbo")]
        let tol = Tol::STAGE;
        let got = p.preprocess_files(&paths).unwrap().to_tensor::<B>(device);
        assert_tensor_close(
            &format!("{name}: pixel_values"),
            &got,
            fixture.data("pixel_values"),
            tol,
        );

        if fixture.has("vision_interp/pixel_values") {
            let want = fixture.data("vision_interp/pixel_values");
            let shape = want.shape.to_vec();
            let mut config: ImageProcessorConfig = p.config().clone();
            config.size = Size::Fixed {
                height: shape[2] as u32,
                width: shape[3] as u32,
            };
            let interp = BlipImageProcessor::new(config);
            let got = interp.preprocess_files(&paths).unwrap();
            assert_eq!(got.to_data().dtype, DType::F32);
            assert_tensor_close(
                &format!("{name}: vision_interp/pixel_values"),
                &got.to_tensor::<B>(device),
                want,
                tol,
            );
        }
    }
}

/// A resized JPEG difference of `JPEG_RESIZED_MAX_DIFF` levels after rescale and normalize (the smallest
/// CLIP std is 0.2613: 3 levels are 0.045), plus the stage tolerance.
#[cfg(not(feature = "libjpeg-turbo"))]
fn jpeg_pixel_tol() -> Tol {
    Tol {
        name: "jpeg decoders, normalized",
        rel: Tol::STAGE.rel,
        abs: JPEG_RESIZED_MAX_DIFF / 255.0 / 0.26130258 + Tol::STAGE.abs,
    }
}

blip2_testkit::backend_tests!(batches);
