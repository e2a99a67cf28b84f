//! `Blip2Retrieval` end to end on tiny-itm: image files and strings in, transformers' ITC cosines, ITM
//! probabilities and the ITM path's query features out.

use blip2::{Blip2Retrieval, Error};
use blip2_nn::backend::FloatDType;
use blip2_testkit::{Fixture, Flex, Tol, assert_close, assert_tensor_close};
use burn::tensor::TensorData;

type B = Flex;

fn setup() -> (
    Fixture,
    Blip2Retrieval<B>,
    Vec<std::path::PathBuf>,
    Vec<String>,
) {
    let fixture = Fixture::open("tiny-itm");
    let r =
        Blip2Retrieval::<B>::from_pretrained(fixture.dir(), FloatDType::F32, &Default::default())
            .unwrap();
    let files = fixture.batch_images();
    let texts = fixture.manifest()["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    (fixture, r, files, texts)
}

#[test]
fn scores_and_features_match_transformers() {
    let (fixture, r, files, texts) = setup();
    let images = r.encode_image_files(&files).unwrap();
    let encoded = r.encode_texts(&texts).unwrap();
    let scores = r.scores(&images, &encoded).unwrap();
    let flat = |rows: &[Vec<f32>]| {
        let n = rows.len();
        let m = rows[0].len();
        TensorData::new(rows.iter().flatten().copied().collect::<Vec<_>>(), [n, m])
    };
    assert_close(
        "itc",
        &flat(&scores.itc),
        fixture.data("itc/logits_per_image"),
        Tol::LOGITS,
    );
    // transformers' ITM logits of image i with text i, as probabilities.
    let logits: Vec<f32> = fixture.data("itm/logits").clone().to_vec().unwrap();
    for i in 0..2 {
        let (a, b) = (logits[2 * i], logits[2 * i + 1]);
        let p = 1.0 / (1.0 + (a - b).exp());
        assert!(
            (scores.itm[i][i] - p).abs() < 1e-5,
            "itm[{i}][{i}] {} vs {p}",
            scores.itm[i][i]
        );
    }
    assert!(scores.itm.iter().flatten().all(|p| (0.0..=1.0).contains(p)));
    let features = r.multimodal_features(&images, &encoded).unwrap();
    let n = features.dims()[1];
    let want = fixture.tensor::<B, 3>("itm/qformer/last_hidden_state", &Default::default());
    let want = want.narrow(1, 0, n).into_data();
    assert_tensor_close("multimodal features", &features, &want, Tol::STAGE);
}

#[test]
fn retrieval_errors_are_named() {
    let (_, r, files, texts) = setup();
    let images = r.encode_image_files(&files[..1]).unwrap();
    let encoded = r.encode_texts(&texts).unwrap();
    let err = r.multimodal_features(&images, &encoded).unwrap_err();
    assert!(err.to_string().contains("1 images and 2 texts"), "{err}");
    assert!(matches!(
        r.encode_texts(&[" "]),
        Err(Error::EmptyText { .. })
    ));
    let err = r.scores(&images.without_vision(), &encoded).unwrap_err();
    assert!(err.to_string().contains("without_vision"), "{err}");
}
