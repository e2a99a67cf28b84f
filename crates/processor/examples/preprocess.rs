//! Preprocess images as HF's `BlipImageProcessor` does and print the batch's shape and a checksum.
//!
//! ```text
//! cargo run -p blip2-processor --example preprocess -- <model dir | config.json> <image>...
//! cargo run -p blip2-processor --example preprocess -- fixtures/tiny-opt fixtures/images/rgb_37x29.png
//! ```
//!
//! The checksum (sum and sum of absolute values of `pixel_values`, in f64) can be compared with
//! `Blip2Processor(images=...)["pixel_values"].double().sum()` in Python.

// An example is a command-line program: printing its result is its job.
#![allow(clippy::print_stdout)]

use std::path::Path;

use anyhow::{Context, Result, bail};
use blip2_nn::backend::DefaultBackend;
use blip2_processor::{BlipImageProcessor, ImageProcessorConfig};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((source, images)) = args.split_first() else {
        bail!(
            "usage: preprocess <model dir | preprocessor_config.json | processor_config.json> <image>..."
        );
    };
    if images.is_empty() {
        bail!("no images given; pass one or more image files after the model directory or config");
    }
    let config = if Path::new(source).is_dir() {
        ImageProcessorConfig::from_model_dir(source)
    } else {
        ImageProcessorConfig::from_file(source)
    }
    .with_context(|| format!("reading the image processor config from {source}"))?;
    let processor = BlipImageProcessor::new(config);

    let pixels = processor.preprocess_files(images)?;
    let tensor = pixels.to_tensor::<DefaultBackend>(&Default::default());
    let sum: f64 = pixels.data.iter().map(|&v| f64::from(v)).sum();
    let abs: f64 = pixels.data.iter().map(|&v| f64::from(v).abs()).sum();
    println!("pixel_values shape {:?}", tensor.dims());
    println!("checksum sum {sum:.6} abs {abs:.6}");
    Ok(())
}
