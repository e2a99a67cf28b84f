//! What the user sees for inputs and model files that do not fit: each error names the flag, file, key or value
//! and its limit, with the exit code docs/cli.md gives, on the tiny fixtures (found by trying to break the
//! command).

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use blip2_testkit::fixtures_root;

fn blip2() -> Command {
    let mut cmd = assert_cmd::cargo::cargo_bin_cmd!("blip2");
    cmd.env_remove("BLIP2_MODEL")
        .env_remove("BLIP2_DEVICE")
        .env("HF_HUB_OFFLINE", "1")
        .arg("--quiet");
    cmd
}

fn model(name: &str) -> String {
    fixtures_root().join(name).display().to_string()
}

fn image() -> String {
    fixtures_root()
        .join("images/rgb_37x29.png")
        .display()
        .to_string()
}

/// Runs, checks the exit code, and returns stderr.
fn run(cmd: &mut Command, code: i32) -> String {
    let out: Output = cmd.output().unwrap();
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code\nstdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout),
    );
    stderr
}

fn assert_has(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
}

fn words(n: usize) -> String {
    vec!["word"; n].join(" ")
}

/// A copy of a fixture model whose JSON file `file` is changed by `edit`.
fn edited_model(
    name: &str,
    file: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures_root().join(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().join(file);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
    dir
}

fn dir_arg(dir: &Path) -> String {
    dir.display().to_string()
}

/// --max-new-tokens past the model's 64 positions: a usage error before generating, naming the flag (it was
/// exit 1 after generating, with no row).
#[test]
fn max_new_tokens_past_the_positions_is_a_usage_error() {
    let stderr = run(
        blip2()
            .args(["caption", "--model", &model("tiny-opt"), &image()])
            .args(["--max-new-tokens", "100"]),
        2,
    );
    assert_has(&stderr, &["max_new_tokens 100", "64", "--max-new-tokens"]);
}

/// A huge --num-beams is refused before the model loads, naming the flag and the cap (it ran for 83 s into
/// 11 GB).
#[test]
fn a_huge_num_beams_is_refused() {
    let stderr = run(
        blip2()
            .args(["caption", "--model", &model("tiny-opt"), &image()])
            .args(["--num-beams", "1000000", "--max-new-tokens", "3"]),
        2,
    );
    assert_has(&stderr, &["num_beams", "1024", "--num-beams"]);
}

/// Too-long prompts are usage errors: OPT's (was exit 1), T5's over model_max_length (was an out-of-memory
/// kill for a long enough one), and a match text over the Q-Former's positions (was exit 4 with a hint about
/// --model).
#[test]
fn over_long_prompts_and_texts_are_usage_errors() {
    let stderr = run(
        blip2().args(["ask", "--model", &model("tiny-opt"), &image(), &words(200)]),
        2,
    );
    assert_has(&stderr, &["64", "max_position_embeddings"]);

    let stderr = run(
        blip2().args(["ask", "--model", &model("tiny-t5"), &image(), &words(100)]),
        2,
    );
    assert_has(
        &stderr,
        &["model_max_length", "64", "tokenizer_config.json"],
    );

    let stderr = run(
        blip2()
            .args(["match", "--model", &model("tiny-itm"), &image()])
            .args(["--text", "a cat", "--text", &words(50)]),
        2,
    );
    assert_has(&stderr, &["text 1", "word word", "24", "--text"]);
    assert!(!stderr.contains("--model"), "{stderr}");
}

/// `<image>` in a question is a usage error saying what it is, before the model loads.
#[test]
fn an_image_token_in_the_question_is_explained() {
    let stderr = run(
        blip2().args([
            "ask",
            "--model",
            &model("tiny-opt"),
            &image(),
            "is <image> a cat?",
        ]),
        2,
    );
    assert_has(&stderr, &["`<image>`", "placeholder", "remove"]);
}

/// A chat on a model with 64 positions goes on for many turns, forgetting the oldest ones and saying so (every
/// question after the first few failed with the same positions error).
#[test]
fn chat_forgets_old_turns_and_says_so() {
    let questions = "what colour is the thing?\n".repeat(6);
    let out = assert_cmd::cargo::cargo_bin_cmd!("blip2")
        .env_remove("BLIP2_MODEL")
        .env("HF_HUB_OFFLINE", "1")
        .args(["chat", "--model", &model("tiny-opt"), &image()])
        .args(["--max-new-tokens", "4", "--json"])
        .write_stdin(questions)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 6);
    assert_has(&stderr, &["forgot the", "oldest turn", "/clear"]);
}

