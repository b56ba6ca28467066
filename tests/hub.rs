//! `mlxk pull`, `clone` and `rm` against a stand-in hub on 127.0.0.1 (tests/peers/
//! stand_in_hub.py, which serves the hub's API, its redirects to a CDN and Range requests), with
//! Python's huggingface_hub (the peer venv) reading what mlxk wrote and writing what mlxk reads.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::hub::{publish, StandInHub};
use common::{snapshot_dir, stderr, stdout, tree_state, Fixture};
use serde_json::Value;
use sha2::{Digest, Sha256};

const MAIN: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const V1: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const BIG: &str = "cccccccccccccccccccccccccccccccccccccccc";
/// The big model's LFS shard: large enough to be cut, resumed and killed mid-way.
const BIG_BYTES: u64 = 24 << 20;

/// A hub with: `org/tiny` (a healthy sharded model at main, and tag v1 = an older commit
/// without the tokenizer), `org/broken` (the #624 index), `org/gated` (needs the token) and
/// `org/big` (one 24 MiB LFS file).
struct Setup {
    fx: Fixture,
    hub: StandInHub,
    /// An empty cache to pull into.
    cache: PathBuf,
}

impl Setup {
    fn new(test: &str) -> Option<Setup> {
        Self::with_page_size(test, 1000)
    }

    fn with_page_size(test: &str, page_size: usize) -> Option<Setup> {
        let fx = Fixture::new();
        let root = fx.path("hub-root");
        let tiny = snapshot_dir(&fx.cache, "mlx-community/Llama-tiny-f16");
        publish(&root, "org/tiny", MAIN, &tiny, &["main"]);
        let older = fx.path("older");
        fs::create_dir_all(&older).unwrap();
        for e in fs::read_dir(&tiny).unwrap() {
            let e = e.unwrap();
            if !e.file_name().to_string_lossy().starts_with("tokenizer") {
                fs::copy(e.path(), older.join(e.file_name())).unwrap();
            }
        }
        fs::create_dir_all(older.join("sub")).unwrap();
        fs::write(older.join("sub/notes.txt"), "a file in a subfolder\n").unwrap();
        publish(&root, "org/tiny", V1, &older, &["v1"]);
        let broken = snapshot_dir(&fx.cache, "mlx-community/Qwen2.5-VL-tiny-4bit");
        publish(&root, "org/broken", MAIN, &broken, &["main"]);
        publish(&root, "org/gated", MAIN, &tiny, &["main"]);
        fs::write(root.join("org/gated/gated"), "").unwrap();
        let big = fx.path("big");
        fs::create_dir_all(&big).unwrap();
        let mut bytes = vec![0u8; BIG_BYTES as usize];
        let mut x: u64 = 7;
        for b in bytes.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        fs::write(big.join("weights.bin"), &bytes).unwrap();
        fs::write(big.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
        publish(&root, "org/big", BIG, &big, &["main"]);
        let hub = StandInHub::start(test, &root, page_size)?;
        let cache = fx.path("pulled");
        fs::create_dir_all(&cache).unwrap();
        Some(Setup { fx, hub, cache })
    }

    fn mlxk(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let endpoint = self.hub.endpoint();
        let mut all = vec!["--cache", self.cache.to_str().unwrap()];
        all.extend_from_slice(args);
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.push(("HF_ENDPOINT", &endpoint));
        // Never the user's token file.
        let home = self.fx.path("hf-home");
        env.push(("HF_HOME", home.to_str().unwrap()));
        common::mlxk(&all, &env)
    }

    fn json(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.mlxk(&all, env);
        let v = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(&out), stderr(&out)));
        (out.status.code().unwrap_or(-1), v)
    }

    fn repo(&self, repo: &str) -> PathBuf {
        self.cache
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    fn python(&self, code: &str, cache: &Path) -> Output {
        let py = common::peer_python("python").expect("peer python");
        let out = Command::new(py)
            .args(["-c", code])
            .env("HF_ENDPOINT", self.hub.endpoint())
            .env("HF_HUB_DISABLE_XET", "1")
            .env("HF_HUB_CACHE", cache)
            .env("HF_HOME", self.fx.path("hf-home"))
            .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            .output()
            .expect("python");
        assert!(out.status.success(), "python failed: {}", stderr(&out));
        out
    }
}

