//! Reading `preprocessor_config.json` / `processor_config.json` as transformers 5.24 does: which file wins,
//! HF's class defaults for absent keys, the size layouts, and errors naming the key and value.

use std::path::PathBuf;

use blip2_processor::{
    BlipImageProcessor, Error, ImageProcessorConfig, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Resample,
    Size,
};
use blip2_testkit::fixtures_root;

/// A fresh directory under the system temp dir (removed at the start, left for inspection after).
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("blip2-processor-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn parse(json: &str) -> Result<ImageProcessorConfig, Error> {
    ImageProcessorConfig::from_json_str(json)
}

#[test]
fn default_is_the_blip2_hub_config_and_absent_keys_take_hf_class_defaults() {
    let hub = ImageProcessorConfig::default();
    assert_eq!(
        hub.size,
        Size::Fixed {
            height: 224,
            width: 224
        }
    );
    assert_eq!(hub.image_mean, OPENAI_CLIP_MEAN);
    assert_eq!(hub.image_std, OPENAI_CLIP_STD);
    assert_eq!(hub.resample, Resample::Bicubic);
    assert_eq!(hub.rescale_factor, 1.0 / 255.0);
    assert!(hub.do_resize && hub.do_rescale && hub.do_normalize && hub.do_convert_rgb);

    // `BlipImageProcessorPil.size` is 384x384; everything else as above. Unknown keys and nulls are ignored.
    let empty = parse(
        r#"{"image_processor_type": "BlipImageProcessor", "crop_pct": 0.9, "do_resize": null}"#,
    )
    .unwrap();
    assert_eq!(empty, ImageProcessorConfig::hf_class_defaults());
    assert_eq!(
        empty.size,
        Size::Fixed {
            height: 384,
            width: 384
        }
    );
}

#[test]
fn every_key_is_read() {
    let c = parse(
        r#"{"do_resize": false, "size": {"height": 7, "width": 9}, "resample": 3, "do_rescale": false,
            "rescale_factor": 0.5, "do_normalize": false, "image_mean": 0.5, "image_std": [1, 2, 3],
            "do_convert_rgb": false, "do_center_crop": false, "do_pad": null}"#,
    )
    .unwrap();
    assert!(!c.do_resize && !c.do_rescale && !c.do_normalize && !c.do_convert_rgb);
    assert_eq!(
        c.size,
        Size::Fixed {
            height: 7,
            width: 9
        }
    );
    assert_eq!(c.rescale_factor, 0.5);
    assert_eq!(c.image_mean, [0.5; 3]);
    assert_eq!(c.image_std, [1.0, 2.0, 3.0]);
}

