//! OPT at BLIP-2's OPT-2.7b size (2560 hidden, 32 layers, 32 heads, ffn 10240, vocabulary 50304) with random
//! weights, on the default CPU backend (flex; CUDA or wgpu with the crate's features), f32, bf16 and int8 (the
//! `Linear` weights in int8 with bf16 activations), batch 1:
//! - `prefill32`: a 32-token prompt through the decoder into an empty cache, logits for the last position;
//! - `decode`: one token after a 32-token cache (the cache is cloned each iteration, which is cheap: tensors are
//!   shared), logits for it.
//!
//! Throughput is in tokens. `cargo xtask bench opt` also times transformers' `OPTForCausalLM` on the same config
//! (scripts/bench_opt.py) and prints the ratio. Environment: `BLIP2_BENCH_LAYERS` (depth, default 32),
//! `BLIP2_BENCH_DTYPES` (default `f32,bf16,int8`), `BLIP2_BENCH_SECS` (measurement time, default 20).

use std::time::Duration;

use blip2_benches::{BenchBackend, BenchDtype, env_list, env_value, measurement_secs, setup};
use blip2_opt::{LogitsFor, OptConfig, OptInput};
use burn::prelude::*;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const PROMPT: usize = 32;

fn opt(c: &mut Criterion) {
    setup();
    let device = Default::default();
    let mut config = OptConfig::opt_2_7b_blip2();
    if let Some(layers) = env_value("BLIP2_BENCH_LAYERS") {
        config.num_hidden_layers = layers;
    }
    let dtypes: Vec<BenchDtype> = env_list("BLIP2_BENCH_DTYPES", "f32,bf16,int8");
    let mut group = c.benchmark_group("opt");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(measurement_secs()));
    for dtype in dtypes {
        let lm = config
            .init::<BenchBackend>(&device)
            .expect("the bench config is valid");
        // In int8 the tied head is quantized too (as loading in int8 and torch's `quantize_dynamic` do).
        let lm = if dtype == BenchDtype::Int8 {
            lm.untie_head()
        } else {
            lm
        };
        // Materialises every lazy parameter in `dtype` (outside the timings).
        let lm = dtype.apply(lm, &device);
        // ... and then read by the lookups in place of the float table, as after loading in int8.
        let lm = if dtype == BenchDtype::Int8 {
            lm.embeddings_from_head()
        } else {
            lm
        };
        let ids: Vec<i64> = (0..PROMPT as i64).map(|i| 2 + (i * 7919) % 50000).collect();
        let prompt =
            Tensor::<BenchBackend, 2, Int>::from_data(TensorData::new(ids, [1, PROMPT]), &device);

        group.throughput(Throughput::Elements(PROMPT as u64));
        group.bench_with_input(
            BenchmarkId::new(dtype.name(), "prefill32"),
            &prompt,
            |b, prompt| {
                b.iter(|| {
                    let mut cache = lm.new_cache();
                    lm.forward(
                        OptInput::Ids(prompt.clone()),
                        None,
                        Some(&mut cache),
                        LogitsFor::Last,
                    )
                    .into_data()
                })
            },
        );

        let mut prefilled = lm.new_cache();
        lm.forward(
            OptInput::Ids(prompt.clone()),
            None,
            Some(&mut prefilled),
            LogitsFor::Last,
        );
        let token = Tensor::<BenchBackend, 2, Int>::from_ints([[50118]], &device);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new(dtype.name(), "decode"),
            &token,
            |b, token| {
                b.iter(|| {
                    let mut cache = prefilled.clone();
                    lm.forward(
                        OptInput::Ids(token.clone()),
                        None,
                        Some(&mut cache),
                        LogitsFor::Last,
                    )
                    .into_data()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, opt);
criterion_main!(benches);
