//! From `IMAGE...` arguments to a list of image paths: files, folders (recursive), glob patterns, `-` (paths on
//! stdin); and texts from flags and files.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use blip2::processor::BlipImageProcessor;
use image::RgbImage;

use crate::args::TextArgs;
use crate::error::CliError;

/// File extensions a folder walk picks up (case-insensitive). Files named one by one are taken whatever their
/// extension; one that is not an image becomes a row with an error.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"];

/// The image paths `args` name, in order, each once. Folders are walked recursively in name order (hidden
/// entries and symlinked folders skipped); glob patterns expand in name order.
///
/// # Errors
/// A path that does not exist, a pattern that matches nothing, a folder without images, unreadable stdin.
pub fn image_paths(args: &[String], stdin: impl BufRead) -> Result<Vec<PathBuf>, CliError> {
    let mut stdin = Some(stdin);
    let mut out = Vec::new();
    for arg in args {
        if arg == "-" {
            let Some(input) = stdin.take() else {
                return Err(CliError::usage("`-` (paths on stdin) can be given once"));
            };
            for line in input.lines() {
                let line = line
                    .map_err(|e| CliError::input(format!("cannot read paths from stdin: {e}")))?;
                let line = line.trim();
                if !line.is_empty() && !line.starts_with('#') {
                    out.push(PathBuf::from(line));
                }
            }
            continue;
        }
        let path = Path::new(arg);
        if path.is_dir() {
            let before = out.len();
            walk(path, &mut out)?;
            if out.len() == before {
                return Err(CliError::input(format!(
                    "no images in folder {arg} (looked for {} files, recursively)",
                    IMAGE_EXTENSIONS.join(", ")
                )));
            }
        } else if path.exists() {
            out.push(path.to_path_buf());
        } else if arg.contains(['*', '?', '[']) {
            // As a shell does: `*` does not match a leading dot.
            let options = glob::MatchOptions {
                require_literal_leading_dot: true,
                ..glob::MatchOptions::new()
            };
            let matches = glob::glob_with(arg, options).map_err(|e| {
                CliError::usage(format!("`{arg}` is not a valid glob pattern: {}", e.msg))
            })?;
            let mut found: Vec<PathBuf> = matches.filter_map(Result::ok).collect();
            found.sort();
            let before = out.len();
            for p in found {
                if p.is_dir() {
                    walk(&p, &mut out)?;
                } else {
                    out.push(p);
                }
            }
            if out.len() == before {
                return Err(CliError::input(format!("no file matches `{arg}`")));
            }
        } else {
            return Err(CliError::input(format!("{arg}: no such file or folder"))
                .with_hint("pass image files, folders, quoted glob patterns like 'photos/*.jpg', or - to read paths from stdin"));
        }
    }
    let mut seen = HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    if out.is_empty() {
        return Err(CliError::input("no images given"));
    }
    Ok(out)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CliError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CliError::input(format!("cannot read folder {}: {e}", dir.display())))?;
    let mut entries: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk(&path, out)?;
        } else if (kind.is_file() || (kind.is_symlink() && path.is_file())) && is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Decodes every image of a batch; one that cannot be read becomes its error sentence, in place (the job goes
/// on without it).
pub fn open_all(
    ip: &BlipImageProcessor,
    paths: &[PathBuf],
) -> (Vec<RgbImage>, Vec<Option<String>>) {
    let mut images = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match ip.open(path) {
            Ok(image) => {
                images.push(image);
                errors.push(None);
            }
            Err(e) => errors.push(Some(e.to_string())),
        }
    }
    (images, errors)
}

/// The texts of `--text` and `--texts FILE`, in that order.
///
/// # Errors
/// An unreadable file, an empty text.
pub fn texts(args: &TextArgs) -> Result<Vec<String>, CliError> {
    let mut out = args.text.clone();
    if let Some(file) = &args.texts {
        let content = std::fs::read_to_string(file).map_err(|e| {
            CliError::input(format!("cannot read texts from {}: {e}", file.display()))
        })?;
        out.extend(
            content
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    if out.iter().any(|t| t.trim().is_empty()) {
        return Err(CliError::usage("a --text is empty"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_globs_and_stdin_expand_in_order_without_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sub/.hidden")).unwrap();
        for f in [
            "b.png",
            "a.JPG",
            "notes.txt",
            "sub/c.webp",
            "sub/.hidden/d.png",
            ".e.png",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let got = image_paths(&[s(root)], std::io::empty()).unwrap();
        assert_eq!(
            got,
            vec![
                root.join("a.JPG"),
                root.join("b.png"),
                root.join("sub/c.webp")
            ]
        );

        let pattern = format!("{}/*.png", s(root));
        let stdin = format!(
            "{}\n\n# comment\n{}\n",
            s(&root.join("notes.txt")),
            s(&root.join("b.png"))
        );
        let got = image_paths(&[pattern, "-".into()], stdin.as_bytes()).unwrap();
        assert_eq!(got, vec![root.join("b.png"), root.join("notes.txt")]);

        let err = image_paths(&[s(&root.join("missing.png"))], std::io::empty()).unwrap_err();
        assert!(err.message.contains("missing.png: no such file"), "{err}");
        let err = image_paths(&[format!("{}/*.gif", s(root))], std::io::empty()).unwrap_err();
        assert!(err.message.contains("no file matches"), "{err}");
        std::fs::create_dir(root.join("empty")).unwrap();
        let err = image_paths(&[s(&root.join("empty"))], std::io::empty()).unwrap_err();
        assert!(err.message.contains("no images in folder"), "{err}");
    }
}
