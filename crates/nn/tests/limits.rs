//! Resource limits in blip2-nn: the limit checks and their errors, bounded reads of config files (`/dev/zero`
//! and oversized files are refused without being read whole), safetensors headers that are too long, sizes that
//! overflow, byte ranges that do not fit their tensors or overlap, shard links that leave the model directory,
//! and the load report's cap on listed problems.

use std::path::{Path, PathBuf};

use blip2_nn::Error;
use blip2_nn::backend::Flex;
use blip2_nn::limits::{self, MAX_LAYERS};
use blip2_nn::loader::{Checkpoint, KeyMap, LoadOptions, LoadReport, load_module};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, LinearLayout};
use burn::prelude::Backend;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A safetensors file from a header (JSON text) and `data` bytes.
fn raw_file(path: &Path, header: &str, data: usize) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + data, 0);
    std::fs::write(path, bytes).unwrap();
}

fn bad_tensor(path: &Path) -> (String, String) {
    match Checkpoint::open(path) {
        Err(e @ Error::BadTensor { .. }) => {
            let message = e.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            let Error::BadTensor { key, reason, .. } = e else {
                unreachable!()
            };
            (key, reason)
        }
        other => panic!("expected BadTensor, got {other:?}"),
    }
}

#[test]
fn a_value_over_its_limit_names_key_value_limit_and_file() {
    assert!(limits::check("num_hidden_layers", MAX_LAYERS, MAX_LAYERS).is_ok());
    let err = limits::check("num_hidden_layers", 1_000_000_000, MAX_LAYERS).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::LimitExceeded { path: None, key, value: 1_000_000_000, limit }
                if key == "num_hidden_layers" && *limit == MAX_LAYERS as u64
        ),
        "{err:?}"
    );
    let err = err.in_config(Path::new("/models/x/config.json"), Some("vision_config"));
    let message = err.to_string();
    for needle in [
        "`vision_config.num_hidden_layers`",
        "1000000000",
        "1024",
        "/models/x/config.json",
    ] {
        assert!(message.contains(needle), "{message} lacks {needle}");
    }
    // Counts past u64 are reported as u64::MAX, never wrapped.
    let err = limits::check_u64("parameters", u128::MAX, limits::MAX_PARAMETERS).unwrap_err();
    assert!(matches!(
        err,
        Error::LimitExceeded {
            value: u64::MAX,
            ..
        }
    ));
    assert_eq!(
        limits::parameter_count(&[&[usize::MAX, usize::MAX, usize::MAX], &[usize::MAX]]),
        u128::MAX
    );
    assert_eq!(limits::parameter_count(&[&[2, 3], &[4], &[0, 9]]), 10);
}

