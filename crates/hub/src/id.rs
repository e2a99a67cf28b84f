//! The id grammar: [`HubId`] (`owner/name[@revision]`) and [`ModelSource`] (a directory or a hub id).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::options::expand_tilde;
use crate::{DEFAULT_REVISION, HubError};

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

pub(crate) fn check_revision(revision: &str) -> Result<(), String> {
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

pub(crate) fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
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
