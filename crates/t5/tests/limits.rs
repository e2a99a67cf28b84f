//! Resource limits of the T5 config: sizes over `blip2_nn::limits` are refused before anything is built, naming
//! the key, the value, the limit and the file; numbers of the wrong kind name their key; zero layers (whose
//! block 0 would be missing) are refused; the parameter estimate is exact for a model with its own head.

use blip2_nn::limits;
use blip2_nn::loader::{KeyMap, expected_keys};
use blip2_t5::{Error, T5Config};
use blip2_testkit::Flex;

const FILE: &str = "models/x/config.json";

fn refused(text: &str) -> Error {
    let json =
        format!(r#"{{"model_type": "blip-2", "text_config": {{"model_type": "t5", {text}}}}}"#);
    T5Config::from_json_str(&json, FILE).unwrap_err()
}

#[test]
fn absurd_sizes_are_refused_naming_key_value_and_limit() {
    for (text, key, value, limit) in [
        (
            r#""num_layers": 1000000000"#,
            "num_layers",
            1_000_000_000u64,
            limits::MAX_LAYERS,
        ),
        (
            r#""num_decoder_layers": 1000000"#,
            "num_decoder_layers",
            1_000_000,
            limits::MAX_LAYERS,
        ),
        (
            r#""vocab_size": 100000000000"#,
            "vocab_size",
            100_000_000_000,
            limits::MAX_VOCAB_SIZE,
        ),
        (
            r#""d_model": 10000000"#,
            "d_model",
            10_000_000,
            limits::MAX_HIDDEN_SIZE,
        ),
        (
            r#""d_kv": 1000000"#,
            "d_kv",
            1_000_000,
            limits::MAX_HEAD_DIM,
        ),
        (
            r#""d_ff": 10000000"#,
            "d_ff",
            10_000_000,
            limits::MAX_INTERMEDIATE_SIZE,
        ),
        (
            r#""num_heads": 100000"#,
            "num_heads",
            100_000,
            limits::MAX_HEADS,
        ),
        (
            r#""relative_attention_num_buckets": 1000000"#,
            "relative_attention_num_buckets",
            1_000_000,
            limits::MAX_RELATIVE_BUCKETS,
        ),
        (
            r#""relative_attention_max_distance": 18446744073709551615"#,
            "relative_attention_max_distance",
            u64::MAX,
            limits::MAX_POSITIONS,
        ),
    ] {
        let err = refused(text);
        match &err {
            Error::Nn(blip2_nn::Error::LimitExceeded {
                path,
                key: k,
                value: v,
                limit: l,
            }) => {
                assert_eq!(
                    (k.as_str(), *v, *l),
                    (format!("text_config.{key}").as_str(), value, limit as u64)
                );
                assert_eq!(path.as_deref(), Some(std::path::Path::new(FILE)));
                let message = err.to_string();
                assert!(
                    message.contains(&value.to_string()) && message.contains(FILE),
                    "{message}"
                );
            }
            other => panic!("{text}: expected LimitExceeded, got {other:?}"),
        }
    }
    // Heads times d_kv within their limits, together too many parameters.
    let err = refused(r#""d_model": 65536, "num_heads": 1024, "d_kv": 16384"#);
    assert!(
        matches!(&err, Error::Nn(blip2_nn::Error::LimitExceeded { key, .. }) if key == "text_config.parameters"),
        "{err:?}"
    );
    let config = T5Config {
        num_layers: 1 << 30,
        ..T5Config::default()
    };
    assert!(config.init::<Flex>(&Default::default()).is_err());
}

#[test]
fn numbers_of_the_wrong_kind_name_their_key() {
    for (text, key) in [
        (r#""num_layers": 1e9"#, "num_layers"),
        (r#""d_model": 1.5"#, "d_model"),
        (r#""num_decoder_layers": -1"#, "num_decoder_layers"),
        (r#""decoder_start_token_id": 0.5"#, "decoder_start_token_id"),
    ] {
        let err = refused(text);
        assert!(matches!(err, Error::Json { .. }), "{text}: {err:?}");
        assert!(err.to_string().contains(&format!("`{key}`")), "{err}");
    }
}

#[test]
fn zero_layers_and_sizes_are_refused() {
    // Block 0 of each stack holds the relative attention bias: a stack without blocks cannot run.
    for text in [
        r#""num_layers": 0"#,
        r#""num_layers": 2, "num_decoder_layers": 0"#,
        r#""num_heads": 0"#,
        r#""d_kv": 0"#,
    ] {
        let err = refused(text);
        assert!(
            matches!(err, Error::UnsupportedConfig { .. }),
            "{text}: {err:?}"
        );
    }
}

#[test]
fn the_parameter_estimate_is_exact() {
    let own_head = |c: T5Config| T5Config {
        tie_word_embeddings: Some(false),
        ..c
    };
    for config in [
        own_head(T5Config::flan_t5_xl_blip2()),
        own_head(T5Config {
            vocab_size: 19,
            d_model: 10,
            d_kv: 3,
            d_ff: 7,
            num_layers: 2,
            num_decoder_layers: Some(3),
            num_heads: 4,
            relative_attention_num_buckets: 6,
            relative_attention_max_distance: 9,
            ..T5Config::default()
        }),
    ] {
        let model = config.init::<Flex>(&Default::default()).unwrap();
        let exact: usize = expected_keys(&model, &KeyMap::default())
            .values()
            .map(|shape| shape.iter().product::<usize>())
            .sum();
        assert_eq!(config.estimated_parameters(), exact as u128, "{config:?}");
    }
}
