//! "A model directory or a hub id" to a local model directory.
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
//! use blip2::hub::{self, HubOptions};
//!
//! # fn main() -> Result<(), blip2::hub::HubError> {
//! // A local directory is returned as is.
//! let local = hub::resolve("./models/blip2-opt-2.7b", &HubOptions::default());
//!
//! // A hub id downloads (once) into the HF cache, with download progress.
//! let options = HubOptions::default().with_progress(|p: &hub::DownloadProgress<'_>| {
//!     let _ = (p.file, p.downloaded, p.total);
//! });
//! let dir = hub::resolve("Salesforce/blip2-opt-2.7b", &options)?;
//! assert!(dir.join("config.json").is_file());
//! # let _ = local;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

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

/// Everything that can go wrong resolving a model. Messages are lowercase and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// Neither an existing directory, nor a path, nor a valid hub id.
    #[error(
        "`{model}` is neither a model directory nor a hub id: {reason}; pass a directory with config.json and the \
         weights, or a hub id like `Salesforce/blip2-opt-2.7b` (optionally `@revision`)"
    )]
    InvalidModel {
        /// What was passed.
        model: String,
        /// What is wrong with it as a hub id.
        reason: String,
    },

    /// A path (it starts with `/`, `.` or `~`, or is absolute) that does not exist.
    #[error(
        "model directory {path} does not exist: pass a directory with config.json and the weights, or a hub id like \
         `Salesforce/blip2-opt-2.7b`"
    )]
    DirectoryNotFound {
        /// The path, with `~` expanded.
        path: PathBuf,
    },

    /// A path that exists but is not a directory.
    #[error(
        "{path} is not a directory: pass the model directory, the one with config.json and the weights"
    )]
    NotADirectory {
        /// The path, with `~` expanded.
        path: PathBuf,
    },

    /// Offline, or the hub cannot be reached, and the cache does not have the model.
    #[error(
        "`{repo}`{at} is not in the HF cache {cache_dir} and {reason}: download it where there is network with \
         `huggingface-cli download {repo}{flag}` (or `hf download`; same cache, set HF_HOME to use another), or pass \
         the model directory",
        at = if .revision == DEFAULT_REVISION { String::new() } else { format!(" at revision `{}`", .revision) },
        flag = if .revision == DEFAULT_REVISION { String::new() } else { format!(" --revision {}", .revision) }
    )]
    NotCached {
        /// `owner/name`.
        repo: String,
        /// The revision.
        revision: String,
        /// The hub cache that was searched.
        cache_dir: PathBuf,
        /// Why nothing was downloaded: offline mode, or the network error.
        reason: String,
    },

    /// The hub refused access (HTTP 401 or 403): a private or gated repo, a bad token, or (without a token) a repo
    /// that does not exist.
    #[error(
        "the hub at {endpoint} refused access to `{repo}` (HTTP {status}{token_note}): the repo may be private, gated \
         or misspelled; set HF_TOKEN to a token that can read it (https://huggingface.co/settings/tokens), or pass \
         a local model directory",
        token_note = if *.token_sent { ", with a token" } else { ", no token set" }
    )]
    Unauthorized {
        /// `owner/name`.
        repo: String,
        /// The endpoint.
        endpoint: String,
        /// 401 or 403.
        status: u16,
        /// Whether a token was sent.
        token_sent: bool,
    },

    /// The hub says the repo or the revision does not exist.
    #[error(
        "`{repo}` at revision `{revision}` is not on the hub at {endpoint}: check the id and revision, or pass a local \
         model directory"
    )]
    NotOnHub {
        /// `owner/name`.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The endpoint.
        endpoint: String,
    },

    /// A file a BLIP-2 model directory needs is not in the repo.
    #[error(
        "{file} is not in the hub repo `{repo}` at revision `{revision}`: a BLIP-2 model directory needs config.json \
         and safetensors weights (model.safetensors, or model.safetensors.index.json and its shards)"
    )]
    MissingFile {
        /// The file.
        file: String,
        /// `owner/name`.
        repo: String,
        /// The revision.
        revision: String,
    },

    /// `model.safetensors.index.json` cannot be used.
    #[error("invalid safetensors index {path}: {reason}")]
    BadIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The hub answered with an HTTP error other than 401, 403 and 404.
    #[error("the hub at {endpoint} answered HTTP {status} for {file} of `{repo}`{}: try again later, or pass a \
             local model directory", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Http {
        /// The file.
        file: String,
        /// `owner/name`.
        repo: String,
        /// The endpoint.
        endpoint: String,
        /// The status.
        status: u16,
        /// The hub's `x-error-message`, if any.
        message: Option<String>,
    },

    /// A download failed: a network error after the hub was reached, or a response that is not the hub's.
    #[error("downloading {file} of `{repo}` from {endpoint} failed: {reason}")]
    Download {
        /// The file.
        file: String,
        /// `owner/name`.
        repo: String,
        /// The endpoint.
        endpoint: String,
        /// The client's message.
        reason: String,
    },

    /// A file or directory in the cache could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl HubError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// A hub model id: `owner/name` and a revision (a branch, a tag or a commit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HubId {
    repo: String,
    revision: String,
}

