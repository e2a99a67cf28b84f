//! The environment: [`HubOptions`] (endpoint, cache, token, offline mode) and download progress.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::DEFAULT_ENDPOINT;

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

pub(crate) fn expand_tilde(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix('~'), home) {
        (Some(""), Some(home)) => home.to_path_buf(),
        (Some(rest), Some(home)) if rest.starts_with(['/', '\\']) => home.join(&rest[1..]),
        _ => PathBuf::from(path),
    }
}
