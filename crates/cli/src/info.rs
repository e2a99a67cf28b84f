//! `info`: what this build can run on, and what a model is.

#![allow(clippy::print_stdout)] // the CLI's results go to stdout

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use blip2::{Precision, TextConfig};
use blip2_nn::backend::{
    BackendFn, COMPILED_BACKENDS, DeviceSpec, FloatDType, run_on, supported_float_dtypes,
};
use burn::prelude::{Backend, ElementConversion, Tensor};
use serde::Serialize;

use crate::args::Common;
use crate::error::{CliError, Exit};
use crate::model::{Located, ModelKind, locate};
use crate::progress::Reporter;

#[derive(Serialize)]
struct Device {
    backend: &'static str,
    available: bool,
    name: Option<String>,
    dtypes: Vec<&'static str>,
    error: Option<String>,
}

/// Runs a tiny op on the backend's default device.
struct Probe;

impl BackendFn for Probe {
    type Output = (String, Vec<&'static str>);
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let sum: f32 = Tensor::<B, 1>::ones([4], &device)
            .sum()
            .into_scalar()
            .elem();
        assert!((sum - 4.0).abs() < 1e-6, "1+1+1+1 = {sum}");
        let dtypes = supported_float_dtypes::<B>(&device)
            .into_iter()
            .map(FloatDType::name)
            .collect();
        (B::name(&device), dtypes)
    }
}

/// Whether the device of `spec` computes, without crashing when it does not.
///
/// # Errors
/// Why it is not available: not compiled in, no such device, no driver (the runtime's panic message).
pub fn probe_spec(spec: &DeviceSpec) -> Result<(String, Vec<&'static str>), String> {
    // A GPU backend without a GPU (or driver) panics inside its runtime: report it, do not crash.
    // The first panic (often on the runtime's own thread, e.g. "libcuda not found") says why; the caller's
    // thread may only see a closed channel.
    let first: Arc<Mutex<Option<String>>> = Arc::default();
    let previous = std::panic::take_hook();
    let seen = Arc::clone(&first);
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut first) = seen.lock()
            && first.is_none()
        {
            let payload = info.payload();
            *first = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
        }
    }));
    let result = catch_unwind(AssertUnwindSafe(|| run_on(spec, Probe)));
    std::panic::set_hook(previous);
    match result {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(first
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .unwrap_or_else(|| "it failed to start".into())),
    }
}

fn probe(backend: &'static str) -> Device {
    let result = backend
        .parse::<DeviceSpec>()
        .map_err(|e| e.to_string())
        .and_then(|spec| probe_spec(&spec));
    let (name, dtypes, error) = match result {
        Ok((name, dtypes)) => (Some(name), dtypes, None),
        Err(e) => (None, Vec::new(), Some(e)),
    };
    Device {
        backend,
        available: error.is_none(),
        name,
        dtypes,
        error,
    }
}

#[derive(Serialize)]
struct Part {
    name: &'static str,
    parameters: u64,
    memory_dtype: String,
    memory_bytes: u64,
}

#[derive(Serialize)]
struct ModelInfo {
    model: String,
    dir: String,
    architecture: String,
    task: &'static str,
    language_model: Option<String>,
    vision: String,
    qformer: String,
    num_query_tokens: usize,
    parameters: u64,
    parts: Vec<Part>,
    disk_dtypes: BTreeMap<String, u64>,
    files: usize,
    memory_bytes: u64,
}

#[derive(Serialize)]
struct Info {
    version: &'static str,
    backends: Vec<&'static str>,
    devices: Vec<Device>,
    cpu_threads: usize,
    model: Option<ModelInfo>,
}

