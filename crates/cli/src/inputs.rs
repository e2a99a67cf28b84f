//! From `IMAGE...` arguments to a list of image paths: files, folders (recursive), glob patterns, `-` (paths on
//! stdin); and texts from flags and files.

use std::collections::HashSet;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use blip2::processor::BlipImageProcessor;
use image::RgbImage;

use crate::args::TextArgs;
use crate::error::CliError;

/// File extensions a folder walk picks up (case-insensitive). Files named one by one are taken whatever their
/// extension; one that is not an image becomes a row with an error.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"];

/// The image paths `args` name, in order, each once. Folders (named as arguments or on stdin) are walked
/// recursively in name order (hidden entries and symlinked folders skipped); glob patterns expand in name order,
/// `**` never entering a symlinked folder (so a symlink loop cannot make it endless). Paths that resolve to the
/// same file are one image, under the first spelling.
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
            let mut input = input;
            let mut count = 0usize;
            while let Some(line) = read_line(&mut input, MAX_PATH_LINE)
                .map_err(|e| CliError::input(format!("cannot read paths from stdin: {e}")))?
            {
                count += 1;
                if count > MAX_STDIN_PATHS {
                    return Err(CliError::input(format!(
                        "stdin names more than {MAX_STDIN_PATHS} paths, blip2's limit for one run"
                    ))
                    .with_hint("split the list and run blip2 once per part (--resume carries on one output)"));
                }
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let path = Path::new(line);
                if path.is_dir() {
                    folder(path, &mut out)?;
                } else {
                    // A missing or unreadable file becomes a row with its error.
                    out.push(path.to_path_buf());
                }
            }
            continue;
        }
        let path = Path::new(arg);
        if path.is_dir() {
            folder(path, &mut out)?;
        } else if path.exists() {
            out.push(path.to_path_buf());
        } else if arg.contains(['*', '?', '[']) {
            let mut found = expand_glob(arg)?;
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
    // One image per file: `a.png`, `./a.png` and a link to it are one, under the first spelling.
    let mut seen = HashSet::new();
    out.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    if out.is_empty() {
        return Err(CliError::input("no images given"));
    }
    Ok(out)
}

/// The images of a folder named as an argument or on stdin.
fn folder(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), CliError> {
    let before = out.len();
    walk(path, out)?;
    if out.len() == before {
        return Err(CliError::input(format!(
            "no images in folder {} (looked for {} files, recursively)",
            path.display(),
            IMAGE_EXTENSIONS.join(", ")
        )));
    }
    Ok(())
}

/// The paths a glob pattern matches, as the `glob` crate finds them (one component at a time, `*` not matching
/// a leading dot, as a shell does), except that `**` enters real folders only, never a symlinked one (as bash's
/// globstar): the `glob` crate follows a symlink loop forever.
fn expand_glob(pattern: &str) -> Result<Vec<PathBuf>, CliError> {
    let invalid = |e: glob::PatternError| {
        CliError::usage(format!(
            "`{pattern}` is not a valid glob pattern: {}",
            e.msg
        ))
    };
    glob::Pattern::new(pattern).map_err(invalid)?;
    let options = glob::MatchOptions {
        require_literal_leading_dot: true,
        require_literal_separator: true,
        ..glob::MatchOptions::new()
    };
    // The root (`/`, or a Windows prefix) is taken as it is; the rest is matched component by component.
    let mut root = PathBuf::new();
    let mut rest = pattern;
    for component in Path::new(pattern).components() {
        match component {
            std::path::Component::Prefix(_) | std::path::Component::RootDir => {
                root.push(component.as_os_str());
            }
            _ => break,
        }
    }
    if !root.as_os_str().is_empty() {
        let root_len = root.as_os_str().len().min(pattern.len());
        rest = pattern
            .get(root_len..)
            .unwrap_or_default()
            .trim_start_matches(std::path::is_separator);
    }
    let mut parts = Vec::new();
    for part in rest
        .split(std::path::is_separator)
        .filter(|p| !p.is_empty())
    {
        let has_meta = part.contains(['*', '?', '[']);
        parts.push(if part == "**" {
            GlobPart::Recursive
        } else if has_meta {
            GlobPart::Pattern(glob::Pattern::new(part).map_err(invalid)?)
        } else {
            GlobPart::Literal(part)
        });
    }
    let mut out = Vec::new();
    expand(&root, &parts, options, &mut out);
    Ok(out)
}

enum GlobPart<'a> {
    Literal(&'a str),
    Pattern(glob::Pattern),
    Recursive,
}

/// The entries of `dir` (spelled `""` for the current folder), each with whether it is a real folder (not a
/// symlink to one); unreadable folders have none. Hidden entries are left to the pattern (`.*` names them).
fn entries(dir: &Path) -> Vec<(String, bool)> {
    let listed = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(read) = std::fs::read_dir(listed) else {
        return Vec::new();
    };
    read.filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let real_dir = e.file_type().is_ok_and(|t| t.is_dir());
            Some((name, real_dir))
        })
        .collect()
}