fn sha256_hex(path: &Path) -> String {
    let bytes = fs::read(path).unwrap();
    format!("{:x}", Sha256::digest(&bytes))
}

#[test]
fn pull_lays_out_the_cache_as_huggingface_hub_and_python_reads_it() {
    // A page size of 3 makes the tree listing span pages (the Link header).
    let Some(s) = Setup::with_page_size("pull_lays_out_the_cache", 3) else {
        return;
    };
    let (code, v) = s.json(&["pull", "org/tiny"], &[]);
    assert_eq!(code, 0, "{v:#}");
    let d = &v["data"];
    assert_eq!(d["model"], "org/tiny");
    assert_eq!(d["download_status"], "success");
    assert_eq!(d["commit"], MAIN);
    assert_eq!(d["health"], "healthy", "{d:#}");
    assert!(d["files"].as_u64().unwrap() >= 6);
    let repo = s.repo("org/tiny");
    assert_eq!(fs::read_to_string(repo.join("refs/main")).unwrap(), MAIN);
    assert!(s.cache.join("CACHEDIR.TAG").is_file());
    // Every snapshot entry is a relative link to a blob named by its etag: sha256 for LFS files
    // (the safetensors), the git blob sha1 otherwise.
    let snap = repo.join("snapshots").join(MAIN);
    for e in fs::read_dir(&snap).unwrap() {
        let p = e.unwrap().path();
        let target = fs::read_link(&p).unwrap();
        assert!(target.starts_with("../../blobs"), "{target:?}");
        let blob = snap.join(&target);
        let name = target.file_name().unwrap().to_str().unwrap().to_string();
        if p.extension().is_some_and(|x| x == "safetensors") {
            assert_eq!(name, sha256_hex(&blob), "{}", p.display());
        } else {
            assert_eq!(name.len(), 40, "{}", p.display());
        }
        let lock = s
            .cache
            .join(".locks/models--org--tiny")
            .join(format!("{name}.lock"));
        assert!(lock.exists(), "{}", lock.display());
    }
    // The bytes are the published ones.
    let published = s.hub.root.join("org/tiny/commits").join(MAIN);
    for e in fs::read_dir(&published).unwrap() {
        let e = e.unwrap();
        assert_eq!(
            fs::read(snap.join(e.file_name())).unwrap(),
            fs::read(e.path()).unwrap()
        );
    }
    // Python reads it as its own.
    let out = s.python(
        &format!(
            "import json\n\
             from huggingface_hub import scan_cache_dir, hf_hub_download\n\
             info = scan_cache_dir({c:?})\n\
             r = [x for x in info.repos if x.repo_id == 'org/tiny'][0]\n\
             rev = list(r.revisions)[0]\n\
             p = hf_hub_download('org/tiny', 'config.json', cache_dir={c:?}, local_files_only=True)\n\
             print(json.dumps({{'commit': rev.commit_hash, 'files': len(rev.files), 'refs': sorted(rev.refs), 'warnings': len(info.warnings), 'path': p}}))",
            c = s.cache.to_str().unwrap()
        ),
        &s.cache,
    );
    let py: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(py["commit"], MAIN);
    assert_eq!(py["files"], d["files"]);
    assert_eq!(py["refs"], serde_json::json!(["main"]));
    assert_eq!(py["warnings"], 0);
    assert!(py["path"].as_str().unwrap().ends_with("config.json"));

    // A complete model pulled again: metadata requests only, nothing downloaded.
    s.hub.reset_stats();
    let (code, v) = s.json(&["pull", "org/tiny"], &[]);
    assert_eq!(code, 0);
    assert_eq!(v["data"]["download_status"], "already_present");
    assert_eq!(v["data"]["bytes_downloaded"], 0);
    let stats = s.hub.stats();
    let requests = stats["requests"].as_array().unwrap();
    assert!(
        requests
            .iter()
            .all(|r| r[1].as_str().unwrap().starts_with("/api/models/")),
        "{requests:?}"
    );
    // The human form says so too, with the health verdict.
    let text = stdout(&s.mlxk(&["pull", "org/tiny"], &[]));
    assert!(
        text.contains("already in the cache") && text.contains("healthy"),
        "{text}"
    );
}