fn describe(located: &Located, dtype: crate::args::Dtype) -> Result<ModelInfo, CliError> {
    let config = &located.config;
    let checkpoint =
        blip2_nn::loader::Checkpoint::open(&located.dir).map_err(blip2::Error::from)?;
    let precision: Precision = dtype.precision();
    let kind = located.kind();
    let part_of = |key: &str| -> (&'static str, FloatDType) {
        let head = key.split('.').next().unwrap_or_default();
        match head {
            "vision_model" => ("vision", precision.vision),
            "qformer" | "query_tokens" | "embeddings" => ("qformer", precision.qformer),
            "language_model" | "language_projection" => {
                ("language_model", precision.language_model)
            }
            // Retrieval heads run in the Q-Former's dtype.
            _ => ("heads", precision.qformer),
        }
    };
    // int8 parts hold their `Linear` weights (2-D, not embeddings) at 1 byte plus a 4-byte scale per group.
    let int8_bytes = 1.0 + 4.0 / precision.int8.group as f64;
    let is_int8 = |part: &str, key: &str, shape: &[usize]| {
        let on = match part {
            "language_model" => precision.int8.language_model && key.starts_with("language_model."),
            "vision" => precision.int8.vision,
            _ => false,
        };
        on && shape.len() == 2
            && blip2_nn::q8_group_for(shape[0], precision.int8.group).is_some()
            && !key.contains("embed")
            && !key.contains("shared")
            && !key.contains("relative_attention")
    };
    let mut counts: BTreeMap<&'static str, (u64, FloatDType, u64, bool)> = BTreeMap::new();
    let mut disk: BTreeMap<String, u64> = BTreeMap::new();
    let mut memory = 0u64;
    for key in checkpoint.keys() {
        let Some(info) = checkpoint.info(key) else {
            continue;
        };
        let n: u64 = info.shape.iter().map(|&d| d as u64).product();
        let (part, dt) = part_of(key);
        let int8 = is_int8(part, key, &info.shape);
        let bytes = if int8 {
            (n as f64 * int8_bytes).ceil() as u64
        } else {
            n * dt.size() as u64
        };
        let entry = counts.entry(part).or_insert((0, dt, 0, false));
        entry.0 += n;
        entry.2 += bytes;
        entry.3 |= int8;
        *disk
            .entry(format!("{:?}", info.dtype).to_lowercase())
            .or_default() += n;
        memory += bytes;
    }
    // OPT's tied head, absent from the file, gets an int8 copy of the embeddings when the language model is
    // in int8 (`OptForCausalLm::load`), which the lookups then read in place of the float table.
    if let TextConfig::Opt(c) = &config.text_config
        && matches!(kind, ModelKind::Generation)
        && precision.int8.language_model
        && c.tie_word_embeddings
        && !checkpoint.contains("language_model.lm_head.weight")
        && blip2_nn::q8_group_for(c.vocab_size, precision.int8.group).is_some()
    {
        let n = (c.vocab_size * c.embed_dim()) as u64;
        let bytes = (n as f64 * int8_bytes).ceil() as u64;
        let table = n * precision.language_model.size() as u64;
        if let Some(entry) = counts.get_mut("language_model") {
            entry.2 = (entry.2 + bytes).saturating_sub(table);
            entry.3 = true;
        }
        memory = (memory + bytes).saturating_sub(table);
    }
    let parameters = counts.values().map(|(n, ..)| n).sum();
    let parts = counts
        .into_iter()
        .map(|(name, (parameters, dt, memory_bytes, int8))| Part {
            name,
            parameters,
            memory_dtype: if int8 {
                format!("int8+{dt}")
            } else {
                dt.name().to_string()
            },
            memory_bytes,
        })
        .collect();
    let v = &config.vision_config;
    let q = &config.qformer.qformer;
    let language_model = match kind {
        ModelKind::Retrieval => None,
        ModelKind::Generation => Some(match &config.text_config {
            TextConfig::Opt(c) => format!(
                "OPT: {} layers, hidden {}, {} heads, vocabulary {}",
                c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.vocab_size
            ),
            TextConfig::T5(c) => format!(
                "T5: {} encoder and {} decoder layers, d_model {}, {} heads, vocabulary {}",
                c.num_layers,
                c.num_decoder_layers.unwrap_or(c.num_layers),
                c.d_model,
                c.num_heads,
                c.vocab_size
            ),
        }),
    };
    let patches = (v.image_size / v.patch_size.max(1)).pow(2);
    Ok(ModelInfo {
        model: located.name.clone(),
        dir: located.dir.display().to_string(),
        architecture: config
            .architectures
            .first()
            .cloned()
            .unwrap_or_else(|| "(not named in config.json)".into()),
        task: match kind {
            ModelKind::Generation => {
                "captions and answers (caption, ask, chat, embed --kind image)"
            }
            ModelKind::Retrieval => "image-text scores and features (match, embed)",
        },
        language_model,
        vision: format!(
            "ViT: {} layers, hidden {}, {} heads, {}px images in {}px patches ({} tokens)",
            v.num_hidden_layers,
            v.hidden_size,
            v.num_attention_heads,
            v.image_size,
            v.patch_size,
            patches + 1
        ),
        qformer: format!(
            "{} layers, hidden {}, cross-attention {}",
            q.num_hidden_layers,
            q.hidden_size,
            match q.cross_attention_frequency {
                1 => "in every layer".to_string(),
                2 => "in every other layer".to_string(),
                n => format!("every {n} layers"),
            }
        ),
        num_query_tokens: config.num_query_tokens(),
        parameters,
        parts,
        disk_dtypes: disk,
        files: checkpoint.files().len(),
        memory_bytes: memory,
    })
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n => format!("{:.1} KiB", n as f64 / 1024.0),
    }
}

