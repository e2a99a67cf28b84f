//! `blip2 embed`: features of images and texts into a safetensors file, with a JSON-lines index beside it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::Backend;
use safetensors::tensor::{Dtype, TensorView};
use serde::Serialize;

use crate::Ctx;
use crate::args::{Common, EmbedKind};
use crate::error::{CliError, Exit};
use crate::generate::image_key;
use crate::inputs::open_all;
use crate::model::{ModelKind, load_blip2, load_retrieval};
use crate::output::PartialLock;
use crate::progress::summary;
use crate::retrieval::host;

/// Rows of one output tensor, gathered batch by batch.
#[derive(Debug, Default)]
struct Rows {
    values: Vec<f32>,
    tail: Vec<usize>,
    rows: usize,
}

impl Rows {
    fn push(&mut self, (values, shape): (Vec<f32>, Vec<usize>)) {
        self.tail = shape[1..].to_vec();
        self.rows += shape[0];
        self.values.extend(values);
    }

    fn shape(&self) -> Vec<usize> {
        let mut s = vec![self.rows];
        s.extend(&self.tail);
        s
    }
}

#[derive(Serialize)]
struct IndexRow<'a> {
    tensor: &'a str,
    row: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// The index file beside a features file: `features.safetensors` → `features.jsonl`.
pub fn index_path(output: &Path) -> PathBuf {
    output.with_extension("jsonl")
}

fn check_new(path: &Path, overwrite: bool) -> Result<(), CliError> {
    if path.exists() && !overwrite {
        return Err(
            CliError::output(format!("{} already exists", path.display()))
                .with_hint("pass --overwrite to replace it, or another --output"),
        );
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file beside it, so `path` is either the old file or the
/// whole new one.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), CliError> {
    let tmp = PartialLock::partial_path(path);
    write(&tmp)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            CliError::write(path, &e)
        })
}

/// Checks `embed`'s `--output` before the model loads: a `.safetensors` name in a writable folder, not there
/// yet (or `--overwrite`), nor its index.
///
/// # Errors
/// No `--output`, another extension, `--resume`, an existing file, a folder that is missing or read-only.
pub fn check_embed_output(common: &Common) -> Result<&Path, CliError> {
    let output = common
        .output
        .as_deref()
        .ok_or_else(|| CliError::usage("embed writes a file: pass --output FILE.safetensors"))?;
    if output.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Err(CliError::usage(format!(
            "--output {} must end in .safetensors (the index goes beside it as .jsonl)",
            output.display()
        )));
    }
    if common.resume {
        return Err(CliError::usage(
            "embed writes its file in one go when it is done, so there is nothing to resume: --resume is for caption and ask",
        ));
    }
    let index = index_path(output);
    check_new(output, common.overwrite)?;
    check_new(&index, common.overwrite)?;
    crate::output::check_can_create(output)?;
    Ok(output)
}

/// `embed`.
///
/// # Errors
/// Flags that do not fit, the model, the output.
pub fn embed<B: Backend>(
    ctx: &Ctx,
    images: Vec<PathBuf>,
    texts: Vec<String>,
    kinds: &[EmbedKind],
    device: &B::Device,
) -> Result<Exit, CliError> {
    let output = check_embed_output(&ctx.common)?;
    // One run at a time writes this output (the lock is on its temporary file, held to the end).
    let _lock = PartialLock::take(output)?;
    if kinds.contains(&EmbedKind::Multimodal) && images.len() != texts.len() {
        return Err(CliError::usage(format!(
            "multimodal features pair image i with text i: {} images and {} texts",
            images.len(),
            texts.len()
        )));
    }
    if kinds.contains(&EmbedKind::Image) && images.is_empty() {
        return Err(CliError::usage("--kind image needs images"));
    }
    if kinds.contains(&EmbedKind::Text) && texts.is_empty() {
        return Err(CliError::usage("--kind text needs --text or --texts"));
    }
    let started = Instant::now();
    let embedded = match ctx.located.kind() {
        ModelKind::Generation => with_blip2::<B>(ctx, &images, kinds, device)?,
        ModelKind::Retrieval => with_retrieval::<B>(ctx, &images, &texts, kinds, device)?,
    };
    write(ctx, output, embedded, images.len(), texts.len(), started)
}

