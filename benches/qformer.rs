//! The BLIP-2 Q-Former at real size (768 hidden, 12 layers, 12 heads, 32 queries, cross-attention every 2nd layer
//! to 1408-wide image embeddings) with random weights, on the default CPU backend (flex; CUDA or wgpu with the
//! crate's features): the captioning path on `[batch, 257, 1408]` image embeddings, batch 1 and 4, f32 (HF keeps
//! the Q-Former in f32). Throughput is in images.
//!
//! `cargo bench -p blip2-benches --bench qformer`; `cargo xtask bench qformer` also times transformers on the
//! same config (scripts/bench_qformer.py) and prints the ratio. Environment: `BLIP2_BENCH_BATCHES` (default
//! `1,4`), `BLIP2_BENCH_SECS` (measurement time, default 20).

use std::time::Duration;

use blip2_benches::{BenchBackend, env_list, measurement_secs, setup};
use blip2_nn::backend::{FloatDType, cast_module};
use blip2_qformer::{QFormerConfig, QFormerInput};
use burn::prelude::*;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn qformer(c: &mut Criterion) {
    setup();
    let device = Default::default();
    let config = QFormerConfig::default();
    let model = config
        .init::<BenchBackend>(&device)
        .expect("the hub config is valid");
    // Casting f32 -> f32 touches every parameter: the lazy ones are materialised outside the timings.
    let model = cast_module(model, FloatDType::F32, &device).expect("f32 is supported");
    let batches: Vec<usize> = env_list("BLIP2_BENCH_BATCHES", "1,4");
    let mut group = c.benchmark_group("qformer");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(measurement_secs()));
    for batch in batches {
        let n = batch * 257 * 1408;
        let values: Vec<f32> = (0..n).map(|i| ((i % 199) as f32 / 99.0) - 1.0).collect();
        let image = Tensor::<BenchBackend, 3>::from_data(
            TensorData::new(values, [batch, 257, 1408]),
            &device,
        );
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("f32", batch), &image, |b, image| {
            b.iter(|| {
                let out = model.forward(QFormerInput::Image(image.clone()), false);
                out.pooler_output.into_data()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, qformer);
criterion_main!(benches);
