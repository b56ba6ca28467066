//! Errors of the model store. Each names the path or spec it is about.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read the Hugging Face cache at {path}: {source} (set --cache, HF_HUB_CACHE or HF_HOME)")]
    CacheUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the Hugging Face cache path {path} is not a directory")]
    CacheNotADirectory { path: PathBuf },
    #[error("no model matches `{spec}`{}", suggestion_text(.suggestions))]
    ModelNotFound {
        spec: String,
        suggestions: Vec<String>,
    },
    #[error("`{spec}` matches {} models: {}; name one exactly", .matches.len(), .matches.join(", "))]
    AmbiguousMatch { spec: String, matches: Vec<String> },
    #[error("{repo} has no snapshot or ref `{rev}`{}", available_text(.available))]
    RevisionNotFound {
        repo: String,
        rev: String,
        available: Vec<String>,
    },
    #[error("revision `{rev}` of {repo} is ambiguous: it prefixes {}", .matches.join(", "))]
    AmbiguousRevision {
        repo: String,
        rev: String,
        matches: Vec<String>,
    },
    #[error("{repo} is in the cache but has no snapshot (nothing was downloaded)")]
    NoSnapshot { repo: String },
    #[error("{path}: no such directory")]
    PathNotFound { path: PathBuf },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn suggestion_text(s: &[String]) -> String {
    if s.is_empty() {
        " (run `mlxk list --all` to see the cached models)".to_string()
    } else {
        format!("; did you mean {}?", s.join(", "))
    }
}

fn available_text(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" (available: {})", s.join(", "))
    }
}

impl StoreError {
    /// The machine-readable error type of the JSON envelope.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::ModelNotFound { .. }
            | StoreError::PathNotFound { .. }
            | StoreError::NoSnapshot { .. } => "model_not_found",
            StoreError::AmbiguousMatch { .. } | StoreError::AmbiguousRevision { .. } => {
                "ambiguous_match"
            }
            StoreError::RevisionNotFound { .. } => "revision_not_found",
            StoreError::CacheUnreadable { .. }
            | StoreError::CacheNotADirectory { .. }
            | StoreError::Io { .. } => "CommandError",
        }
    }
}