#[test]
fn a_cache_python_pulled_reads_in_mlxk() {
    let Some(s) = Setup::new("a_cache_python_pulled_reads_in_mlxk") else {
        return;
    };
    let py_cache = s.fx.path("py-cache");
    s.python(
        "from huggingface_hub import snapshot_download\nsnapshot_download('org/tiny')",
        &py_cache,
    );
    let out = common::mlxk(
        &[
            "--cache",
            py_cache.to_str().unwrap(),
            "--json",
            "health",
            "org/tiny",
            "--fail-on-unhealthy",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let out = common::mlxk(
        &["--cache", py_cache.to_str().unwrap(), "--json", "list"],
        &[],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["data"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "org/tiny" && m["hash"] == MAIN));
    // And mlxk pulling into that cache finds everything there.
    let endpoint = s.hub.endpoint();
    let out = common::mlxk(
        &[
            "--cache",
            py_cache.to_str().unwrap(),
            "--json",
            "pull",
            "org/tiny",
        ],
        &[("HF_ENDPOINT", &endpoint)],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"]["download_status"], "already_present", "{v:#}");
}

#[test]
fn a_cut_connection_is_resumed_not_fetched_twice() {
    let Some(s) = Setup::new("a_cut_connection_is_resumed_not_fetched_twice") else {
        return;
    };
    s.hub.cut("/cdn/", 5 << 20, 2);
    let (code, v) = s.json(&["pull", "org/big"], &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["data"]["health"], "healthy");
    let sent = s.hub.bytes_sent("/cdn/");
    assert!(
        (BIG_BYTES..BIG_BYTES + (2 << 20)).contains(&sent),
        "the hub sent {sent} bytes for a {BIG_BYTES}-byte file: resumed, not refetched"
    );
    let stats = s.hub.stats();
    let ranges: Vec<&Value> = stats["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r[1].as_str().unwrap().contains("/cdn/") && !r[2].is_null())
        .collect();
    assert!(
        ranges.len() >= 2,
        "two resumptions with a Range: {ranges:?}"
    );
    let blob = s
        .repo("org/big")
        .join("snapshots")
        .join(BIG)
        .join("weights.bin");
    assert_eq!(fs::metadata(&blob).unwrap().len(), BIG_BYTES);
    assert!(
        s.hub.stats()["cdn_authorization"] == 0,
        "the token never goes to the CDN"
    );
}

#[test]
fn a_pull_killed_mid_file_resumes_from_its_incomplete_blob() {
    let Some(s) = Setup::new("a_pull_killed_mid_file_resumes") else {
        return;
    };
    s.hub.throttle(Some(4 << 20));
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlxk"))
        .args(["--cache", s.cache.to_str().unwrap(), "pull", "org/big"])
        .env("HF_ENDPOINT", s.hub.endpoint())
        .env("HF_HOME", s.fx.path("hf-home"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let blobs = s.repo("org/big").join("blobs");
    let deadline = Instant::now() + Duration::from_secs(30);
    let partial = loop {
        let found = fs::read_dir(&blobs).ok().and_then(|es| {
            es.flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "incomplete"))
        });
        if let Some(p) = found.filter(|p| fs::metadata(p).is_ok_and(|m| m.len() > (4 << 20))) {
            break p;
        }
        assert!(Instant::now() < deadline, "no partial download appeared");
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let kept = fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < BIG_BYTES);
    s.hub.throttle(None);
    // The dead connection's sender stops at its next write; then the count starts afresh.
    std::thread::sleep(Duration::from_millis(500));
    s.hub.reset_stats();
    let (code, v) = s.json(&["pull", "org/big"], &[]);
    assert_eq!(code, 0, "{v:#}");
    let resumed = v["data"]["bytes_resumed"].as_u64().unwrap();
    assert_eq!(
        resumed, kept,
        "the partial was continued from where it stopped: {v:#}"
    );
    let sent = s.hub.bytes_sent("/cdn/");
    assert!(
        sent <= BIG_BYTES - resumed + (1 << 20),
        "sent {sent} after {resumed} were kept"
    );
    assert!(!partial.exists());
    let blob_name = partial.file_stem().unwrap().to_str().unwrap();
    assert_eq!(sha256_hex(&blobs.join(blob_name)), blob_name);
}

#[test]
fn concurrent_pulls_of_one_repo_by_mlxk_and_python_share_the_blobs() {
    let Some(s) = Setup::new("concurrent_pulls_of_one_repo") else {
        return;
    };
    s.hub.throttle(Some(16 << 20));
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_mlxk"))
            .args([
                "--cache",
                s.cache.to_str().unwrap(),
                "--json",
                "pull",
                "org/big",
            ])
            .env("HF_ENDPOINT", s.hub.endpoint())
            .env("HF_HOME", s.fx.path("hf-home"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let py = common::peer_python("python").unwrap();
    let python = Command::new(py)
        .args([
            "-c",
            "from huggingface_hub import snapshot_download\nsnapshot_download('org/big')",
        ])
        .env("HF_ENDPOINT", s.hub.endpoint())
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HUB_CACHE", &s.cache)
        .env("HF_HOME", s.fx.path("hf-home"))
        .output()
        .unwrap();
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    assert!(python.status.success(), "{}", stderr(&python));
    let blobs: Vec<PathBuf> = fs::read_dir(s.repo("org/big").join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(blobs.len(), 2, "one blob per file, no leftovers: {blobs:?}");
    for b in blobs {
        let name = b.file_name().unwrap().to_str().unwrap().to_string();
        if name.len() == 64 {
            assert_eq!(
                sha256_hex(&b),
                name,
                "a blob written twice at once is intact"
            );
        }
    }
}

#[test]
fn gated_repos_need_the_token_and_say_which_variable() {
    let Some(s) = Setup::new("gated_repos_need_the_token") else {
        return;
    };
    let (code, v) = s.json(&["pull", "org/gated"], &[]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["type"], "access_denied");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("HF_TOKEN") && msg.contains("org/gated"),
        "{msg}"
    );
    assert!(!s.repo("org/gated").join("snapshots").exists());
    let (code, v) = s.json(&["pull", "org/gated"], &[("HF_TOKEN", "hf_wrong")]);
    assert_eq!(code, 1);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no access"),
        "{v:#}"
    );
    let (code, v) = s.json(&["pull", "org/gated"], &[("HF_TOKEN", &s.hub.token)]);
    assert_eq!(code, 0, "{v:#}");
    // The token file `hf auth login` writes works as well.
    fs::create_dir_all(s.fx.path("hf-home")).unwrap();
    fs::write(s.fx.path("hf-home/token"), format!("{}\n", s.hub.token)).unwrap();
    fs::remove_dir_all(s.repo("org/gated")).unwrap();
    let (code, v) = s.json(&["pull", "org/gated"], &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        s.hub.stats()["cdn_authorization"],
        0,
        "the token never goes to the CDN"
    );
}

#[test]
fn offline_unknown_repos_and_revisions_are_clear_errors() {
    let Some(s) = Setup::new("offline_unknown_repos_and_revisions") else {
        return;
    };
    s.hub.reset_stats();
    let (code, v) = s.json(&["pull", "org/tiny"], &[("HF_HUB_OFFLINE", "1")]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["type"], "offline");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("HF_HUB_OFFLINE"));
    assert!(
        s.hub.stats()["requests"].as_array().unwrap().is_empty(),
        "nothing on the network"
    );
    let (code, v) = s.json(&["pull", "org/nope"], &[]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["type"], "model_not_found", "{v:#}");
    let (code, v) = s.json(&["pull", "org/tiny@v9"], &[]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["type"], "revision_not_found", "{v:#}");
    assert!(v["error"]["message"].as_str().unwrap().contains("v9"));
    let out = s.mlxk(&["pull", "not/a/repo"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a repository id"),
        "{}",
        stderr(&out)
    );
    // A bare name is mlx-community's, as in mlx-knife.
    let (code, v) = s.json(&["pull", "tiny"], &[]);
    assert_eq!(code, 1);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mlx-community/tiny"),
        "{v:#}"
    );
    // Nothing half-written looks complete.
    assert!(!s.repo("org/nope").exists());
}

#[test]
fn revisions_by_tag_and_sha_and_file_patterns() {
    let Some(s) = Setup::new("revisions_by_tag_and_sha_and_file_patterns") else {
        return;
    };
    let (code, v) = s.json(&["pull", "org/tiny@v1"], &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["data"]["commit"], V1);
    let repo = s.repo("org/tiny");
    assert_eq!(fs::read_to_string(repo.join("refs/v1")).unwrap(), V1);
    assert!(!repo.join("refs/main").exists());
    // Subfolders are linked with the right depth.
    let nested = repo.join("snapshots").join(V1).join("sub/notes.txt");
    assert_eq!(
        fs::read_to_string(&nested).unwrap(),
        "a file in a subfolder\n"
    );
    assert!(fs::read_link(&nested)
        .unwrap()
        .starts_with("../../../blobs"));
    // By sha: no ref is written.
    let (code, v) = s.json(&["pull", &format!("org/tiny@{MAIN}")], &[]);
    assert_eq!(code, 0, "{v:#}");
    assert!(!repo.join("refs").join(MAIN).exists());
    assert!(!repo.join("refs/main").exists());
    // Patterns: only the JSON files of main, the tokenizer left out.
    fs::remove_dir_all(&repo).unwrap();
    let (code, v) = s.json(
        &[
            "pull",
            "org/tiny",
            "--include",
            "*.json",
            "--exclude",
            "tokenizer*",
        ],
        &[],
    );
    assert_eq!(code, 0, "{v:#}");
    let names: Vec<String> = fs::read_dir(repo.join("snapshots").join(MAIN))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".json") && !n.starts_with("tokenizer")),
        "{names:?}"
    );
    assert!(names.contains(&"config.json".to_string()));
    // A partial pull is judged as it is: weights missing.
    assert_eq!(v["data"]["health"], "unhealthy");
}

#[test]
fn a_full_disk_keeps_the_partial_and_says_how_much_is_needed() {
    let Some(s) = Setup::new("a_full_disk_keeps_the_partial") else {
        return;
    };
    let small = s.fx.path("small-cache");
    let Some(_tmpfs) = common::SmallTmpfs::mount("a_full_disk_keeps_the_partial", &small, "8m")
    else {
        return;
    };
    let endpoint = s.hub.endpoint();
    let run = || {
        common::mlxk(
            &[
                "--cache",
                small.to_str().unwrap(),
                "--json",
                "pull",
                "org/big",
            ],
            &[("HF_ENDPOINT", &endpoint)],
        )
    };
    let out = run();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["type"], "disk_full", "{v:#}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("more bytes are needed") && msg.contains("resume"),
        "{msg}"
    );
    // Both files were in flight; whichever hit the full disk first, the weights' partial
    // stays for a resume and the message counts what the whole pull still lacks.
    let blobs = small.join("models--org--big/blobs");
    let kept: u64 = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "incomplete"))
        .map(|p| fs::metadata(&p).unwrap().len())
        .max()
        .expect("the partial stays for a resume");
    assert!(kept > 0 && kept < BIG_BYTES, "{kept}");
    let needed: u64 = msg
        .split(": ")
        .find_map(|part| part.strip_suffix(" more bytes are needed to finish; free some space and run the command again to resume"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {msg}"));
    assert!(
        needed >= BIG_BYTES - kept && needed <= BIG_BYTES - kept + 64,
        "{needed} vs {BIG_BYTES} - {kept}: {msg}"
    );
    // More room: the same command resumes and completes.
    nix::mount::mount(
        None::<&str>,
        &small,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT,
        Some("size=64m"),
    )
    .unwrap();
    s.hub.reset_stats();
    let out = run();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["data"]["bytes_resumed"].as_u64().unwrap() > 0, "{v:#}");
}

