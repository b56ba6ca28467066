//! The hub's HTTP API, as `huggingface_hub` calls it: a revision resolved to its commit
//! (`/api/models/{repo}/revision/{rev}`), the commit's file tree (`/api/models/{repo}/tree/
//! {commit}?recursive=true`, paginated by `Link: rel="next"`), and a file's bytes from
//! `/{repo}/resolve/{commit}/{path}` — an LFS file through the hub's redirect to its CDN, where the
//! token is not sent (ureq never carries Authorization across a redirect).

use std::io::Read;
use std::time::Duration;

use serde::Deserialize;

use super::{check_repo_id, HubConfig, HubError};

/// One file of a commit, as the tree API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFile {
    /// `/`-separated path in the repository.
    pub path: String,
    pub size: u64,
    /// The git blob sha1 (the etag of a file stored in git).
    pub blob_id: String,
    /// For an LFS file, the sha256 of its content (its etag).
    pub lfs_sha256: Option<String>,
}

impl RepoFile {
    /// The name its blob has in the cache: the sha256 for LFS files, the git sha1 otherwise
    /// (what the hub sends as `X-Linked-Etag` / `ETag`).
    pub fn etag(&self) -> &str {
        self.lfs_sha256.as_deref().unwrap_or(&self.blob_id)
    }
}

/// A response body being read, from `offset`.
pub struct FileStream {
    pub reader: Box<dyn Read + Send>,
    /// Where the body starts in the file (0 when the server sent the whole file).
    pub offset: u64,
}

pub struct HubClient {
    agent: ureq::Agent,
    config: HubConfig,
}

#[derive(Deserialize)]
struct RevisionInfo {
    sha: Option<String>,
}

#[derive(Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    oid: String,
    lfs: Option<LfsInfo>,
}

#[derive(Deserialize)]
struct LfsInfo {
    oid: String,
}

/// The longest one response body is read before the download resumes with a new request.
const BODY_TIMEOUT: Duration = Duration::from_secs(120);

/// The largest JSON answer read (a tree page of a thousand files is ~200 KB).
const JSON_LIMIT: u64 = 64 << 20;