fn expand(dir: &Path, parts: &[GlobPart<'_>], options: glob::MatchOptions, out: &mut Vec<PathBuf>) {
    let Some((first, rest)) = parts.split_first() else {
        out.push(dir.to_path_buf());
        return;
    };
    match first {
        GlobPart::Literal(name) => {
            let path = dir.join(name);
            if rest.is_empty() {
                if std::fs::symlink_metadata(&path).is_ok() {
                    out.push(path);
                }
            } else if path.is_dir() {
                expand(&path, rest, options, out);
            }
        }
        GlobPart::Pattern(pattern) => {
            for (name, _) in entries(dir) {
                if pattern.matches_with(&name, options) {
                    let path = dir.join(&name);
                    if rest.is_empty() {
                        out.push(path);
                    } else if path.is_dir() {
                        expand(&path, rest, options, out);
                    }
                }
            }
        }
        GlobPart::Recursive => {
            let after = rest
                .iter()
                .position(|p| !matches!(p, GlobPart::Recursive))
                .map_or(&[][..], |i| &rest[i..]);
            if after.is_empty() {
                // A trailing `**`: everything below, files and real folders (walked by the caller).
                for (name, real_dir) in entries(dir) {
                    let path = dir.join(&name);
                    if !name.starts_with('.') && (real_dir || path.is_file()) {
                        out.push(path);
                    }
                }
                return;
            }
            // Zero folders, then each real folder below, keeping the `**`.
            expand(dir, after, options, out);
            for (name, real_dir) in entries(dir) {
                if real_dir && !name.starts_with('.') {
                    expand(&dir.join(&name), parts, options, out);
                }
            }
        }
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Walks a folder in name order, into real subfolders only (a symlinked folder is skipped, so a loop cannot
/// make the walk endless); files and symlinks to files with an image extension are taken.
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

/// The longest line of paths read from stdin (64 KiB; `PATH_MAX` is 4 KiB on Linux).
pub const MAX_PATH_LINE: usize = 64 << 10;
/// The most paths read from stdin in one run (10 million).
pub const MAX_STDIN_PATHS: usize = 10_000_000;
/// The longest line read as a question or text (1 MiB; far past any model's context).
pub const MAX_TEXT_LINE: usize = 1 << 20;
/// The largest `--texts` file (64 MiB).
pub const MAX_TEXTS_FILE: u64 = 64 << 20;

/// Reads one line (without its `\n` or `\r\n`) of at most `max` bytes: `/dev/zero` or a file without line ends
/// on stdin is refused at `max` bytes instead of filling memory. `None` at the end of input.
///
/// # Errors
/// IO errors; [`std::io::ErrorKind::InvalidData`] for a line over `max` bytes or one that is not UTF-8.
pub fn read_line(input: &mut impl BufRead, max: usize) -> std::io::Result<Option<String>> {
    let mut bytes = Vec::new();
    let read = input
        .by_ref()
        .take(max as u64 + 1)
        .read_until(b'\n', &mut bytes)?;
    if read == 0 {
        return Ok(None);
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    } else if bytes.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a line is longer than {max} bytes"),
        ));
    }
    String::from_utf8(bytes).map(Some).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "a line is not UTF-8 text")
    })
}

/// The texts of `--text` and `--texts FILE`, in that order.
///
/// # Errors
/// An unreadable file, an empty text.
pub fn texts(args: &TextArgs) -> Result<Vec<String>, CliError> {
    let mut out = args.text.clone();
    if let Some(file) = &args.texts {
        let content =
            blip2_nn::limits::read_to_string_bounded(file, MAX_TEXTS_FILE).map_err(|e| {
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
    #[test]
    fn read_line_strips_line_ends_and_refuses_endless_lines() {
        let mut input: &[u8] = b"a.png\r\nb.png\nc.png";
        let mut lines = vec![];
        while let Some(line) = super::read_line(&mut input, 8).unwrap() {
            lines.push(line);
        }
        assert_eq!(lines, ["a.png", "b.png", "c.png"]);
        // A line of exactly `max` bytes is fine; one more byte is refused, without reading the rest.
        let mut exact: &[u8] = b"12345678\n";
        assert_eq!(
            super::read_line(&mut exact, 8).unwrap().as_deref(),
            Some("12345678")
        );
        let mut zeros = std::io::BufReader::new(std::io::repeat(0));
        let err = super::read_line(&mut zeros, 1 << 16).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("longer than 65536 bytes"), "{err}");
        let mut latin1: &[u8] = b"caf\xe9\n";
        assert!(super::read_line(&mut latin1, 8).is_err());
    }

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

        // A leading dot in the pattern names hidden files; `**` skips hidden folders.
        let got = image_paths(&[format!("{}/.*.png", s(root))], std::io::empty()).unwrap();
        assert_eq!(got, vec![root.join(".e.png")]);
        let got = image_paths(&[format!("{}/**/*.png", s(root))], std::io::empty()).unwrap();
        assert_eq!(got, vec![root.join("b.png")]);
    }

    #[cfg(unix)]
    #[test]
    fn globs_and_folders_end_on_symlink_loops_and_take_each_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("loop/sub")).unwrap();
        std::fs::write(root.join("loop/a.png"), b"x").unwrap();
        std::fs::write(root.join("loop/sub/b.png"), b"x").unwrap();
        std::os::unix::fs::symlink("../loop", root.join("loop/self")).unwrap();
        std::os::unix::fs::symlink("..", root.join("loop/sub/up")).unwrap();
        std::os::unix::fs::symlink(".", root.join("loop/me")).unwrap();
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let want = vec![root.join("loop/a.png"), root.join("loop/sub/b.png")];
        for arg in [
            s(&root.join("loop")),
            format!("{}/**/*.png", s(root)),
            format!("{}/loop/**", s(root)),
        ] {
            assert_eq!(
                image_paths(std::slice::from_ref(&arg), std::io::empty()).unwrap(),
                want,
                "{arg}"
            );
        }
        // Through links with `*`, as a shell does, but each file once, under its first spelling.
        let got = image_paths(
            &[format!("{}/loop/*/*.png", s(root)), s(&root.join("loop"))],
            std::io::empty(),
        )
        .unwrap();
        assert_eq!(
            got,
            vec![root.join("loop/me/a.png"), root.join("loop/sub/b.png")]
        );
    }
}
