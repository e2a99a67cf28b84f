//! Loading a checkpoint part by part and reporting every part's problems together.

use std::collections::BTreeSet;
use std::path::Path;

use blip2_nn::loader::{Checkpoint, LoadReport, Problem};

use crate::{Blip2Config, Error};

/// The config and the checkpoint of a model directory or hub id (downloaded first when needed).
pub(crate) fn open_pretrained(model: &Path) -> Result<(Blip2Config, Checkpoint), Error> {
    let dir = blip2_hub::locate(model)?;
    let config = Blip2Config::from_file(&dir)?;
    let checkpoint = Checkpoint::open(blip2_nn::config::model_dir(&dir))?;
    Ok((config, checkpoint))
}

/// A part's load: the module, or (when the checkpoint does not fit it) the report of its problems, so that
/// every part's problems are listed together.
pub(crate) fn part<M, E: Into<Error>>(
    result: Result<(M, LoadReport), E>,
) -> Result<(Option<M>, LoadReport), Error> {
    match result.map_err(Into::into) {
        Ok((module, report)) => Ok((Some(module), report)),
        Err(
            Error::Nn(blip2_nn::Error::Incompatible(report))
            | Error::Vision(blip2_vision::Error::Nn(blip2_nn::Error::Incompatible(report)))
            | Error::QFormer(blip2_qformer::Error::Nn(blip2_nn::Error::Incompatible(report)))
            | Error::Opt(blip2_opt::Error::Nn(blip2_nn::Error::Incompatible(report)))
            | Error::T5(blip2_t5::Error::Nn(blip2_nn::Error::Incompatible(report))),
        ) => Ok((None, *report)),
        Err(other) => Err(other),
    }
}

pub(crate) fn incompatible(report: LoadReport) -> Error {
    blip2_nn::Error::Incompatible(Box::new(report)).into()
}

/// Merges the parts' reports (each strict over its own prefixes). `strict`: every checkpoint key no part loaded
/// or ignored is unexpected (the full model); otherwise it is listed under `ignored` (the projection models,
/// which read a part of a retrieval checkpoint). Any problem is an error listing them all.
pub(crate) fn union(
    checkpoint: &Checkpoint,
    reports: impl IntoIterator<Item = LoadReport>,
    strict: bool,
) -> Result<LoadReport, Error> {
    let mut report = LoadReport {
        source: checkpoint.source().to_path_buf(),
        ..LoadReport::default()
    };
    for part in reports {
        report.loaded.extend(part.loaded);
        report.tied.extend(part.tied);
        report.ignored.extend(part.ignored);
        report.problems.extend(part.problems);
        report.quantized.extend(part.quantized);
    }
    // Keys a part already named (unexpected or mis-shaped in its own prefixes) are not listed twice.
    let named: Vec<String> = report
        .problems
        .iter()
        .filter_map(|p| match p {
            Problem::Unexpected { key, .. }
            | Problem::ShapeMismatch { key, .. }
            | Problem::WrongDtype { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect();
    let used: BTreeSet<&str> = report
        .loaded
        .iter()
        .chain(&report.ignored)
        .chain(&named)
        .map(String::as_str)
        .chain(report.tied.iter().map(|(_, source)| source.as_str()))
        .collect();
    let rest: Vec<String> = checkpoint
        .keys()
        .filter(|k| !used.contains(k))
        .map(str::to_string)
        .collect();
    if strict {
        let unexpected = rest.into_iter().map(|key| Problem::Unexpected {
            file: checkpoint
                .file_of(&key)
                .map_or_else(|| checkpoint.source().to_path_buf(), Path::to_path_buf),
            key,
        });
        report.problems.extend(unexpected);
    } else {
        report.ignored.extend(rest);
    }
    if report.is_clean() {
        Ok(report)
    } else {
        Err(incompatible(report))
    }
}