impl HubClient {
    /// A client for the configured hub; refused at once when HF_HUB_OFFLINE is set.
    pub fn new(config: HubConfig) -> Result<HubClient, HubError> {
        if config.offline {
            return Err(HubError::Offline);
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(10)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .user_agent(format!("mlxk/{}", crate::VERSION))
            .build()
            .into();
        Ok(HubClient { agent, config })
    }

    /// The commit sha a revision (branch, tag, `refs/pr/N` or sha) names.
    pub fn commit_of(&self, repo: &str, revision: &str) -> Result<String, HubError> {
        check_repo_id(repo)?;
        let url = format!(
            "{}/api/models/{repo}/revision/{}",
            self.config.endpoint,
            encode_segment(revision)
        );
        let info: RevisionInfo = self.get_json(&url, repo, revision, None)?.0;
        info.sha
            .filter(|s| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| HubError::Protocol {
                url,
                reason: "no commit sha in the revision info".into(),
            })
    }

    /// Every file of `commit` (directories left out), following the pages of the tree API.
    pub fn tree(&self, repo: &str, commit: &str) -> Result<Vec<RepoFile>, HubError> {
        check_repo_id(repo)?;
        let mut url = format!(
            "{}/api/models/{repo}/tree/{commit}?recursive=true",
            self.config.endpoint
        );
        let mut files = Vec::new();
        loop {
            let (page, next): (Vec<TreeEntry>, _) = self.get_json(&url, repo, commit, None)?;
            for e in page.into_iter().filter(|e| e.kind == "file") {
                if !safe_repo_path(&e.path) {
                    return Err(HubError::Protocol {
                        url,
                        reason: format!("unsafe path `{}` in the tree", e.path),
                    });
                }
                files.push(RepoFile {
                    path: e.path,
                    size: e.size,
                    blob_id: e.oid,
                    lfs_sha256: e.lfs.map(|l| l.oid),
                });
            }
            match next {
                Some(n) => url = n,
                None => break,
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// The bytes of `path` at `commit` from byte `from` on (a Range request when `from` > 0;
    /// a server that ignores it answers from 0, which `FileStream::offset` says).
    pub fn open_file(
        &self,
        repo: &str,
        commit: &str,
        path: &str,
        from: u64,
    ) -> Result<FileStream, HubError> {
        let url = format!(
            "{}/{repo}/resolve/{commit}/{}",
            self.config.endpoint,
            path.split('/')
                .map(encode_segment)
                .collect::<Vec<_>>()
                .join("/")
        );
        let mut req = self.agent.get(&url).header("Accept-Encoding", "identity");
        if let Some(t) = &self.config.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if from > 0 {
            req = req.header("Range", format!("bytes={from}-"));
        }
        // A connection that stalls is given up after this long and the download resumed from
        // where it got (a slow but moving one simply continues in a new request).
        let resp = req
            .config()
            .timeout_recv_body(Some(BODY_TIMEOUT))
            .build()
            .call()
            .map_err(|e| network(&url, e))?;
        let status = resp.status().as_u16();
        let offset = match status {
            200 => 0,
            206 => content_range_start(&resp).ok_or_else(|| HubError::Protocol {
                url: url.clone(),
                reason: "206 without a Content-Range".into(),
            })?,
            _ => return Err(self.status_error(&url, &resp, repo, commit, Some(path))),
        };
        Ok(FileStream {
            reader: Box::new(resp.into_body().into_reader()),
            offset,
        })
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        repo: &str,
        revision: &str,
        path: Option<&str>,
    ) -> Result<(T, Option<String>), HubError> {
        let mut req = self.agent.get(url);
        if let Some(t) = &self.config.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let resp = req.call().map_err(|e| network(url, e))?;
        if resp.status().as_u16() != 200 {
            return Err(self.status_error(url, &resp, repo, revision, path));
        }
        let next = resp
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let bytes = resp
            .into_body()
            .with_config()
            .limit(JSON_LIMIT)
            .read_to_vec()
            .map_err(|e| network(url, e))?;
        let value = serde_json::from_slice(&bytes).map_err(|e| HubError::Protocol {
            url: url.to_string(),
            reason: format!("not the JSON expected ({e})"),
        })?;
        Ok((value, next))
    }

    /// The error a non-success status means, by the hub's `X-Error-Code` where it sends one.
    fn status_error(
        &self,
        url: &str,
        resp: &ureq::http::Response<ureq::Body>,
        repo: &str,
        revision: &str,
        path: Option<&str>,
    ) -> HubError {
        let header = |k: &str| {
            resp.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let code = header("x-error-code").unwrap_or_default();
        let status = resp.status().as_u16();
        match (status, code.as_str()) {
            (401 | 403, _) if self.config.token.is_none() => HubError::NeedsToken {
                repo: repo.to_string(),
            },
            (401 | 403, _) => HubError::TokenRefused {
                repo: repo.to_string(),
            },
            (404, "RevisionNotFound") => HubError::RevisionNotFound {
                repo: repo.to_string(),
                revision: revision.to_string(),
            },
            (404, "EntryNotFound") => HubError::EntryNotFound {
                repo: repo.to_string(),
                revision: revision.to_string(),
                path: path.unwrap_or_default().to_string(),
            },
            (404, _) => HubError::RepoNotFound {
                repo: repo.to_string(),
                endpoint: self.config.endpoint.clone(),
            },
            _ => HubError::Http {
                url: url.to_string(),
                status,
                message: header("x-error-message"),
            },
        }
    }
}

fn network(url: &str, e: ureq::Error) -> HubError {
    HubError::Network {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

fn content_range_start(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let v = resp.headers().get("content-range")?.to_str().ok()?;
    let range = v.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// The `rel="next"` URL of a Link header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"" || p.trim() == "rel=next")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

/// Percent-encodes one URL path segment (everything but RFC 3986's unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A repository path that stays inside the directory it is joined to: relative, no `..`,
/// no empty or `.` components, no backslashes or NULs.
pub(crate) fn safe_repo_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains(['\\', '\0'])
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_segments_and_paths() {
        assert_eq!(
            next_link(r#"<http://h/api/models/a/b/tree/x?cursor=2>; rel="next""#).as_deref(),
            Some("http://h/api/models/a/b/tree/x?cursor=2")
        );
        assert_eq!(next_link(r#"<http://h/x>; rel="prev""#), None);
        assert_eq!(encode_segment("refs/pr/5"), "refs%2Fpr%2F5");
        assert_eq!(encode_segment("a b.json"), "a%20b.json");
        assert!(safe_repo_path("sub/dir/model.safetensors"));
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a\\b"] {
            assert!(!safe_repo_path(bad), "{bad}");
        }
    }
}
