//! Scores images against texts with a BLIP-2 retrieval model: image-text contrast (cosine) and matching
//! (probability), as a table.
//!
//! ```text
//! cargo run --release -p blip2 --example retrieval -- <model> <image>... -- <text>...
//! ```
//!
//! Offline on the tiny test model (random weights):
//! `cargo run -p blip2 --example retrieval -- fixtures/tiny-itm fixtures/images/palette_25x19.png -- "a cat" "two dogs"`.

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use anyhow::{Result, bail};
use blip2::Blip2Retrieval;
use blip2_nn::backend::{DefaultBackend, FloatDType};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(split) = args.iter().position(|a| a == "--") else {
        bail!("usage: retrieval <model dir or hub id> <image>... -- <text>...");
    };
    let (Some(model), images, texts) = (args.first(), &args[1..split], &args[split + 1..]) else {
        bail!("usage: retrieval <model dir or hub id> <image>... -- <text>...");
    };
    if images.is_empty() || texts.is_empty() {
        bail!("give at least one image and one text");
    }
    blip2_nn::alloc::tune_malloc_for_inference();
    let r = Blip2Retrieval::<DefaultBackend>::from_pretrained(
        model,
        FloatDType::F32,
        &Default::default(),
    )?;
    let encoded_images = r.encode_image_files(images)?;
    let encoded_texts = r.encode_texts(texts)?;
    let scores = r.scores(&encoded_images, &encoded_texts)?;
    for (i, image) in images.iter().enumerate() {
        for (t, text) in texts.iter().enumerate() {
            println!(
                "{image}\t{text}\titc {:+.4}\titm {:.4}",
                scores.itc[i][t], scores.itm[i][t]
            );
        }
    }
    Ok(())
}
