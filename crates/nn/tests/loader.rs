//! Strict loading and saving, against files the tests write themselves: a PyTorch-layout checkpoint, shards
//! with an index, every error case (missing shard, broken index, truncated file, garbage header, integer tensor,
//! shape mismatch, unexpected key, missing key), tied parameters, prefixes, dtype casts and a save -> load
//! round trip. Each test runs on every CPU backend.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use blip2_nn::Error;
use blip2_nn::backend::FloatDType;
use blip2_nn::loader::{
    Checkpoint, KeyMap, LoadOptions, LoadReport, Problem, load_module, save_module,
};
use blip2_testkit::{Tol, assert_close, backend_tests};
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, LinearLayout,
};
use burn::prelude::*;
use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};

// ------------------------------------------------------------------------------------------------------------
// A small model with HF-style names: `layer.N.dense` (Linear), `layer.N.LayerNorm`, an embedding, a conv, a root
// parameter and an lm_head tied to the embedding, all under `model.` in the file.
// ------------------------------------------------------------------------------------------------------------

const VOCAB: usize = 11;
const HIDDEN: usize = 6;
const INNER: usize = 9;

#[derive(Module, Debug)]
struct Block<B: Backend> {
    dense: Linear<B>,
    layer_norm: LayerNorm<B>,
}

#[derive(Module, Debug)]
struct Tiny<B: Backend> {
    word_embeddings: Embedding<B>,
    patch: Conv2d<B>,
    layer: Vec<Block<B>>,
    up: Linear<B>,
    query_tokens: Param<Tensor<B, 3>>,
    lm_head: Linear<B>,
}

fn init<B: Backend>(device: &B::Device) -> Tiny<B> {
    let linear = |i, o, bias| {
        LinearConfig::new(i, o)
            .with_bias(bias)
            .with_layout(LinearLayout::Col)
            .init(device)
    };
    Tiny {
        word_embeddings: EmbeddingConfig::new(VOCAB, HIDDEN).init(device),
        patch: Conv2dConfig::new([3, HIDDEN], [2, 2])
            .with_stride([2, 2])
            .init(device),
        layer: (0..2)
            .map(|_| Block {
                dense: linear(HIDDEN, HIDDEN, true),
                layer_norm: LayerNormConfig::new(HIDDEN)
                    .with_epsilon(1e-12)
                    .init(device),
            })
            .collect(),
        up: linear(HIDDEN, INNER, true),
        query_tokens: Param::uninitialized(
            burn::module::ParamId::new(),
            move |device, grad| Tensor::zeros([1, 2, HIDDEN], device).set_require_grad(grad),
            device.clone(),
            true,
            [1, 2, HIDDEN].into(),
        ),
        lm_head: linear(HIDDEN, VOCAB, false),
    }
}

fn key_map() -> KeyMap {
    KeyMap::under("model")
        .route("query_tokens", "query_tokens")
        .route("lm_head", "lm_head")
        .rename("layer_norm", "LayerNorm")
}