impl HubId {
    /// Parses `owner/name` or `owner/name@revision`. Owner and name are ASCII letters, digits, `-`, `_` and `.`,
    /// neither starting nor ending with `-` or `.`, without `--` or `..`, at most 96 characters each (the hub's
    /// rules); a revision is letters, digits, `-`, `_`, `.` and `/` (as in `refs/pr/1`), without `..` or `//`.
    ///
    /// # Errors
    /// [`HubError::InvalidModel`] saying what is wrong.
    pub fn parse(id: &str) -> Result<Self, HubError> {
        let invalid = |reason: String| HubError::InvalidModel {
            model: id.to_string(),
            reason,
        };
        let (repo, revision) = match id.split_once('@') {
            Some((repo, revision)) => (repo, revision),
            None => (id, DEFAULT_REVISION),
        };
        let mut parts = repo.split('/');
        let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid(format!(
                "a hub id is `owner/name`, with one `/`, and `{repo}` has {}",
                repo.matches('/').count()
            )));
        };
        for (what, part) in [("owner", owner), ("name", name)] {
            check_id_part(what, part).map_err(&invalid)?;
        }
        check_revision(revision).map_err(&invalid)?;
        Ok(Self {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    /// `owner/name`.
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// The revision (`main` unless given).
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The repo's folder in the hub cache, `models--owner--name`.
    pub fn cache_folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

impl fmt::Display for HubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.revision == DEFAULT_REVISION {
            f.write_str(&self.repo)
        } else {
            write!(f, "{}@{}", self.repo, self.revision)
        }
    }
}

impl FromStr for HubId {
    type Err = HubError;

    fn from_str(s: &str) -> Result<Self, HubError> {
        Self::parse(s)
    }
}

fn check_id_part(what: &str, part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if part.len() > 96 {
        return Err(format!("the {what} is longer than 96 characters"));
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "the {what} `{part}` has {c:?}; ids are ASCII letters, digits, `-`, `_` and `.`"
        ));
    }
    if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
        return Err(format!(
            "the {what} `{part}` starts or ends with `-` or `.`"
        ));
    }
    if part.contains("--") || part.contains("..") {
        return Err(format!("the {what} `{part}` has `--` or `..`"));
    }
    Ok(())
}

fn check_revision(revision: &str) -> Result<(), String> {
    if revision.is_empty() {
        return Err("the revision after `@` is empty".to_string());
    }
    if revision.len() > 255 {
        return Err("the revision is longer than 255 characters".to_string());
    }
    if let Some(c) = revision
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
    {
        return Err(format!(
            "the revision `{revision}` has {c:?}; revisions are ASCII letters, digits, `-`, `_`, `.` and `/`"
        ));
    }
    if revision.starts_with(['/', '.'])
        || revision.ends_with('/')
        || revision.contains("..")
        || revision.contains("//")
    {
        return Err(format!(
            "the revision `{revision}` is not a branch, tag or commit name"
        ));
    }
    Ok(())
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Download progress, reported per file as bytes arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DownloadProgress<'a> {
    /// The file in the repo, e.g. `model.safetensors`.
    pub file: &'a str,
    /// Bytes of it downloaded so far (0 when it starts).
    pub downloaded: u64,
    /// Its size.
    pub total: u64,
}