#[test]
fn size_layouts() {
    let size = |json: &str| parse(&format!(r#"{{"size": {json}}}"#)).map(|c| c.size);
    assert_eq!(
        size("12").unwrap(),
        Size::Fixed {
            height: 12,
            width: 12
        }
    );
    assert_eq!(
        size("[5, 8]").unwrap(),
        Size::Fixed {
            height: 5,
            width: 8
        }
    );
    assert_eq!(
        size(r#"{"shortest_edge": 10}"#).unwrap(),
        Size::ShortestEdge(10)
    );
    for bad in [
        r#"{"longest_edge": 10}"#,
        r#"{"shortest_edge": 10, "longest_edge": 20}"#,
        r#"{"max_height": 10, "max_width": 20}"#,
        r#"{"height": 0, "width": 5}"#,
        r#"{"height": 5}"#,
        "[1, 2, 3]",
        "-4",
        r#""224""#,
    ] {
        match size(bad) {
            Err(Error::UnsupportedConfig {
                key, value, name, ..
            }) => {
                assert_eq!(key, "size");
                assert_eq!(name, "<memory>");
                assert_eq!(
                    value,
                    serde_json::from_str::<serde_json::Value>(bad)
                        .unwrap()
                        .to_string()
                );
            }
            other => panic!("size {bad}: {other:?}"),
        }
    }
}

#[test]
fn shortest_edge_keeps_the_aspect_ratio_as_hf_rounds_it() {
    let s = Size::ShortestEdge(10);
    // HF: new_long = int(10 * long / short); (height, width) order kept.
    assert_eq!(s.output_size(41, 19), (21, 10));
    assert_eq!(s.output_size(19, 41), (10, 21));
    assert_eq!(s.output_size(30, 30), (10, 10));
    assert_eq!(s.output_size(3, 7), (10, 23));
}

#[test]
fn unsupported_values_name_key_and_value() {
    let err = parse(r#"{"resample": 2}"#).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedConfig { key, value, .. } if key == "resample" && value == "2")
    );
    assert!(err.to_string().contains("`resample`"), "{err}");
    for (json, key) in [
        (r#"{"do_center_crop": true}"#, "do_center_crop"),
        (r#"{"do_pad": true}"#, "do_pad"),
        (r#"{"image_std": [1, 0, 1]}"#, "image_std"),
        (r#"{"image_mean": [1, 2]}"#, "image_mean"),
        (r#"{"do_resize": "yes"}"#, "do_resize"),
        (r#"{"rescale_factor": "1/255"}"#, "rescale_factor"),
    ] {
        match parse(json) {
            Err(Error::UnsupportedConfig { key: k, .. }) => assert_eq!(k, key, "{json}"),
            other => panic!("{json}: {other:?}"),
        }
    }
    assert!(matches!(parse("[1, 2]"), Err(Error::BadConfig { .. })));
    assert!(matches!(parse("{"), Err(Error::BadConfig { .. })));
}

#[test]
fn processor_config_wins_over_preprocessor_config_as_in_hf() {
    let dir = temp_dir("both");
    std::fs::write(
        dir.join("processor_config.json"),
        r#"{"image_processor": {"size": {"height": 11, "width": 13}}, "num_query_tokens": 4}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("preprocessor_config.json"),
        r#"{"size": {"height": 5, "width": 5}}"#,
    )
    .unwrap();
    let c = ImageProcessorConfig::from_model_dir(&dir).unwrap();
    assert_eq!(
        c.size,
        Size::Fixed {
            height: 11,
            width: 13
        }
    );

    // A processor_config.json without an image processor (the hub's layout): preprocessor_config.json.
    std::fs::write(
        dir.join("processor_config.json"),
        r#"{"num_query_tokens": 4}"#,
    )
    .unwrap();
    let c = ImageProcessorConfig::from_model_dir(&dir).unwrap();
    assert_eq!(
        c.size,
        Size::Fixed {
            height: 5,
            width: 5
        }
    );

    std::fs::remove_file(dir.join("preprocessor_config.json")).unwrap();
    let err = ImageProcessorConfig::from_model_dir(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::NoConfig { dir: d } if *d == dir),
        "{err}"
    );

    std::fs::write(dir.join("preprocessor_config.json"), "{not json").unwrap();
    let err = ImageProcessorConfig::from_model_dir(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::BadConfig { name, .. } if name.ends_with("preprocessor_config.json")),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn from_file_reads_either_layout() {
    let opt = fixtures_root().join("tiny-opt/preprocessor_config.json");
    let t5 = fixtures_root().join("tiny-t5/processor_config.json");
    assert_eq!(
        ImageProcessorConfig::from_file(opt).unwrap().size,
        Size::Fixed {
            height: 30,
            width: 30
        }
    );
    assert_eq!(
        ImageProcessorConfig::from_file(t5).unwrap().size,
        Size::Fixed {
            height: 26,
            width: 26
        }
    );
    let missing = fixtures_root().join("tiny-opt/no_such_config.json");
    assert!(
        matches!(ImageProcessorConfig::from_file(&missing), Err(Error::Io { path, .. }) if path == missing)
    );
    assert!(BlipImageProcessor::from_model_dir(fixtures_root().join("images")).is_err());
}
