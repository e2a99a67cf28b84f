//! Downloading a snapshot with `hf-hub`'s blocking client into the cache.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::cache::{RepoCache, shards};
use crate::{
    CONFIG_FILE, DownloadProgress, HubError, HubId, HubOptions, OPTIONAL_FILES, ProgressCallback,
    WEIGHTS_FILE, WEIGHTS_INDEX_FILE,
};

/// How a download attempt ended badly: the hub could not be reached (the cache may still do), or a real error.
pub(crate) enum DownloadFailure {
    Unreachable(String),
    Failed(HubError),
}
use DownloadFailure::{Failed, Unreachable};

impl From<HubError> for DownloadFailure {
    fn from(e: HubError) -> Self {
        Failed(e)
    }
}

/// What one file's request came to, short of success.
enum FileFailure {
    /// 404 for a file of an existing repo and revision.
    NotFound,
    Other(DownloadFailure),
}

pub(crate) struct Downloader<'a> {
    id: &'a HubId,
    options: &'a HubOptions,
    cache: &'a RepoCache<'a>,
    api: hf_hub::api::sync::Api,
}

impl<'a> Downloader<'a> {
    pub(crate) fn new(
        id: &'a HubId,
        options: &'a HubOptions,
        cache: &'a RepoCache<'a>,
    ) -> Result<Self, HubError> {
        std::fs::create_dir_all(&cache.root).map_err(|e| HubError::io(&cache.root, e))?;
        // `from_cache` reads a token file next to the cache; the token is ours, set below.
        let api = ApiBuilder::from_cache(Cache::new(options.cache_dir.clone()))
            .with_endpoint(options.endpoint.clone())
            .with_token(options.token.clone())
            .with_progress(false)
            .with_retries(2)
            .with_user_agent("blip2", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| HubError::Download {
                file: CONFIG_FILE.to_string(),
                repo: id.repo().to_string(),
                endpoint: options.endpoint.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            id,
            options,
            cache,
            api,
        })
    }

    pub(crate) fn download_all(&self) -> Result<PathBuf, DownloadFailure> {
        // config.json at the revision gives the commit; the rest is fetched at that commit, so a branch that moves
        // meanwhile cannot mix two commits in one snapshot.
        let revision_repo = self.repo(self.id.revision());
        let config = self
            .fetch(&revision_repo, CONFIG_FILE)
            .map_err(|e| self.required(e, CONFIG_FILE))?;
        let commit = config
            .parent()
            .and_then(Path::file_name)
            .and_then(|c| c.to_str())
            .map(str::to_string)
            .ok_or_else(|| {
                Failed(HubError::Download {
                    file: CONFIG_FILE.to_string(),
                    repo: self.id.repo().to_string(),
                    endpoint: self.options.endpoint.clone(),
                    reason: format!("unexpected cache path {}", config.display()),
                })
            })?;
        let dir = self.cache.snapshot_dir(&commit);
        let pinned = self.repo(&commit);
        let result = self.download_rest(&pinned, &commit, &dir);
        // hf-hub records every revision it downloads in refs/, commits too; huggingface_hub never writes
        // refs/<commit> (it looks commits up in snapshots/ directly), and neither does this cache's reader.
        if commit != self.id.revision() {
            let _ = std::fs::remove_file(self.cache.root.join("refs").join(&commit));
        }
        result.map(|()| dir)
    }

