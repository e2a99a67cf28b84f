//! Every test file of the workspace that `blip2_testkit::backend_tests!` instantiates per backend, in one test
//! binary, so that a GPU check carries one file to the GPU machine instead of ten (scripts/gpu_check.sh).
//!
//! Built only with the `gpu-suite` feature, and with a GPU backend for the tests to run on:
//! `cargo test -p blip2-workspace-tests --features gpu-suite,blip2-testkit/cuda --test gpu_suite -- cuda::`
//! (or `blip2-testkit/wgpu` and `wgpu::`). Each module is the file as `cargo test` runs it in its own crate.

#[path = "../crates/vision/tests/parity.rs"]
mod vision;

#[path = "../crates/qformer/tests/parity.rs"]
mod qformer;

#[path = "../crates/opt/tests/parity.rs"]
mod opt;

#[path = "../crates/t5/tests/parity.rs"]
mod t5;

#[path = "../crates/processor/tests/parity.rs"]
mod processor;

#[path = "../crates/blip2/tests/parity.rs"]
mod blip2_parity;

#[path = "../crates/blip2/tests/retrieval.rs"]
mod blip2_retrieval;

#[path = "../crates/nn/tests/loader.rs"]
mod nn_loader;

#[path = "../crates/nn/tests/numerics.rs"]
mod nn_numerics;

#[path = "generation.rs"]
mod generation;