/// Features gathered for `embed`: the tensors' rows, the index lines, the images that could not be read.
#[derive(Default)]
struct Embedded {
    tensors: BTreeMap<&'static str, Rows>,
    index: Vec<String>,
    failed: usize,
}

impl Embedded {
    fn push_index(&mut self, row: IndexRow<'_>) {
        self.index
            .push(serde_json::to_string(&row).expect("rows serialise"));
    }

    /// How many rows `tensor` has so far.
    fn rows(&self, tensor: &str) -> usize {
        self.tensors.get(tensor).map_or(0, |r| r.rows)
    }
}

/// `embed` with a captioning checkpoint: the Q-Former's output and the language model's inputs per image.
fn with_blip2<B: Backend>(
    ctx: &Ctx,
    images: &[PathBuf],
    kinds: &[EmbedKind],
    device: &B::Device,
) -> Result<Embedded, CliError> {
    let (common, located, reporter) = (&ctx.common, &ctx.located, &ctx.reporter);
    if kinds.iter().any(|k| *k != EmbedKind::Image) {
        return Err(located.wrong_kind("embed --kind text/multimodal", ModelKind::Retrieval));
    }
    let blip2 = load_blip2::<B>(located, common, "embed", device, reporter)?;
    let ip = blip2.processor().image_processor().clone();
    let mut out = Embedded::default();
    let bar = reporter.bar(images.len(), "images");
    for chunk in images.chunks(common.batch_size) {
        let (opened, errors) = open_all(&ip, chunk);
        if !opened.is_empty() {
            let f = blip2.encode_images(&opened)?;
            out.tensors
                .entry("qformer_embeds")
                .or_default()
                .push(host(f.qformer.last_hidden_state.clone())?);
            out.tensors
                .entry("language_model_inputs")
                .or_default()
                .push(host(f.language_inputs)?);
        }
        let mut row = out.rows("qformer_embeds") - opened.len();
        for (path, error) in chunk.iter().zip(&errors) {
            let key = image_key(path);
            for tensor in ["qformer_embeds", "language_model_inputs"] {
                out.push_index(IndexRow {
                    tensor,
                    row: error.is_none().then_some(row),
                    image: Some(&key),
                    text: None,
                    error: error.as_deref(),
                });
            }
            if error.is_none() {
                row += 1;
            } else {
                out.failed += 1;
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// `embed` with a retrieval checkpoint: image, text and multimodal features, as `kinds` asks.
fn with_retrieval<B: Backend>(
    ctx: &Ctx,
    images: &[PathBuf],
    texts: &[String],
    kinds: &[EmbedKind],
    device: &B::Device,
) -> Result<Embedded, CliError> {
    let (common, located, reporter) = (&ctx.common, &ctx.located, &ctx.reporter);
    let r = load_retrieval::<B>(located, common, "embed", device, reporter)?;
    let ip = r.processor().image_processor().clone();
    let mut out = Embedded::default();
    if kinds.contains(&EmbedKind::Image) || kinds.contains(&EmbedKind::Multimodal) {
        let bar = reporter.bar(images.len(), "images");
        for (c, chunk) in images.chunks(common.batch_size).enumerate() {
            let (opened, errors) = open_all(&ip, chunk);
            let ok: Vec<usize> = (0..chunk.len()).filter(|&i| errors[i].is_none()).collect();
            if !opened.is_empty() {
                let encoded = r.encode_images(&opened)?;
                if kinds.contains(&EmbedKind::Multimodal) {
                    let first = c * common.batch_size;
                    let pair_texts: Vec<&str> =
                        ok.iter().map(|&i| texts[first + i].as_str()).collect();
                    let encoded_texts = r.encode_texts(&pair_texts)?;
                    out.tensors
                        .entry("multimodal_embeds")
                        .or_default()
                        .push(host(r.multimodal_features(&encoded, &encoded_texts)?)?);
                }
                if kinds.contains(&EmbedKind::Image) {
                    out.tensors
                        .entry("image_embeds")
                        .or_default()
                        .push(host(encoded.image_embeds)?);
                }
            }
            for (tensor, kind) in [
                ("image_embeds", EmbedKind::Image),
                ("multimodal_embeds", EmbedKind::Multimodal),
            ] {
                if !kinds.contains(&kind) {
                    continue;
                }
                let mut row = out.rows(tensor) - opened.len();
                for (i, (path, error)) in chunk.iter().zip(&errors).enumerate() {
                    let key = image_key(path);
                    let text = (kind == EmbedKind::Multimodal)
                        .then(|| texts[c * common.batch_size + i].as_str());
                    out.push_index(IndexRow {
                        tensor,
                        row: error.is_none().then_some(row),
                        image: Some(&key),
                        text,
                        error: error.as_deref(),
                    });
                    if error.is_none() {
                        row += 1;
                    }
                }
            }
            out.failed += errors.iter().filter(|e| e.is_some()).count();
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
    }
    if kinds.contains(&EmbedKind::Text) {
        for chunk in texts.chunks(common.batch_size) {
            let encoded = r.encode_texts(chunk)?;
            out.tensors
                .entry("text_embeds")
                .or_default()
                .push(host(encoded.text_embeds)?);
        }
        for (row, text) in texts.iter().enumerate() {
            out.push_index(IndexRow {
                tensor: "text_embeds",
                row: Some(row),
                image: None,
                text: Some(text),
                error: None,
            });
        }
    }
    Ok(out)
}

/// Writes the features file, then its index (each appears whole or not at all), and reports.
fn write(
    ctx: &Ctx,
    output: &Path,
    embedded: Embedded,
    images: usize,
    texts: usize,
    started: Instant,
) -> Result<Exit, CliError> {
    let reporter = &ctx.reporter;
    let index = index_path(output);
    let Embedded {
        tensors,
        index: index_rows,
        failed,
    } = embedded;
    let bytes: Vec<(&str, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .filter(|(_, rows)| rows.rows > 0)
        .map(|(name, rows)| {
            let bytes = rows.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (*name, bytes, rows.shape())
        })
        .collect();
    if bytes.is_empty() {
        // Every image failed and no text was asked for: there are no features to write.
        let mut named = std::collections::HashSet::new();
        for row in &index_rows {
            let row: serde_json::Value = serde_json::from_str(row).unwrap_or_default();
            if let (Some(image), Some(error)) = (row["image"].as_str(), row["error"].as_str())
                && named.insert(image.to_string())
            {
                reporter.error(format!("{image}: error: {error}"));
            }
        }
        return Err(CliError::input(format!(
            "none of the {} images could be read: nothing was written to {}",
            images,
            output.display()
        )));
    }
    let views = bytes
        .iter()
        .map(|(name, bytes, shape)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.to_string(), v))
                .map_err(|e| CliError::new(Exit::Failure, format!("cannot lay out {name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let index_name = index
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let metadata = std::collections::HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "producer".to_string(),
            format!("blip2 {}", env!("CARGO_PKG_VERSION")),
        ),
        ("model".to_string(), ctx.located.name.clone()),
        ("index".to_string(), index_name),
    ]);
    write_atomic(output, |tmp| {
        safetensors::tensor::serialize_to_file(views, Some(metadata), tmp)
            .map_err(std::io::Error::other)
    })?;
    write_atomic(&index, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        for line in &index_rows {
            writeln!(f, "{line}")?;
        }
        f.sync_all()
    })?;
    let shapes: Vec<String> = bytes
        .iter()
        .map(|(name, _, shape)| format!("{name} {shape:?}"))
        .collect();
    let mut line = format!(
        "{}; wrote {} to {} (index: {})",
        summary("embedded", images - failed + texts, "inputs", started),
        shapes.join(", "),
        output.display(),
        index.display()
    );
    if failed > 0 {
        line.push_str(&format!(
            "; {failed} images could not be read (see the index)"
        ));
    }
    reporter.note(line);
    Ok(if failed > 0 { Exit::Partial } else { Exit::Ok })
}