/// Processor files that disagree with the model are model errors (4) naming the file and key (they were usage
/// errors about <image> tokens).
#[test]
fn processor_files_that_do_not_fit_the_model_are_model_errors() {
    let dir = edited_model("tiny-opt", "processor_config.json", |j| {
        j["num_query_tokens"] = 7.into();
    });
    let stderr = run(
        blip2().args(["caption", "--model", &dir_arg(dir.path()), &image()]),
        4,
    );
    assert_has(
        &stderr,
        &["processor_config.json", "`num_query_tokens`", "7"],
    );

    let dir = edited_model("tiny-opt", "config.json", |j| {
        let vocab = j["text_config"]["vocab_size"].as_u64().unwrap();
        j["image_token_index"] = (vocab + 5).into();
    });
    let stderr = run(
        blip2().args(["caption", "--model", &dir_arg(dir.path()), &image()]),
        4,
    );
    assert_has(
        &stderr,
        &["config.json", "`image_token_index`", "vocabulary"],
    );
}

/// A processor `size` over the image limits is a model-config error naming the file, the key and the limit,
/// with the flag that raises it; --max-image-pixels applies to the config's size and to the images.
#[test]
fn image_limits_name_the_config_and_the_flag() {
    let dir = edited_model("tiny-opt", "preprocessor_config.json", |j| {
        j["size"] = serde_json::json!({"height": 20000, "width": 20000});
    });
    let stderr = run(
        blip2().args(["caption", "--model", &dir_arg(dir.path()), &image()]),
        4,
    );
    assert_has(
        &stderr,
        &[
            "preprocessor_config.json",
            "`size`",
            "89478485",
            "--max-image-pixels",
        ],
    );
    assert!(!stderr.contains("Limits`"), "{stderr}");

    // The fixture resizes to 30x30 = 900 pixels: a limit of 100 refuses that size, one of 1000 the 37x29 image.
    let stderr = run(
        blip2()
            .args(["caption", "--model", &model("tiny-opt"), &image()])
            .args(["--max-image-pixels", "100"]),
        4,
    );
    assert_has(&stderr, &["`size`", "100 pixels"]);
    let stderr = run(
        blip2()
            .args(["caption", "--model", &model("tiny-opt"), &image()])
            .args(["--max-image-pixels", "1000"]),
        7,
    );
    assert_has(&stderr, &["37x29", "1000"]);
}

/// `info` says "every layer" for a cross-attention frequency of 1.
#[test]
fn info_says_every_layer() {
    let out = blip2()
        .args(["info", "--model", &model("tiny-t5")])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("cross-attention in every layer"),
        "{stdout}"
    );
    assert!(!stdout.contains("every 1 layers"), "{stdout}");
}

/// With `do_resize: false`, an image over the vision tower's position table is an input error whose hint the
/// CLI user can act on (it suggested `interpolate_pos_encoding`, which is no flag, with exit 4).
#[test]
fn an_unresized_image_too_large_for_the_tower_has_a_hint_the_user_can_act_on() {
    let dir = edited_model("tiny-opt", "preprocessor_config.json", |j| {
        j["do_resize"] = false.into();
    });
    let stderr = run(
        blip2().args(["caption", "--model", &dir_arg(dir.path()), &image()]),
        3,
    );
    assert_has(&stderr, &["resize to 28x28", "do_resize"]);
    assert!(!stderr.contains("interpolate_pos_encoding"), "{stderr}");
}