    fn download_rest(
        &self,
        pinned: &ApiRepo,
        commit: &str,
        dir: &Path,
    ) -> Result<(), DownloadFailure> {
        // Weights: one file, else the index and its shards.
        if !dir.join(WEIGHTS_FILE).is_file() {
            match self.fetch_missing(pinned, dir, WEIGHTS_FILE) {
                Ok(()) => {}
                Err(FileFailure::NotFound) => {
                    let index = match self.fetch_missing(pinned, dir, WEIGHTS_INDEX_FILE) {
                        Ok(()) => dir.join(WEIGHTS_INDEX_FILE),
                        Err(FileFailure::NotFound) => {
                            return Err(Failed(
                                self.missing(&format!("{WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE})")),
                            ));
                        }
                        Err(FileFailure::Other(e)) => return Err(e),
                    };
                    for shard in shards(&index)? {
                        self.fetch_missing(pinned, dir, &shard)
                            .map_err(|e| self.required(e, &shard))?;
                    }
                }
                Err(FileFailure::Other(e)) => return Err(e),
            }
        }
        for file in OPTIONAL_FILES {
            if self.cache.no_exist(commit, file).is_file() {
                continue;
            }
            match self.fetch_missing(pinned, dir, file) {
                Ok(()) => {}
                Err(FileFailure::NotFound) => {
                    let marker = self.cache.no_exist(commit, file);
                    if let Some(parent) = marker.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
                    }
                    std::fs::write(&marker, b"").map_err(|e| HubError::io(&marker, e))?;
                }
                Err(FileFailure::Other(e)) => return Err(e),
            }
        }
        Ok(())
    }

    fn repo(&self, revision: &str) -> ApiRepo {
        self.api.repo(Repo::with_revision(
            self.id.repo().to_string(),
            RepoType::Model,
            revision.to_string(),
        ))
    }

    /// Fetches `file` into `dir` unless it is there already.
    fn fetch_missing(&self, repo: &ApiRepo, dir: &Path, file: &str) -> Result<(), FileFailure> {
        if dir.join(file).is_file() {
            return Ok(());
        }
        self.fetch(repo, file).map(|_| ())
    }

    /// One file through hf-hub (metadata request, then the download into blobs/ and a link in snapshots/).
    fn fetch(&self, repo: &ApiRepo, file: &str) -> Result<PathBuf, FileFailure> {
        let progress = ProgressAdapter {
            callback: self.options.progress.clone(),
            file: file.to_string(),
            downloaded: 0,
            total: 0,
            started: false,
        };
        // hf-hub unwraps a few things about the server's answers (a redirect without `Location`); a broken
        // endpoint is an error, not a panic of the caller.
        match catch_unwind(AssertUnwindSafe(|| {
            repo.download_with_progress(file, progress)
        })) {
            Ok(Ok(path)) => Ok(path),
            Ok(Err(error)) => Err(self.classify(file, error)),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                Err(self.download_failure(file, format!("hf-hub failed: {message}")))
            }
        }
    }

    fn download_failure(&self, file: &str, reason: String) -> FileFailure {
        FileFailure::Other(Failed(HubError::Download {
            file: file.to_string(),
            repo: self.id.repo().to_string(),
            endpoint: self.options.endpoint.clone(),
            reason,
        }))
    }

    fn classify(&self, file: &str, error: ApiError) -> FileFailure {
        let download = |reason: String| self.download_failure(file, reason);
        let error = match error {
            ApiError::TooManyRetries(inner) => *inner,
            other => other,
        };
        match error {
            ApiError::RequestError(boxed) => match *boxed {
                ureq::Error::Status(status, response) => {
                    let code = response.header("x-error-code").map(str::to_string);
                    match (status, code.as_deref()) {
                        (401 | 403, _) => FileFailure::Other(Failed(HubError::Unauthorized {
                            repo: self.id.repo().to_string(),
                            endpoint: self.options.endpoint.clone(),
                            status,
                            token_sent: self.options.token.is_some(),
                        })),
                        (404, Some("RepoNotFound" | "RevisionNotFound")) => {
                            FileFailure::Other(Failed(HubError::NotOnHub {
                                repo: self.id.repo().to_string(),
                                revision: self.id.revision().to_string(),
                                endpoint: self.options.endpoint.clone(),
                            }))
                        }
                        (404, _) => FileFailure::NotFound,
                        _ => FileFailure::Other(Failed(HubError::Http {
                            file: file.to_string(),
                            repo: self.id.repo().to_string(),
                            endpoint: self.options.endpoint.clone(),
                            status,
                            message: response.header("x-error-message").map(str::to_string),
                        })),
                    }
                }
                ureq::Error::Transport(transport) => {
                    use ureq::ErrorKind as Kind;
                    match transport.kind() {
                        Kind::Dns | Kind::ConnectionFailed | Kind::ProxyConnect => {
                            FileFailure::Other(Unreachable(format!(
                                "{} cannot be reached ({transport})",
                                self.options.endpoint
                            )))
                        }
                        _ => download(transport.to_string()),
                    }
                }
            },
            ApiError::IoError(source) => {
                FileFailure::Other(Failed(HubError::io(self.cache.root.clone(), source)))
            }
            ApiError::LockAcquisition(path) => FileFailure::Other(Failed(HubError::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "another process is downloading this file; wait for it, or delete the lock file if none is",
                ),
            ))),
            other => download(format!(
                "{other} (is {} a HuggingFace hub?)",
                self.options.endpoint
            )),
        }
    }

    /// A required file's failure: 404 names the file.
    fn required(&self, failure: FileFailure, file: &str) -> DownloadFailure {
        match failure {
            FileFailure::NotFound => Failed(self.missing(file)),
            FileFailure::Other(e) => e,
        }
    }

    fn missing(&self, file: &str) -> HubError {
        HubError::MissingFile {
            file: file.to_string(),
            repo: self.id.repo().to_string(),
            revision: self.id.revision().to_string(),
        }
    }
}

struct ProgressAdapter {
    callback: Option<ProgressCallback>,
    file: String,
    downloaded: u64,
    total: u64,
    started: bool,
}

impl ProgressAdapter {
    fn report(&self) {
        if let Some(callback) = &self.callback {
            callback(&DownloadProgress {
                file: &self.file,
                downloaded: self.downloaded,
                total: self.total,
            });
        }
    }
}

impl hf_hub::api::Progress for ProgressAdapter {
    fn init(&mut self, size: usize, _filename: &str) {
        // hf-hub calls init before the request and again once it is answered (and on each retry): report the
        // start once, and a restart from 0 after a retry.
        let repeat = self.started && self.downloaded == 0 && self.total == size as u64;
        self.total = size as u64;
        self.downloaded = 0;
        self.started = true;
        if !repeat {
            self.report();
        }
    }

    fn update(&mut self, size: usize) {
        if size > 0 {
            self.downloaded += size as u64;
            self.report();
        }
    }

    fn finish(&mut self) {}
}
