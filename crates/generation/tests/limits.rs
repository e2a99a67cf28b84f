//! Size caps of the generation config: beams, returned sequences and lengths over `blip2_nn::limits` are refused
//! by `validate` (which every generation runs first), naming the field, the value and the limit.

use blip2_generation::{Error, GenerationConfig};
use blip2_nn::limits::{MAX_BEAMS, MAX_GENERATION_LENGTH};

#[test]
fn sizes_over_the_limits_are_refused_naming_field_value_and_limit() {
    let huge = 1_000_000_000usize;
    let cases: [(&str, GenerationConfig, usize); 6] = [
        (
            "num_beams",
            GenerationConfig {
                num_beams: huge,
                ..Default::default()
            },
            MAX_BEAMS,
        ),
        (
            "num_return_sequences",
            GenerationConfig {
                num_return_sequences: huge,
                do_sample: true,
                ..Default::default()
            },
            MAX_BEAMS,
        ),
        (
            "max_new_tokens",
            GenerationConfig {
                max_new_tokens: Some(huge),
                ..Default::default()
            },
            MAX_GENERATION_LENGTH,
        ),
        (
            "max_length",
            GenerationConfig {
                max_length: Some(huge),
                ..Default::default()
            },
            MAX_GENERATION_LENGTH,
        ),
        (
            "min_new_tokens",
            GenerationConfig {
                min_new_tokens: Some(huge),
                ..Default::default()
            },
            MAX_GENERATION_LENGTH,
        ),
        (
            "min_length",
            GenerationConfig {
                min_length: huge,
                ..Default::default()
            },
            MAX_GENERATION_LENGTH,
        ),
    ];
    for (field, config, limit) in cases {
        let err = config.validate().unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig { fields, .. } if fields == &[field]),
            "{field}: {err:?}"
        );
        let message = err.to_string();
        for needle in [field, &huge.to_string(), &limit.to_string()] {
            assert!(message.contains(needle), "{message} lacks {needle}");
        }
    }
    // At the limit is fine.
    let config = GenerationConfig {
        num_beams: MAX_BEAMS,
        max_new_tokens: Some(MAX_GENERATION_LENGTH),
        ..Default::default()
    };
    config.validate().unwrap();
}

#[test]
fn a_file_with_huge_or_fractional_sizes_is_refused() {
    let config = GenerationConfig::from_json_str(r#"{"num_beams": 1000000000}"#).unwrap();
    assert!(config.validate().is_err());
    let err = GenerationConfig::from_json_str(r#"{"max_new_tokens": 1e9}"#).unwrap_err();
    assert!(err.to_string().contains("`max_new_tokens`"), "{err}");
    let err = GenerationConfig::from_json_str(r#"{"num_beams": -1}"#).unwrap_err();
    assert!(err.to_string().contains("`num_beams`"), "{err}");
}

#[cfg(target_os = "linux")]
#[test]
fn a_generation_config_is_read_with_a_bound() {
    // /dev/zero as generation_config.json: refused once past the bound, not read forever.
    let err = GenerationConfig::from_file("/dev/zero").unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::FileTooLarge),
        "{err:?}"
    );
}