#[test]
fn a_float_or_negative_number_in_an_integer_field_names_the_key() {
    #[derive(serde::Deserialize, Debug, Default)]
    #[serde(default)]
    #[allow(dead_code)]
    struct Config {
        hidden_size: usize,
        num_hidden_layers: usize,
        name: String,
    }
    for (json, key) in [
        (
            r#"{"hidden_size": 8, "num_hidden_layers": 1e9}"#,
            "num_hidden_layers",
        ),
        (
            r#"{"num_hidden_layers": 2, "hidden_size": 1.5}"#,
            "hidden_size",
        ),
        (r#"{"hidden_size": -1}"#, "hidden_size"),
        (r#"{"hidden_size": 1e400}"#, "hidden_size"),
        (r#"{"name": 3, "hidden_size": 4}"#, "name"),
    ] {
        let value: serde_json::Value = match serde_json::from_str(json) {
            Ok(v) => v,
            // serde_json refuses 1e400 itself ("number out of range"), before any field is read.
            Err(e) => {
                assert!(e.to_string().contains("out of range"), "{e}");
                continue;
            }
        };
        let err = blip2_nn::config::from_section::<Config>(value).unwrap_err();
        assert!(
            err.to_string().contains(&format!("`{key}`")),
            "{json}: {err}"
        );
    }
    let ok: Config = blip2_nn::config::from_section(serde_json::json!({"hidden_size": 8})).unwrap();
    assert_eq!(ok.hidden_size, 8);
}

#[cfg(target_os = "linux")]
#[test]
fn config_files_are_read_with_a_bound() {
    // /dev/zero never ends: the read stops past the bound instead of filling memory.
    let err = limits::read_bounded(Path::new("/dev/zero"), 1 << 16).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::FileTooLarge, "{err}");
    // A regular file over the bound is refused from its length, without reading it (a sparse 1 GiB file).
    let dir = tmp();
    let big = dir.path().join("config.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(limits::MAX_JSON_BYTES + 1)
        .unwrap();
    let err = blip2_nn::config::read_config(dir.path()).unwrap_err();
    assert_eq!(err.0, big);
    assert_eq!(err.1.kind(), std::io::ErrorKind::FileTooLarge, "{}", err.1);
    assert!(
        err.1
            .to_string()
            .contains(&limits::MAX_JSON_BYTES.to_string())
    );
    std::fs::write(&big, "{}").unwrap();
    assert_eq!(blip2_nn::config::read_config(dir.path()).unwrap().1, "{}");
    // The shard index too.
    let index = dir.path().join("model.safetensors.index.json");
    std::fs::File::create(&index)
        .unwrap()
        .set_len(limits::MAX_JSON_BYTES + 1)
        .unwrap();
    match Checkpoint::open(&index) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("bytes"), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn a_header_over_the_limit_is_refused_before_it_is_parsed() {
    let dir = tmp();
    let path = dir.path().join("model.safetensors");
    let mut bytes = (limits::MAX_SAFETENSORS_HEADER_BYTES + 1)
        .to_le_bytes()
        .to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&path, &bytes).unwrap();
    match Checkpoint::open(&path) {
        Err(e @ Error::HeaderTooLarge { len, limit, .. }) => {
            assert_eq!(len, limits::MAX_SAFETENSORS_HEADER_BYTES + 1);
            assert_eq!(limit, 100_000_000);
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        other => panic!("expected HeaderTooLarge, got {other:?}"),
    }
}

#[test]
fn a_shape_whose_size_overflows_names_the_tensor() {
    let dir = tmp();
    let path = dir.path().join("model.safetensors");
    raw_file(
        &path,
        r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#,
        16,
    );
    let (key, reason) = bad_tensor(&path);
    assert_eq!(key, "a");
    assert!(reason.contains("overflows"), "{reason}");
}

#[test]
fn a_byte_range_that_does_not_fit_the_shape_names_the_tensor() {
    let dir = tmp();
    let path = dir.path().join("model.safetensors");
    raw_file(
        &path,
        r#"{"ok":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[8,20]}}"#,
        20,
    );
    let (key, reason) = bad_tensor(&path);
    assert_eq!(key, "w");
    assert!(
        reason.contains("[2, 2]") && reason.contains("16 bytes") && reason.contains("12 bytes"),
        "{reason}"
    );
    // Offsets that run backwards.
    raw_file(
        &path,
        r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
        8,
    );
    let (key, reason) = bad_tensor(&path);
    assert_eq!(key, "w");
    assert!(reason.contains("before they start"), "{reason}");
}

#[test]
fn overlapping_or_gapped_ranges_name_both_tensors() {
    let dir = tmp();
    let path = dir.path().join("model.safetensors");
    raw_file(
        &path,
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#,
        24,
    );
    let (key, reason) = bad_tensor(&path);
    assert_eq!(key, "b");
    assert!(
        reason.contains("overlap") && reason.contains("`a`"),
        "{reason}"
    );
    // The same range twice is an overlap too.
    raw_file(
        &path,
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
        16,
    );
    let (_, reason) = bad_tensor(&path);
    assert!(reason.contains("overlap"), "{reason}");
    raw_file(
        &path,
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#,
        20,
    );
    let (key, reason) = bad_tensor(&path);
    assert_eq!(key, "b");
    assert!(reason.contains("unused"), "{reason}");
}

#[test]
fn offsets_past_the_end_are_a_truncated_file_even_near_u64_max() {
    let dir = tmp();
    let path = dir.path().join("model.safetensors");
    // Sixteen U8 tensors of 2^60 - 1 bytes each end just below u64::MAX: the length the header implies must
    // not overflow while the error is worked out.
    let size = (1u64 << 60) - 1;
    let entries: Vec<String> = (0..16u64)
        .map(|i| {
            format!(
                r#""t{i:02}":{{"dtype":"U8","shape":[{size}],"data_offsets":[{},{}]}}"#,
                i * size,
                (i + 1) * size
            )
        })
        .collect();
    raw_file(&path, &format!("{{{}}}", entries.join(",")), 64);
    match Checkpoint::open(&path) {
        Err(Error::Truncated {
            expected, found, ..
        }) => {
            assert_eq!(expected, u64::MAX);
            assert_eq!(found, std::fs::metadata(&path).unwrap().len());
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}

fn sharded_dir(dir: &Path, shard: &str) -> PathBuf {
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        format!(r#"{{"weight_map": {{"w": "{shard}"}}}}"#),
    )
    .unwrap();
    dir.join(shard)
}

#[cfg(unix)]
#[test]
fn a_shard_linked_outside_the_model_directory_is_refused() {
    use std::os::unix::fs::symlink;
    let root = tmp();
    let outside = root.path().join("outside.safetensors");
    raw_file(
        &outside,
        r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        4,
    );
    let model = root.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let link = sharded_dir(&model, "model-00001-of-00001.safetensors");
    symlink(&outside, &link).unwrap();
    match Checkpoint::open(&model) {
        Err(e @ Error::BadIndex { .. }) => {
            let message = e.to_string();
            assert!(message.contains("outside the model directory"), "{message}");
            assert!(message.contains("outside.safetensors"), "{message}");
        }
        other => panic!("expected BadIndex, got {other:?}"),
    }
    // A relative link that climbs out is refused as well.
    std::fs::remove_file(&link).unwrap();
    symlink("../outside.safetensors", &link).unwrap();
    assert!(matches!(
        Checkpoint::open(&model),
        Err(Error::BadIndex { .. })
    ));
    // A link to a file inside the directory is fine.
    std::fs::remove_file(&link).unwrap();
    std::fs::copy(&outside, model.join("real.safetensors")).unwrap();
    symlink("real.safetensors", &link).unwrap();
    let checkpoint = Checkpoint::open(&model).unwrap();
    assert!(checkpoint.contains("w"));
}

#[cfg(unix)]
#[test]
fn a_shard_linked_into_the_hf_cache_blobs_is_fine() {
    use std::os::unix::fs::symlink;
    // The HF cache layout: models--o--n/snapshots/<commit>/x -> ../../blobs/<hash>.
    let root = tmp();
    let repo = root.path().join("models--o--n");
    let blobs = repo.join("blobs");
    let snapshot = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    raw_file(
        &blobs.join("5f3a"),
        r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        4,
    );
    let link = sharded_dir(&snapshot, "model-00001-of-00001.safetensors");
    symlink("../../blobs/5f3a", &link).unwrap();
    assert!(Checkpoint::open(&snapshot).unwrap().contains("w"));
}

#[derive(Module, Debug)]
struct Many<B: Backend> {
    layers: Vec<Linear<B>>,
}

#[test]
fn the_report_lists_a_few_problems_of_each_kind_and_counts_the_rest() {
    let device = Default::default();
    let model = Many::<Flex> {
        layers: (0..30)
            .map(|_| {
                LinearConfig::new(2, 2)
                    .with_layout(LinearLayout::Col)
                    .init(&device)
            })
            .collect(),
    };
    // A file with 25 unrelated tensors under the model's prefix: 60 missing, 25 unexpected.
    let dir = tmp();
    let path = dir.path().join("model.safetensors");
    let entries: Vec<String> = (0..25)
        .map(|i| {
            format!(
                r#""m.stray.{i}":{{"dtype":"F32","shape":[1],"data_offsets":[{},{}]}}"#,
                4 * i,
                4 * i + 4
            )
        })
        .collect();
    raw_file(&path, &format!("{{{}}}", entries.join(",")), 100);
    let checkpoint = Checkpoint::open(&path).unwrap();
    let options = LoadOptions::new(KeyMap::under("m"));
    let report = match load_module(model, &checkpoint, &options, &device) {
        Err(Error::Incompatible(report)) => report,
        other => panic!("expected Incompatible, got {:?}", other.map(|(_, r)| r)),
    };
    assert_eq!(report.missing().len(), 60);
    assert_eq!(report.unexpected().len(), 25);
    let message = report.to_string();
    assert!(message.contains("(85 problems)"), "{message}");
    let listed = |prefix: &str| {
        message
            .lines()
            .filter(|l| l.trim_start().starts_with(prefix))
            .count()
    };
    assert_eq!(listed("- missing:"), LoadReport::MAX_LISTED);
    assert_eq!(listed("- unexpected:"), LoadReport::MAX_LISTED);
    assert!(message.contains("... and 40 more missing"), "{message}");
    assert!(message.contains("... and 5 more unexpected"), "{message}");
    assert_eq!(message.lines().count(), 1 + 2 * LoadReport::MAX_LISTED + 2);
}
