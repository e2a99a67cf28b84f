//! The comparison helpers report what differs, and the fixture reader gives back what the generator stored.

use blip2_testkit::{Fixture, Tol, assert_ids_eq, compare};
use burn::tensor::TensorData;

fn data(v: &[f32], shape: &[usize]) -> TensorData {
    TensorData::new(v.to_vec(), shape.to_vec())
}

#[test]
fn within_tolerance_reports_the_largest_difference() {
    let want = data(&[1.0, -2.0, 100.0, 0.0], &[2, 2]);
    let got = data(&[1.0, -2.0, 100.009, 0.000_001], &[2, 2]);
    let ok = compare("x", &got, &want, Tol::STAGE).unwrap();
    assert_eq!(ok.index, vec![1, 0]);
    assert!((ok.max_abs_diff - 0.009).abs() < 1e-5);
}

#[test]
fn failures_name_tensor_shape_index_and_values() {
    let want = data(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &[2, 3]);
    let got = data(&[0.0, 1.0, 2.0, 3.0, 4.5, 5.0], &[2, 3]);
    let message = compare("qformer/layer.1", &got, &want, Tol::LOGITS)
        .unwrap_err()
        .to_string();
    for needle in [
        "qformer/layer.1",
        "1 of 6 elements",
        "end-to-end logits",
        "[2, 3]",
        "at [1, 1]",
        "got 4.5",
    ] {
        assert!(message.contains(needle), "`{needle}` not in: {message}");
    }
    let message = compare("y", &data(&[0.0; 6], &[3, 2]), &want, Tol::STAGE)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("shape [3, 2], expected [2, 3]"),
        "{message}"
    );
}

#[test]
fn infinities_must_match_and_nan_is_never_close() {
    let want = data(&[f32::NEG_INFINITY, 1.0], &[2]);
    compare(
        "inf",
        &data(&[f32::NEG_INFINITY, 1.0], &[2]),
        &want,
        Tol::EXACT,
    )
    .unwrap();
    assert!(compare("inf", &data(&[-1e30, 1.0], &[2]), &want, Tol::HALF).is_err());
    assert!(
        compare(
            "nan",
            &data(&[f32::NAN, 1.0], &[2]),
            &data(&[0.0, 1.0], &[2]),
            Tol::HALF
        )
        .is_err()
    );
}

#[test]
#[should_panic(expected = "row 1: first difference at 2")]
fn ids_must_be_equal() {
    assert_ids_eq(
        "gen",
        &[vec![1, 2, 3], vec![4, 5, 6]],
        &[vec![1, 2, 3], vec![4, 5, 7]],
    );
}

#[test]
fn fixture_tensors_round_trip_their_dtypes() {
    let fixture = Fixture::open("tiny-opt");
    assert!(fixture.dir().join("config.json").is_file());
    // u8 pixels, f32 values and i64 ids all come back; pixel_values is (resized / 255 - mean) / std.
    let resized: Vec<u8> = fixture
        .data("processor/resized/rgb_37x29")
        .to_vec()
        .unwrap();
    let pixels: Vec<f32> = fixture
        .data("processor/pixel_values/rgb_37x29")
        .to_vec()
        .unwrap();
    let shape = fixture
        .data("processor/pixel_values/rgb_37x29")
        .shape
        .to_vec();
    assert_eq!(shape, vec![1, 3, 30, 30]);
    let (mean, std) = (
        [0.48145466, 0.4578275, 0.40821073],
        [0.26862954, 0.26130258, 0.27577711],
    );
    let mut again = vec![0.0f32; pixels.len()];
    for c in 0..3 {
        for i in 0..900 {
            again[c * 900 + i] =
                ((f64::from(resized[i * 3 + c]) / 255.0 - mean[c]) / std[c]) as f32;
        }
    }
    compare(
        "pixel_values",
        &TensorData::new(again, shape),
        fixture.data("processor/pixel_values/rgb_37x29"),
        Tol::STAGE,
    )
    .unwrap();
    let ids = fixture.id_rows("input_ids/batch");
    let n = fixture.manifest()["image_token_index"].as_i64().unwrap();
    assert!(
        ids.iter().all(|row| row[..5].iter().all(|&id| id == n)),
        "5 <image> ids lead each row"
    );
    assert!(
        fixture
            .description("lm/logits/batch")
            .contains("OPT logits")
    );
}
