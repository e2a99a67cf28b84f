//! Resource limits of the OPT config: sizes over `blip2_nn::limits` are refused before anything is built, naming
//! the key, the value, the limit and the file; numbers of the wrong kind name their key; the parameter estimate
//! is exact for a model with its own head.

use blip2_nn::limits;
use blip2_nn::loader::{KeyMap, expected_keys};
use blip2_opt::{Error, OptConfig};
use blip2_testkit::Flex;

const FILE: &str = "models/x/config.json";

fn refused(text: &str) -> Error {
    let json =
        format!(r#"{{"model_type": "blip-2", "text_config": {{"model_type": "opt", {text}}}}}"#);
    OptConfig::from_json_str(&json, FILE).unwrap_err()
}

#[test]
fn absurd_sizes_are_refused_naming_key_value_and_limit() {
    for (text, key, value, limit) in [
        (
            r#""num_hidden_layers": 1000000000"#,
            "num_hidden_layers",
            1_000_000_000u64,
            limits::MAX_LAYERS,
        ),
        (
            r#""vocab_size": 100000000000"#,
            "vocab_size",
            100_000_000_000,
            limits::MAX_VOCAB_SIZE,
        ),
        (
            r#""hidden_size": 10000000, "num_attention_heads": 1"#,
            "hidden_size",
            10_000_000,
            limits::MAX_HIDDEN_SIZE,
        ),
        (
            r#""ffn_dim": 10000000"#,
            "ffn_dim",
            10_000_000,
            limits::MAX_INTERMEDIATE_SIZE,
        ),
        (
            r#""num_attention_heads": 2048, "hidden_size": 4096"#,
            "num_attention_heads",
            2048,
            limits::MAX_HEADS,
        ),
        (
            r#""max_position_embeddings": 18446744073709551615"#,
            "max_position_embeddings",
            u64::MAX,
            limits::MAX_POSITIONS,
        ),
        (
            r#""word_embed_proj_dim": 1000000"#,
            "word_embed_proj_dim",
            1_000_000,
            limits::MAX_HIDDEN_SIZE,
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
    // Each size within its limit, together too many parameters.
    let err = refused(
        r#""hidden_size": 65536, "num_attention_heads": 64, "ffn_dim": 524288, "num_hidden_layers": 1024"#,
    );
    assert!(
        matches!(&err, Error::Nn(blip2_nn::Error::LimitExceeded { key, .. }) if key == "text_config.parameters"),
        "{err:?}"
    );
    let config = OptConfig {
        num_hidden_layers: 1 << 30,
        ..OptConfig::default()
    };
    assert!(config.init::<Flex>(&Default::default()).is_err());
}

#[test]
fn numbers_of_the_wrong_kind_name_their_key() {
    for (text, key) in [
        (r#""num_hidden_layers": 1e9"#, "num_hidden_layers"),
        (r#""hidden_size": 1.5"#, "hidden_size"),
        (r#""vocab_size": -50272"#, "vocab_size"),
        (r#""eos_token_id": -1"#, "eos_token_id"),
        (r#""bos_token_id": 4294967296"#, "bos_token_id"),
    ] {
        let err = refused(text);
        assert!(matches!(err, Error::Json { .. }), "{text}: {err:?}");
        assert!(err.to_string().contains(&format!("`{key}`")), "{err}");
    }
    // Token ids say what they expect (an untagged enum would say "data did not match any variant").
    for text in [
        r#""eos_token_id": -1"#,
        r#""eos_token_id": [2, 1.5]"#,
        r#""eos_token_id": "2""#,
    ] {
        let err = refused(text);
        assert!(
            err.to_string().contains("expected a token id"),
            "{text}: {err}"
        );
    }
    let json = r#"{"model_type": "opt", "eos_token_id": [2, 50118]}"#;
    let config = OptConfig::from_json_str(json, FILE).unwrap();
    assert_eq!(config.eos_token_id.unwrap().to_vec(), vec![2, 50118]);
}

#[test]
fn zero_sizes_and_indivisible_heads_are_refused() {
    for text in [
        r#""num_attention_heads": 0"#,
        r#""vocab_size": 0"#,
        r#""hidden_size": 768, "num_attention_heads": 5"#,
        r#""word_embed_proj_dim": 0"#,
    ] {
        assert!(
            matches!(refused(text), Error::UnsupportedConfig { .. }),
            "{text}"
        );
    }
}

#[test]
fn the_parameter_estimate_is_exact() {
    let own_head = |c: OptConfig| OptConfig {
        tie_word_embeddings: false,
        ..c
    };
    for config in [
        own_head(OptConfig::opt_2_7b_blip2()),
        own_head(OptConfig {
            vocab_size: 17,
            hidden_size: 12,
            num_hidden_layers: 3,
            num_attention_heads: 3,
            ffn_dim: 7,
            max_position_embeddings: 9,
            word_embed_proj_dim: Some(5),
            ..OptConfig::default()
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