/// A download progress hook; called often (for every read), so keep it cheap.
pub type ProgressCallback = Arc<dyn Fn(&DownloadProgress<'_>) + Send + Sync>;

/// Where and how to download: endpoint, cache, token, offline mode, progress.
///
/// [`HubOptions::default`] reads the environment ([`HubOptions::from_env`]); the `with_*` methods change one
/// setting.
#[derive(Clone)]
#[non_exhaustive]
pub struct HubOptions {
    /// The hub's base URL, without a trailing `/`.
    pub endpoint: String,
    /// The hub cache (`$HF_HOME/hub`): repos go to `models--owner--name/` in it.
    pub cache_dir: PathBuf,
    /// The access token sent as `Authorization: Bearer`, for private and gated repos.
    pub token: Option<String>,
    /// Only look in the cache, never connect.
    pub offline: bool,
    /// Called as files download.
    pub progress: Option<ProgressCallback>,
}

impl fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("offline", &self.offline)
            .field("progress", &self.progress.as_ref().map(|_| "<callback>"))
            .finish()
    }
}

impl Default for HubOptions {
    /// [`HubOptions::from_env`].
    fn default() -> Self {
        Self::from_env()
    }
}

impl HubOptions {
    /// From the process environment, as `huggingface_hub` reads it:
    /// - endpoint: `HF_ENDPOINT`, else <https://huggingface.co>;
    /// - cache: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    ///   `~/.cache/huggingface/hub`;
    /// - token: `HF_TOKEN`, else the file `HF_TOKEN_PATH`, else `$HF_HOME/token` (what `huggingface-cli login`
    ///   writes);
    /// - offline: `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) set to `1`, `true`, `yes` or `on`.
    pub fn from_env() -> Self {
        Self::from_env_with(|key| std::env::var(key).ok())
    }

