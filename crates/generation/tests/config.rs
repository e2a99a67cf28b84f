//! `GenerationConfig`: transformers' names, defaults and file format; errors that name the field.

use blip2_generation::{EarlyStopping, Error, GenerationConfig};
use blip2_testkit::Fixture;

fn parse(json: &str) -> Result<GenerationConfig, Error> {
    GenerationConfig::from_json_str(json)
}

#[test]
fn defaults_are_transformers_defaults() {
    let c = GenerationConfig::default();
    assert_eq!(
        (c.max_new_tokens, c.max_length, c.min_length),
        (None, None, 0)
    );
    assert!(!c.do_sample);
    assert_eq!((c.temperature, c.top_k, c.top_p), (1.0, 50, 1.0));
    assert_eq!((c.num_beams, c.num_return_sequences), (1, 1));
    assert_eq!((c.length_penalty, c.repetition_penalty), (1.0, 1.0));
    assert_eq!(c.early_stopping, EarlyStopping::Heuristic);
    assert_eq!(c.no_repeat_ngram_size, 0);
    assert!(c.eos_token_id.is_empty() && c.bad_words_ids.is_none());
    c.validate().unwrap();
    assert_eq!(parse("{}").unwrap(), c);
}

#[test]
fn reads_the_fixture_files() {
    let opt = GenerationConfig::from_file(Fixture::open("tiny-opt-lm").dir()).unwrap();
    assert_eq!(
        (opt.bos_token_id, opt.eos_token_id.clone(), opt.pad_token_id),
        (Some(2), vec![2], Some(1))
    );
    let t5 = GenerationConfig::from_file(
        Fixture::open("tiny-t5")
            .dir()
            .join("generation_config.json"),
    )
    .unwrap();
    assert_eq!(t5.eos_token_id, [1, 75]);
    assert_eq!(
        (t5.decoder_start_token_id, t5.fill_token_id()),
        (Some(0), Some(0))
    );
}

#[test]
fn every_field_reads_with_its_transformers_name() {
    let c = parse(
        r#"{"max_new_tokens": 30, "max_length": 50, "min_new_tokens": 2, "min_length": 3, "do_sample": true,
            "temperature": 0.7, "top_k": 0, "top_p": 0.9, "num_beams": 4, "length_penalty": 0.5,
            "early_stopping": "never", "num_return_sequences": 2, "repetition_penalty": 1.2,
            "no_repeat_ngram_size": 3, "bad_words_ids": [[5], [6, 7]], "eos_token_id": [1, 2],
            "pad_token_id": 0, "bos_token_id": 3, "decoder_start_token_id": 0, "max_time": 2.5, "seed": 9,
            "transformers_version": "5.24.0", "_from_model_config": true, "use_cache": true,
            "typical_p": 1.0, "num_beam_groups": 1, "forced_eos_token_id": null}"#,
    )
    .unwrap();
    assert_eq!(
        (c.max_new_tokens, c.max_length, c.min_new_tokens),
        (Some(30), Some(50), Some(2))
    );
    assert_eq!((c.top_k, c.top_p, c.num_beams), (0, 0.9, 4));
    assert_eq!(c.early_stopping, EarlyStopping::Never);
    assert_eq!(c.bad_words_ids, Some(vec![vec![5], vec![6, 7]]));
    assert_eq!((c.max_time, c.seed), (Some(2.5), Some(9)));
    c.validate().unwrap();
    // And back: the JSON a config writes reads as the same config.
    assert_eq!(parse(&c.to_json_string()).unwrap(), c);
    for (text, mode) in [
        ("true", EarlyStopping::OnBeamsFinished),
        ("false", EarlyStopping::Heuristic),
        ("\"never\"", EarlyStopping::Never),
    ] {
        let c = parse(&format!(r#"{{"early_stopping": {text}}}"#)).unwrap();
        assert_eq!(c.early_stopping, mode);
    }
}

#[test]
fn file_errors_name_the_field_and_the_file() {
    let err = parse(r#"{"early_stopping": "sometimes"}"#).unwrap_err();
    assert!(
        matches!(err, Error::Json { .. }) && err.to_string().contains("early_stopping"),
        "{err}"
    );
    let err = parse(r#"{"num_beams": "four"}"#).unwrap_err();
    assert!(err.to_string().contains("num_beams"), "{err}");
    let err = parse(r#"{"eos_token_id": [1, -2]}"#).unwrap_err();
    assert!(err.to_string().contains("eos_token_id"), "{err}");
    let err = parse(r#"{"typical_p": 0.9}"#).unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { key, .. } if key == "typical_p"),
        "{err}"
    );
    let err = parse(r#"{"num_beam_groups": 2}"#).unwrap_err();
    assert!(err.to_string().contains("num_beam_groups"), "{err}");
    let err = parse(r#"{"top_q": 0.5}"#).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownField { key, .. } if key == "top_q"),
        "{err}"
    );
    let err = parse("[1, 2]").unwrap_err();
    assert!(matches!(err, Error::Json { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let err = GenerationConfig::from_file(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("generation_config.json"),
        "{err}"
    );
    let path = dir.path().join("generation_config.json");
    std::fs::write(&path, "{\"max_new_tokens\": ").unwrap();
    let err = GenerationConfig::from_file(&path).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn invalid_combinations_name_their_fields() {
    let cases: Vec<(GenerationConfig, &[&str])> = vec![
        (
            GenerationConfig {
                num_return_sequences: 2,
                ..Default::default()
            },
            &["num_return_sequences", "num_beams", "do_sample"],
        ),
        (
            GenerationConfig {
                num_beams: 2,
                num_return_sequences: 3,
                ..Default::default()
            },
            &["num_return_sequences", "num_beams"],
        ),
        (
            GenerationConfig {
                do_sample: true,
                temperature: 0.0,
                ..Default::default()
            },
            &["temperature", "do_sample"],
        ),
        (
            GenerationConfig {
                do_sample: true,
                top_p: 1.5,
                ..Default::default()
            },
            &["top_p"],
        ),
        (
            GenerationConfig {
                max_new_tokens: Some(0),
                ..Default::default()
            },
            &["max_new_tokens"],
        ),
        (
            GenerationConfig {
                num_beams: 0,
                ..Default::default()
            },
            &["num_beams"],
        ),
        (
            GenerationConfig {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            &["repetition_penalty"],
        ),
        (
            GenerationConfig {
                bad_words_ids: Some(vec![vec![]]),
                ..Default::default()
            },
            &["bad_words_ids"],
        ),
        (
            GenerationConfig {
                max_time: Some(-1.0),
                ..Default::default()
            },
            &["max_time"],
        ),
    ];
    for (config, want) in cases {
        match config.validate() {
            Err(Error::InvalidConfig { fields, reason }) => {
                assert_eq!(fields, want, "{reason}");
                let message = config.validate().unwrap_err().to_string();
                assert!(message.contains(want[0]), "{message}");
            }
            other => panic!("{want:?}: expected an invalid-config error, got {other:?}"),
        }
        assert!(blip2_generation::Generator::new(config).is_err());
    }
    // Sampling with several returned sequences, and beams with fewer, are fine.
    GenerationConfig {
        do_sample: true,
        num_return_sequences: 4,
        ..Default::default()
    }
    .validate()
    .unwrap();
}

#[test]
fn options_without_effect_are_reported() {
    let c = GenerationConfig {
        length_penalty: 2.0,
        early_stopping: EarlyStopping::Never,
        ..Default::default()
    };
    let warnings = c.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("early_stopping"));
}
