//! Getting models from a Hugging Face hub: `pull` into the cache, laid out exactly as
//! `huggingface_hub` lays it out (blobs named by their etag, relative symlinks in snapshots,
//! refs, `.incomplete` partials, `.locks`), and downloads into a workspace for `clone`.
//!
//! HTTP goes through `ureq` (blocking, rustls); the hub's API (`client`), the cache's write
//! side (`layout`), one file's download with resume, retry and verification (`download`), and
//! the orchestration of a pull (`pull`) are apart. The hf-hub crate was measured first and does
//! not fit: its partial files are `.part` (not the `.incomplete` every other tool and this
//! project's health check know), it locks its own way (not `.locks/<repo>/<etag>.lock`, which
//! Python waits on), downloads one file at a time and has no include/exclude.

pub mod client;
mod download;
mod into_dir;
pub mod layout;
mod patterns;
pub mod pull;
pub mod remove;

use std::path::PathBuf;

pub use client::HubClient;
pub use into_dir::fetch_into_dir;
pub use patterns::FileFilter;
pub use pull::{pull, PullOutcome, PullProgress, PullRequest};

/// Where the hub is and who the user is, as `huggingface_hub` reads it from the environment.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// `HF_ENDPOINT`, default `https://huggingface.co` (no trailing slash).
    pub endpoint: String,
    /// `HF_TOKEN`, else the file `hf auth login` writes (`HF_TOKEN_PATH`, else `$HF_HOME/token`).
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE=1`: never touch the network.
    pub offline: bool,
}

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

impl HubConfig {
    pub fn from_env() -> HubConfig {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    fn from_lookup(env: impl Fn(&str) -> Option<String>) -> HubConfig {
        let endpoint = env("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        let token = env("HF_TOKEN").or_else(|| {
            let path = env("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| {
                env("HF_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        env("XDG_CACHE_HOME")
                            .map(PathBuf::from)
                            .unwrap_or_else(|| crate::store::cache::home_dir().join(".cache"))
                            .join("huggingface")
                    })
                    .join("token")
            });
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let offline = env("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        HubConfig {
            endpoint,
            token,
            offline,
        }
    }
}

/// Why a hub operation failed; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "HF_HUB_OFFLINE is set: downloading needs the network (unset HF_HUB_OFFLINE to download)"
    )]
    Offline,
    #[error("`{0}` is not a repository id (org/name)")]
    InvalidRepoId(String),
    #[error("repository `{repo}` not found on {endpoint} (check the name; a private repository is also reported so without a token: set HF_TOKEN)")]
    RepoNotFound { repo: String, endpoint: String },
    #[error("revision `{revision}` not found in `{repo}`")]
    RevisionNotFound { repo: String, revision: String },
    #[error("`{repo}` is gated or private: set HF_TOKEN to a token that can read it (or log in with `hf auth login`, which writes $HF_HOME/token)")]
    NeedsToken { repo: String },
    #[error("the token (HF_TOKEN or $HF_HOME/token) has no access to `{repo}`: accept its terms on the hub, or use a token that can read it")]
    TokenRefused { repo: String },
    #[error("`{path}` does not exist in `{repo}` at {revision}")]
    EntryNotFound {
        repo: String,
        revision: String,
        path: String,
    },
    #[error("{url}: the hub answered {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Http {
        url: String,
        status: u16,
        message: Option<String>,
    },
    #[error("cannot reach {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("{url}: unexpected answer: {reason}")]
    Protocol { url: String, reason: String },
    #[error("`{file}` failed verification: {what} is {actual}, the hub says {expected}; the download was discarded, run the command again")]
    Verification {
        file: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    /// `needed` is what the whole download still lacks, `written`/`total` the file that hit it.
    #[error("disk full writing `{file}` ({written} of its {total} bytes kept in {partial}): {needed} more bytes are needed to finish; free some space and run the command again to resume")]
    DiskFull {
        file: String,
        needed: u64,
        written: u64,
        total: u64,
        partial: PathBuf,
    },
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{pattern}` is not a valid file pattern: {reason}")]
    Pattern { pattern: String, reason: String },
}

impl HubError {
    /// The JSON envelope's error type.
    pub fn kind(&self) -> &'static str {
        match self {
            HubError::Offline => "offline",
            HubError::InvalidRepoId(_) => "CommandError",
            HubError::RepoNotFound { .. } => "model_not_found",
            HubError::RevisionNotFound { .. } => "revision_not_found",
            HubError::NeedsToken { .. } | HubError::TokenRefused { .. } => "access_denied",
            HubError::DiskFull { .. } => "disk_full",
            HubError::Verification { .. } => "verification_failed",
            HubError::Network { .. } => "network_error",
            _ => "download_failed",
        }
    }
}

/// `org/name` (or a legacy single `name`, like `gpt2`) of the characters the hub allows.
pub fn check_repo_id(repo: &str) -> Result<(), HubError> {
    let ok = matches!(repo.split('/').count(), 1 | 2)
        && repo.split('/').all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if ok {
        Ok(())
    } else {
        Err(HubError::InvalidRepoId(repo.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_as_huggingface_hub_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        let home = dir.path().to_str().unwrap().to_string();
        let c = HubConfig::from_lookup(|k| match k {
            "HF_HOME" => Some(home.clone()),
            "HF_ENDPOINT" => Some("http://127.0.0.1:9/".into()),
            "HF_HUB_OFFLINE" => Some("1".into()),
            _ => None,
        });
        assert_eq!(c.endpoint, "http://127.0.0.1:9");
        assert_eq!(c.token.as_deref(), Some("hf_file"));
        assert!(c.offline);
        let c = HubConfig::from_lookup(|k| match k {
            "HF_HOME" => Some(home.clone()),
            "HF_TOKEN" => Some("hf_env".into()),
            _ => None,
        });
        assert_eq!(c.token.as_deref(), Some("hf_env"), "HF_TOKEN wins");
        assert_eq!(c.endpoint, DEFAULT_ENDPOINT);
        assert!(!c.offline);
    }

    #[test]
    fn repo_ids() {
        assert!(check_repo_id("mlx-community/Qwen3-0.6B-4bit").is_ok());
        assert!(check_repo_id("gpt2").is_ok(), "legacy names have no org");
        for bad in ["a/b/c", "../x", "a/..", "a b/c", "/x", "a/", ""] {
            assert!(check_repo_id(bad).is_err(), "{bad}");
        }
    }
}
