//! Finding, downloading and loading the model, with progress.

use std::path::{Path, PathBuf};
use std::time::Instant;

use blip2::{Blip2, Blip2Config, Blip2Retrieval};
use burn::prelude::Backend;

use crate::args::Common;
use crate::error::{CliError, Exit};
use crate::progress::{Reporter, human_duration};

/// What a checkpoint is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// `Blip2ForConditionalGeneration` (OPT or Flan-T5): captions, answers.
    Generation,
    /// `Blip2ForImageTextRetrieval`: ITM, ITC, features.
    Retrieval,
}

/// A model named on the command line, resolved to a local folder.
#[derive(Debug, Clone)]
pub struct Located {
    /// What the user passed (or the default).
    pub name: String,
    /// The local folder.
    pub dir: PathBuf,
    /// Its config.
    pub config: Blip2Config,
}

impl Located {
    /// What the checkpoint is for: its `architectures`, else whether it has the ITM head.
    pub fn kind(&self) -> ModelKind {
        let archs = &self.config.architectures;
        if archs.iter().any(|a| a.contains("Retrieval")) {
            return ModelKind::Retrieval;
        }
        if archs.iter().any(|a| a.contains("ConditionalGeneration")) {
            return ModelKind::Generation;
        }
        let has_itm = blip2_nn::loader::Checkpoint::open(&self.dir)
            .is_ok_and(|c| c.contains("itm_head.weight"));
        if has_itm {
            ModelKind::Retrieval
        } else {
            ModelKind::Generation
        }
    }

    /// An error for a command this checkpoint cannot run.
    pub fn wrong_kind(&self, command: &str, needs: ModelKind) -> CliError {
        let (needed, example) = match needs {
            ModelKind::Retrieval => (
                "an image-text retrieval checkpoint (Blip2ForImageTextRetrieval, with ITM and ITC heads)",
                crate::args::DEFAULT_RETRIEVAL_MODEL,
            ),
            ModelKind::Generation => (
                "a captioning checkpoint (Blip2ForConditionalGeneration, with OPT or Flan-T5)",
                crate::args::DEFAULT_MODEL,
            ),
        };
        CliError::new(
            Exit::Model,
            format!("`blip2 {command}` needs {needed}; {} is not one", self.name),
        )
        .with_hint(format!("pass --model {example} or another such checkpoint"))
    }
}

/// Resolves `--model` (or `default`) to a local folder, downloading a hub id with progress bars.
///
/// # Errors
/// A missing folder, a hub id that is not cached and cannot be downloaded, a config that is not BLIP-2's.
pub fn locate(common: &Common, default: &str, reporter: &Reporter) -> Result<Located, CliError> {
    let name = common.model.clone().unwrap_or_else(|| default.to_string());
    let options = blip2::hub::HubOptions::from_env().with_progress(reporter.download_hook());
    let dir = blip2::hub::resolve(&name, &options).map_err(blip2::Error::from)?;
    let config = Blip2Config::from_file(dir.join("config.json"))?;
    Ok(Located { name, dir, config })
}

fn loading<T>(
    located: &Located,
    dtype: crate::args::Dtype,
    backend: &str,
    reporter: &Reporter,
    load: impl FnOnce(&Path) -> Result<T, blip2::Error>,
) -> Result<T, CliError> {
    let started = Instant::now();
    let spinner = reporter.spinner(format!("loading {} ({dtype} on {backend})", located.name));
    let result = load(&located.dir);
    spinner.finish_and_clear();
    let model = result?;
    reporter.note(format!(
        "loaded {} ({dtype} on {backend}) in {}",
        located.name,
        human_duration(started.elapsed())
    ));
    Ok(model)
}

/// Loads a captioning model with its processor.
///
/// # Errors
/// As [`Blip2::from_pretrained`], and a retrieval checkpoint.
pub fn load_blip2<B: Backend>(
    located: &Located,
    common: &Common,
    command: &str,
    device: &B::Device,
    reporter: &Reporter,
) -> Result<Blip2<B>, CliError> {
    if located.kind() != ModelKind::Generation {
        return Err(located.wrong_kind(command, ModelKind::Generation));
    }
    loading(located, common.dtype, &B::name(device), reporter, |dir| {
        Blip2::<B>::from_pretrained_with_limits(
            dir,
            common.dtype.precision(),
            device,
            common.image_limits(),
        )
    })
}

/// Loads a retrieval model with its processor.
///
/// # Errors
/// As [`Blip2Retrieval::from_pretrained`], and a captioning checkpoint.
pub fn load_retrieval<B: Backend>(
    located: &Located,
    common: &Common,
    command: &str,
    device: &B::Device,
    reporter: &Reporter,
) -> Result<Blip2Retrieval<B>, CliError> {
    if located.kind() != ModelKind::Retrieval {
        return Err(located.wrong_kind(command, ModelKind::Retrieval));
    }
    loading(located, common.dtype, &B::name(device), reporter, |dir| {
        Blip2Retrieval::<B>::from_pretrained_with_limits(
            dir,
            common.dtype.precision(),
            device,
            common.image_limits(),
        )
    })
}
