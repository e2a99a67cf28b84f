//! Vision configs as HF writes them (standalone, inside a BLIP-2 config, old and new defaults), rejected values
//! naming their key, and loading: prefixes, dtypes, and every way a checkpoint can disagree with the config.

use std::path::Path;

use blip2_nn::backend::FloatDType;
use blip2_nn::loader::{Checkpoint, KeyMap, save_module};
use blip2_testkit::{Fixture, Flex};
use blip2_vision::{Blip2VisionConfig, Blip2VisionModel, Error, VISION_PREFIX, key_map_for};
use burn::prelude::*;
use burn::tensor::DType;

fn parse(json: &str) -> Result<Blip2VisionConfig, Error> {
    Blip2VisionConfig::from_json_str(json, "config.json")
}

#[test]
fn defaults_are_the_hub_vit_g() {
    // Hub configs store no layer_norm_eps: HF 5.24's default (1e-6) applies.
    let config = parse(
        r#"{"model_type": "blip-2", "vision_config": {"model_type": "blip_2_vision_model"}}"#,
    )
    .unwrap();
    assert_eq!(config, Blip2VisionConfig::vit_g(224));
    assert_eq!(
        (
            config.head_dim(),
            config.grid_size(),
            config.num_positions()
        ),
        (88, 16, 257)
    );
    assert_eq!(Blip2VisionConfig::vit_g(364).num_positions(), 677);
    assert_eq!(config.layer_norm_eps, 1e-6);
}

