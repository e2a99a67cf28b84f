//! Re-saves a BLIP-2 captioning model directory with blip2's own writer
//! ([`blip2::Blip2ForConditionalGeneration::save_weights`]):
//!
//! ```text
//! cargo run --release -p blip2 --example resave -- <model dir> <new dir> [--dtype f32|f16|bf16]
//! ```
//!
//! The new directory gets the model's other files (config, tokenizer, processor and generation configs) as they
//! are, and one `model.safetensors`. `cargo xtask fixtures --check` re-saves the BLIP-2 fixtures this way and
//! checks that transformers loads them to the same parameters and logits (`scripts/check_resaved.py`).

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use anyhow::{Context, Result, bail};
use blip2::Blip2ForConditionalGeneration;
use blip2_nn::backend::{DefaultBackend, FloatDType};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (from, to, dtype) = match args.as_slice() {
        [from, to] => (from, to, FloatDType::F32),
        [from, to, flag, dtype] if flag == "--dtype" => (from, to, dtype.parse()?),
        _ => bail!("usage: resave <model dir> <new dir> [--dtype f32|f16|bf16]"),
    };
    let model = Blip2ForConditionalGeneration::<DefaultBackend>::from_pretrained(
        from,
        dtype,
        &Default::default(),
    )?;
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {to}"))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("cannot read {from}"))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let weights = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        if path.is_file() && !weights {
            std::fs::copy(&path, std::path::Path::new(to).join(name))?;
        }
    }
    let out = std::path::Path::new(to).join("model.safetensors");
    model.save_weights(&out, dtype)?;
    println!("wrote {}", out.display());
    Ok(())
}
