//! The cache layout: `<cache>/models--owner--name/{refs,snapshots,blobs,.no_exist}`, as `huggingface_hub` keeps it.

use std::path::{Path, PathBuf};

use crate::id::is_commit_hash;
use crate::{CONFIG_FILE, HubError, HubId, OPTIONAL_FILES, WEIGHTS_FILE, WEIGHTS_INDEX_FILE};

/// The cache folder of one repo, `<cache>/models--owner--name`.
pub(crate) struct RepoCache<'a> {
    id: &'a HubId,
    pub(crate) root: PathBuf,
}

impl<'a> RepoCache<'a> {
    pub(crate) fn new(id: &'a HubId, cache_dir: &Path) -> Self {
        Self {
            id,
            root: cache_dir.join(id.cache_folder()),
        }
    }

    /// The cached commit of the revision (a commit hash as it is, a branch or tag from `refs/`) and its
    /// snapshot directory, if that exists.
    pub(crate) fn snapshot(&self) -> Option<(String, PathBuf)> {
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

    pub(crate) fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    /// `huggingface_hub`'s record of a file the repo does not have at a commit.
    pub(crate) fn no_exist(&self, commit: &str, file: &str) -> PathBuf {
        self.root.join(".no_exist").join(commit).join(file)
    }
}

/// Whether `dir` has config.json and the weights (one file, or an index and all its shards).
pub(crate) fn required_files_present(dir: &Path) -> Result<bool, HubError> {
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
pub(crate) fn optional_files_settled(cache: &RepoCache<'_>, commit: &str, dir: &Path) -> bool {
    OPTIONAL_FILES
        .iter()
        .all(|file| dir.join(file).is_file() || cache.no_exist(commit, file).is_file())
}

/// The shard names of a safetensors index, sorted, each once: plain file names (anything else could write outside
/// the snapshot), as the checkpoint loader reads them ([`blip2_nn::loader::ShardIndex`]).
pub(crate) fn shards(index: &Path) -> Result<Vec<String>, HubError> {
    match blip2_nn::loader::ShardIndex::read(index) {
        Ok(index) => Ok(index.shards),
        Err(blip2_nn::Error::Io { path, source }) => Err(HubError::Io { path, source }),
        Err(blip2_nn::Error::BadIndex { path, reason }) => Err(HubError::BadIndex { path, reason }),
        Err(other) => Err(HubError::BadIndex {
            path: index.to_path_buf(),
            reason: other.to_string(),
        }),
    }
}