    /// [`HubOptions::from_env`] with the variables from `var` instead of the process environment (for tests and
    /// embedding). `HOME` comes from `var` too, else from the OS. Empty values count as unset.
    pub fn from_env_with(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |key: &str| var(key).filter(|v| !v.trim().is_empty());
        let home = var("HOME").map(PathBuf::from).or_else(std::env::home_dir);
        let expand = |value: String| expand_tilde(&value, home.as_deref());
        let hf_home = var("HF_HOME").map(&expand).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(&expand)
                .or_else(|| home.as_ref().map(|h| h.join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .map(&expand)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = var("HF_TOKEN").map(|t| t.trim().to_string()).or_else(|| {
            let path = var("HF_TOKEN_PATH")
                .map(&expand)
                .unwrap_or_else(|| hf_home.join("token"));
            blip2_nn::limits::read_to_string_bounded(&path, 1 << 20)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let truthy = |key: &str| {
            var(key).is_some_and(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
        };
        Self {
            endpoint: var("HF_ENDPOINT")
                .map(|e| e.trim().trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            cache_dir,
            token,
            offline: truthy("HF_HUB_OFFLINE") || truthy("TRANSFORMERS_OFFLINE"),
            progress: None,
        }
    }

    /// Another hub (a mirror, or a test server); a trailing `/` is dropped.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into().trim_end_matches('/').to_string();
        self
    }

    /// Another hub cache directory (the one with `models--*` folders).
    pub fn with_cache_dir(mut self, cache_dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = cache_dir.into();
        self
    }

    /// The access token, or none.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Offline mode: only the cache.
    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// A download progress hook.
    pub fn with_progress(
        mut self,
        progress: impl Fn(&DownloadProgress<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }
}

fn expand_tilde(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix('~'), home) {
        (Some(""), Some(home)) => home.to_path_buf(),
        (Some(rest), Some(home)) if rest.starts_with(['/', '\\']) => home.join(&rest[1..]),
        _ => PathBuf::from(path),
    }
}

/// What `model` names: a local directory or a hub id.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelSource {
    /// An existing directory.
    Local(PathBuf),
    /// A hub id.
    Hub(HubId),
}

impl ModelSource {
    /// Tells a directory from a hub id, without network: an existing path is a directory (an error if it is a
    /// file); a string that looks like a path (it starts with `/`, `.`, `~` or `\`, or is absolute) must exist;
    /// anything else must be a valid [`HubId`]. `~` is expanded.
    ///
    /// # Errors
    /// [`HubError::NotADirectory`], [`HubError::DirectoryNotFound`], [`HubError::InvalidModel`].
    pub fn parse(model: &str) -> Result<Self, HubError> {
        if model.is_empty() {
            return Err(HubError::InvalidModel {
                model: String::new(),
                reason: "it is empty".to_string(),
            });
        }
        let path = expand_tilde(model, std::env::home_dir().as_deref());
        if path.exists() {
            return if path.is_dir() {
                Ok(Self::Local(path))
            } else {
                Err(HubError::NotADirectory { path })
            };
        }
        if model.starts_with(['/', '.', '~', '\\']) || path.is_absolute() {
            return Err(HubError::DirectoryNotFound { path });
        }
        HubId::parse(model).map(Self::Hub)
    }
}

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

/// The cache folder of one repo, `<cache>/models--owner--name`.
struct RepoCache<'a> {
    id: &'a HubId,
    root: PathBuf,
}

impl<'a> RepoCache<'a> {
    fn new(id: &'a HubId, cache_dir: &Path) -> Self {
        Self {
            id,
            root: cache_dir.join(id.cache_folder()),
        }
    }

    /// The cached commit of the revision (a commit hash as it is, a branch or tag from `refs/`) and its
    /// snapshot directory, if that exists.
    fn snapshot(&self) -> Option<(String, PathBuf)> {
        let revision = self.id.revision();
        let commit = if is_commit_hash(revision) {
            revision.to_string()
        } else {
            let commit = std::fs::read_to_string(self.root.join("refs").join(revision)).ok()?;
            let commit = commit.trim();
            // The ref names a directory: no separators or `..` from a damaged file.
            if commit.is_empty() || !commit.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return None;
            }
            commit.to_string()
        };
        let dir = self.snapshot_dir(&commit);
        dir.is_dir().then_some((commit, dir))
    }

    fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    /// `huggingface_hub`'s record of a file the repo does not have at a commit.
    fn no_exist(&self, commit: &str, file: &str) -> PathBuf {
        self.root.join(".no_exist").join(commit).join(file)
    }
}

/// Whether `dir` has config.json and the weights (one file, or an index and all its shards).
fn required_files_present(dir: &Path) -> Result<bool, HubError> {
    if !dir.join(CONFIG_FILE).is_file() {
        return Ok(false);
    }
    if dir.join(WEIGHTS_FILE).is_file() {
        return Ok(true);
    }
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if !index.is_file() {
        return Ok(false);
    }
    Ok(shards(&index)?
        .iter()
        .all(|shard| dir.join(shard).is_file()))
}

/// Whether each optional file is in the snapshot or recorded as absent.
fn optional_files_settled(cache: &RepoCache<'_>, commit: &str, dir: &Path) -> bool {
    OPTIONAL_FILES
        .iter()
        .all(|file| dir.join(file).is_file() || cache.no_exist(commit, file).is_file())
}

/// The shard names of a safetensors index, sorted, each once: plain file names (anything else could write outside
/// the snapshot).
fn shards(index: &Path) -> Result<Vec<String>, HubError> {
    let bad = |reason: String| HubError::BadIndex {
        path: index.to_path_buf(),
        reason,
    };
    let text = blip2_nn::limits::read_to_string_bounded(index, blip2_nn::limits::MAX_JSON_BYTES)
        .map_err(|e| HubError::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".to_string()))?;
    let mut shards = Vec::new();
    for (key, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("the shard of `{key}` is not a file name")))?;
        let plain = !file.is_empty()
            && !file.contains("..")
            && !file.contains(['/', '\\'])
            && Path::new(file).components().count() == 1;
        if !plain {
            return Err(bad(format!(
                "the shard of `{key}` is `{file}`, not a file name in the same directory"
            )));
        }
        shards.push(file.to_string());
    }
    if shards.is_empty() {
        return Err(bad("`weight_map` is empty".to_string()));
    }
    shards.sort();
    shards.dedup();
    Ok(shards)
}

/// How a download attempt ended badly: the hub could not be reached (the cache may still do), or a real error.
enum DownloadFailure {
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

struct Downloader<'a> {
    id: &'a HubId,
    options: &'a HubOptions,
    cache: &'a RepoCache<'a>,
    api: hf_hub::api::sync::Api,
}

impl<'a> Downloader<'a> {
    fn new(
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

    fn download_all(&self) -> Result<PathBuf, DownloadFailure> {
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
