//! The stand-in hub (tests/peers/stand_in_hub.py) on 127.0.0.1, serving repositories the tests
//! build from real model files, and a way to read what it served.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub struct StandInHub {
    child: Child,
    pub port: u16,
    pub root: PathBuf,
    pub token: String,
}

impl StandInHub {
    /// Starts the hub over `root` with the peer Python; `None` (a loud SKIP, a failure under
    /// MLXK_REQUIRE_PEERS=1) without it.
    pub fn start(test: &str, root: &Path, page_size: usize) -> Option<StandInHub> {
        let py = super::peer_python(test)?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/stand_in_hub.py");
        let token = "hf_stand_in_token".to_string();
        let mut child = Command::new(py)
            .arg(script)
            .arg(root)
            .args(["--token", &token, "--lifetime", "600"])
            .args(["--page-size", &page_size.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the stand-in hub");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the port");
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("stand-in hub did not start: {line:?}"));
        Some(StandInHub {
            child,
            port,
            root: root.to_path_buf(),
            token,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn control(&self, body: &str) -> Value {
        let out = Command::new("curl")
            .args(["-s", "-X", "POST", "--data", body])
            .arg(format!("{}/_control", self.endpoint()))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).expect("control answer")
    }

    /// The next `count` GETs whose path contains `matching` are cut after `after` bytes.
    pub fn cut(&self, matching: &str, after: u64, count: u32) {
        self.control(&format!(
            r#"{{"cut_after": {after}, "match": "{matching}", "count": {count}}}"#
        ));
    }

    pub fn clear_faults(&self) {
        self.control(r#"{"clear_faults": true}"#);
    }

    /// File bodies at `rate` bytes per second (`None`: full speed).
    pub fn throttle(&self, rate: Option<u64>) {
        let rate = rate.map_or("null".to_string(), |r| r.to_string());
        self.control(&format!(r#"{{"rate": {rate}}}"#));
    }

    pub fn reset_stats(&self) {
        self.control(r#"{"reset_stats": true}"#);
    }

    /// `{"bytes": {path: n}, "requests": [[method, path, range, status]], "cdn_authorization": n}`.
    pub fn stats(&self) -> Value {
        let out = Command::new("curl")
            .arg("-s")
            .arg(format!("{}/_control/stats", self.endpoint()))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).expect("stats")
    }

    /// Bytes of file bodies sent for paths containing `matching`.
    pub fn bytes_sent(&self, matching: &str) -> u64 {
        self.stats()["bytes"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.contains(matching))
                    .filter_map(|(_, v)| v.as_u64())
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Drop for StandInHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `files` (copied from a directory) as commit `sha` of `repo` in the hub's `root`,
/// and points `refs` at it.
pub fn publish(root: &Path, repo: &str, sha: &str, from: &Path, refs: &[&str]) {
    let repo_dir = root.join(repo);
    let commit = repo_dir.join("commits").join(sha);
    std::fs::create_dir_all(&commit).unwrap();
    copy_tree(from, &commit);
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    for r in refs {
        let p = repo_dir.join("refs").join(r);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, sha).unwrap();
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let dest = to.join(e.file_name());
        if std::fs::metadata(&p).unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_tree(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}
