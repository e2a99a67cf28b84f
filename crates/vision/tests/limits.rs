//! Resource limits of the vision config: sizes over `blip2_nn::limits` are refused before anything is built,
//! naming the key, the value, the limit and the file; numbers of the wrong kind name their key; the parameter
//! estimate the limit is checked against is exact for ViT-g.

use blip2_nn::limits;
use blip2_nn::loader::{KeyMap, expected_keys};
use blip2_testkit::Flex;
use blip2_vision::{Blip2VisionConfig, Error};

fn blip2_json(vision: &str) -> String {
    format!(r#"{{"model_type": "blip-2", "vision_config": {{{vision}}}}}"#)
}

/// The config error for `vision` inside a BLIP-2 config named `config.json`.
fn refused(vision: &str) -> Error {
    Blip2VisionConfig::from_json_str(&blip2_json(vision), "models/x/config.json").unwrap_err()
}

fn assert_limit(err: &Error, key: &str, value: u64, limit: usize) {
    match err {
        Error::Nn(blip2_nn::Error::LimitExceeded {
            path,
            key: k,
            value: v,
            limit: l,
        }) => {
            assert_eq!(k, key);
            assert_eq!(*v, value);
            assert_eq!(*l, limit as u64);
            assert_eq!(
                path.as_deref(),
                Some(std::path::Path::new("models/x/config.json"))
            );
            let message = err.to_string();
            for needle in [
                key,
                &value.to_string(),
                &limit.to_string(),
                "models/x/config.json",
            ] {
                assert!(message.contains(needle), "{message} lacks {needle}");
            }
        }
        other => panic!("expected LimitExceeded for {key}, got {other:?}"),
    }
}

#[test]
fn absurd_sizes_are_refused_naming_key_value_and_limit() {
    let cases = [
        ("num_hidden_layers", 1_000_000_000u64, limits::MAX_LAYERS),
        ("hidden_size", 1 << 40, limits::MAX_HIDDEN_SIZE),
        (
            "intermediate_size",
            10_000_000,
            limits::MAX_INTERMEDIATE_SIZE,
        ),
        ("num_attention_heads", 1_000_000, limits::MAX_HEADS),
        ("image_size", 1_000_000, limits::MAX_IMAGE_SIZE),
        ("patch_size", 5_000, limits::MAX_PATCH_SIZE),
    ];
    for (key, value, limit) in cases {
        // In a BLIP-2 config the key carries its section.
        let err = refused(&format!(r#""{key}": {value}"#));
        assert_limit(&err, &format!("vision_config.{key}"), value, limit);
    }
    // A standalone vision config names the key alone.
    let err = Blip2VisionConfig::from_json_str(
        r#"{"model_type": "blip_2_vision_model", "num_hidden_layers": 1000000000}"#,
        "models/x/config.json",
    )
    .unwrap_err();
    assert_limit(&err, "num_hidden_layers", 1_000_000_000, limits::MAX_LAYERS);
    // A config built in code is checked by validate (and init) too.
    let config = Blip2VisionConfig {
        num_hidden_layers: 1_000_000,
        ..Blip2VisionConfig::default()
    };
    assert!(matches!(
        config.validate(),
        Err(Error::Nn(blip2_nn::Error::LimitExceeded { .. }))
    ));
    assert!(config.init::<Flex>(&Default::default()).is_err());
}

#[test]
fn sizes_each_within_their_limit_can_still_be_too_many_patches_or_parameters() {
    // 16384 px at 1 px patches: 2^28 patches.
    let err = refused(r#""image_size": 16384, "patch_size": 1"#);
    assert!(
        matches!(&err, Error::Nn(blip2_nn::Error::LimitExceeded { key, .. }) if key.contains("num_patches")),
        "{err:?}"
    );
    let err =
        refused(r#""hidden_size": 65536, "intermediate_size": 524288, "num_hidden_layers": 1024"#);
    assert!(
        matches!(&err, Error::Nn(blip2_nn::Error::LimitExceeded { key, limit, .. })
            if key == "vision_config.parameters" && *limit == limits::MAX_PARAMETERS),
        "{err:?}"
    );
}

#[test]
fn numbers_of_the_wrong_kind_name_their_key() {
    for (vision, key) in [
        (r#""num_hidden_layers": 1e9"#, "num_hidden_layers"),
        (r#""hidden_size": 1.5"#, "hidden_size"),
        (r#""num_attention_heads": -16"#, "num_attention_heads"),
        (r#""image_size": 22.4"#, "image_size"),
        (r#""patch_size": [14, -14]"#, "patch_size"),
        (r#""image_size": "224""#, "image_size"),
    ] {
        let err = refused(vision);
        assert!(matches!(err, Error::Json { .. }), "{vision}: {err:?}");
        let message = err.to_string();
        assert!(message.contains(&format!("`{key}`")), "{vision}: {message}");
        assert!(message.contains("models/x/config.json"), "{message}");
    }
}

#[test]
fn zero_sizes_and_indivisible_heads_are_refused() {
    for vision in [
        r#""num_attention_heads": 0"#,
        r#""hidden_size": 0"#,
        r#""patch_size": 0"#,
        r#""hidden_size": 1408, "num_attention_heads": 15"#,
    ] {
        assert!(
            matches!(refused(vision), Error::UnsupportedConfig { .. }),
            "{vision}"
        );
    }
}

#[test]
fn the_parameter_estimate_is_exact() {
    for config in [
        Blip2VisionConfig::vit_g(224),
        Blip2VisionConfig::vit_g(364),
        Blip2VisionConfig {
            hidden_size: 24,
            intermediate_size: 37,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            image_size: 30,
            patch_size: 7,
            qkv_bias: true,
            ..Blip2VisionConfig::default()
        },
        Blip2VisionConfig {
            hidden_size: 8,
            intermediate_size: 5,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            image_size: 9,
            patch_size: 3,
            qkv_bias: false,
            ..Blip2VisionConfig::default()
        },
    ] {
        let model = config.init::<Flex>(&Default::default()).unwrap();
        let exact: usize = expected_keys(&model, &KeyMap::default())
            .values()
            .map(|shape| shape.iter().product::<usize>())
            .sum();
        assert_eq!(config.estimated_parameters(), exact as u128, "{config:?}");
    }
}
