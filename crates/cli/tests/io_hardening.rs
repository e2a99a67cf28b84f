//! The `blip2` binary where its inputs and outputs are unusual: a reader that goes away, symlink loops, folders
//! named on stdin, output files edited or converted between runs, two runs writing one file, resumes with other
//! settings, output folders that do not exist, and jobs where every image is bad.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use assert_cmd::Command;
use blip2_testkit::fixtures_root;
use serde_json::Value;

fn blip2() -> Command {
    let mut cmd = assert_cmd::cargo::cargo_bin_cmd!("blip2");
    // Tests never touch the network or the user's settings.
    cmd.env_remove("BLIP2_MODEL")
        .env_remove("BLIP2_DEVICE")
        .env("HF_HUB_OFFLINE", "1");
    cmd
}

fn model(name: &str) -> String {
    fixtures_root().join(name).display().to_string()
}

fn image(name: &str) -> PathBuf {
    fixtures_root().join("images").join(name)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs and checks the exit code; returns the output.
fn run(cmd: &mut Command, code: i32) -> Output {
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code\nstdout:\n{}\nstderr:\n{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `caption` with the tiny OPT model and few new tokens.
fn caption(args: &[&str]) -> Command {
    let mut cmd = blip2();
    cmd.args(["caption", "-m", &model("tiny-opt"), "--max-new-tokens", "3"])
        .args(args);
    cmd
}

/// A folder with `n` copies of a fixture image, `00.png`, `01.png`, ...
fn copies(dir: &Path, name: &str, n: usize) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..n {
        std::fs::copy(image("rgb_37x29.png"), folder.join(format!("{i:02}.png"))).unwrap();
    }
    folder
}

#[cfg(unix)]
#[test]
fn writing_to_a_closed_pipe_ends_quietly_as_sigpipe() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let images = s(&fixtures_root().join("images"));
    let itm = model("tiny-itm");
    let opt = model("tiny-opt");
    let runs: [Vec<&str>; 3] = [
        vec!["caption", "-m", &opt, &images, "--max-new-tokens", "2"],
        vec![
            "caption",
            "-m",
            &opt,
            &images,
            "--max-new-tokens",
            "2",
            "--json",
        ],
        vec!["match", "-m", &itm, &images, "--text", "a cat", "--json"],
    ];
    for args in runs {
        // `blip2 ... | head -0`: the reader is gone before the first row.
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_blip2"))
            .args(&args)
            .env("HF_HUB_OFFLINE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(13),
            "{args:?}: killed by SIGPIPE as `ls | head` is (the shell's 141), not {status:?}\n{err}"
        );
        assert!(
            !err.contains("error") && !err.contains("panick"),
            "{args:?}: no message\n{err}"
        );
    }
}

#[cfg(unix)]
#[test]
fn globs_survive_symlink_loops_and_take_each_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // loop/self -> ../loop: `**` through it never ended.
    let looped = copies(root, "loop", 1);
    std::os::unix::fs::symlink("../loop", looped.join("self")).unwrap();
    // flat/me -> .: every `me/me/.../00.png` was the same image, captioned 41 times.
    let flat = copies(root, "flat", 2);
    std::os::unix::fs::symlink(".", flat.join("me")).unwrap();
    std::os::unix::fs::symlink("01.png", flat.join("link.png")).unwrap();
    for (pattern, want) in [
        (
            format!("{}/**/*.png", s(&looped)),
            vec![looped.join("00.png")],
        ),
        (
            format!("{}/**/*.png", s(&flat)),
            vec![flat.join("00.png"), flat.join("01.png")],
        ),
        (
            format!("{}/*/*.png", s(&flat)),
            vec![flat.join("me/00.png"), flat.join("me/01.png")],
        ),
    ] {
        let out = run(&mut caption(&[&pattern, "--json"]), 0);
        let images: Vec<String> = json_lines(&stdout(&out))
            .iter()
            .map(|r| r["image"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = want.iter().map(|p| s(p)).collect();
        assert_eq!(images, want, "{pattern}");
    }
    // A folder and a file in it named again, through the link: each image once, first spelling kept.
    let out = run(
        &mut caption(&[&s(&flat), &s(&flat.join("me/00.png")), "--json"]),
        0,
    );
    let images: Vec<String> = json_lines(&stdout(&out))
        .iter()
        .map(|r| r["image"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(images, [s(&flat.join("00.png")), s(&flat.join("01.png"))]);
}

#[test]
fn a_folder_named_on_stdin_is_walked_like_a_folder_argument() {
    let dir = tempfile::tempdir().unwrap();
    let folder = copies(dir.path(), "shots", 2);
    let out = run(
        caption(&["-", "--json"]).write_stdin(format!("{}\n", s(&folder))),
        0,
    );
    let images: Vec<String> = json_lines(&stdout(&out))
        .iter()
        .map(|r| r["image"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        images,
        [s(&folder.join("00.png")), s(&folder.join("01.png"))]
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = run(caption(&["-"]).write_stdin(s(&empty)), 3);
    assert!(
        stderr(&out).contains("no images in folder"),
        "{}",
        stderr(&out)
    );
}

/// A finished CSV of `n` images in `dir/name`; returns its path and bytes.
fn finished_csv(dir: &Path, folder: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let path = dir.join(name);
    run(&mut caption(&[&s(folder), "-o", &s(&path)]), 0);
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn a_csv_resume_never_drops_a_row_it_cannot_write_again() {
    let dir = tempfile::tempdir().unwrap();
    let folder = copies(dir.path(), "shots", 5);
    let (path, full) = finished_csv(dir.path(), &folder, "rows.csv");
    let text = String::from_utf8(full.clone()).unwrap();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    assert_eq!(lines.len(), 6, "{text}");

    // Row 3 (line 4) with its first field quoted, the last image missing: refused, the file untouched.
    let mut edited = lines.clone();
    let quoted = format!(
        "\"{}\"{}",
        s(&folder.join("02.png")),
        &lines[3][s(&folder.join("02.png")).len()..]
    );
    edited[3] = &quoted;
    let edited: String = edited[..5].concat();
    std::fs::write(&path, &edited).unwrap();
    let out = run(&mut caption(&[&s(&folder), "-o", &s(&path), "--resume"]), 6);
    let err = stderr(&out);
    assert!(err.contains(&s(&path)) && err.contains("line 4"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);

    // A row in the middle with a field left out: refused too.
    let short = format!("{}{}x.png,,1,1,a\n{}", lines[0], lines[1], lines[2]);
    std::fs::write(&path, &short).unwrap();
    let out = run(&mut caption(&[&s(&folder), "-o", &s(&path), "--resume"]), 6);
    assert!(stderr(&out).contains("line 3"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), short);

    // The same file with Windows line ends, cut inside its fourth row: the rows are kept, the torn one done
    // again, with the file's line ends.
    let crlf = text.replace('\n', "\r\n");
    let cut = crlf.match_indices("\r\n").nth(3).unwrap().0 - 5;
    std::fs::write(&path, &crlf[..cut]).unwrap();
    run(&mut caption(&[&s(&folder), "-o", &s(&path), "--resume"]), 0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), crlf);
    // Finished, it resumes to itself.
    let out = run(&mut caption(&[&s(&folder), "-o", &s(&path), "--resume"]), 0);
    assert!(stderr(&out).contains("nothing to do"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), crlf);
}

#[test]
fn a_second_run_on_a_locked_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let folder = copies(dir.path(), "shots", 1);
    for name in ["rows.jsonl", "rows.csv"] {
        let path = dir.path().join(name);
        // Another run writing the file holds its lock.
        let held = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap();
        held.try_lock().unwrap();
        for extra in [&[][..], &["--resume"][..], &["--overwrite"][..]] {
            let out = run(caption(&[&s(&folder), "-o", &s(&path)]).args(extra), 6);
            let err = stderr(&out);
            assert!(
                err.contains(&s(&path)) && err.contains("another blip2 run"),
                "{extra:?}: {err}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), b"", "{extra:?}: untouched");
        }
        drop(held);
        run(&mut caption(&[&s(&folder), "-o", &s(&path), "--resume"]), 0);
        assert!(!std::fs::read(&path).unwrap().is_empty());
    }
}

#[test]
fn a_second_embed_to_the_same_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("e.safetensors");
    let embed = || {
        let mut cmd = blip2();
        cmd.args([
            "embed",
            "-m",
            &model("tiny-itm"),
            &s(&image("rgb_37x29.png")),
            "-o",
            &s(&output),
            "--overwrite",
        ]);
        cmd
    };
    // A run writing it holds the lock on its temporary file.
    let partial = dir.path().join(".e.safetensors.partial");
    let held = std::fs::File::create(&partial).unwrap();
    held.try_lock().unwrap();
    let out = run(&mut embed(), 6);
    let err = stderr(&out);
    assert!(
        err.contains(&s(&output)) && err.contains("another blip2 run"),
        "{err}"
    );
    assert!(!output.exists());
    drop(held);
    std::fs::remove_file(&partial).unwrap();
    run(&mut embed(), 0);
    assert!(output.exists() && !partial.exists());
    // A run that fails before writing leaves no temporary file.
    run(
        blip2().args([
            "embed",
            "-m",
            &s(&dir.path().join("no-model")),
            &s(&image("rgb_37x29.png")),
            "-o",
            &s(&output),
            "--overwrite",
        ]),
        4,
    );
    assert!(!partial.exists());
}

#[test]
fn a_resume_with_other_settings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let folder = copies(dir.path(), "shots", 2);
    for name in ["rows.jsonl", "rows.csv"] {
        let path = dir.path().join(name);
        let record = PathBuf::from(format!("{}.blip2.json", s(&path)));
        run(
            &mut caption(&[&s(&folder.join("00.png")), "-o", &s(&path)]),
            0,
        );
        let first = std::fs::read(&path).unwrap();
        let saved: Value =
            serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
        assert_eq!(saved["blip2"]["command"], "caption", "{saved}");

        // `ask` on a caption file.
        let out = run(
            blip2().args([
                "ask",
                "-m",
                &model("tiny-t5"),
                &s(&folder),
                "what is it?",
                "-o",
                &s(&path),
                "--resume",
            ]),
            2,
        );
        let err = stderr(&out);
        assert!(err.contains(&s(&path)) && err.contains("command"), "{err}");
        // Other generation settings, another prompt.
        let out = run(
            &mut caption(&[&s(&folder), "-o", &s(&path), "--resume", "--num-beams", "2"]),
            2,
        );
        assert!(stderr(&out).contains("num_beams"), "{}", stderr(&out));
        let out = run(
            &mut caption(&[
                &s(&folder),
                "-o",
                &s(&path),
                "--resume",
                "--prompt",
                "a photo of",
            ]),
            2,
        );
        assert!(stderr(&out).contains("prompt"), "{}", stderr(&out));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            first,
            "refusals leave the file"
        );

        // A file from before the record resumes with a note, and gets one.
        std::fs::remove_file(&record).unwrap();
        let out = run(&mut caption(&[&s(&folder), "-o", &s(&path), "--resume"]), 0);
        assert!(stderr(&out).contains("no record"), "{}", stderr(&out));
        assert!(record.exists());
        assert!(std::fs::read(&path).unwrap().len() > first.len());
    }
}

#[test]
fn embed_checks_its_output_folder_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("nodir/e.safetensors");
    // A model that does not exist: the output is named first.
    let out = run(
        blip2().args([
            "embed",
            "-m",
            &s(&dir.path().join("no-model")),
            &s(&image("rgb_37x29.png")),
            "-o",
            &s(&output),
        ]),
        6,
    );
    let err = stderr(&out);
    assert!(err.contains("nodir") && err.contains("no folder"), "{err}");
}

/// A folder of `good` readable images and `bad` files that are not images.
fn mixed_folder(dir: &Path, good: usize, bad: usize) -> PathBuf {
    let folder = copies(dir, "mixed", good);
    for i in 0..bad {
        std::fs::write(folder.join(format!("bad{i}.png")), b"not an image").unwrap();
    }
    folder
}

#[test]
fn summaries_count_what_was_done() {
    let dir = tempfile::tempdir().unwrap();
    let folder = mixed_folder(dir.path(), 3, 5);
    let out = run(&mut caption(&[&s(&folder), "--json"]), 7);
    let err = stderr(&out);
    assert!(
        err.contains("captioned 3 images") && err.contains("5 could not be read"),
        "{err}"
    );

    // Every image bad: nothing is written, and the run says so.
    let bad = mixed_folder(&dir.path().join("bad"), 0, 2);
    let output = dir.path().join("e.safetensors");
    let out = run(
        blip2().args([
            "embed",
            "-m",
            &model("tiny-itm"),
            &s(&bad),
            "-o",
            &s(&output),
        ]),
        3,
    );
    let err = stderr(&out);
    assert!(err.contains("nothing was written"), "{err}");
    assert!(err.contains("bad0.png: error"), "{err}");
    assert!(!output.exists() && !dir.path().join("e.jsonl").exists());
}

#[test]
fn endless_stdin_and_huge_texts_files_are_refused_not_read_whole() {
    // `/dev/zero` never sends a line end: the line reader stops at its bound (exit 3, naming stdin) instead
    // of growing one line until the memory runs out. The same for `chat`'s questions.
    let zero = || std::fs::File::open("/dev/zero").unwrap();
    // assert_cmd reads a stdin file whole first: the binary is run through std's Command here.
    let plain = |args: &[String]| {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin!("blip2"));
        cmd.env_remove("BLIP2_MODEL")
            .env_remove("BLIP2_DEVICE")
            .env("HF_HUB_OFFLINE", "1")
            .args(args)
            .stdin(zero());
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        out
    };
    let out = plain(&["caption".into(), "-m".into(), model("tiny-opt"), "-".into()]);
    assert!(
        stderr(&out).contains("cannot read paths from stdin")
            && stderr(&out).contains("longer than 65536 bytes"),
        "{}",
        stderr(&out)
    );
    let out = plain(&[
        "chat".into(),
        "-m".into(),
        model("tiny-opt"),
        "--max-new-tokens".into(),
        "3".into(),
        s(&image("rgb_37x29.png")),
    ]);
    assert!(
        stderr(&out).contains("cannot read the question"),
        "{}",
        stderr(&out)
    );
    // A --texts file past its bound is refused from its size (a sparse file: nothing is written).
    let dir = tempfile::tempdir().unwrap();
    let texts = dir.path().join("texts.txt");
    std::fs::File::create(&texts)
        .unwrap()
        .set_len((64 << 20) + 1)
        .unwrap();
    let mut m = blip2();
    m.args(["match", "-m", &model("tiny-itm")])
        .arg(image("rgb_37x29.png"))
        .arg("--texts")
        .arg(&texts);
    let out = run(&mut m, 3);
    assert!(
        stderr(&out).contains("cannot read texts from") && stderr(&out).contains("67108864"),
        "{}",
        stderr(&out)
    );
}
