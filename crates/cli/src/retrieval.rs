//! `embed` and `match`: features to a safetensors file, and image-text scores.

#![allow(clippy::print_stdout)] // the CLI's results go to stdout

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::{Backend, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use serde::Serialize;

use crate::Ctx;
use crate::args::{Common, EmbedKind, ScoreKind};
use crate::error::{CliError, Exit};
use crate::generate::image_key;
use crate::inputs::open_all;
use crate::model::{ModelKind, load_blip2, load_retrieval};
use crate::output::{PartialLock, Record, RowWriter, RunRecord};
use crate::progress::summary;

/// CSV columns of `match`.
pub const MATCH_COLUMNS: &[&str] = &["image", "text", "itm", "itc", "error"];

/// A tensor's values and shape, as f32 on the host.
fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<(Vec<f32>, Vec<usize>), CliError> {
    let shape = t.dims().to_vec();
    let values = t
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| CliError::new(Exit::Failure, format!("cannot read features back: {e:?}")))?;
    Ok((values, shape))
}

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
    let (common, located, reporter) = (&ctx.common, &ctx.located, &ctx.reporter);
    let output = check_embed_output(common)?;
    // One run at a time writes this output (the lock is on its temporary file, held to the end).
    let _lock = PartialLock::take(output)?;
    let index = index_path(output);
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
    let mut tensors: BTreeMap<&'static str, Rows> = BTreeMap::new();
    let mut index_rows: Vec<String> = Vec::new();
    let mut failed = 0usize;
    let mut push_index = |row: IndexRow<'_>| {
        index_rows.push(serde_json::to_string(&row).expect("rows serialise"));
    };

    match located.kind() {
        ModelKind::Generation => {
            if kinds.iter().any(|k| *k != EmbedKind::Image) {
                return Err(
                    located.wrong_kind("embed --kind text/multimodal", ModelKind::Retrieval)
                );
            }
            let blip2 = load_blip2::<B>(located, common, "embed", device, reporter)?;
            let ip = blip2.processor().image_processor().clone();
            let bar = reporter.bar(images.len(), "images");
            for chunk in images.chunks(common.batch_size) {
                let (opened, errors) = open_all(&ip, chunk);
                if !opened.is_empty() {
                    let f = blip2.encode_images(&opened)?;
                    tensors
                        .entry("qformer_embeds")
                        .or_default()
                        .push(host(f.qformer.last_hidden_state.clone())?);
                    tensors
                        .entry("language_model_inputs")
                        .or_default()
                        .push(host(f.language_inputs)?);
                }
                let mut row = tensors.get("qformer_embeds").map_or(0, |r| r.rows) - opened.len();
                for (path, error) in chunk.iter().zip(&errors) {
                    let key = image_key(path);
                    for tensor in ["qformer_embeds", "language_model_inputs"] {
                        push_index(IndexRow {
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
                        failed += 1;
                    }
                }
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
        }
        ModelKind::Retrieval => {
            let r = load_retrieval::<B>(located, common, "embed", device, reporter)?;
            let ip = r.processor().image_processor().clone();
            if kinds.contains(&EmbedKind::Image) || kinds.contains(&EmbedKind::Multimodal) {
                let bar = reporter.bar(images.len(), "images");
                for (c, chunk) in images.chunks(common.batch_size).enumerate() {
                    let (opened, errors) = open_all(&ip, chunk);
                    let ok: Vec<usize> =
                        (0..chunk.len()).filter(|&i| errors[i].is_none()).collect();
                    if !opened.is_empty() {
                        let encoded = r.encode_images(&opened)?;
                        if kinds.contains(&EmbedKind::Multimodal) {
                            let first = c * common.batch_size;
                            let pair_texts: Vec<&str> =
                                ok.iter().map(|&i| texts[first + i].as_str()).collect();
                            let encoded_texts = r.encode_texts(&pair_texts)?;
                            tensors
                                .entry("multimodal_embeds")
                                .or_default()
                                .push(host(r.multimodal_features(&encoded, &encoded_texts)?)?);
                        }
                        if kinds.contains(&EmbedKind::Image) {
                            tensors
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
                        let mut row = tensors.get(tensor).map_or(0, |r| r.rows) - opened.len();
                        for (i, (path, error)) in chunk.iter().zip(&errors).enumerate() {
                            let key = image_key(path);
                            let text = (kind == EmbedKind::Multimodal)
                                .then(|| texts[c * common.batch_size + i].as_str());
                            push_index(IndexRow {
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
                    failed += errors.iter().filter(|e| e.is_some()).count();
                    bar.inc(chunk.len() as u64);
                }
                bar.finish_and_clear();
            }
            if kinds.contains(&EmbedKind::Text) {
                for chunk in texts.chunks(common.batch_size) {
                    let encoded = r.encode_texts(chunk)?;
                    tensors
                        .entry("text_embeds")
                        .or_default()
                        .push(host(encoded.text_embeds)?);
                }
                for (row, text) in texts.iter().enumerate() {
                    push_index(IndexRow {
                        tensor: "text_embeds",
                        row: Some(row),
                        image: None,
                        text: Some(text),
                        error: None,
                    });
                }
            }
        }
    }

    // The features file, then its index; each appears whole or not at all.
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
            images.len(),
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
        ("model".to_string(), located.name.clone()),
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
        summary(
            "embedded",
            images.len() - failed + texts.len(),
            "inputs",
            started
        ),
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

#[derive(Serialize)]
struct PairScore<'a> {
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    itm: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    itc: Option<f32>,
}

#[derive(Serialize)]
struct MatchRow<'a> {
    image: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scores: Option<Vec<PairScore<'a>>>,
    error: Option<&'a str>,
}

fn rows_of<B: Backend>(t: Tensor<B, 2>) -> Result<Vec<Vec<f32>>, CliError> {
    let (values, shape) = host(t)?;
    Ok(values
        .chunks(shape[1].max(1))
        .map(<[f32]>::to_vec)
        .collect())
}

/// `match`.
///
/// # Errors
/// Flags that do not fit, the model, the output.
pub fn matching<B: Backend>(
    ctx: &Ctx,
    images: Vec<PathBuf>,
    texts: Vec<String>,
    which: ScoreKind,
    device: &B::Device,
) -> Result<Exit, CliError> {
    let (common, located, reporter) = (&ctx.common, &ctx.located, &ctx.reporter);
    if texts.is_empty() {
        return Err(CliError::usage(
            "match needs texts: --text TEXT (repeat it) or --texts FILE",
        ));
    }
    if common.resume {
        return Err(CliError::usage(
            "--resume is for caption and ask; match is quick to run again",
        ));
    }
    let mut writer = match &common.output {
        Some(path) => {
            let run = RunRecord::new("match", located)
                .with("texts", &texts)
                .with("scores", format!("{which:?}").to_lowercase());
            let opened =
                RowWriter::open(path, MATCH_COLUMNS, false, common.overwrite, &run, reporter)?;
            Some(opened.0)
        }
        None => None,
    };
    let r = load_retrieval::<B>(located, common, "match", device, reporter)?;
    let ip = r.processor().image_processor().clone();
    let started = Instant::now();
    let encoded_texts = r.encode_texts(&texts)?;
    let bar = (images.len() > 1).then(|| reporter.bar(images.len(), "images"));
    let mut table: Vec<(String, MatchResult)> = Vec::new();
    let mut failed = 0usize;
    for chunk in images.chunks(common.batch_size) {
        let (opened, errors) = open_all(&ip, chunk);
        let (mut itm, mut itc) = (Vec::new(), Vec::new());
        if !opened.is_empty() {
            let mut encoded = r.encode_images(&opened)?;
            if which.itm() {
                let scores = r.scores(&encoded, &encoded_texts)?;
                (itm, itc) = (scores.itm, scores.itc);
            } else {
                encoded = encoded.without_vision();
                itc = rows_of(encoded.similarity(&encoded_texts)?)?;
            }
        }
        let mut k = 0;
        for (path, error) in chunk.iter().zip(&errors) {
            let key = image_key(path);
            let result = match error {
                Some(e) => {
                    failed += 1;
                    Err(e.clone())
                }
                None => {
                    let row = (
                        itm.get(k).cloned().unwrap_or_default(),
                        itc.get(k).cloned().unwrap_or_default(),
                    );
                    k += 1;
                    Ok(row)
                }
            };
            let record = match_record(&key, &texts, &result, which);
            if let Some(w) = &mut writer {
                w.write(&record)?;
            } else if common.json {
                reporter.suspend(|| println!("{}", record.json));
            }
            table.push((key, result));
        }
        if let Some(w) = &mut writer {
            w.sync()?;
        }
        if let Some(bar) = &bar {
            bar.inc(chunk.len() as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if writer.is_none() && !common.json {
        print_table(&texts, &table, which);
    }
    let mut line = summary("scored", images.len() - failed, "images", started);
    if failed > 0 {
        line.push_str(&format!(
            "; {failed} could not be read (their rows carry the error)"
        ));
    }
    reporter.note(line);
    Ok(if failed > 0 { Exit::Partial } else { Exit::Ok })
}

/// An image's ITM and ITC rows (one value per text), or why it could not be read.
type MatchResult = Result<(Vec<f32>, Vec<f32>), String>;

fn match_record(image: &str, texts: &[String], result: &MatchResult, which: ScoreKind) -> Record {
    let get = |v: &[f32], t: usize, on: bool| if on { v.get(t).copied() } else { None };
    let (scores, error) = match result {
        Ok((itm, itc)) => (
            Some(
                texts
                    .iter()
                    .enumerate()
                    .map(|(t, text)| PairScore {
                        text,
                        itm: get(itm, t, which.itm()),
                        itc: get(itc, t, which.itc()),
                    })
                    .collect::<Vec<_>>(),
            ),
            None,
        ),
        Err(e) => (None, Some(e.as_str())),
    };
    let csv = match &scores {
        Some(scores) => scores
            .iter()
            .map(|s| {
                vec![
                    image.to_string(),
                    s.text.to_string(),
                    s.itm.map(|v| v.to_string()).unwrap_or_default(),
                    s.itc.map(|v| v.to_string()).unwrap_or_default(),
                    String::new(),
                ]
            })
            .collect(),
        None => vec![vec![
            image.to_string(),
            String::new(),
            String::new(),
            String::new(),
            error.unwrap_or_default().to_string(),
        ]],
    };
    let row = MatchRow {
        image,
        scores,
        error,
    };
    Record {
        image: image.to_string(),
        json: serde_json::to_string(&row).expect("rows serialise"),
        csv,
    }
}

fn print_table(texts: &[String], table: &[(String, MatchResult)], which: ScoreKind) {
    for (i, text) in texts.iter().enumerate() {
        let lead = if i == 0 { "texts:" } else { "" };
        println!("{lead:<6} [{}] {text}", i + 1);
    }
    let width = table
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut header = format!("{:<width$}", "image");
    let mut columns = Vec::new();
    for (on, label) in [(which.itm(), "ITM"), (which.itc(), "ITC")] {
        if on {
            for t in 0..texts.len() {
                columns.push(format!("{label} [{}]", t + 1));
            }
        }
    }
    for c in &columns {
        header.push_str(&format!("  {c:>9}"));
    }
    println!("{header}");
    for (name, result) in table {
        let mut line = format!("{name:<width$}");
        match result {
            Ok((itm, itc)) => {
                let mut values: Vec<f32> = Vec::new();
                if which.itm() {
                    values.extend(itm);
                }
                if which.itc() {
                    values.extend(itc);
                }
                for v in values {
                    line.push_str(&format!("  {v:>9.4}"));
                }
            }
            Err(e) => line.push_str(&format!("  error: {e}")),
        }
        println!("{line}");
    }
}
