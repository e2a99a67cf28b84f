//! How far bf16 and int8 (`Precision::INT8`'s scheme: `Linear` weights in int8, bf16 activations) move
//! the logits of a real-size language model with random weights, against the same model in f32
//! (docs/numerics.md). The model is built once in f32, then cast to bf16, then its `Linear` weights are quantized
//! from those bf16 values (as when loading a half-precision checkpoint), so all three hold the same weights up to
//! their own rounding.
//!
//! ```text
//! cargo run --release -p blip2-benches --example precision_error -- opt   # OPT-2.7b, 32 prompt tokens
//! cargo run --release -p blip2-benches --example precision_error -- t5    # Flan-T5-XL, 32 + 8 tokens
//! ```
//!
//! `BLIP2_BENCH_LAYERS` cuts the depth, as in the benches; `BLIP2_INT8_GROUP` sets the int8 groups, a
//! comma-separated list (default `DEFAULT_Q8_GROUP`), each quantized from the same bf16 model. Prints, per mode,
//! the largest and the root-mean-square logit error, the logits' own RMS, and how many positions keep their
//! arg-max token.

// A measuring program: printing the table is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use blip2_benches::{BenchBackend, BenchDtype, env_list, env_value, setup};
use blip2_nn::backend::FloatDType;
use burn::prelude::*;

const SOURCE: usize = 32;
const DECODED: usize = 8;

fn main() {
    setup();
    let which = std::env::args().nth(1).unwrap_or_else(|| "opt".into());
    let device = Default::default();
    let groups: Vec<usize> = env_list("BLIP2_INT8_GROUP", &blip2_nn::DEFAULT_Q8_GROUP.to_string());
    let (name, runs) = match which.as_str() {
        "opt" => ("OPT-2.7b", opt(&groups, &device)),
        "t5" => ("Flan-T5-XL", t5(&groups, &device)),
        other => {
            eprintln!("unknown model {other:?}: expected opt or t5");
            std::process::exit(2);
        }
    };
    let (_, (reference, positions, vocab)) = &runs[0];
    println!(
        "{name}, random weights, {positions} positions x {vocab} logits, against f32 (logits RMS {:.4}):",
        rms(reference)
    );
    println!("| mode | max abs error | RMS error | RMS error / logits RMS | arg-max kept |");
    println!("|---|---|---|---|---|");
    for (mode, (logits, _, _)) in runs.iter().skip(1) {
        let max = logits
            .iter()
            .zip(reference)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let diff: Vec<f32> = logits.iter().zip(reference).map(|(a, b)| a - b).collect();
        let kept = (0..*positions)
            .filter(|&p| {
                let row = |l: &[f32]| argmax(&l[p * vocab..(p + 1) * vocab]);
                row(logits) == row(reference)
            })
            .count();
        println!(
            "| {mode} | {max:.4} | {:.4} | {:.2e} | {kept} of {positions} |",
            rms(&diff),
            rms(&diff) / rms(reference)
        );
    }
}

type Run = (Vec<f32>, usize, usize);

/// A mode's name and its logits.
type Named = (String, Run);

/// OPT-2.7b (BLIP-2's config), logits at every position of a 32-token prompt, in each mode.
fn opt(groups: &[usize], device: &burn::tensor::Device<BenchBackend>) -> Vec<Named> {
    use blip2_opt::{LogitsFor, OptConfig, OptInput};
    let mut config = OptConfig::opt_2_7b_blip2();
    if let Some(layers) = env_value("BLIP2_BENCH_LAYERS") {
        config.num_hidden_layers = layers;
    }
    let ids: Vec<i64> = (0..SOURCE as i64).map(|i| 2 + (i * 7919) % 50000).collect();
    let prompt =
        Tensor::<BenchBackend, 2, Int>::from_data(TensorData::new(ids, [1, SOURCE]), device);
    let model = config
        .init::<BenchBackend>(device)
        .expect("the config is valid");
    in_each_mode(model, groups, device, |lm| {
        lm.forward(OptInput::Ids(prompt.clone()), None, None, LogitsFor::All)
    })
}

/// Flan-T5-XL (BLIP-2's config): a 32-token source, then the decoder's logits at each of 8 positions.
fn t5(groups: &[usize], device: &burn::tensor::Device<BenchBackend>) -> Vec<Named> {
    use blip2_t5::{LogitsFor, T5Config, T5Input};
    let mut config = T5Config::flan_t5_xl_blip2();
    if let Some(layers) = env_value("BLIP2_BENCH_LAYERS") {
        config.num_layers = layers;
        config.num_decoder_layers = Some(layers);
    }
    let ids: Vec<i64> = (0..SOURCE as i64).map(|i| 3 + (i * 7919) % 32000).collect();
    let source =
        Tensor::<BenchBackend, 2, Int>::from_data(TensorData::new(ids, [1, SOURCE]), device);
    let prefix: Vec<i64> = (0..DECODED as i64).map(|i| i * 11).collect();
    let prefix =
        Tensor::<BenchBackend, 2, Int>::from_data(TensorData::new(prefix, [1, DECODED]), device);
    let model = config
        .init::<BenchBackend>(device)
        .expect("the config is valid");
    in_each_mode(model, groups, device, |t5| {
        let encoded = t5.encode(T5Input::Ids(source.clone()), None);
        t5.decode(prefix.clone(), encoded, None, None, LogitsFor::All)
    })
}

/// The logits `logits_of` gives for `model` in f32, then in bf16, then in int8 with each of `groups` (each
/// quantized from the same bf16 model).
fn in_each_mode<M: burn::module::Module<BenchBackend>>(
    model: M,
    groups: &[usize],
    device: &burn::tensor::Device<BenchBackend>,
    logits_of: impl Fn(&M) -> Tensor<BenchBackend, 3>,
) -> Vec<Named> {
    let model = BenchDtype::Float(FloatDType::F32).apply(model, device);
    let f32_run = values(logits_of(&model));
    let bf16 = BenchDtype::Float(FloatDType::BF16).apply(model, device);
    let mut runs = vec![
        ("f32".to_string(), f32_run),
        ("bf16".to_string(), values(logits_of(&bf16))),
    ];
    for &group in groups {
        let int8 = blip2_nn::quantize_linears(bf16.clone(), group).0;
        runs.push((format!("int8, group {group}"), values(logits_of(&int8))));
    }
    runs
}

/// The logits `[1, positions, vocab]` as f32 values, with their positions and vocabulary size.
fn values(logits: Tensor<BenchBackend, 3>) -> Run {
    let [_, positions, vocab] = logits.dims();
    let values = logits
        .cast(burn::tensor::DType::F32)
        .into_data()
        .to_vec::<f32>()
        .expect("f32 logits");
    (values, positions, vocab)
}

fn rms(values: &[f32]) -> f32 {
    let sum: f64 = values.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    (sum / values.len().max(1) as f64).sqrt() as f32
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}
