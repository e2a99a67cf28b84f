//! Loads only the vision tower of a BLIP-2 model directory and encodes pixel values with it.
//!
//! ```text
//! cargo run --release -p blip2-vision --example encode -- <model_dir> [pixels.safetensors [key]] [--dtype f32|f16|bf16] [--interpolate]
//! ```
//!
//! Pixel values are read from a safetensors file (`[batch, 3, height, width]`, key `pixel_values` by default, e.g.
//! a fixture's `reference.safetensors`); without one, a gray image of the config's size is encoded. Prints the
//! output shapes and checksums. The Q-Former and language model weights are not read.

// An example program: printing is its job.
#![allow(clippy::print_stdout)]

use anyhow::{Context, Result, bail};
use blip2_nn::backend::{DefaultBackend, FloatDType};
use blip2_nn::loader::Checkpoint;
use blip2_vision::{Blip2VisionConfig, Blip2VisionModel};
use burn::prelude::*;
use burn::tensor::DType;

fn main() -> Result<()> {
    let mut positional = Vec::new();
    let mut dtype = FloatDType::F32;
    let mut interpolate = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dtype" => dtype = args.next().context("--dtype needs a value")?.parse()?,
            "--interpolate" => interpolate = true,
            _ if arg.starts_with("--") => bail!("unknown option {arg}"),
            _ => positional.push(arg),
        }
    }
    let Some(model_dir) = positional.first() else {
        bail!(
            "usage: encode <model_dir> [pixels.safetensors [key]] [--dtype f32|f16|bf16] [--interpolate]"
        );
    };

    type B = DefaultBackend;
    let device = Default::default();
    let config = Blip2VisionConfig::from_file(model_dir)?;
    let start = std::time::Instant::now();
    let model = Blip2VisionModel::<B>::from_pretrained(model_dir, dtype, &device)?;
    println!(
        "loaded the vision tower ({} layers, {}) in {:.2?}",
        config.num_hidden_layers,
        dtype.name(),
        start.elapsed()
    );

    let pixels: Tensor<B, 4> = match positional.get(1) {
        Some(file) => {
            let key = positional.get(2).map_or("pixel_values", String::as_str);
            let data = Checkpoint::open(file)?.read(key, FloatDType::F32)?;
            if data.shape.len() != 4 {
                bail!(
                    "{key} in {file} has shape {:?}; expected [batch, 3, height, width]",
                    data.shape
                );
            }
            Tensor::from_data(data, &device)
        }
        None => Tensor::zeros([1, 3, config.image_size, config.image_size], &device),
    };

    let start = std::time::Instant::now();
    let out = model.try_forward(pixels, interpolate)?;
    let elapsed = start.elapsed();
    let last = out.last_hidden_state.cast(DType::F32);
    let pooled = out.pooler_output.cast(DType::F32);
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
