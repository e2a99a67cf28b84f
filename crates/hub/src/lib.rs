//! "A model directory or a hub id" to a local model directory, through the HuggingFace cache. Part of blip2 (its
//! `blip2::hub`), and usable alone by any Rust program that wants HF-cache-compatible downloads of safetensors
//! models: `cargo add blip2-hub`.
//!
//! [`resolve`] returns a directory as it is, and downloads a hub id (`owner/name`, optionally `@revision`) into the
//! standard HuggingFace cache, the one `huggingface_hub` and `transformers` use
//! (`<cache>/models--owner--name/snapshots/<commit>/`), with the [`hf-hub`](https://docs.rs/hf-hub) crate's blocking
//! client. It fetches what a BLIP-2 model directory needs: `config.json`, the weights (`model.safetensors`, or
//! `model.safetensors.index.json` and every shard it lists), and, when the repo has them, the files in
//! [`OPTIONAL_FILES`] (generation, processor and tokenizer configs).
//!
//! [`HubOptions::default`] reads the environment as `huggingface_hub` does: `HF_ENDPOINT`, `HF_HOME`,
//! `HF_HUB_CACHE`, `HF_TOKEN` (else the token file that `huggingface-cli login` writes), `HF_HUB_OFFLINE`.
//!
//! The cache works without network: when a snapshot of the revision is complete (every required file there, every
//! optional one there or recorded as absent in `.no_exist/`, as `huggingface_hub` records it), [`resolve`] returns it
//! without a request, so a branch such as `main` is not checked for new commits once downloaded; pass
//! `owner/name@<commit>` to pin one, or delete the repo's cache folder to refresh it. Offline, or when the endpoint
//! cannot be reached, a snapshot with the required files is enough; otherwise the error says the model is not cached
//! and how to download it or pass a local directory.
//!
//! ```no_run
//! use blip2_hub::{DownloadProgress, HubOptions};
//!
//! # fn main() -> Result<(), blip2_hub::HubError> {
//! // A local directory is returned as is.
//! let local = blip2_hub::resolve("./models/blip2-opt-2.7b", &HubOptions::default());
//!
//! // A hub id downloads (once) into the HF cache, with download progress.
//! let options = HubOptions::default().with_progress(|p: &DownloadProgress<'_>| {
//!     let _ = (p.file, p.downloaded, p.total);
//! });
//! let dir = blip2_hub::resolve("Salesforce/blip2-opt-2.7b", &options)?;
//! assert!(dir.join("config.json").is_file());
//! # let _ = local;
//! # Ok(())
//! # }
//! ```

// The id grammar (`id`), the environment (`options`), the cache layout (`cache`), downloading (`download`).
mod cache;
mod download;
mod error;
mod id;
mod options;

use std::path::{Path, PathBuf};

use cache::{RepoCache, optional_files_settled, required_files_present};
use download::DownloadFailure::{Failed, Unreachable};
use download::Downloader;
pub use error::HubError;
pub use id::{HubId, ModelSource};
pub use options::{DownloadProgress, HubOptions, ProgressCallback};

/// The model config, required.
pub const CONFIG_FILE: &str = "config.json";
/// Single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Sharded weights: the index naming the shards (`weight_map`).
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// Files downloaded when the repo has them; a repo without them is fine.
pub const OPTIONAL_FILES: &[&str] = &[
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];
/// The hub, when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The revision of a hub id without `@revision`.
pub const DEFAULT_REVISION: &str = "main";

/// Resolves `model`, a model directory or a hub id (`owner/name[@revision]`), to a local model directory: a
/// directory is returned as it is; a hub id is looked up in the HF cache and, unless complete there or offline,
/// downloaded into it (see the [module docs](self)). Returns the snapshot directory,
/// `<cache>/models--owner--name/snapshots/<commit>`.
///
/// # Errors
/// From [`ModelSource::parse`]; for hub ids [`HubError::NotCached`] (offline or unreachable, and not cached),
/// [`HubError::Unauthorized`], [`HubError::NotOnHub`], [`HubError::MissingFile`], [`HubError::BadIndex`],
/// [`HubError::Http`], [`HubError::Download`], [`HubError::Io`].
pub fn resolve(model: &str, options: &HubOptions) -> Result<PathBuf, HubError> {
    match ModelSource::parse(model)? {
        ModelSource::Local(path) => Ok(path),
        ModelSource::Hub(id) => resolve_hub(&id, options),
    }
}

/// [`resolve`] for a parsed hub id.
///
/// # Errors
/// As [`resolve`].
pub fn resolve_hub(id: &HubId, options: &HubOptions) -> Result<PathBuf, HubError> {
    let cache = RepoCache::new(id, &options.cache_dir);
    let cached = cache.snapshot();
    if let Some((commit, dir)) = &cached
        && required_files_present(dir)?
        && (options.offline || optional_files_settled(&cache, commit, dir))
    {
        return Ok(dir.clone());
    }
    let not_cached = |reason: String| HubError::NotCached {
        repo: id.repo().to_string(),
        revision: id.revision().to_string(),
        cache_dir: options.cache_dir.clone(),
        reason,
    };
    if options.offline {
        return Err(not_cached(
            "offline mode is on (HF_HUB_OFFLINE)".to_string(),
        ));
    }
    match Downloader::new(id, options, &cache)?.download_all() {
        Err(Unreachable(reason)) => match cached {
            // No network: a snapshot with the required files will do.
            Some((_, dir)) if required_files_present(&dir)? => Ok(dir),
            _ => Err(not_cached(reason)),
        },
        Ok(dir) => Ok(dir),
        Err(Failed(e)) => Err(e),
    }
}

/// A model directory for `model`: the path itself when it exists, else a hub id resolved through the HF cache with
/// the environment's settings ([`HubOptions::from_env`]). What `from_pretrained` does with its argument.
///
/// # Errors
/// As [`resolve`].
pub fn locate(model: &Path) -> Result<PathBuf, HubError> {
    if model.exists() {
        return Ok(model.to_path_buf());
    }
    resolve(&model.to_string_lossy(), &HubOptions::from_env())
}
