//! Captions images with a BLIP-2 model directory or hub id.
//!
//! ```text
//! cargo run --release -p blip2 --example caption -- <model> <image>... [--prompt "a photo of"] [--beams 5] \
//!     [--max-new-tokens 30] [--dtype f32|f16|bf16]
//! ```
//!
//! Try it offline on the tiny test model (random weights, so the captions are gibberish):
//! `cargo run -p blip2 --example caption -- fixtures/tiny-opt fixtures/images/rgb_37x29.png`.

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use anyhow::{Context, Result, bail};
use blip2::Blip2;
use blip2_generation::GenerationConfig;
use blip2_nn::backend::{DefaultBackend, FloatDType};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let (mut prompt, mut beams, mut max_new, mut dtype) = (None, 1, 30, FloatDType::F32);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--prompt" => prompt = Some(value()?),
            "--beams" => beams = value()?.parse()?,
            "--max-new-tokens" => max_new = value()?.parse()?,
            "--dtype" => dtype = value()?.parse()?,
            _ => positional.push(arg),
        }
    }
    let Some((model, images)) = positional.split_first() else {
        bail!(
            "usage: caption <model dir or hub id> <image>... [--prompt P] [--beams N] [--max-new-tokens N] [--dtype D]"
        );
    };
    if images.is_empty() {
        bail!("give at least one image");
    }
    blip2_nn::alloc::tune_malloc_for_inference();
    let start = std::time::Instant::now();
    let mut blip2 = Blip2::<DefaultBackend>::from_pretrained(model, dtype, &Default::default())?;
    println!("loaded {model} in {:.2?}", start.elapsed());
    blip2.set_generation_config(GenerationConfig {
        max_new_tokens: Some(max_new),
        num_beams: beams,
        ..blip2.generation_config().clone()
    })?;
    let start = std::time::Instant::now();
    let features = blip2.encode_image_files(images)?;
    let captions = blip2.caption(&features, prompt.as_deref())?;
    for (image, caption) in images.iter().zip(&captions) {
        println!("{image}: {}", caption.text);
    }
    println!("{} image(s) in {:.2?}", images.len(), start.elapsed());
    Ok(())
}
