//! T5 configs as HF writes them (the derived feed-forward activation, the stated `dense_act_fn`, the head),
//! rejected values, the hub's BLIP-2 Flan-T5 key set, loading (standalone and BLIP-2 prefixes, tied copies absent
//! or present, dtypes) and input checks.

use blip2_nn::Activation;
use blip2_nn::backend::FloatDType;
use blip2_nn::loader::expected_keys;
use blip2_t5::{Error, LogitsFor, T5Config, T5ForConditionalGeneration, T5Input, t5_key_map};
use blip2_testkit::{Fixture, Flex, Tol, assert_tensor_close};
use burn::prelude::*;
use burn::tensor::DType;

fn parse(json: &str) -> Result<T5Config, Error> {
    T5Config::from_json_str(json, "config.json")
}

#[test]
fn activation_and_head_follow_hf() {
    let cases = [
        (r#"{"model_type": "t5"}"#, Activation::Relu, false, true),
        (
            r#"{"model_type": "t5", "feed_forward_proj": "gated-gelu"}"#,
            Activation::GeluTanh,
            true,
            true,
        ),
        // BLIP-2's Flan-T5 configs state exact gelu: it wins over gated-gelu's gelu_new (the fixture proves HF
        // honours it).
        (
            r#"{"model_type": "t5", "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu", "tie_word_embeddings": false}"#,
            Activation::Gelu,
            true,
            false,
        ),
        (
            r#"{"model_type": "t5", "feed_forward_proj": "gated-silu"}"#,
            Activation::Silu,
            true,
            true,
        ),
        // transformers 5.x writes `is_gated_act` and `scale_decoder_outputs`; stated, they win (a Flan-T5 saved
        // by 5.x says `tie_word_embeddings: true, scale_decoder_outputs: false`).
        (
            r#"{"model_type": "t5", "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu", "is_gated_act": true, "tie_word_embeddings": true, "scale_decoder_outputs": false}"#,
            Activation::Gelu,
            true,
            false,
        ),
        (
            r#"{"model_type": "t5", "feed_forward_proj": "gated-gelu", "is_gated_act": false}"#,
            Activation::GeluTanh,
            false,
            true,
        ),
        (
            r#"{"model_type": "t5", "feed_forward_proj": "relu", "is_gated_act": true, "tie_word_embeddings": false, "scale_decoder_outputs": true}"#,
            Activation::Relu,
            true,
            true,
        ),
    ];
    for (json, act, gated, scaled) in cases {
        let config = parse(json).unwrap();
        assert_eq!(
            (
                config.activation().unwrap(),
                config.is_gated(),
                config.scales_decoder_outputs()
            ),
            (act, gated, scaled),
            "{json}"
        );
    }
    let blip2 = T5Config::from_file(Fixture::open("tiny-t5").dir()).unwrap();
    assert_eq!(
        (blip2.activation().unwrap(), blip2.decoder_layers()),
        (Activation::Gelu, 2)
    );
}

#[test]
fn unsupported_values_name_their_key() {
    for (json, key) in [
        (
            r#"{"model_type": "t5", "feed_forward_proj": "gated-gelu-x"}"#,
            "feed_forward_proj",
        ),
        (
            r#"{"model_type": "t5", "feed_forward_proj": "swiglu"}"#,
            "feed_forward_proj",
        ),
        (
            r#"{"model_type": "t5", "dense_act_fn": "gelu_10"}"#,
            "dense_act_fn",
        ),
        (r#"{"model_type": "t5", "d_kv": 0}"#, "d_kv"),
        (
            r#"{"model_type": "t5", "relative_attention_max_distance": 3}"#,
            "relative_attention_max_distance",
        ),
    ] {
        match parse(json) {
            Err(Error::UnsupportedConfig { key: k, .. }) => assert_eq!(k, key, "{json}"),
            other => panic!("{json}: expected an unsupported-config error, got {other:?}"),
        }
    }
    assert!(matches!(
        parse(r#"{"model_type": "opt"}"#),
        Err(Error::NotAT5Config { .. })
    ));
    assert!(matches!(
        parse(r#"{"model_type": "t5", "d_ff": "x"}"#),
        Err(Error::Json { .. })
    ));
}

/// blip2-flan-t5-xl's `language_model.*` keys and shapes (fixtures/real-keys) are what the config builds, but for
/// the embedding copies tied to `shared`.
#[test]
fn flan_t5_xl_expects_the_hub_keys() {
    let t5 = T5Config::flan_t5_xl_blip2()
        .init::<Flex>(&Default::default())
        .unwrap(); // lazy
    let ours = expected_keys(&t5, &t5_key_map("language_model"));
    let theirs = blip2_testkit::real_keys("blip2-flan-t5-xl", |k| k.starts_with("language_model."));
    assert_eq!(ours, theirs);
}

#[test]
fn loads_blip2_t5_in_half_precision() {
    let device = Default::default();
    let fixture = Fixture::open("tiny-t5");
    let ids = fixture.int_tensor::<Flex, 2>("features/text/input_ids", &device);
    let mask = fixture.int_tensor::<Flex, 2>("features/text/attention_mask", &device);
    let want = fixture.data("features/text");
    let f32 = T5ForConditionalGeneration::<Flex>::from_pretrained(
        fixture.dir(),
        FloatDType::F32,
        &device,
    )
    .unwrap();
    f32.check_encode(&T5Input::Ids(ids.clone()), Some(&mask))
        .unwrap();
    let encoded = f32.encode(T5Input::Ids(ids.clone()), Some(mask.clone()));
    assert_tensor_close("get_text_features", &encoded, want, Tol::LOGITS);
    let bf16 = T5ForConditionalGeneration::<Flex>::from_pretrained(
        fixture.dir(),
        FloatDType::BF16,
        &device,
    )
    .unwrap();
    let encoded = bf16.encode(T5Input::Ids(ids), Some(mask));
    assert_eq!(encoded.dtype(), DType::BF16);
    // Three unscaled-attention blocks in bf16: transformers' own bf16 encoder differs from its f32 output by up to
    // 8.8e-2 here (7 of 640 values outside `Tol::BF16`), ours by 1.24e-1 (31 values). The bound is twice torch's.
    const BF16_T5_ENCODER: Tol = Tol {
        name: "bf16 T5 encoder, twice transformers' own bf16 drift",
        rel: 0.0,
        abs: 0.18,
    };
    assert_tensor_close(
        "bf16 encoder",
        &encoded.cast(DType::F32),
        want,
        BF16_T5_ENCODER,
    );
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let device = Default::default();
    let t5 = T5ForConditionalGeneration::<Flex>::from_pretrained(
        Fixture::open("tiny-t5-lm").dir(),
        FloatDType::F32,
        &device,
    )
    .unwrap();
    let ids = Tensor::<Flex, 2, Int>::from_ints([[5, 6, 1]], &device);
    let err = t5
        .check_encode(&T5Input::Ids(Tensor::from_ints([[5, 9999]], &device)), None)
        .unwrap_err();
    assert!(err.to_string().contains("token id 9999"), "{err}");
    let err = t5
        .check_encode(&T5Input::Embeds(Tensor::zeros([1, 3, 7], &device)), None)
        .unwrap_err();
    assert!(err.to_string().contains("7 wide"), "{err}");
    let err = t5
        .check_encode(
            &T5Input::Ids(ids.clone()),
            Some(&Tensor::ones([1, 4], &device)),
        )
        .unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    let encoded = t5.encode(T5Input::Ids(ids), None);
    let two = Tensor::<Flex, 2, Int>::zeros([2, 1], &device);
    let err = t5.check_decode(&two, &encoded, None, None).unwrap_err();
    assert!(
        matches!(err, Error::BadInput { .. }) && err.to_string().contains("does not fit"),
        "{err}"
    );
    let one = Tensor::<Flex, 2, Int>::zeros([1, 1], &device);
    assert!(t5.check_decode(&one, &encoded, None, None).is_ok());
    let _ = t5.decode(one, encoded, None, None, LogitsFor::Last);
}
