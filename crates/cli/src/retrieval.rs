//! `embed` and `match`: features to a safetensors file, and image-text scores.

#![allow(clippy::print_stdout)] // the CLI's results go to stdout

use std::path::PathBuf;
use std::time::Instant;

use burn::prelude::{Backend, Tensor};
use serde::Serialize;

use crate::Ctx;
use crate::args::ScoreKind;
use crate::error::{CliError, Exit};
use crate::generate::image_key;
use crate::inputs::open_all;
use crate::model::load_retrieval;
use crate::output::{Existing, Record, RowWriter, RunRecord};
use crate::progress::summary;

/// CSV columns of `match`.
pub const MATCH_COLUMNS: &[&str] = &["image", "text", "itm", "itc", "error"];

/// A tensor's values and shape, as f32 on the host.
pub(crate) fn host<B: Backend, const D: usize>(
    t: Tensor<B, D>,
) -> Result<(Vec<f32>, Vec<usize>), CliError> {
    let shape = t.dims().to_vec();
    let values = t
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| CliError::new(Exit::Failure, format!("cannot read features back: {e:?}")))?;
    Ok((values, shape))
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
            // match never resumes (refused above): an existing file is replaced or refused.
            let existing = Existing::from_flags(false, common.overwrite);
            let opened = RowWriter::open(path, MATCH_COLUMNS, existing, &run, reporter)?;
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