#[test]
fn a_pull_shows_up_in_a_running_mount() {
    if !common::mount::fuse_available("a_pull_shows_up_in_a_running_mount") {
        return;
    }
    let Some(s) = Setup::new("a_pull_shows_up_in_a_running_mount") else {
        return;
    };
    let m = common::mount::MountGuard::new(&s.cache, &s.fx.path("mnt"), &s.fx.path("state"), &[]);
    assert!(!m.path("org/tiny").exists());
    let (code, v) = s.json(&["pull", "org/tiny"], &[]);
    assert_eq!(code, 0, "{v:#}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !m.path("org/tiny/config.json").exists() {
        assert!(
            Instant::now() < deadline,
            "the pulled model never appeared in the mount"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let served = fs::read(m.path("org/tiny/config.json")).unwrap();
    let published = fs::read(
        s.hub
            .root
            .join("org/tiny/commits")
            .join(MAIN)
            .join("config.json"),
    )
    .unwrap();
    assert_eq!(served, published);
}

#[test]
fn clone_copies_from_the_cache_or_downloads_around_it() {
    let Some(s) = Setup::new("clone_copies_from_the_cache_or_downloads_around_it") else {
        return;
    };
    // From the cache: the cache is left exactly as it was.
    assert_eq!(s.json(&["pull", "org/tiny"], &[]).0, 0);
    let before = tree_state(&s.cache);
    let ws = s.fx.path("ws-cached");
    s.hub.reset_stats();
    let (code, v) = s.json(&["clone", "org/tiny", ws.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{v:#}");
    let d = &v["data"];
    assert_eq!(d["clone_status"], "success");
    assert_eq!(d["from_cache"], true);
    assert_eq!(d["health"], "healthy");
    assert_eq!(d["target_dir"], ws.to_str().unwrap());
    assert!(
        s.hub.stats()["requests"].as_array().unwrap().is_empty(),
        "no network for a cached model"
    );
    assert_eq!(before, tree_state(&s.cache), "the cache changed");
    let sentinel: Value =
        serde_json::from_slice(&fs::read(ws.join(".mlxk_workspace.json")).unwrap()).unwrap();
    assert_eq!(sentinel["operation"], "clone");
    assert_eq!(sentinel["source_repo"], "org/tiny");
    assert_eq!(sentinel["source_revision"], MAIN);
    assert!(sentinel.get("convert_state").is_none());
    assert!(!fs::symlink_metadata(ws.join("config.json"))
        .unwrap()
        .is_symlink());

    // Not in the cache: straight into the workspace, the cache untouched.
    let before = tree_state(&s.cache);
    let ws2 = s.fx.path("ws-hub");
    let (code, v) = s.json(&["clone", "org/tiny@v1", ws2.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["data"]["from_cache"], false);
    assert_eq!(
        before,
        tree_state(&s.cache),
        "a clone from the hub wrote into the cache"
    );
    assert_eq!(
        fs::read_to_string(ws2.join("sub/notes.txt")).unwrap(),
        "a file in a subfolder\n"
    );
    let (code, show) = s.json(&["show", ws2.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    assert_eq!(show["data"]["model"]["origin"], "org/tiny");
    assert_eq!(show["data"]["model"]["clean"], true);
    // An existing, non-empty target is refused; an interrupted clone of the same commit resumes.
    let (code, v) = s.json(&["clone", "org/tiny@v1", ws2.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["type"], "target_exists", "{v:#}");
    let ws3 = s.fx.path("ws-big");
    // 3 MiB arrive, then every connection drops at once: the retries give up (bounded).
    s.hub.cut("/cdn/", 3 << 20, 1);
    s.hub.cut("/cdn/", 0, 1000);
    let (code, v) = s.json(&["clone", "org/big", ws3.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "a connection that keeps dropping gives up: {v:#}");
    assert_eq!(v["error"]["type"], "network_error", "{v:#}");
    let sentinel: Value =
        serde_json::from_slice(&fs::read(ws3.join(".mlxk_workspace.json")).unwrap()).unwrap();
    assert_eq!(
        sentinel["convert_state"], "in_progress",
        "an interrupted clone says so"
    );
    let (code, health) = s.json(&["health", ws3.to_str().unwrap(), "--details"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        health["data"]["summary"]["unhealthy_count"], 1,
        "{health:#}"
    );
    s.hub.clear_faults();
    s.hub.reset_stats();
    let (code, v) = s.json(&["clone", "org/big", ws3.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{v:#}");
    assert!(
        s.hub.bytes_sent("/cdn/") < BIG_BYTES,
        "the resumed clone continued its partial file"
    );
    assert_eq!(
        fs::metadata(ws3.join("weights.bin")).unwrap().len(),
        BIG_BYTES
    );
    assert!(!ws3.join("weights.bin.incomplete").exists());
}

#[test]
fn rm_removes_a_model_or_one_snapshot_and_nothing_else() {
    let Some(s) = Setup::new("rm_removes_a_model_or_one_snapshot") else {
        return;
    };
    for spec in ["org/tiny", "org/tiny@v1", "org/broken"] {
        assert_eq!(s.json(&["pull", spec], &[]).0, 0, "{spec}");
    }
    let repo = s.repo("org/tiny");
    let broken_before = tree_state(&s.repo("org/broken"));
    // Without -f and without a terminal: refused, nothing removed.
    let (code, v) = s.json(&["rm", "org/tiny"], &[]);
    assert_eq!(code, 1);
    assert!(v["error"]["message"].as_str().unwrap().contains("-f"));
    assert!(repo.exists());
    // On a terminal it asks; anything but yes keeps the model (`script` gives it a pty).
    let ask = |answer: &str| {
        let cmd = format!(
            "{} --cache {} rm org/tiny@v1",
            env!("CARGO_BIN_EXE_mlxk"),
            s.cache.display()
        );
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("script (util-linux) runs the command on a pseudo-terminal");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{answer}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = ask("n");
    assert!(
        said.contains("Remove snapshot") && said.contains("[y/N]"),
        "{said}"
    );
    assert!(said.contains("nothing removed"), "{said}");
    assert!(repo.join("snapshots").join(V1).exists());
    // A substring is not a name.
    let (code, v) = s.json(&["rm", "tiny", "-f"], &[]);
    assert_eq!(code, 1);
    assert_eq!(
        v["error"]["matches"],
        serde_json::json!(["org/tiny"]),
        "{v:#}"
    );
    // One snapshot: its own blobs go, the shared ones and the other snapshot stay.
    let main_snap = repo.join("snapshots").join(MAIN);
    let said = ask("y");
    assert!(said.contains("removed snapshot"), "{said}");
    assert!(!repo.join("snapshots").join(V1).exists());
    assert!(!repo.join("refs/v1").exists());
    assert_eq!(fs::read_to_string(repo.join("refs/main")).unwrap(), MAIN);
    for e in fs::read_dir(&main_snap).unwrap() {
        let p = e.unwrap().path();
        assert!(p.exists(), "{} lost its blob", p.display());
    }
    let blobs = fs::read_dir(repo.join("blobs")).unwrap().count();
    let linked = fs::read_dir(&main_snap).unwrap().count();
    assert_eq!(blobs, linked, "only v1's own blobs were removed");
    // The whole model; the other model untouched.
    let (code, v) = s.json(&["rm", "org/tiny", "-f"], &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["data"]["action"], "removed");
    assert!(v["data"]["bytes_freed"].as_u64().unwrap() > 0, "{v:#}");
    assert!(!repo.exists());
    assert!(!s.cache.join(".locks/models--org--tiny").exists());
    assert_eq!(broken_before, tree_state(&s.repo("org/broken")));
    // A workspace is not the cache's to remove.
    let ws = s.fx.copy_of("mlx-community/Llama-tiny-f16", "a-workspace");
    let (code, v) = s.json(&["rm", ws.to_str().unwrap(), "-f"], &[]);
    assert_eq!(code, 1);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("workspace"),
        "{v:#}"
    );
    assert!(ws.join("config.json").exists());
    // A #624-broken model pulls fine and is reported unhealthy with the way out.
    let text = stdout(&s.mlxk(&["pull", "org/broken"], &[]));
    assert!(
        text.contains("unhealthy") && text.contains("--repair-index"),
        "{text}"
    );
}
