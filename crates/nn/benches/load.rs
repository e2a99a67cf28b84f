//! Load speed: init + strict load of a ~100M-parameter module must cost about the time to read its bytes
//! (lazy init: no random initialisation of parameters that are overwritten).
//!
//! `cargo bench -p blip2-nn --bench load` writes 100.7M parameters (12 x Linear(2048 -> 4096), PyTorch layout)
//! as f32 and bf16 safetensors under `target/`, then times, best of 3:
//! - reading the file's bytes (`std::fs::read`, page cache warm);
//! - `init` + `load_module` (f32 file -> f32, bf16 file -> f32, f32 file -> bf16);
//! - `init` + forcing the random initialisation, which the loader avoids.
//!
//! Numbers go to docs/performance.md with the machine.

// A command-line tool: printing is its job (the print lints are for the library crates).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;
use std::time::{Duration, Instant};

use blip2_nn::backend::{FloatDType, ensure_dtype_supported};
use blip2_nn::loader::{Checkpoint, KeyMap, LoadOptions, load_module, save_module};
use burn::backend::Flex;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, LinearLayout};
use burn::prelude::*;

const LAYERS: usize = 12;
const D_IN: usize = 2048;
const D_OUT: usize = 4096;

#[derive(Module, Debug)]
struct Stack<B: Backend> {
    layers: Vec<Linear<B>>,
}

fn init<B: Backend>(device: &B::Device) -> Stack<B> {
    Stack {
        layers: (0..LAYERS)
            .map(|_| {
                LinearConfig::new(D_IN, D_OUT)
                    .with_layout(LinearLayout::Col)
                    .init(device)
            })
            .collect(),
    }
}

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..n)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .min()
        .unwrap()
}

fn main() {
    let device = Default::default();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-load");
    std::fs::create_dir_all(&dir).unwrap();
    let params = LAYERS * (D_IN * D_OUT + D_OUT);

    // Write the files from a randomly initialised module (not timed).
    let model = init::<Flex>(&device);
    let map = KeyMap::new();
    let f32_path = dir.join("f32.safetensors");
    let bf16_path = dir.join("bf16.safetensors");
    let meta = Default::default();
    save_module(&model, &f32_path, &map, FloatDType::F32, &meta).unwrap();
    save_module(&model, &bf16_path, &map, FloatDType::BF16, &meta).unwrap();
    drop(model);

    let report = |what: &str, t: Duration, bytes: u64| {
        println!(
            "{what:<44} {:>8.3} s  {:>7.2} GB/s",
            t.as_secs_f64(),
            bytes as f64 / t.as_secs_f64() / 1e9
        );
    };
    println!(
        "{params} parameters ({:.1}M), flex backend",
        params as f64 / 1e6
    );
    for (name, path) in [("f32", &f32_path), ("bf16", &bf16_path)] {
        let bytes = std::fs::metadata(path).unwrap().len();
        report(
            &format!("read {name} file ({bytes} bytes)"),
            best_of(3, || std::fs::read(path).unwrap()),
            bytes,
        );
        for target in [FloatDType::F32, FloatDType::BF16] {
            if ensure_dtype_supported::<Flex>(&device, target).is_err() {
                continue;
            }
            let t = best_of(3, || {
                let checkpoint = Checkpoint::open(path).unwrap();
                let options = LoadOptions::new(KeyMap::new()).with_dtype(target);
                let (model, _) =
                    load_module(init::<Flex>(&device), &checkpoint, &options, &device).unwrap();
                // Make sure the data is resident (the backend may be lazy).
                model.layers[LAYERS - 1]
                    .weight
                    .val()
                    .slice([0..1, 0..1])
                    .into_data()
            });
            report(&format!("init + load {name} file -> {target}"), t, bytes);
        }
    }
    let t = best_of(3, || {
        let model = init::<Flex>(&device);
        model
            .layers
            .iter()
            .map(|l| l.weight.val().slice([0..1, 0..1]).into_data())
            .collect::<Vec<_>>()
    });
    report(
        "init + random initialisation (avoided)",
        t,
        (params * 4) as u64,
    );
}
