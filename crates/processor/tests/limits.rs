//! Resource limits of image reading: the format signature is checked on the first bytes, so `/dev/zero` or a
//! text file is refused without being read; files are read with a bound (`Limits::max_file_bytes`), so a huge
//! (or sparse) file is refused from its length and a pipe or device as soon as it passes the bound; and
//! a tokenizer config's `model_max_length` past any model counts as "no limit" instead of a padding length.

use std::io::Write;
use std::path::{Path, PathBuf};

use blip2_processor::{Error, Limits, MEMORY, TokenizerConfig, decode_bytes, decode_file};
use blip2_testkit::fixtures_root;

fn image_path(file: &str) -> PathBuf {
    fixtures_root().join("images").join(file)
}

/// A file in the temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!("blip2-limits-{}-{name}", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn file_too_large(err: &Error, name: &Path, limit: u64) -> u64 {
    match err {
        Error::FileTooLarge {
            name: n,
            size,
            limit: l,
        } => {
            assert_eq!(n, &name.display().to_string());
            assert_eq!(*l, limit);
            let message = err.to_string();
            assert!(
                message.contains(n.as_str()) && message.contains(&limit.to_string()),
                "{message}"
            );
            *size
        }
        other => panic!("expected FileTooLarge, got {other:?}"),
    }
}

#[cfg(target_os = "linux")]
#[test]
fn dev_zero_is_refused_by_its_signature_without_being_read() {
    // Before: read whole (forever) and the process was killed for memory.
    let err = decode_file("/dev/zero", &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedFormat { name, .. } if name == "/dev/zero"),
        "{err:?}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn dev_urandom_ends_at_the_bound() {
    // Random bytes almost never start with a signature; when they do, the read stops past the bound.
    let limits = Limits {
        max_file_bytes: 1 << 20,
        ..Limits::default()
    };
    let err = decode_file("/dev/urandom", &limits).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::UnsupportedFormat { .. } | Error::FileTooLarge { .. } | Error::Decode { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn a_huge_sparse_file_is_refused_from_its_length() {
    // 3 GB that start like a PNG: before, read whole (3.1 GB resident) and then refused.
    let file = Scratch::new("sparse.png");
    let mut f = std::fs::File::create(&file.0).unwrap();
    f.write_all(b"\x89PNG\r\n\x1a\n").unwrap();
    f.set_len(3 << 30).unwrap();
    drop(f);
    let limits = Limits::default();
    let err = decode_file(&file.0, &limits).unwrap_err();
    assert_eq!(file_too_large(&err, &file.0, 512 << 20), 3 << 30);
    assert_eq!(limits.max_file_bytes, 512 << 20);
}

#[test]
fn max_file_bytes_bounds_files_and_bytes() {
    let path = image_path("rgb_37x29.png");
    let len = std::fs::metadata(&path).unwrap().len();
    let at = Limits {
        max_file_bytes: len,
        ..Limits::default()
    };
    decode_file(&path, &at).unwrap();
    let under = Limits {
        max_file_bytes: len - 1,
        ..Limits::default()
    };
    let err = decode_file(&path, &under).unwrap_err();
    assert_eq!(file_too_large(&err, &path, len - 1), len);
    let bytes = std::fs::read(&path).unwrap();
    decode_bytes(&bytes, &at).unwrap();
    let err = decode_bytes(&bytes, &under).unwrap_err();
    assert_eq!(file_too_large(&err, Path::new(MEMORY), len - 1), len);
    // Not an image: refused by the signature, before the size.
    let err = decode_bytes(b"hello, world", &under).unwrap_err();
    assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err:?}");
    assert!(Limits::none().max_file_bytes == u64::MAX);
}

#[cfg(target_os = "linux")]
#[test]
fn a_pipe_is_read_only_up_to_the_bound() {
    // A pipe (as `/dev/stdin` would be) has no length: the read stops once past the bound.
    let (reader, mut writer) = std::io::pipe().unwrap();
    use std::os::fd::AsRawFd;
    let path = PathBuf::from(format!("/proc/self/fd/{}", reader.as_raw_fd()));
    let feeder = std::thread::spawn(move || {
        let _ = writer.write_all(b"\x89PNG\r\n\x1a\n");
        let chunk = vec![0u8; 1 << 16];
        // Endless, until the reader goes away.
        while writer.write_all(&chunk).is_ok() {}
    });
    let limits = Limits {
        max_file_bytes: 1 << 20,
        ..Limits::default()
    };
    let err = decode_file(&path, &limits).unwrap_err();
    let size = file_too_large(&err, &path, 1 << 20);
    assert_eq!(size, (1 << 20) + 1);
    drop(reader);
    feeder.join().unwrap();
}

#[test]
fn a_model_max_length_past_any_model_counts_as_no_limit() {
    for (value, expected) in [
        ("512", Some(512)),
        ("1048576", Some(1_048_576)),
        ("1048577", None),
        ("100000000000000000", None),
        ("1000000000000000019884624838656", None),
    ] {
        let config =
            TokenizerConfig::from_json_str(&format!(r#"{{"model_max_length": {value}}}"#)).unwrap();
        assert_eq!(config.model_max_length, expected, "{value}");
    }
}

#[test]
fn a_huge_tokenizer_config_is_refused_from_its_length() {
    let dir = std::env::temp_dir().join(format!("blip2-limits-{}-tok", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer_config.json");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(blip2_nn::limits::MAX_JSON_BYTES + 1)
        .unwrap();
    let err = TokenizerConfig::from_model_dir(&dir).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::FileTooLarge),
        "{err:?}"
    );
}

#[test]
fn num_query_tokens_past_the_limit_is_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("blip2-limits-{}-nqt", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("processor_config.json"),
        r#"{"num_query_tokens": 1000000000}"#,
    )
    .unwrap();
    let err = blip2_processor::num_query_tokens_from_model_dir(&dir).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    let message = err.to_string();
    assert!(
        matches!(err, Error::BadTextConfigValue { ref key, .. } if key == "num_query_tokens")
            && message.contains("at most 4096"),
        "{message}"
    );
}

#[test]
fn a_huge_image_processor_config_is_refused_from_its_length() {
    let scratch = Scratch::new("preprocessor_config.json");
    std::fs::File::create(&scratch.0)
        .unwrap()
        .set_len(blip2_nn::limits::MAX_JSON_BYTES + 1)
        .unwrap();
    let err = blip2_processor::ImageProcessorConfig::from_file(&scratch.0).unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
}
