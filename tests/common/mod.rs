//! Shared helpers of the integration tests: a real fixture cache, the `mlxk` binary, and a
//! full-tree fingerprint of a directory (content, mode, mtime, link targets).
#![allow(dead_code)]

pub mod hub;
pub mod mount;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest, Sha256};

pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub cache: PathBuf,
}

impl Fixture {
    /// The full catalogue of `mlxk_fs::testkit::fixture_cache` in a fresh temp dir.
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = tmp.path().join("hub");
        mlxk_fs::testkit::fixture_cache(&cache).expect("fixture cache");
        Fixture { tmp, cache }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// A plain directory `<tmp>/<name>` holding copies of a cached model's files: what a
    /// third-party (unmanaged) model directory looks like.
    pub fn copy_of(&self, repo_id: &str, name: &str) -> PathBuf {
        let dir = self.path(name);
        fs::create_dir_all(&dir).expect("mkdir");
        for e in fs::read_dir(snapshot_dir(&self.cache, repo_id)).expect("snapshot") {
            let p = e.expect("entry").path();
            fs::copy(&p, dir.join(p.file_name().expect("name"))).expect("copy");
        }
        dir
    }

    /// Runs `mlxk --cache <cache> args...` with no HF variables inherited.
    pub fn mlxk(&self, args: &[&str]) -> Output {
        let mut all = vec!["--cache", self.cache.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        mlxk(&all, &[])
    }

    /// `mlxk --cache <cache> args...` run from `cwd` (for relative paths).
    pub fn mlxk_in(&self, cwd: &Path, args: &[&str]) -> Output {
        let mut all = vec!["--cache", self.cache.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let mut cmd = base_command(&all, &[]);
        cmd.current_dir(cwd);
        let out = cmd.output().expect("run mlxk");
        record_json_reply(&all, &out);
        out
    }

    /// `mlxk convert SRC DST --repair-index`, which must succeed.
    pub fn repair(&self, src: &str, dst: &str) -> Output {
        let out = self.mlxk(&["convert", src, dst, "--repair-index"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "convert {src} {dst}: {}",
            stderr(&out)
        );
        out
    }

    /// `mlxk --json ...`, returning (exit code, parsed envelope).
    pub fn json(&self, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.mlxk(&all);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), v)
    }
}

pub fn mlxk(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = base_command(args, env).output().expect("run mlxk");
    record_json_reply(args, &out);
    out
}

/// With MLXK_JSON_REPLIES=DIR (scripts/test.sh sets it), every `mlxk --json` reply the tests
/// produce is kept there with its arguments and exit code, and scripts/validate_json.py
/// checks each against mlx-knife's JSON schema after the tests.
pub fn record_json_reply(args: &[&str], out: &Output) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let Some(dir) = std::env::var_os("MLXK_JSON_REPLIES") else {
        return;
    };
    if !args.contains(&"--json") {
        return;
    }
    let record = serde_json::json!({
        "argv": args,
        "exit": out.status.code(),
        "stdout": String::from_utf8_lossy(&out.stdout),
    });
    let name = format!(
        "{}-{}-{}.json",
        std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let dir = PathBuf::from(dir);
    let _ = fs::create_dir_all(&dir);
    fs::write(dir.join(name), record.to_string()).expect("record a --json reply");
}

fn base_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlxk"));
    cmd.args(args)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env_remove("HF_HOME")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What a path is, without following links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File {
        sha256: String,
        mode: u32,
        mtime_ns: i128,
        size: u64,
    },
    Dir {
        mode: u32,
        mtime_ns: i128,
    },
    Link {
        target: PathBuf,
        mtime_ns: i128,
    },
}

/// Fingerprint of every entry under `root` (lstat: links are recorded, not followed).
pub fn tree_state(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn mtime_ns(m: &fs::Metadata) -> i128 {
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    let meta = fs::symlink_metadata(dir).expect("lstat");
    out.insert(
        dir.strip_prefix(root).unwrap_or(dir).to_path_buf(),
        Node::Dir {
            mode: meta.mode(),
            mtime_ns: mtime_ns(&meta),
        },
    );
    for entry in fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        let m = fs::symlink_metadata(&path).expect("lstat");
        if m.file_type().is_symlink() {
            out.insert(
                rel,
                Node::Link {
                    target: fs::read_link(&path).expect("readlink"),
                    mtime_ns: mtime_ns(&m),
                },
            );
        } else if m.is_dir() {
            walk(root, &path, out);
        } else {
            out.insert(
                rel,
                Node::File {
                    sha256: sha256_file(&path),
                    mode: m.mode(),
                    mtime_ns: mtime_ns(&m),
                    size: m.len(),
                },
            );
        }
    }
}

