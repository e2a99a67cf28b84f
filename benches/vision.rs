//! ViT-g (BLIP-2's vision tower) at real size with random weights on the default CPU backend (flex; CUDA or wgpu
//! with the crate's `cuda` / `wgpu` features): 224 px, batch 1 and 4, f32 and bf16. Throughput is in images.
//!
//! `cargo bench -p blip2-benches --bench vision`; `cargo xtask bench vision` runs this and transformers'
//! `Blip2VisionModel` on the same config (scripts/bench_vision.py) and prints both with their ratio.
//! Environment: `BLIP2_BENCH_LAYERS` (depth, default 39), `BLIP2_BENCH_BATCHES` (default `1,4`),
//! `BLIP2_BENCH_DTYPES` (default `f32,bf16`), `BLIP2_BENCH_SECS` (measurement time, default 20).

use std::time::Duration;

use blip2_benches::{
    BenchBackend, env_list, measurement_secs, pixels, random_vision, setup, vit_g_config,
};
use blip2_nn::backend::FloatDType;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn vit_g(c: &mut Criterion) {
    setup();
    let device = Default::default();
    let config = vit_g_config();
    let mut group = c.benchmark_group("vit_g");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(measurement_secs()));
    for dtype in env_list::<FloatDType>("BLIP2_BENCH_DTYPES", "f32,bf16") {
        let model = random_vision::<BenchBackend>(&config, dtype, &device);
        for batch in env_list::<usize>("BLIP2_BENCH_BATCHES", "1,4") {
            let input = pixels::<BenchBackend>(batch, config.image_size, &device);
            if cfg!(any(feature = "cuda", feature = "wgpu")) {
                // GPU backends compile and autotune their kernels on first use: keep that out of the samples.
                for _ in 0..3 {
                    model
                        .forward(input.clone(), false)
                        .pooler_output
                        .into_data();
                }
            }
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new(dtype.name(), batch), &input, |b, input| {
                b.iter(|| {
                    let out = model.forward(input.clone(), false);
                    // Wait for the result: the backend may be lazy.
                    out.pooler_output.into_data()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, vit_g);
criterion_main!(benches);