fn options() -> LoadOptions {
    LoadOptions::new(key_map()).with_tied("lm_head.weight", "model.word_embeddings.weight")
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A tensor as PyTorch would store it.
#[derive(Clone)]
struct Stored {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32_tensor(shape: &[usize], seed: u64) -> Stored {
    let n = shape.iter().product();
    Stored {
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes: values(n, seed)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    }
}

fn as_dtype(t: &Stored, dtype: Dtype) -> Stored {
    let floats: Vec<f32> = t
        .bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let bytes = match dtype {
        Dtype::F32 => t.bytes.clone(),
        Dtype::F16 => floats
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => floats
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        other => panic!("{other:?}"),
    };
    Stored {
        dtype,
        shape: t.shape.clone(),
        bytes,
    }
}

/// The full checkpoint of `Tiny` in PyTorch names and layouts (no lm_head: it is tied).
fn hf_tensors() -> BTreeMap<String, Stored> {
    let mut t = BTreeMap::new();
    let mut seed = 0;
    let mut add = |key: &str, shape: &[usize]| {
        seed += 1;
        t.insert(key.to_string(), f32_tensor(shape, seed));
    };
    add("model.word_embeddings.weight", &[VOCAB, HIDDEN]);
    add("model.patch.weight", &[HIDDEN, 3, 2, 2]);
    add("model.patch.bias", &[HIDDEN]);
    for i in 0..2 {
        add(&format!("model.layer.{i}.dense.weight"), &[HIDDEN, HIDDEN]);
        add(&format!("model.layer.{i}.dense.bias"), &[HIDDEN]);
        add(&format!("model.layer.{i}.LayerNorm.weight"), &[HIDDEN]);
        add(&format!("model.layer.{i}.LayerNorm.bias"), &[HIDDEN]);
    }
    add("model.up.weight", &[INNER, HIDDEN]);
    add("model.up.bias", &[INNER]);
    add("query_tokens", &[1, 2, HIDDEN]);
    t
}

fn write(path: &Path, tensors: &BTreeMap<String, Stored>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    let meta = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    safetensors::serialize_to_file(views, meta, path).unwrap();
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn floats(t: &Stored) -> Vec<f32> {
    t.bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn data(t: &Stored) -> TensorData {
    TensorData::new(floats(t), t.shape.clone())
}

fn load<B: Backend>(
    path: &Path,
    options: &LoadOptions,
    device: &B::Device,
) -> Result<(Tiny<B>, LoadReport), Error> {
    let checkpoint = Checkpoint::open(path)?;
    load_module(init::<B>(device), &checkpoint, options, device)
}

#[track_caller]
fn incompatible(result: Result<(impl std::fmt::Debug, LoadReport), Error>) -> (LoadReport, String) {
    match result {
        Err(Error::Incompatible(report)) => {
            let message = Error::Incompatible(report.clone()).to_string();
            (*report, message)
        }
        other => panic!("expected Error::Incompatible, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------------------------
// Loading what PyTorch wrote
// ------------------------------------------------------------------------------------------------------------

fn pytorch_layout_loads_without_transpose<B: Backend>(device: &B::Device) {
    let dir = tmp();
    let tensors = hf_tensors();
    write(&dir.path().join("model.safetensors"), &tensors);
    let (model, report) = load::<B>(dir.path(), &options(), device).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.loaded.len(), 15, "{report:?}"); // 14 tensors, one used twice (tied)
    assert_eq!(
        report.tied,
        vec![(
            "lm_head.weight".to_string(),
            "model.word_embeddings.weight".to_string()
        )]
    );

    // y = x W^T + b with W [out, in] as stored, computed by hand.
    let x = values(HIDDEN * 2, 99);
    let w = floats(&tensors["model.up.weight"]);
    let b = floats(&tensors["model.up.bias"]);
    let want: Vec<f32> = (0..2)
        .flat_map(|row| {
            let (x, w, b) = (&x, &w, &b);
            (0..INNER).map(move |o| {
                b[o] + (0..HIDDEN)
                    .map(|i| x[row * HIDDEN + i] * w[o * HIDDEN + i])
                    .sum::<f32>()
            })
        })
        .collect();
    let got = model.up.forward(Tensor::<B, 2>::from_data(
        TensorData::new(x, [2, HIDDEN]),
        device,
    ));
    assert_close(
        "up(x)",
        &got.to_data(),
        &TensorData::new(want, [2, INNER]),
        Tol::STAGE,
    );

    // Norms: weight/bias are Burn's gamma/beta; the tied head holds the embedding; the root parameter loaded.
    let gamma = model.layer[1].layer_norm.gamma.val().to_data();
    assert_close(
        "LayerNorm.weight",
        &gamma,
        &data(&tensors["model.layer.1.LayerNorm.weight"]),
        Tol::EXACT,
    );
    let head = model.lm_head.weight.val().transpose().to_data(); // Col layout: val() is [in, out]
    assert_close(
        "lm_head",
        &head,
        &data(&tensors["model.word_embeddings.weight"]),
        Tol::EXACT,
    );
    let q = model.query_tokens.val().to_data();
    assert_close(
        "query_tokens",
        &q,
        &data(&tensors["query_tokens"]),
        Tol::EXACT,
    );
    let conv = model.patch.weight.val().to_data();
    assert_close(
        "patch.weight",
        &conv,
        &data(&tensors["model.patch.weight"]),
        Tol::EXACT,
    );
}

fn tied_key_present_in_file_is_used<B: Backend>(device: &B::Device) {
    let dir = tmp();
    let mut tensors = hf_tensors();
    tensors.insert("lm_head.weight".into(), f32_tensor(&[VOCAB, HIDDEN], 1234));
    write(&dir.path().join("model.safetensors"), &tensors);
    let (model, report) = load::<B>(dir.path(), &options(), device).unwrap();
    assert!(report.tied.is_empty());
    let head = model.lm_head.weight.val().transpose().to_data();
    assert_close(
        "lm_head",
        &head,
        &data(&tensors["lm_head.weight"]),
        Tol::EXACT,
    );
}

fn keys_outside_the_prefix_belong_to_others<B: Backend>(device: &B::Device) {
    let dir = tmp();
    let mut tensors = hf_tensors();
    tensors.insert(
        "vision_model.post_layernorm.weight".into(),
        f32_tensor(&[4], 7),
    );
    write(&dir.path().join("model.safetensors"), &tensors);
    let (_, report) = load::<B>(dir.path(), &options(), device).unwrap();
    assert!(report.is_clean(), "{report}");
}

fn half_precision_files_cast_on_load<B: Backend>(device: &B::Device) {
    for dtype in [Dtype::F16, Dtype::BF16] {
        let dir = tmp();
        let reference = hf_tensors();
        let on_disk: BTreeMap<_, _> = reference
            .iter()
            .map(|(k, t)| (k.clone(), as_dtype(t, dtype)))
            .collect();
        write(&dir.path().join("model.safetensors"), &on_disk);
        let (model, _) = load::<B>(dir.path(), &options(), device).unwrap();
        assert_eq!(model.up.weight.val().dtype(), burn::tensor::DType::F32);
        let got = model.up.weight.val().transpose().to_data();
        assert_close(
            &format!("{dtype:?} -> f32"),
            &got,
            &data(&reference["model.up.weight"]),
            Tol::HALF,
        );
        // Widening is exact: the loaded f32 values are the half values.
        let exact: Vec<f32> = match dtype {
            Dtype::F16 => floats(&reference["model.up.weight"])
                .iter()
                .map(|v| f16::from_f32(*v).to_f32())
                .collect(),
            _ => floats(&reference["model.up.weight"])
                .iter()
                .map(|v| bf16::from_f32(*v).to_f32())
                .collect(),
        };
        assert_close(
            "widened",
            &got,
            &TensorData::new(exact, [INNER, HIDDEN]),
            Tol::EXACT,
        );
    }
}

fn half_precision_in_memory_where_supported<B: Backend>(device: &B::Device) {
    let dir = tmp();
    let reference = hf_tensors();
    write(&dir.path().join("model.safetensors"), &reference);
    for dtype in [FloatDType::F16, FloatDType::BF16] {
        let result = load::<B>(dir.path(), &options().with_dtype(dtype), device);
        if B::supports_dtype(device, dtype.dtype()) {
            let (model, _) = result.unwrap();
            assert_eq!(model.up.weight.val().dtype(), dtype.dtype());
            let x =
                Tensor::<B, 2>::from_data(TensorData::new(values(HIDDEN, 5), [1, HIDDEN]), device);
            let y = model
                .up
                .forward(x.cast(dtype.dtype()))
                .cast(burn::tensor::DType::F32);
            let (f32_model, _) = load::<B>(dir.path(), &options(), device).unwrap();
            let x =
                Tensor::<B, 2>::from_data(TensorData::new(values(HIDDEN, 5), [1, HIDDEN]), device);
            assert_close(
                &format!("up in {dtype}"),
                &y.to_data(),
                &f32_model.up.forward(x).to_data(),
                Tol::HALF,
            );
        } else {
            match result {
                Err(Error::UnsupportedDtype {
                    dtype: d,
                    supported,
                    ..
                }) => {
                    assert_eq!(d, dtype);
                    assert!(supported.contains(&FloatDType::F32));
                }
                other => panic!("expected UnsupportedDtype for {dtype}, got {other:?}"),
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------------------
// Shards
// ------------------------------------------------------------------------------------------------------------

fn write_sharded(dir: &Path, tensors: &BTreeMap<String, Stored>) -> BTreeMap<String, String> {
    let mut shards: [BTreeMap<String, Stored>; 2] = Default::default();
    let mut weight_map = BTreeMap::new();
    for (i, (k, t)) in tensors.iter().enumerate() {
        let shard = i % 2;
        shards[shard].insert(k.clone(), t.clone());
        weight_map.insert(
            k.clone(),
            format!("model-0000{}-of-00002.safetensors", shard + 1),
        );
    }
    for (i, shard) in shards.iter().enumerate() {
        write(
            &dir.join(format!("model-0000{}-of-00002.safetensors", i + 1)),
            shard,
        );
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    weight_map
}

fn sharded_checkpoint_loads<B: Backend>(device: &B::Device) {
    let dir = tmp();
    let tensors = hf_tensors();
    write_sharded(dir.path(), &tensors);
    let checkpoint = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(checkpoint.files().len(), 2);
    assert_eq!(checkpoint.len(), tensors.len());
    let (model, report) = load_module(init::<B>(device), &checkpoint, &options(), device).unwrap();
    assert!(report.is_clean());
    let got = model.layer[0].dense.bias.as_ref().unwrap().val().to_data();
    assert_close(
        "sharded bias",
        &got,
        &data(&tensors["model.layer.0.dense.bias"]),
        Tol::EXACT,
    );
}

fn missing_shard_is_named<B: Backend>(_device: &B::Device) {
    let dir = tmp();
    write_sharded(dir.path(), &hf_tensors());
    let gone = dir.path().join("model-00002-of-00002.safetensors");
    std::fs::remove_file(&gone).unwrap();
    match Checkpoint::open(dir.path()) {
        Err(e @ Error::MissingShard { .. }) => {
            let Error::MissingShard { shard, .. } = &e else {
                unreachable!()
            };
            assert_eq!(shard, &gone);
            assert!(
                e.to_string().contains("model-00002-of-00002.safetensors"),
                "{e}"
            );
        }
        other => panic!("expected MissingShard, got {other:?}"),
    }
}

fn broken_index_is_named<B: Backend>(_device: &B::Device) {
    let cases: [(&str, &str); 5] = [
        ("{not json", "not valid JSON"),
        (r#"{"metadata": {}}"#, "no `weight_map`"),
        (r#"{"weight_map": {}}"#, "empty"),
        (
            r#"{"weight_map": {"a": "../outside.safetensors"}}"#,
            "not a file name in the same directory",
        ),
        (
            r#"{"weight_map": {"model.up.weight": "model-00001-of-00002.safetensors", "ghost": "model-00001-of-00002.safetensors"}}"#,
            "`ghost`",
        ),
    ];
    for (text, needle) in cases {
        let dir = tmp();
        write_sharded(dir.path(), &hf_tensors());
        let index = dir.path().join("model.safetensors.index.json");
        std::fs::write(&index, text).unwrap();
        match Checkpoint::open(dir.path()) {
            Err(e @ Error::BadIndex { .. }) => {
                let message = e.to_string();
                assert!(message.contains(&index.display().to_string()), "{message}");
                assert!(message.contains(needle), "{message} lacks {needle}");
            }
            other => panic!("expected BadIndex for {text}, got {other:?}"),
        }
    }
}

fn directory_without_weights<B: Backend>(_device: &B::Device) {
    let dir = tmp();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"pickle").unwrap();
    match Checkpoint::open(dir.path()) {
        Err(e @ Error::NoWeights { .. }) => {
            assert!(e.to_string().contains(&dir.path().display().to_string()))
        }
        other => panic!("expected NoWeights, got {other:?}"),
    }
    match Checkpoint::open(dir.path().join("nothing.safetensors")) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("nothing.safetensors"), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------------------------
// Damaged files
// ------------------------------------------------------------------------------------------------------------

fn truncated_file_is_named<B: Backend>(_device: &B::Device) {
    let dir = tmp();
    let path = dir.path().join("model.safetensors");
    write(&path, &hf_tensors());
    let bytes = std::fs::read(&path).unwrap();
    for keep in [bytes.len() - 10, 20, 4, 0] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        match Checkpoint::open(dir.path()) {
            Err(e @ Error::Truncated { .. }) => {
                let Error::Truncated {
                    found, expected, ..
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(*found, keep as u64);
                assert!(*expected > *found);
                assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            }
            other => panic!("expected Truncated after cutting to {keep} bytes, got {other:?}"),
        }
    }
}

fn garbage_header_is_named<B: Backend>(_device: &B::Device) {
    let dir = tmp();
    let path = dir.path().join("model.safetensors");
    let mut bytes = 20u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"this is not json!!!!");
    std::fs::write(&path, &bytes).unwrap();
    match Checkpoint::open(&path) {
        Err(e @ Error::BadHeader { .. }) => {
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            assert!(e.to_string().contains("JSON"), "{e}");
        }
        other => panic!("expected BadHeader, got {other:?}"),
    }
    // A huge declared header length in a small file.
    std::fs::write(&path, u64::MAX.to_le_bytes()).unwrap();
    assert!(
        matches!(Checkpoint::open(&path), Err(Error::HeaderTooLarge { .. })),
        "a header length of u64::MAX must be rejected"
    );
}

// ------------------------------------------------------------------------------------------------------------
// Mismatches
// ------------------------------------------------------------------------------------------------------------

fn integer_tensor_is_rejected<B: Backend>(device: &B::Device) {
    let dir = tmp();
    let mut tensors = hf_tensors();
    tensors.insert(
        "model.up.bias".into(),
        Stored {
            dtype: Dtype::I64,
            shape: vec![INNER],
            bytes: (0..INNER as i64).flat_map(|v| v.to_le_bytes()).collect(),
        },
    );
    let path = dir.path().join("model.safetensors");
    write(&path, &tensors);
    let (report, message) = incompatible(load::<B>(dir.path(), &options(), device));
    assert_eq!(
        report.problems,
        vec![Problem::WrongDtype {
            key: "model.up.bias".into(),
            file: path.clone(),
            dtype: "I64".into()
        }]
    );
    assert!(
        message.contains("model.up.bias") && message.contains(&path.display().to_string()),
        "{message}"
    );
    // Reading it directly is a typed error too.
    let checkpoint = Checkpoint::open(&path).unwrap();
    assert!(matches!(
        checkpoint.read("model.up.bias", FloatDType::F32),
        Err(Error::TensorDtype { .. })
    ));
}

fn shape_mismatch_names_both_shapes<B: Backend>(device: &B::Device) {
    let dir = tmp();
    let mut tensors = hf_tensors();
    tensors.insert("model.up.weight".into(), f32_tensor(&[HIDDEN, INNER], 3)); // transposed by mistake
    let path = dir.path().join("model.safetensors");
    write(&path, &tensors);
    let (report, message) = incompatible(load::<B>(dir.path(), &options(), device));
    assert_eq!(
        report.problems,
        vec![Problem::ShapeMismatch {
            key: "model.up.weight".into(),
            file: path.clone(),
            expected: vec![INNER, HIDDEN],
            found: vec![HIDDEN, INNER],
        }]
    );
    assert!(message.contains("model.up.weight"), "{message}");
    assert!(
        message.contains("[9, 6]") && message.contains("[6, 9]"),
        "{message}"
    );
    assert!(message.contains(&path.display().to_string()), "{message}");
}

fn unexpected_key_is_named_unless_ignored<B: Backend>(device: &B::Device) {
    let dir = tmp();
    let mut tensors = hf_tensors();
    tensors.insert(
        "model.pooler.dense.weight".into(),
        f32_tensor(&[HIDDEN, HIDDEN], 4),
    );
    let path = dir.path().join("model.safetensors");
    write(&path, &tensors);
    let (report, message) = incompatible(load::<B>(dir.path(), &options(), device));
    assert_eq!(report.unexpected(), vec!["model.pooler.dense.weight"]);
    assert!(
        message.contains("unexpected: `model.pooler.dense.weight`"),
        "{message}"
    );
    assert!(message.contains(&path.display().to_string()), "{message}");

    let (_, report) = load::<B>(
        dir.path(),
        &options().with_ignored("model.pooler.*"),
        device,
    )
    .unwrap();
    assert_eq!(
        report.ignored,
        vec!["model.pooler.dense.weight".to_string()]
    );
}

fn missing_key_is_named<B: Backend>(device: &B::Device) {
    let dir = tmp();
    let mut tensors = hf_tensors();
    tensors.remove("model.layer.1.LayerNorm.bias");
    tensors.remove("model.word_embeddings.weight"); // also the tied head's source
    write(&dir.path().join("model.safetensors"), &tensors);
    let (report, message) = incompatible(load::<B>(dir.path(), &options(), device));
    assert_eq!(
        report.missing(),
        vec![
            "model.word_embeddings.weight",
            "model.layer.1.LayerNorm.bias",
            "lm_head.weight"
        ]
    );
    assert!(
        message.contains("missing: `model.layer.1.LayerNorm.bias`"),
        "{message}"
    );
    assert!(message.contains("3 problems"), "{message}");
}

// ------------------------------------------------------------------------------------------------------------
// Saving
// ------------------------------------------------------------------------------------------------------------

fn save_then_load_round_trips<B: Backend>(device: &B::Device) {
    let dir = tmp();
    write(&dir.path().join("model.safetensors"), &hf_tensors());
    let (model, _) = load::<B>(dir.path(), &options(), device).unwrap();

    // Saved with the same key map: PyTorch names, [out, in] layouts, the tied head written out explicitly.
    let out = tmp();
    let saved = out.path().join("model.safetensors");
    let meta = BTreeMap::from([("source".to_string(), "blip2 test".to_string())]);
    save_module(&model, &saved, &key_map(), FloatDType::F32, &meta).unwrap();
    let bytes = std::fs::read(&saved).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let header_meta = header.metadata().clone().unwrap();
    assert_eq!(header_meta["format"], "pt");
    assert_eq!(header_meta["source"], "blip2 test");
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let up = file.tensor("model.up.weight").unwrap();
    assert_eq!(up.shape(), &[INNER, HIDDEN]);
    assert_eq!(
        up.data(),
        hf_tensors()["model.up.weight"].bytes.as_slice(),
        "[out, in] written back verbatim"
    );
    assert!(file.tensor("model.layer.0.LayerNorm.weight").is_ok());
    assert!(file.tensor("lm_head.weight").is_ok());
    assert!(!out.path().join("model.safetensors.partial").exists());

    let (again, report) = load::<B>(out.path(), &options(), device).unwrap();
    assert!(report.tied.is_empty(), "the head is in the saved file");
    // Loading into a module that already holds values (not fresh from `init`) works too: non-square `[out, in]`
    // weights are compared in the file's layout.
    let checkpoint = Checkpoint::open(dir.path()).unwrap();
    let (reloaded, _) = load_module(again, &checkpoint, &options(), device).unwrap();
    let again = reloaded;
    let x = Tensor::<B, 2>::from_data(TensorData::new(values(HIDDEN * 3, 8), [3, HIDDEN]), device);
    assert_close(
        "round trip",
        &again.up.forward(x.clone()).to_data(),
        &model.up.forward(x).to_data(),
        Tol::EXACT,
    );

    // Half-precision saves hold the rounded values.
    for dtype in [FloatDType::F16, FloatDType::BF16] {
        let path = out.path().join(format!("{dtype}.safetensors"));
        save_module(&model, &path, &key_map(), dtype, &BTreeMap::new()).unwrap();
        let checkpoint = Checkpoint::open(&path).unwrap();
        assert_eq!(
            format!("{:?}", checkpoint.info("model.up.weight").unwrap().dtype),
            dtype.name().to_uppercase()
        );
        let back = checkpoint.read("model.up.weight", FloatDType::F32).unwrap();
        assert_close(
            &format!("saved {dtype}"),
            &back,
            &data(&hf_tensors()["model.up.weight"]),
            Tol::HALF,
        );
    }
}

fn save_into_missing_directory_fails_cleanly<B: Backend>(device: &B::Device) {
    let dir = tmp();
    write(&dir.path().join("model.safetensors"), &hf_tensors());
    let (model, _) = load::<B>(dir.path(), &options(), device).unwrap();
    let target: PathBuf = dir.path().join("no/such/dir/model.safetensors");
    match save_module(
        &model,
        &target,
        &key_map(),
        FloatDType::F32,
        &BTreeMap::new(),
    ) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("no/such/dir"), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
}

/// A feed-forward that is one of two kinds, as T5's gated and plain FFNs will be: the variant does not show in
/// the checkpoint keys.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // built once per test; boxing would hide the variant from Burn's derive
enum Ffn<B: Backend> {
    Plain(Linear<B>),
    Gated(Block<B>),
}

#[derive(Module, Debug)]
struct WithEnum<B: Backend> {
    ffn: Ffn<B>,
}

fn enum_variants_are_not_part_of_keys<B: Backend>(device: &B::Device) {
    let dir = tmp();
    let tensors = hf_tensors();
    let file: BTreeMap<String, Stored> = [
        ("ffn.dense.weight", "model.layer.0.dense.weight"),
        ("ffn.dense.bias", "model.layer.0.dense.bias"),
        ("ffn.LayerNorm.weight", "model.layer.0.LayerNorm.weight"),
        ("ffn.LayerNorm.bias", "model.layer.0.LayerNorm.bias"),
    ]
    .into_iter()
    .map(|(k, from)| (k.to_string(), tensors[from].clone()))
    .collect();
    write(&dir.path().join("model.safetensors"), &file);
    let gated = || WithEnum::<B> {
        ffn: Ffn::Gated(Block {
            dense: LinearConfig::new(HIDDEN, HIDDEN)
                .with_layout(LinearLayout::Col)
                .init(device),
            layer_norm: LayerNormConfig::new(HIDDEN).init(device),
        }),
    };
    let options = LoadOptions::new(KeyMap::new().rename("layer_norm", "LayerNorm"));
    let checkpoint = Checkpoint::open(dir.path()).unwrap();
    let (model, report) = load_module(gated(), &checkpoint, &options, device).unwrap();
    assert_eq!(report.loaded.len(), 4);
    let out = tmp();
    save_module(
        &model,
        out.path().join("model.safetensors"),
        &options.key_map,
        FloatDType::F32,
        &BTreeMap::new(),
    )
    .unwrap();
    let saved = Checkpoint::open(out.path()).unwrap();
    assert_eq!(
        saved.keys().collect::<Vec<_>>(),
        file.keys().map(String::as_str).collect::<Vec<_>>()
    );
    // The other variant expects other keys, and says which.
    let plain = WithEnum::<B> {
        ffn: Ffn::Plain(
            LinearConfig::new(HIDDEN, INNER)
                .with_layout(LinearLayout::Col)
                .init(device),
        ),
    };
    let (report, _) = incompatible(load_module(plain, &checkpoint, &options, device));
    assert_eq!(report.missing(), vec!["ffn.weight", "ffn.bias"], "{report}");
    assert_eq!(report.unexpected().len(), 4, "{report}");
}

backend_tests!(
    enum_variants_are_not_part_of_keys,
    pytorch_layout_loads_without_transpose,
    tied_key_present_in_file_is_used,
    keys_outside_the_prefix_belong_to_others,
    half_precision_files_cast_on_load,
    half_precision_in_memory_where_supported,
    sharded_checkpoint_loads,
    missing_shard_is_named,
    broken_index_is_named,
    directory_without_weights,
    truncated_file_is_named,
    garbage_header_is_named,
    integer_tensor_is_rejected,
    shape_mismatch_names_both_shapes,
    unexpected_key_is_named_unless_ignored,
    missing_key_is_named,
    save_then_load_round_trips,
    save_into_missing_directory_fails_cleanly,
);
