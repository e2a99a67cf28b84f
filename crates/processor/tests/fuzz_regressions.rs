//! Inputs found by the fuzz targets (`fuzz/`, docs/reliability.md), each fed again to the same entry point as
//! its target, with the answer it must now give. The files are what libFuzzer saved, unedited:
//! `tests/fuzz/<target>/<kind>-<hash>`.

use std::path::PathBuf;

use blip2_processor::{BlipImageProcessor, Error, ImageProcessorConfig};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no inputs in {}", dir.display());
    out
}

/// `config_processor`: a config, then a 7 x 5 image preprocessed with it (as the target does).
fn config_processor(bytes: &[u8]) -> Result<(), Error> {
    let config = ImageProcessorConfig::from_json_str(std::str::from_utf8(bytes).unwrap())?;
    let processor = BlipImageProcessor::new(config);
    let pixels: Vec<u8> = (0..7 * 5 * 3).map(|i| (i * 37 % 256) as u8).collect();
    let image = processor.from_raw_rgb(7, 5, &pixels)?;
    processor.preprocess(&[image]).map(|_| ())
}

/// `timeout-1c93...`: `"size": 8098` resized every image to 8098 x 8098 (65.6 M pixels, 786 MB of values):
/// over 10 s in the fuzz build. Now refused by `max_resize_pixels` before any pixel is computed, and by
/// `check_limits` when the pipeline loads the config.
#[test]
fn config_processor_inputs_are_refused_by_name() {
    for (name, bytes) in inputs("config_processor") {
        match config_processor(&bytes) {
            Err(Error::TooLarge {
                width,
                height,
                what,
                ..
            }) => {
                assert_eq!((width, height), (8098, 8098), "{name}");
                assert_eq!(what, "pixels of resize output", "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        let config =
            ImageProcessorConfig::from_json_str(std::str::from_utf8(&bytes).unwrap()).unwrap();
        let err = config
            .check_limits(&Default::default(), "preprocessor_config.json")
            .unwrap_err();
        assert!(err.to_string().contains("16777216"), "{name}: {err}");
    }
}
