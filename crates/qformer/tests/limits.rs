//! Resource limits of the Q-Former config (the captioning one and the ITM one with its text tower): sizes over
//! `blip2_nn::limits` are refused before anything is built, naming the key, the value, the limit and the file;
//! numbers of the wrong kind name their key; the parameter estimate is exact.

use blip2_nn::limits;
use blip2_nn::loader::{KeyMap, expected_keys};
use blip2_qformer::{Blip2QFormerConfig, Error, QFormerConfig};
use blip2_testkit::Flex;

const FILE: &str = "models/x/config.json";

fn refused(qformer: &str, top: &str) -> Error {
    let json = format!(r#"{{"model_type": "blip-2", "qformer_config": {{{qformer}}}{top}}}"#);
    QFormerConfig::from_json_str(&json, FILE).unwrap_err()
}

fn limit_of(err: &Error) -> (String, u64, u64) {
    match err {
        Error::Nn(blip2_nn::Error::LimitExceeded {
            path,
            key,
            value,
            limit,
        }) => {
            assert_eq!(path.as_deref(), Some(std::path::Path::new(FILE)));
            let message = err.to_string();
            for needle in [key.as_str(), &value.to_string(), &limit.to_string(), FILE] {
                assert!(message.contains(needle), "{message} lacks {needle}");
            }
            (key.clone(), *value, *limit)
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
}

#[test]
fn absurd_sizes_are_refused_naming_key_value_and_limit() {
    let text = r#""use_qformer_text_input": true, "#;
    for (qformer, key, value, limit) in [
        (
            r#""num_hidden_layers": 1000000000"#,
            "num_hidden_layers",
            1_000_000_000u64,
            limits::MAX_LAYERS,
        ),
        (
            r#""hidden_size": 1000000, "num_attention_heads": 1"#,
            "hidden_size",
            1_000_000,
            limits::MAX_HIDDEN_SIZE,
        ),
        (
            r#""num_attention_heads": 4096"#,
            "num_attention_heads",
            4096,
            limits::MAX_HEADS,
        ),
        (
            r#""intermediate_size": 100000000"#,
            "intermediate_size",
            100_000_000,
            limits::MAX_INTERMEDIATE_SIZE,
        ),
        // The ITM Q-Former's text tower.
        (
            &format!(r#"{text}"vocab_size": 1000000000000"#),
            "vocab_size",
            1_000_000_000_000,
            limits::MAX_VOCAB_SIZE,
        ),
        (
            &format!(r#"{text}"max_position_embeddings": 1000000000"#),
            "max_position_embeddings",
            1_000_000_000,
            limits::MAX_POSITIONS,
        ),
        (
            &format!(r#"{text}"num_hidden_layers": 1000000"#),
            "num_hidden_layers",
            1_000_000,
            limits::MAX_LAYERS,
        ),
    ] {
        let (k, v, l) = limit_of(&refused(qformer, ""));
        assert_eq!(
            (k.as_str(), v, l),
            (
                format!("qformer_config.{key}").as_str(),
                value,
                limit as u64
            )
        );
    }
    // Top-level keys keep their own name.
    let (k, v, _) = limit_of(&refused("", r#", "num_query_tokens": 1000000000"#));
    assert_eq!((k.as_str(), v), ("num_query_tokens", 1_000_000_000));
    let (k, _, _) = limit_of(&refused(
        "",
        r#", "vision_config": {"hidden_size": 10000000}"#,
    ));
    assert_eq!(k, "vision_config.hidden_size");
    // Without the text tower its tables are not built, so their sizes are not held against the limits (as
    // transformers does not read them).
    assert!(
        QFormerConfig::from_json_str(
            r#"{"model_type": "blip-2", "qformer_config": {"vocab_size": 1000000000000}}"#,
            FILE
        )
        .is_ok()
    );
    // Built in code: validate and init refuse it too.
    let config = QFormerConfig {
        num_query_tokens: 1 << 40,
        ..QFormerConfig::default()
    };
    assert!(config.validate().is_err());
    assert!(config.init::<Flex>(&Default::default()).is_err());
    let config = Blip2QFormerConfig {
        num_hidden_layers: 1 << 30,
        ..Blip2QFormerConfig::default()
    };
    assert!(config.init::<Flex>(&Default::default()).is_err());
}

#[test]
fn numbers_of_the_wrong_kind_name_their_key() {
    for (qformer, key) in [
        (r#""num_hidden_layers": 1e9"#, "num_hidden_layers"),
        (r#""hidden_size": 76.8"#, "hidden_size"),
        (
            r#""cross_attention_frequency": -2"#,
            "cross_attention_frequency",
        ),
        (r#""pad_token_id": 0.5"#, "pad_token_id"),
    ] {
        let err = refused(qformer, "");
        assert!(matches!(err, Error::Json { .. }), "{qformer}: {err:?}");
        assert!(err.to_string().contains(&format!("`{key}`")), "{err}");
    }
    for top in [
        r#", "num_query_tokens": 1e9"#,
        r#", "num_query_tokens": -1"#,
        r#", "num_query_tokens": 0"#,
    ] {
        let err = refused("", top);
        assert!(err.to_string().contains("num_query_tokens"), "{err}");
    }
}

#[test]
fn zero_sizes_and_indivisible_heads_are_refused() {
    for qformer in [
        r#""num_attention_heads": 0"#,
        r#""cross_attention_frequency": 0"#,
        r#""hidden_size": 768, "num_attention_heads": 7"#,
        r#""use_qformer_text_input": true, "vocab_size": 0"#,
    ] {
        assert!(
            matches!(refused(qformer, ""), Error::UnsupportedConfig { .. }),
            "{qformer}"
        );
    }
}

#[test]
fn the_parameter_estimate_is_exact() {
    let itm = Blip2QFormerConfig {
        vocab_size: 30523,
        use_qformer_text_input: true,
        ..Blip2QFormerConfig::default()
    };
    let odd = Blip2QFormerConfig {
        vocab_size: 13,
        hidden_size: 12,
        num_hidden_layers: 5,
        num_attention_heads: 3,
        intermediate_size: 7,
        cross_attention_frequency: 2,
        encoder_hidden_size: 10,
        max_position_embeddings: 9,
        use_qformer_text_input: true,
        ..Blip2QFormerConfig::default()
    };
    for qformer in [Blip2QFormerConfig::default(), itm, odd] {
        // With its queries and (ITM) text embeddings, which the estimate counts too.
        let config = QFormerConfig {
            qformer,
            num_query_tokens: 5,
        };
        let model = config.init::<Flex>(&Default::default()).unwrap();
        let exact: usize = expected_keys(&model, &KeyMap::default())
            .values()
            .map(|shape| shape.iter().product::<usize>())
            .sum();
        let queries = 5 * config.qformer.hidden_size as u128;
        assert_eq!(
            config.qformer.estimated_parameters() + queries,
            exact as u128,
            "{config:?}"
        );
    }
}