#[test]
fn reads_full_and_standalone_configs_from_fixtures() {
    let fixture = Fixture::open("tiny-opt");
    let full = Blip2VisionConfig::from_file(fixture.dir()).unwrap();
    assert_eq!(
        (full.hidden_size, full.image_size, full.patch_size),
        (24, 30, 4)
    );
    // A standalone config (what Blip2VisionModel.save_pretrained writes) is the vision_config at the top level.
    let text = std::fs::read_to_string(fixture.dir().join("config.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let standalone = serde_json::to_string(&value["vision_config"]).unwrap();
    assert_eq!(parse(&standalone).unwrap(), full);
}

#[test]
fn unsupported_values_name_their_key() {
    let cases = [
        (
            r#"{"vision_config": {"hidden_act": "gelu_10"}}"#,
            "hidden_act",
        ),
        (
            r#"{"vision_config": {"hidden_size": 30, "num_attention_heads": 4}}"#,
            "num_attention_heads",
        ),
        (r#"{"vision_config": {"patch_size": 300}}"#, "patch_size"),
        (
            r#"{"vision_config": {"layer_norm_eps": 0.0}}"#,
            "layer_norm_eps",
        ),
        (
            r#"{"vision_config": {"attention_dropout": 1.5}}"#,
            "attention_dropout",
        ),
        (r#"{"vision_config": {"hidden_size": 0}}"#, "hidden_size"),
    ];
    for (json, key) in cases {
        match parse(json) {
            Err(Error::UnsupportedConfig { key: k, .. }) => assert_eq!(k, key, "{json}"),
            other => panic!("{json}: expected an unsupported-config error, got {other:?}"),
        }
    }
    // Wrong types and non-square sizes are parse errors naming the file and the field.
    for (json, field) in [
        (
            r#"{"vision_config": {"image_size": [224, 336]}}"#,
            "non-square",
        ),
        (
            r#"{"vision_config": {"hidden_size": "big"}}"#,
            "invalid type",
        ),
        (r#"{"vision_config": "#, "EOF"),
    ] {
        let err = parse(json).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, Error::Json { .. })
                && text.contains("config.json")
                && text.contains(field),
            "{text}"
        );
    }
    let err = parse(r#"{"model_type": "opt", "hidden_size": 8}"#).unwrap_err();
    assert!(matches!(err, Error::NotAVisionConfig { .. }), "{err}");
    let err = Blip2VisionConfig::from_file("/nonexistent/blip2").unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("/nonexistent/blip2"),
        "{err}"
    );
}

#[test]
fn bad_pixel_shapes_are_errors_not_panics() {
    let fixture = Fixture::open("tiny-opt");
    let device = Default::default();
    let model =
        Blip2VisionModel::<Flex>::from_pretrained(fixture.dir(), FloatDType::F32, &device).unwrap();
    for (dims, interpolate, says) in [
        ([1, 1, 30, 30], false, "3 (RGB) channels"),
        ([0, 3, 30, 30], false, "empty"),
        ([1, 3, 3, 30], true, "smaller than one 4x4 patch"),
        (
            [1, 3, 38, 30],
            false,
            "resize to 28x28 or pass interpolate_pos_encoding",
        ),
    ] {
        let err = model
            .try_forward(Tensor::zeros(dims, &device), interpolate)
            .unwrap_err();
        assert!(
            matches!(err, Error::BadPixelValues { .. }) && err.to_string().contains(says),
            "{dims:?}: {err}"
        );
    }
    // Smaller images take the first positions, as in HF.
    assert!(
        model
            .try_forward(Tensor::zeros([1, 3, 20, 20], &device), false)
            .is_ok()
    );
}

/// Saves the fixture's tower under `prefix` (and, with `drop`, without the keys it matches) into `dir`.
fn resave(dir: &Path, prefix: &str, dtype: FloatDType, drop: Option<&str>) -> std::path::PathBuf {
    let fixture = Fixture::open("tiny-opt");
    let device = Default::default();
    let model =
        Blip2VisionModel::<Flex>::from_pretrained(fixture.dir(), FloatDType::F32, &device).unwrap();
    let map = if prefix.is_empty() {
        KeyMap::new()
    } else {
        KeyMap::under(prefix)
    };
    let path = dir.join("model.safetensors");
    save_module(&model, &path, &map, dtype, &Default::default()).unwrap();
    if let Some(pattern) = drop {
        // Rewrite the file without the matching keys (a truncated or mismatched checkpoint).
        let bytes = std::fs::read(&path).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let kept: Vec<_> = tensors
            .tensors()
            .into_iter()
            .filter(|(k, _)| !k.contains(pattern))
            .collect();
        let out = safetensors::serialize(kept, None).unwrap();
        std::fs::write(&path, out).unwrap();
    }
    std::fs::copy(fixture.dir().join("config.json"), dir.join("config.json")).unwrap();
    path
}

#[test]
fn loads_standalone_and_half_precision_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let fixture = Fixture::open("tiny-opt");
    let pixels = fixture.tensor::<Flex, 4>("pixel_values", &device);
    let reference = fixture.data("vision/last_hidden_state");

    // A standalone tower (keys at the root) is found without a prefix.
    let path = resave(dir.path(), "", FloatDType::F32, None);
    let checkpoint = Checkpoint::open(&path).unwrap();
    assert_eq!(key_map_for(&checkpoint), KeyMap::new());
    let model =
        Blip2VisionModel::<Flex>::from_pretrained(dir.path(), FloatDType::F32, &device).unwrap();
    let out = model.forward(pixels.clone(), false).last_hidden_state;
    blip2_testkit::assert_tensor_close("standalone", &out, reference, blip2_testkit::Tol::STAGE);

    // A bf16 file loads into f32 (upcast on the host) and into bf16.
    resave(dir.path(), VISION_PREFIX, FloatDType::BF16, None);
    for dtype in [FloatDType::F32, FloatDType::BF16] {
        let model = Blip2VisionModel::<Flex>::from_pretrained(dir.path(), dtype, &device).unwrap();
        assert_eq!(model.post_layernorm.gamma.val().dtype(), dtype.dtype());
        let out = model
            .forward(pixels.clone(), false)
            .last_hidden_state
            .cast(DType::F32);
        blip2_testkit::assert_tensor_close("bf16 file", &out, reference, blip2_testkit::Tol::BF16);
    }
}

#[test]
fn mismatched_checkpoints_list_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    // The zero key third of qkv.bias is stored in real checkpoints: a file without the bias is incomplete.
    resave(dir.path(), VISION_PREFIX, FloatDType::F32, Some("qkv.bias"));
    let err = Blip2VisionModel::<Flex>::from_pretrained(dir.path(), FloatDType::F32, &device)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("vision_model.encoder.layers.0.self_attn.qkv.bias"),
        "{text}"
    );
    assert!(
        text.contains("vision_model.encoder.layers.1.self_attn.qkv.bias"),
        "{text}"
    );

    // A config that says qkv_bias = false meets a file with the bias: unexpected keys.
    resave(dir.path(), VISION_PREFIX, FloatDType::F32, None);
    let mut config = Blip2VisionConfig::from_file(dir.path()).unwrap();
    config.qkv_bias = false;
    let checkpoint = Checkpoint::open(dir.path()).unwrap();
    let err =
        Blip2VisionModel::<Flex>::load(&config, &checkpoint, FloatDType::F32, &device).unwrap_err();
    assert!(
        err.to_string().contains("unexpected") && err.to_string().contains("qkv.bias"),
        "{err}"
    );

    // A config of another size: shape mismatches with both shapes.
    config.qkv_bias = true;
    config.intermediate_size = 41;
    let err =
        Blip2VisionModel::<Flex>::load(&config, &checkpoint, FloatDType::F32, &device).unwrap_err();
    assert!(
        err.to_string().contains("mlp.fc1.weight") && err.to_string().contains("41"),
        "{err}"
    );

    // A directory without weights.
    let empty = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("config.json"),
        empty.path().join("config.json"),
    )
    .unwrap();
    let err = Blip2VisionModel::<Flex>::from_pretrained(empty.path(), FloatDType::F32, &device)
        .unwrap_err();
    assert!(err.to_string().contains("no weights"), "{err}");
}

/// The hub checkpoints' `vision_model.*` keys and shapes (fixtures/real-keys, built by transformers on the meta
/// device) are exactly what a ViT-g at 224 px reads: the real files load without renaming.
#[test]
fn vit_g_expects_exactly_the_hub_keys() {
    let device = Default::default();
    let model = Blip2VisionConfig::vit_g(224).init::<Flex>(&device).unwrap(); // lazy: nothing allocated
    let ours = blip2_nn::loader::expected_keys(&model, &KeyMap::under(VISION_PREFIX));
    assert_eq!(
        ours.len(),
        4 + 39 * 12 + 2,
        "embeddings, 39 layers of 12 tensors, post_layernorm"
    );
    for name in [
        "blip2-opt-2.7b",
        "blip2-opt-6.7b",
        "blip2-flan-t5-xl",
        "blip2-itm-vit-g",
    ] {
        let theirs = blip2_testkit::real_keys(name, |k| k.starts_with("vision_model."));
        assert_eq!(ours, theirs, "{name}");
    }
}
