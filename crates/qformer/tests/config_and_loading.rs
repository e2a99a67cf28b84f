//! Q-Former configs as HF writes them, rejected values naming their key, the hub checkpoints' key sets, loading
//! (f32 by default from any on-disk dtype, strict key reports) and input checks that return errors, not panics.

use std::collections::BTreeMap;

use blip2_nn::backend::FloatDType;
use blip2_nn::loader::{Checkpoint, KeyMap, expected_keys, save_module};
use blip2_qformer::{Error, QFormer, QFormerConfig, QFormerInput, qformer_key_map};
use blip2_testkit::{Fixture, Flex, Tol, assert_tensor_close};
use burn::prelude::*;
use burn::tensor::DType;

fn parse(json: &str) -> Result<QFormerConfig, Error> {
    QFormerConfig::from_json_str(json, "config.json")
}

#[test]
fn defaults_are_the_hub_qformer() {
    let config = parse(r#"{"qformer_config": {}, "num_query_tokens": 32}"#).unwrap();
    assert_eq!(config, QFormerConfig::default());
    assert_eq!(
        (config.qformer.hidden_size, config.qformer.layer_norm_eps),
        (768, 1e-12)
    );
    assert!(config.qformer.has_cross_attention(0) && !config.qformer.has_cross_attention(1));
    let fixture = QFormerConfig::from_file(Fixture::open("tiny-opt").dir()).unwrap();
    assert_eq!(
        (
            fixture.num_query_tokens,
            fixture.qformer.cross_attention_frequency
        ),
        (5, 2)
    );
    // A standalone Q-Former config (no num_query_tokens): 32 queries.
    let standalone =
        parse(r#"{"model_type": "blip_2_qformer", "hidden_size": 24, "num_attention_heads": 3}"#)
            .unwrap();
    assert_eq!(
        (standalone.num_query_tokens, standalone.qformer.hidden_size),
        (32, 24)
    );
}

#[test]
fn unsupported_values_name_their_key() {
    for (json, key) in [
        (
            r#"{"qformer_config": {"hidden_act": "gelu_10"}}"#,
            "hidden_act",
        ),
        (
            r#"{"qformer_config": {"hidden_size": 100}}"#,
            "num_attention_heads",
        ),
        (
            r#"{"qformer_config": {"cross_attention_frequency": 0}}"#,
            "cross_attention_frequency",
        ),
        (
            r#"{"qformer_config": {"position_embedding_type": "relative_key"}}"#,
            "position_embedding_type",
        ),
        (
            r#"{"qformer_config": {"hidden_dropout_prob": 1.0}}"#,
            "hidden_dropout_prob",
        ),
        (
            r#"{"qformer_config": {}, "num_query_tokens": 0}"#,
            "num_query_tokens",
        ),
        (
            r#"{"qformer_config": {}, "num_query_tokens": "32"}"#,
            "num_query_tokens",
        ),
    ] {
        match parse(json) {
            Err(Error::UnsupportedConfig { key: k, .. }) => assert_eq!(k, key, "{json}"),
            other => panic!("{json}: expected an unsupported-config error, got {other:?}"),
        }
    }
    let err = parse(r#"{"qformer_config": {"hidden_size": -1}}"#).unwrap_err();
    assert!(
        matches!(err, Error::Json { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );
    let err = parse(r#"{"model_type": "opt"}"#).unwrap_err();
    assert!(matches!(err, Error::NotAQFormerConfig { .. }), "{err}");
    let err = QFormerConfig::from_file("/nonexistent/blip2").unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("/nonexistent/blip2"),
        "{err}"
    );
}

fn real_keys(name: &str) -> BTreeMap<String, Vec<usize>> {
    blip2_testkit::real_keys(name, |key| {
        key.starts_with("qformer.") || key == "query_tokens" || key.starts_with("embeddings.")
    })
}

/// The hub checkpoints' Q-Former keys and shapes (fixtures/real-keys, built by transformers on the meta device)
/// are exactly what the hub config builds: the real files load without renaming.
#[test]
fn hub_configs_expect_exactly_the_hub_keys() {
    let device = Default::default();
    let captioning = QFormerConfig::default().init::<Flex>(&device).unwrap(); // lazy: nothing allocated
    let ours = expected_keys(&captioning, &qformer_key_map());
    for name in ["blip2-opt-2.7b", "blip2-opt-6.7b", "blip2-flan-t5-xl"] {
        assert_eq!(ours, real_keys(name), "{name}");
    }
    let mut itm = QFormerConfig::default();
    itm.qformer.use_qformer_text_input = true;
    itm.qformer.vocab_size = 30523;
    let retrieval = itm.init::<Flex>(&device).unwrap();
    assert_eq!(
        expected_keys(&retrieval, &qformer_key_map()),
        real_keys("blip2-itm-vit-g")
    );
}

/// Writes the tiny-itm Q-Former back in `dtype` (optionally without the keys containing `drop`).
fn resave(dir: &std::path::Path, dtype: FloatDType, drop: Option<&str>) {
    let fixture = Fixture::open("tiny-itm");
    let qformer = QFormer::<Flex>::from_pretrained(fixture.dir(), &Default::default()).unwrap();
    let path = dir.join("model.safetensors");
    save_module(
        &qformer,
        &path,
        &qformer_key_map(),
        dtype,
        &Default::default(),
    )
    .unwrap();
    if let Some(pattern) = drop {
        let bytes = std::fs::read(&path).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let kept: Vec<_> = tensors
            .tensors()
            .into_iter()
            .filter(|(k, _)| !k.contains(pattern))
            .collect();
        std::fs::write(&path, safetensors::serialize(kept, None).unwrap()).unwrap();
    }
    std::fs::copy(fixture.dir().join("config.json"), dir.join("config.json")).unwrap();
}

#[test]
fn half_precision_files_load_into_f32() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let fixture = Fixture::open("tiny-itm");
    for (dtype, tol) in [(FloatDType::F16, Tol::HALF), (FloatDType::BF16, Tol::BF16)] {
        resave(dir.path(), dtype, None);
        let qformer = QFormer::<Flex>::from_pretrained(dir.path(), &device).unwrap();
        assert_eq!(
            qformer.query_tokens.val().dtype(),
            DType::F32,
            "the Q-Former stays f32"
        );
        let image = fixture.tensor::<Flex, 3>("vision/last_hidden_state", &device);
        let out = qformer.forward_image(image);
        let want = fixture.data("itc/image_qformer/last_hidden_state");
        assert_tensor_close(dtype.name(), &out.last_hidden_state, want, tol);
    }
    // Loading into bf16 on request, from the f32 fixture. Run entirely in bf16 (what HF avoids by keeping the
    // Q-Former in f32), the three post-LN layers with eps 1e-12 drift further than the vision tower does:
    // transformers' own bf16 Q-Former differs from its f32 output by up to 4.4e-2 here, ours by 5.3e-2 (one of
    // 240 values just over `Tol::BF16`). The bound is twice torch's drift.
    const BF16_QFORMER: Tol = Tol {
        name: "bf16 Q-Former, twice transformers' own bf16 drift",
        rel: 0.0,
        abs: 8.9e-2,
    };
    let checkpoint = Checkpoint::open(fixture.dir()).unwrap();
    let config = QFormerConfig::from_file(fixture.dir()).unwrap();
    let (qformer, _) =
        QFormer::<Flex>::load(&config, &checkpoint, FloatDType::BF16, &device).unwrap();
    let out = qformer.forward_image(fixture.tensor::<Flex, 3>("vision/last_hidden_state", &device));
    assert_eq!(out.last_hidden_state.dtype(), DType::BF16);
    let want = fixture.data("itc/image_qformer/last_hidden_state");
    assert_tensor_close(
        "bf16 run",
        &out.last_hidden_state.cast(DType::F32),
        want,
        BF16_QFORMER,
    );
}

#[test]
fn mismatched_checkpoints_list_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    resave(dir.path(), FloatDType::F32, Some("crossattention"));
    let err = QFormer::<Flex>::from_pretrained(dir.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("qformer.encoder.layer.0.crossattention.attention.key.weight"),
        "{err}"
    );
    assert!(
        err.contains("qformer.encoder.layer.2.crossattention.output.LayerNorm.weight"),
        "{err}"
    );
    assert!(
        !err.contains("layer.1.crossattention"),
        "layer 1 has no cross-attention: {err}"
    );

    // A captioning config against the ITM file: the text tower's keys are unexpected.
    resave(dir.path(), FloatDType::F32, None);
    let mut config = QFormerConfig::from_file(dir.path()).unwrap();
    config.qformer.use_qformer_text_input = false;
    let checkpoint = Checkpoint::open(dir.path()).unwrap();
    let err = QFormer::<Flex>::load(&config, &checkpoint, FloatDType::F32, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unexpected") && err.contains("embeddings.word_embeddings.weight"),
        "{err}"
    );
    assert!(
        err.contains("qformer.encoder.layer.0.intermediate.dense.weight"),
        "{err}"
    );

    // Keys outside the Q-Former (vision tower, language model) are not its business.
    let fixture = Fixture::open("tiny-opt");
    let checkpoint = Checkpoint::open(fixture.dir()).unwrap();
    let config = QFormerConfig::from_file(fixture.dir()).unwrap();
    let (_, report) =
        QFormer::<Flex>::load(&config, &checkpoint, FloatDType::F32, &device).unwrap();
    assert!(report.is_clean());
    assert!(KeyMap::new().owns("vision_model.post_layernorm.weight"));
    assert!(!qformer_key_map().owns("vision_model.post_layernorm.weight"));
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let device = Default::default();
    let itm = QFormer::<Flex>::from_pretrained(Fixture::open("tiny-itm").dir(), &device).unwrap();
    let captioning =
        QFormer::<Flex>::from_pretrained(Fixture::open("tiny-opt").dir(), &device).unwrap();
    let image = |width: usize| Tensor::<Flex, 3>::zeros([2, 17, width], &device);
    let ids = |rows: [[i64; 3]; 2]| Tensor::<Flex, 2, Int>::from_ints(rows, &device);
    let mask = || Tensor::<Flex, 2, Int>::ones([2, 3], &device);
    let cases: Vec<(&QFormer<Flex>, QFormerInput<Flex>, &str)> = vec![
        (
            &itm,
            QFormerInput::Image(image(20)),
            "expects encoder_hidden_size 16",
        ),
        (
            &itm,
            QFormerInput::Image(Tensor::zeros([0, 17, 16], &device)),
            "empty",
        ),
        (
            &captioning,
            QFormerInput::Text {
                input_ids: ids([[1, 2, 3]; 2]),
                attention_mask: mask(),
            },
            "no text tower",
        ),
        (
            &itm,
            QFormerInput::Text {
                input_ids: ids([[1, 2, 99999]; 2]),
                attention_mask: mask(),
            },
            "token id 99999",
        ),
        (
            &itm,
            QFormerInput::Text {
                input_ids: ids([[1, -2, 3]; 2]),
                attention_mask: mask(),
            },
            "token id -2",
        ),
        (
            &itm,
            QFormerInput::Text {
                input_ids: ids([[1, 2, 3]; 2]),
                attention_mask: Tensor::ones([2, 4], &device),
            },
            "does not match",
        ),
        (
            &itm,
            QFormerInput::Text {
                input_ids: Tensor::ones([1, 25], &device),
                attention_mask: Tensor::ones([1, 25], &device),
            },
            "at most 24",
        ),
        (
            &itm,
            QFormerInput::ImageText {
                image: Tensor::zeros([1, 17, 16], &device),
                input_ids: ids([[1, 2, 3]; 2]),
                attention_mask: mask(),
            },
            "1 images but 2 texts",
        ),
    ];
    for (qformer, input, says) in cases {
        let err = qformer.try_forward(input, false).unwrap_err();
        assert!(
            matches!(err, Error::BadInput { .. }) && err.to_string().contains(says),
            "{says}: {err}"
        );
    }
}
