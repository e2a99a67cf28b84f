//! The seed corpora, from the repository's fixtures: images, configs, tokenizer configs, and small
//! checkpoints and shard indexes written here.

use std::fs;
use std::path::Path;

use crate::{fixtures, write_shards, write_small_checkpoint};

fn put(root: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = root.join(target);
    fs::create_dir_all(&dir).expect("corpus folder");
    fs::write(dir.join(name), bytes).expect("seed file");
}

/// Every fixture file named `file_name`, as (`<fixture>-<file_name>`, bytes).
fn fixture_files(file_name: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    let mut dirs: Vec<_> = fs::read_dir(fixtures())
        .expect("fixtures")
        .flatten()
        .collect();
    dirs.sort_by_key(|d| d.file_name());
    for dir in dirs {
        let path = dir.path().join(file_name);
        if let Ok(bytes) = fs::read(&path) {
            out.push((
                format!("{}-{file_name}", dir.file_name().to_string_lossy()),
                bytes,
            ));
        }
    }
    out
}

/// Writes the seed corpus of every target under `root` (`root/<target>/<name>`).
pub fn write_seeds(root: &Path) {
    // Images: every fixture image.
    for folder in ["images", "pil-image"] {
        for entry in fs::read_dir(fixtures().join(folder))
            .expect("image fixtures")
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.starts_with("reference") {
                put(
                    root,
                    "image",
                    &name,
                    &fs::read(entry.path()).expect("image"),
                );
            }
        }
    }

    // Checkpoints: the small module in each dtype, behind the dtype byte; and its shards' index.
    let scratch = std::env::temp_dir().join(format!("blip2-fuzz-seeds-{}", std::process::id()));
    fs::create_dir_all(&scratch).expect("scratch");
    let file = scratch.join("small.safetensors");
    write_small_checkpoint(&file);
    let bytes = fs::read(&file).expect("seed checkpoint");
    for (dtype_byte, name) in [(0u8, "f32"), (1, "f16"), (2, "bf16")] {
        let mut seed = vec![dtype_byte];
        seed.extend_from_slice(&bytes);
        put(
            root,
            "safetensors",
            &format!("small-{name}.safetensors"),
            &seed,
        );
    }
    put(
        root,
        "shard_index",
        "two-shards.json",
        write_shards(&scratch).as_bytes(),
    );
    let _ = fs::remove_dir_all(&scratch);

    // Configs: each fixture's config.json seeds every reader (a whole BLIP-2 config holds the sections), and
    // each section alone seeds its own.
    let configs = fixture_files("config.json");
    for (name, bytes) in &configs {
        for target in [
            "config_blip2",
            "config_vision",
            "config_qformer",
            "config_opt",
            "config_t5",
        ] {
            put(root, target, name, bytes);
        }
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
            continue;
        };
        for (section, target) in [
            ("vision_config", "config_vision"),
            ("qformer_config", "config_qformer"),
            ("text_config", "config_opt"),
            ("text_config", "config_t5"),
        ] {
            if let Some(part) = value.get(section) {
                let text = serde_json::to_string_pretty(part).expect("json");
                put(root, target, &format!("{name}-{section}"), text.as_bytes());
            }
        }
    }
    for (name, bytes) in fixture_files("generation_config.json") {
        put(root, "config_generation", &name, &bytes);
    }
    for file_name in ["preprocessor_config.json", "processor_config.json"] {
        for (name, bytes) in fixture_files(file_name) {
            put(root, "config_processor", &name, &bytes);
        }
    }
    for (name, bytes) in fixture_files("tokenizer_config.json") {
        put(root, "config_tokenizer", &name, &bytes);
    }

    // Resume: real outputs of the command (fuzz/outputs/, written by `blip2 caption`, `ask` and `match` on the
    // tiny fixtures, with a bad image and quoted names), behind the byte picking format and columns.
    let outputs = Path::new(env!("CARGO_MANIFEST_DIR")).join("outputs");
    for (selector, name) in [
        (0u8, "cap.jsonl"),
        (1, "cap.csv"),
        (2, "ask.jsonl"),
        (3, "ask.csv"),
        (4, "match.jsonl"),
        (5, "match.csv"),
    ] {
        let mut seed = vec![selector];
        seed.extend_from_slice(&fs::read(outputs.join(name)).expect("fuzz/outputs"));
        put(root, "resume", name, &seed);
    }

    // Text: prompts as the CLI builds them, for both processors (first byte: bit 0 picks T5).
    for (i, prompt) in [
        "a photo of",
        "Question: what is the cat doing? Answer:",
        "Question: what color? Answer: red. Question: and the dog? Answer:",
        "<image> caf\u{e9} \u{1f431}\t\n  spaces",
        "",
    ]
    .iter()
    .enumerate()
    {
        for selector in [0u8, 1, 0x1c, 0x3d] {
            let mut seed = vec![selector];
            seed.extend_from_slice(prompt.as_bytes());
            put(root, "text", &format!("prompt-{i}-{selector:02x}"), &seed);
        }
    }
}
