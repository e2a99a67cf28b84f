//! The vision tower against transformers 5.24 on the fixtures' tiny random-weight models: embeddings, every
//! encoder layer, `last_hidden_state` and the pooler, at the training size and with interpolated positions
//! (non-square 38x26 and 32x20 images), in f32 at the stage tolerance and in half precision where the backend
//! has it.

use blip2_nn::backend::{FloatDType, supported_float_dtypes};
use blip2_testkit::{Fixture, Tol, assert_tensor_close};
use blip2_vision::{Blip2VisionConfig, Blip2VisionModel};
use burn::prelude::*;
use burn::tensor::DType;

/// Every fixture with a vision tower.
const FIXTURES: &[&str] = &[
    "tiny-opt",
    "tiny-t5",
    "tiny-itm",
    "tiny-opt-saved",
    "tiny-t5-saved",
];

fn check_run<B: Backend>(
    model: &Blip2VisionModel<B>,
    fixture: &Fixture,
    prefix: &str,
    pixels: &str,
    tol: Tol,
) {
    let device = model.devices()[0].clone();
    let interpolate = prefix == "vision_interp";
    let pixel_values = fixture.tensor::<B, 4>(pixels, &device);
    model
        .check_pixel_values(&pixel_values.dims(), interpolate)
        .expect("fixture pixels fit the tower");
    let out = model.forward_with_hidden_states(pixel_values, interpolate);
    let hidden = out.hidden_states.expect("hidden states were asked for");
    let name = |stage: &str| format!("{}:{prefix}/{stage}", fixture.name());
    assert_tensor_close(
        &name("embeddings"),
        &hidden[0],
        fixture.data(&format!("{prefix}/embeddings")),
        tol,
    );
    for (i, state) in hidden[1..].iter().enumerate() {
        let key = format!("{prefix}/layer.{i}");
        assert_tensor_close(&name(&format!("layer.{i}")), state, fixture.data(&key), tol);
    }
    assert!(
        !fixture.has(&format!("{prefix}/layer.{}", hidden.len() - 1)),
        "a layer is missing"
    );
    let last = fixture.data(&format!("{prefix}/last_hidden_state"));
    assert_tensor_close(
        &name("last_hidden_state"),
        &out.last_hidden_state.cast(DType::F32),
        last,
        tol,
    );
    let pooled = fixture.data(&format!("{prefix}/pooler_output"));
    assert_tensor_close(
        &name("pooler_output"),
        &out.pooler_output.cast(DType::F32),
        pooled,
        tol,
    );
}

fn vision_matches_transformers<B: Backend>(device: &B::Device) {
    for name in FIXTURES {
        let fixture = Fixture::open(name);
        let model = Blip2VisionModel::<B>::from_pretrained(fixture.dir(), FloatDType::F32, device)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        check_run(&model, &fixture, "vision", "pixel_values", Tol::STAGE);
        if fixture.has("vision_interp/pixel_values") {
            check_run(
                &model,
                &fixture,
                "vision_interp",
                "vision_interp/pixel_values",
                Tol::STAGE,
            );
        }
    }
}

/// f16 and bf16 weights (on backends that hold them) against the f32 reference, at the tolerance of each dtype.
fn half_precision_stays_close<B: Backend>(device: &B::Device) {
    for dtype in supported_float_dtypes::<B>(device) {
        if dtype == FloatDType::F32 {
            continue;
        }
        for name in FIXTURES {
            let fixture = Fixture::open(name);
            let model =
                Blip2VisionModel::<B>::from_pretrained(fixture.dir(), dtype, device).unwrap();
            let out = model.forward(fixture.tensor::<B, 4>("pixel_values", device), false);
            assert_eq!(
                out.last_hidden_state.dtype(),
                dtype.dtype(),
                "activations run in {}",
                dtype.name()
            );
            let tag = format!("{name}:{}", dtype.name());
            let last = out.last_hidden_state.cast(DType::F32);
            let tol = if dtype == FloatDType::BF16 {
                Tol::BF16
            } else {
                Tol::HALF
            };
            let close =
                assert_tensor_close(&tag, &last, fixture.data("vision/last_hidden_state"), tol);
            // Not trivially close either: half precision must actually have been used.
            assert!(
                close.max_abs_diff > 1e-5,
                "{tag}: bit-identical to f32 ({close:?})"
            );
        }
    }
}

/// A non-square training config (configs may give sizes as lists) and non-square inputs: shapes only.
fn non_square_shapes<B: Backend>(device: &B::Device) {
    let json = r#"{"vision_config": {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
        "num_attention_heads": 2, "image_size": [20, 20], "patch_size": 5}}"#;
    let config = Blip2VisionConfig::from_json_str(json, "<memory>").unwrap();
    assert_eq!((config.image_size, config.num_positions()), (20, 17));
    let model = config.init::<B>(device).unwrap();
    for (h, w) in [(35, 20), (20, 12), (12, 41), (5, 5)] {
        let pixels = Tensor::<B, 4>::ones([2, 3, h, w], device);
        let out = model.try_forward(pixels, true).unwrap();
        let patches = (h / 5) * (w / 5);
        assert_eq!(
            out.last_hidden_state.dims(),
            [2, patches + 1, 16],
            "{h}x{w}"
        );
        assert_eq!(out.pooler_output.dims(), [2, 16]);
        let values: Vec<f32> = out
            .last_hidden_state
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{h}x{w}: non-finite output"
        );
    }
}

blip2_testkit::backend_tests!(
    vision_matches_transformers,
    half_precision_stays_close,
    non_square_shapes
);
