//! Flan-T5-XL as BLIP-2 uses it (d_model 2048, 24 + 24 blocks, 32 heads, d_ff 5120 gated gelu, vocabulary 32128)
//! with random weights, on the default CPU backend (flex; CUDA or wgpu with the crate's features), f32 and bf16,
//! batch 1: one decoder step after 8 decoded tokens, over a 32-token encoder output whose cross-attention
//! keys/values are already cached (what every generation step after the first costs). The cache is cloned each
//! iteration (cheap: tensors are shared).
//!
//! `cargo xtask bench t5` also times transformers' `T5ForConditionalGeneration` on the same config
//! (scripts/bench_t5.py). Environment: `BLIP2_BENCH_LAYERS` (blocks per stack, default 24), `BLIP2_BENCH_DTYPES`
//! (default `f32,bf16`), `BLIP2_BENCH_SECS` (measurement time, default 20).

use std::time::Duration;

use blip2_benches::{BenchBackend, BenchDtype, env_list, env_value, measurement_secs, setup};
use blip2_t5::{LogitsFor, T5Config, T5Input};
use burn::prelude::*;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SOURCE: usize = 32;
const DECODED: usize = 8;

fn t5(c: &mut Criterion) {
    setup();
    let device = Default::default();
    let mut config = T5Config::flan_t5_xl_blip2();
    if let Some(layers) = env_value("BLIP2_BENCH_LAYERS") {
        config.num_layers = layers;
        config.num_decoder_layers = Some(layers);
    }
    let dtypes: Vec<BenchDtype> = env_list("BLIP2_BENCH_DTYPES", "f32,bf16,int8");
    let mut group = c.benchmark_group("t5");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(measurement_secs()));
    for dtype in dtypes {
        let model = config
            .init::<BenchBackend>(&device)
            .expect("the bench config is valid");
        let model = dtype.apply(model, &device);
        let ids: Vec<i64> = (0..SOURCE as i64).map(|i| 3 + (i * 7919) % 32000).collect();
        let source =
            Tensor::<BenchBackend, 2, Int>::from_data(TensorData::new(ids, [1, SOURCE]), &device);
        let encoded = model.encode(T5Input::Ids(source), None);
        let mut cache = model.new_cache();
        let prefix: Vec<i64> = (0..DECODED as i64).map(|i| i * 11).collect();
        let prefix = Tensor::<BenchBackend, 2, Int>::from_data(
            TensorData::new(prefix, [1, DECODED]),
            &device,
        );
        model.decode(
            prefix,
            encoded.clone(),
            None,
            Some(&mut cache),
            LogitsFor::Last,
        );
        let token = Tensor::<BenchBackend, 2, Int>::from_ints([[42]], &device);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new(dtype.name(), "decode"),
            &token,
            |b, token| {
                b.iter(|| {
                    let mut step_cache = cache.clone();
                    model
                        .decode(
                            token.clone(),
                            encoded.clone(),
                            None,
                            Some(&mut step_cache),
                            LogitsFor::Last,
                        )
                        .into_data()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, t5);
criterion_main!(benches);
