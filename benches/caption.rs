//! End-to-end captioning with BLIP-2 OPT-2.7b at the hub checkpoint's sizes (ViT-g at 224 px, the BERT-base
//! Q-Former with 32 queries, OPT-2.7b) with random weights, one image, in f32, bf16 (`Precision::half`: the
//! Q-Former in f32) and int8 (`Precision::INT8`), on the default CPU backend (flex;
//! CUDA or wgpu with the crate's features): pixels -> vision tower -> Q-Former -> projection -> generation of
//! exactly 20 new tokens (`min_new_tokens = max_new_tokens = 20`, so random weights cannot stop early) from the
//! no-prompt caption input `[<image> x 32, </s>]`:
//! - `greedy20`: greedy decoding;
//! - `beam5_20`: 5-beam search.
//!
//! Throughput is in new tokens. `cargo xtask bench caption` also times transformers'
//! `Blip2ForConditionalGeneration.generate` on the same config (scripts/bench_caption.py) and prints the ratio.
//! Environment: `BLIP2_BENCH_LAYERS` (depth of the ViT and of OPT, for a quick smoke run), `BLIP2_BENCH_SECS`,
//! `BLIP2_BENCH_DTYPES` (default `f32,bf16,int8`).

use std::time::Duration;

use blip2::{Blip2Config, Blip2ForConditionalGeneration, Precision, TextConfig};
use blip2_benches::{
    BenchBackend, BenchDtype, env_list, env_value, measurement_secs, pixels, setup, vit_g_config,
};
use blip2_generation::GenerationConfig;
use blip2_opt::OptConfig;
use blip2_qformer::Blip2QFormerConfig;
use burn::prelude::*;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const NEW_TOKENS: usize = 20;
const IMAGE_TOKEN: i64 = 50265;

fn caption(c: &mut Criterion) {
    setup();
    let device = Default::default();
    let mut text = OptConfig::opt_2_7b_blip2();
    if let Some(layers) = env_value("BLIP2_BENCH_LAYERS") {
        text.num_hidden_layers = layers;
    }
    text.vocab_size = 50304;
    let mut config = Blip2Config::from_vision_qformer_text_configs(
        vit_g_config(),
        Blip2QFormerConfig::default(),
        TextConfig::Opt(text),
    )
    .expect("the bench config is valid");
    config.image_token_index = Some(IMAGE_TOKEN as u32);
    let image = pixels::<BenchBackend>(1, 224, &device);
    let mut ids = vec![IMAGE_TOKEN; 32];
    ids.push(2);
    let prompt = Tensor::<BenchBackend, 2, Int>::from_data(TensorData::new(ids, [1, 33]), &device);

    let mut group = c.benchmark_group("caption");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(measurement_secs()))
        .throughput(Throughput::Elements(NEW_TOKENS as u64));
    for dtype in env_list::<BenchDtype>("BLIP2_BENCH_DTYPES", "f32,bf16,int8") {
        let precision = match dtype {
            BenchDtype::Float(dtype) => Precision::from(dtype),
            BenchDtype::Int8 => Precision::INT8,
        };
        // Built in f32, then cast (and quantized) part by part; every lazy parameter is materialised outside
        // the timings.
        let model =
            Blip2ForConditionalGeneration::<BenchBackend>::init(&config, Precision::F32, &device)
                .expect("the bench config is valid")
                .with_precision(precision, &device)
                .expect("the backend supports the bench precision");
        for (case, beams) in [("greedy20", 1), ("beam5_20", 5)] {
            let generation = GenerationConfig {
                max_new_tokens: Some(NEW_TOKENS),
                min_new_tokens: Some(NEW_TOKENS),
                num_beams: beams,
                ..model.generation_config()
            };
            group.bench_with_input(
                BenchmarkId::new(dtype.name(), case),
                &generation,
                |b, generation| {
                    b.iter(|| {
                        let images = model
                            .encode_images(image.clone(), false)
                            .expect("valid pixels");
                        model
                            .generate(&images, prompt.clone(), None, generation.clone())
                            .expect("generation runs")
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, caption);
criterion_main!(benches);