/// `info`.
///
/// # Errors
/// A model that cannot be found or read.
pub fn run(common: &Common, reporter: &Reporter) -> Result<Exit, CliError> {
    let devices: Vec<Device> = COMPILED_BACKENDS.iter().map(|b| probe(b)).collect();
    let model = match &common.model {
        Some(_) => {
            let located = locate(common, "", reporter)?;
            Some(describe(&located, common.dtype)?)
        }
        None => None,
    };
    let info = Info {
        version: env!("CARGO_PKG_VERSION"),
        backends: COMPILED_BACKENDS.to_vec(),
        devices,
        cpu_threads: std::thread::available_parallelism().map_or(1, usize::from),
        model,
    };
    if common.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&info).expect("info serialises")
        );
        return Ok(Exit::Ok);
    }
    println!("blip2 {}", info.version);
    println!("backends compiled in: {}", info.backends.join(", "));
    println!("devices (--device):");
    for d in &info.devices {
        match (&d.name, &d.error) {
            (Some(name), _) => println!(
                "  {:<8} available: {name}; dtypes {}{}",
                d.backend,
                d.dtypes.join(", "),
                if matches!(d.backend, "flex" | "ndarray") {
                    format!("; {} CPU threads", info.cpu_threads)
                } else {
                    String::new()
                }
            ),
            (None, Some(e)) => println!("  {:<8} not available: {e}", d.backend),
            (None, None) => println!("  {:<8} not available", d.backend),
        }
    }
    println!("  (cpu picks the first CPU backend; GPUs take an index: cuda:1)");
    match &info.model {
        None => println!("model: pass --model DIR|HUB_ID to describe one"),
        Some(m) => {
            println!("model: {}", m.model);
            println!("  folder:          {}", m.dir);
            println!("  architecture:    {}", m.architecture);
            println!("  for:             {}", m.task);
            println!("  vision:          {}", m.vision);
            println!(
                "  q-former:        {}; {} queries",
                m.qformer, m.num_query_tokens
            );
            if let Some(lm) = &m.language_model {
                println!("  language model:  {lm}");
            }
            let parts: Vec<String> = m
                .parts
                .iter()
                .map(|p| format!("{} {}", p.name, human_count(p.parameters)))
                .collect();
            println!(
                "  parameters:      {} ({})",
                human_count(m.parameters),
                parts.join(", ")
            );
            let disk: Vec<String> = m
                .disk_dtypes
                .iter()
                .map(|(d, n)| format!("{d} {}", human_count(*n)))
                .collect();
            println!(
                "  on disk:         {} in {} file(s)",
                disk.join(", "),
                m.files
            );
            let dtypes: Vec<String> = m
                .parts
                .iter()
                .map(|p| {
                    format!(
                        "{} {} {}",
                        p.name,
                        p.memory_dtype,
                        human_bytes(p.memory_bytes)
                    )
                })
                .collect();
            println!(
                "  in memory:       {} with --dtype {} ({})",
                human_bytes(m.memory_bytes),
                common.dtype,
                dtypes.join(", ")
            );
        }
    }
    Ok(Exit::Ok)
}