/// Hashes a file; sparse files are read through (they are small in these tests).
pub fn sha256_file(path: &Path) -> String {
    let bytes = fs::read(path).expect("read");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn snapshot_dir(cache: &Path, repo_id: &str) -> PathBuf {
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let sha = fs::read_to_string(repo.join("refs/main")).expect("refs/main");
    repo.join("snapshots").join(sha.trim())
}

/// The codes of every problem of the (single) model in a `health --json --details` envelope.
pub fn problem_codes(v: &Value) -> Vec<String> {
    let entries = v["data"]["unhealthy"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(v["data"]["healthy"].as_array().into_iter().flatten());
    entries
        .flat_map(|e| {
            e["problems"]
                .as_array()
                .cloned()
                .unwrap_or_else(|| panic!("a health entry without problems (ask --details): {e}"))
        })
        .filter_map(|p| p["code"].as_str().map(str::to_string))
        .collect()
}

/// Python of the peer venv (scripts/peers.sh), or a loud SKIP (a failure under MLXK_REQUIRE_PEERS=1).
pub fn peer_python(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MLXK_PEER_PYTHON")
        .map(PathBuf::from)
        .filter(|p| p.exists())
    {
        return Some(p);
    }
    let msg = format!(
        "SKIP {test}: the Python peers (mlx, mlx-lm, safetensors) are not available; \
         run scripts/test.sh, or set MLXK_PEER_PYTHON to the python of `scripts/peers.sh`"
    );
    if std::env::var("MLXK_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!("{msg} (MLXK_REQUIRE_PEERS=1 makes this a failure)");
    }
    eprintln!("\n========== {msg} ==========\n");
    None
}

/// A small tmpfs mounted at `dir` (created), unmounted on drop: a filesystem that fills up.
/// `None` (with a loud SKIP line) when not root, which mounting needs.
pub struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    pub fn mount(test: &str, dir: &Path, size: &str) -> Option<SmallTmpfs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("\n========== SKIP {test}: mounting a small tmpfs needs root ==========\n");
            return None;
        }
        fs::create_dir_all(dir).expect("mkdir");
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .expect("mount tmpfs");
        Some(SmallTmpfs(dir.to_path_buf()))
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Runs `tests/peers/<script> JOBS.json` with the peer Python on `jobs` (written into `work`)
/// and returns the JSON list it prints, one result per job.
pub fn run_peer_batch(py: &Path, script: &str, work: &Path, jobs: &[Value]) -> Vec<Value> {
    let file = work.join(format!("{script}-{}.json", jobs.len()));
    fs::write(&file, serde_json::to_vec(jobs).expect("jobs")).expect("write jobs");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(script);
    let out = Command::new(py)
        .arg(&path)
        .arg(&file)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} output is not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(results.len(), jobs.len(), "{script}: one result per job");
    results
}

/// The generated model the peer tests start from: wide enough for groups of 128, weights large
/// enough (std 0.3) that logits are not flat.
pub fn peer_model_base() -> mlxk_fs::testkit::LlamaSpec {
    mlxk_fs::testkit::LlamaSpec {
        hidden: 128,
        heads: 4,
        kv_heads: 2,
        intermediate: 256,
        layers: 2,
        std: 0.3,
        ..mlxk_fs::testkit::LlamaSpec::default()
    }
}

/// What [`harmony_model`] writes: its reasoning and its answer.
pub const HARMONY_REASONING: &str = "Thinking it over.";
pub const HARMONY_ANSWER: &str = "Hello!";

/// A model with a harmony vocabulary (gpt-oss's message markers as special tokens) that answers
/// any chat the way gpt-oss does: an analysis message, then the final one —
/// `<|channel|>analysis<|message|>Thinking it over.<|end|><|start|>assistant<|channel|>final
/// <|message|>Hello!<|return|>` (see `mlxk_fs::testkit::Script`; the second header's markers
/// are plain text pieces, the first's the special tokens).
pub fn harmony_model(dir: &Path) {
    use mlxk_fs::testkit::{scripted_model_files, Script};
    let script = Script {
        after: b't',
        tokens: &[
            "<|channel|>",
            "analysis",
            "<|message|>",
            "Thinking",
            " it over.",
            "<|end|>",
            "<|start|>",
            "assistant",
            "<|chan",
            "nel|>final",
            "<|mess",
            "age|>",
            "Hel",
            "lo!",
        ],
        specials: &["<|start|>", "<|channel|>", "<|message|>", "<|end|>"],
        eos: "<|return|>",
        chat_template: "{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}\
                        <|end|>{% endfor %}<|start|>assistant",
    };
    fs::create_dir_all(dir).expect("mkdir");
    for (name, bytes) in scripted_model_files(&script) {
        fs::write(dir.join(name), bytes).expect("write model file");
    }
}
