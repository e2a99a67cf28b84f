//! Resource limits of a whole BLIP-2 config: a part asking for absurd sizes (a billion layers in the vision
//! tower, the Q-Former, the ITM Q-Former, OPT or T5) is refused by `from_pretrained` before anything is
//! allocated, naming the key with its section, the value, the limit and the file. Before the limits such a
//! config aborted the process ("memory allocation of 5296000000000 bytes failed"), and a million layers ran for
//! most of a minute and printed a gigabyte of missing keys.

use std::path::Path;

use blip2::{Blip2Config, Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval, Error};
use blip2_nn::backend::FloatDType;
use blip2_nn::limits;
use blip2_testkit::{Fixture, Flex};
use serde_json::Value;

type B = Flex;

/// A copy of fixture `name` whose config.json has `value` at `pointer` (a JSON pointer).
fn damaged(name: &str, pointer: &str, value: Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = Fixture::open(name).dir().to_path_buf();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(from.join(file), dir.path().join(file)).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    *config
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{name} has no {pointer}")) = value;
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

/// The `LimitExceeded` inside `err`, whichever part raised it.
fn limit_exceeded(err: &Error) -> (&str, u64, u64, Option<&Path>) {
    let nn = match err {
        Error::Nn(e) => e,
        Error::Vision(blip2_vision::Error::Nn(e))
        | Error::QFormer(blip2_qformer::Error::Nn(e))
        | Error::Opt(blip2_opt::Error::Nn(e))
        | Error::T5(blip2_t5::Error::Nn(e)) => e,
        other => panic!("expected a LimitExceeded, got {other:?}"),
    };
    match nn {
        blip2_nn::Error::LimitExceeded {
            path,
            key,
            value,
            limit,
        } => (key, *value, *limit, path.as_deref()),
        other => panic!("expected a LimitExceeded, got {other:?}"),
    }
}

#[test]
fn a_billion_layers_in_any_part_is_refused_by_from_pretrained() {
    let layers = Value::from(1_000_000_000u64);
    for (fixture, pointer, key) in [
        (
            "tiny-opt",
            "/vision_config/num_hidden_layers",
            "vision_config.num_hidden_layers",
        ),
        (
            "tiny-opt",
            "/qformer_config/num_hidden_layers",
            "qformer_config.num_hidden_layers",
        ),
        (
            "tiny-opt",
            "/text_config/num_hidden_layers",
            "text_config.num_hidden_layers",
        ),
        (
            "tiny-t5",
            "/text_config/num_layers",
            "text_config.num_layers",
        ),
        (
            "tiny-t5",
            "/text_config/num_decoder_layers",
            "text_config.num_decoder_layers",
        ),
    ] {
        let dir = damaged(fixture, pointer, layers.clone());
        let err = Blip2ForConditionalGeneration::<B>::from_pretrained(
            dir.path(),
            FloatDType::F32,
            &Default::default(),
        )
        .unwrap_err();
        let (k, value, limit, path) = limit_exceeded(&err);
        assert_eq!(
            (k, value, limit),
            (key, 1_000_000_000, limits::MAX_LAYERS as u64)
        );
        assert_eq!(path, Some(dir.path().join("config.json").as_path()));
        let message = err.to_string();
        for needle in [key, "1000000000", "1024", "config.json"] {
            assert!(message.contains(needle), "{message} lacks {needle}");
        }
    }
    // The ITM (retrieval) checkpoint: its Q-Former has the text tower.
    for (pointer, key) in [
        (
            "/qformer_config/num_hidden_layers",
            "qformer_config.num_hidden_layers",
        ),
        ("/qformer_config/vocab_size", "qformer_config.vocab_size"),
        ("/num_query_tokens", "num_query_tokens"),
        ("/image_text_hidden_size", "image_text_hidden_size"),
    ] {
        let dir = damaged("tiny-itm", pointer, layers.clone());
        let err = Blip2ForImageTextRetrieval::<B>::from_pretrained(
            dir.path(),
            FloatDType::F32,
            &Default::default(),
        )
        .unwrap_err();
        let (k, value, _, path) = limit_exceeded(&err);
        assert_eq!((k, value), (key, 1_000_000_000));
        assert_eq!(path, Some(dir.path().join("config.json").as_path()));
    }
}

#[test]
fn a_float_in_an_integer_field_names_the_key() {
    for (pointer, value, key) in [
        (
            "/vision_config/num_hidden_layers",
            Value::from(1e9),
            "num_hidden_layers",
        ),
        ("/text_config/hidden_size", Value::from(1.5), "hidden_size"),
        (
            "/qformer_config/num_attention_heads",
            Value::from(-4),
            "num_attention_heads",
        ),
    ] {
        let dir = damaged("tiny-opt", pointer, value);
        let err = Blip2Config::from_file(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&format!("`{key}`")), "{message}");
        assert!(message.contains("config.json"), "{message}");
    }
}

#[test]
fn parts_built_in_code_are_checked_together() {
    let config = Blip2Config::from_file(Fixture::open("tiny-opt").dir()).unwrap();
    let mut vision = config.vision_config.clone();
    vision.num_hidden_layers = 1 << 20;
    let err = Blip2Config::from_vision_qformer_text_configs(
        vision,
        config.qformer.qformer.clone(),
        config.text_config.clone(),
    )
    .unwrap_err();
    assert_eq!(limit_exceeded(&err).0, "num_hidden_layers");
    // Each part within its limits, but together over MAX_PARAMETERS: the whole config is refused.
    assert!(config.estimated_parameters() < 10_000_000);
    let wide = |layers| {
        (
            limits::MAX_HIDDEN_SIZE,
            limits::MAX_INTERMEDIATE_SIZE,
            layers,
        )
    };
    let mut vision = config.vision_config.clone();
    (
        vision.hidden_size,
        vision.intermediate_size,
        vision.num_hidden_layers,
    ) = wide(3);
    let blip2::TextConfig::Opt(mut opt) = config.text_config.clone() else {
        unreachable!("tiny-opt")
    };
    (opt.hidden_size, opt.ffn_dim, opt.num_hidden_layers) = wide(10);
    (vision.num_attention_heads, opt.num_attention_heads) = (16, 16);
    vision.validate().unwrap();
    opt.validate().unwrap();
    let err = Blip2Config::from_vision_qformer_text_configs(
        vision,
        config.qformer.qformer.clone(),
        blip2::TextConfig::Opt(opt),
    )
    .unwrap_err();
    let (key, value, limit, _) = limit_exceeded(&err);
    assert_eq!(key, "parameters");
    assert!(value > limit && limit == limits::MAX_PARAMETERS, "{err}");
    let mut big = config.clone();
    big.image_text_hidden_size = limits::MAX_HIDDEN_SIZE + 1;
    assert_eq!(
        limit_exceeded(&big.validate().unwrap_err()).0,
        "image_text_hidden_size"
    );
}
