//! Loads only the Q-Former (with its learned queries) from a BLIP-2 model directory and runs it on image
//! embeddings read from a safetensors file: the "standalone Q-Former".
//!
//! ```text
//! cargo run --release -p blip2-qformer --example qformer -- <model_dir> <embeddings.safetensors> [key]
//! ```
//!
//! `key` (default `image_embeds`) names a `[batch, num_patches + 1, encoder_hidden]` tensor, e.g. a vision tower's
//! `last_hidden_state` (a fixture's `reference.safetensors` holds one as `vision/last_hidden_state`). Prints the
//! output shapes and checksums.

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use anyhow::{Result, bail};
use blip2_nn::backend::{DefaultBackend, FloatDType};
use blip2_nn::loader::Checkpoint;
use blip2_qformer::{QFormer, QFormerInput};
use burn::prelude::*;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(model_dir), Some(file)) = (args.first(), args.get(1)) else {
        bail!("usage: qformer <model_dir> <embeddings.safetensors> [key]");
    };
    let key = args.get(2).map_or("image_embeds", String::as_str);

    type B = DefaultBackend;
    let device = Default::default();
    let start = std::time::Instant::now();
    let qformer = QFormer::<B>::from_pretrained(model_dir, &device)?;
    let config = &qformer.config.qformer;
    println!(
        "loaded the Q-Former ({} layers, {} queries, hidden {}) in {:.2?}",
        config.num_hidden_layers,
        qformer.num_query_tokens(),
        config.hidden_size,
        start.elapsed()
    );

    let data = Checkpoint::open(file)?.read(key, FloatDType::F32)?;
    if data.shape.len() != 3 {
        bail!(
            "{key} in {file} has shape {:?}; expected [batch, num_patches + 1, encoder_hidden]",
            data.shape
        );
    }
    let image = Tensor::<B, 3>::from_data(data, &device);

    let start = std::time::Instant::now();
    let out = qformer.try_forward(QFormerInput::Image(image), false)?;
    let elapsed = start.elapsed();
    let last = out.last_hidden_state;
    let pooled = out.pooler_output;
    println!(
        "last_hidden_state {:?}  sum {:.6}",
        last.dims(),
        last.sum().into_scalar().elem::<f32>()
    );
    println!(
        "pooler_output     {:?}  sum {:.6}",
        pooled.dims(),
        pooled.sum().into_scalar().elem::<f32>()
    );
    println!("forward: {elapsed:.2?}");
    Ok(())
}
