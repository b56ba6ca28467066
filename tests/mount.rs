//! A real FUSE mount of a fixture cache: what is read equals the blobs (passthrough and not),
//! the 624 model is served repaired, the view follows the cache live, and the daemon's lifecycle (background, status, umount,
//! SIGTERM, kill -9 and stale mounts, two mounts at once).

mod common;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::mount::{fuse_available, mlxk_fs, MountGuard};
use common::{snapshot_dir, stdout, Fixture};
use mlxk_fs::store::{Sentinel, WeightIndex, INDEX_FILE, SENTINEL_FILE};
use mlxk_fs::testkit::Rng;
use serde_json::Value;

fn mount(fx: &Fixture, name: &str, extra: &[&str]) -> MountGuard {
    MountGuard::new(&fx.cache, &fx.path(name), &fx.path("state"), extra)
}

fn assert_reads_equal(m: &MountGuard, fx: &Fixture) {
    let mut rng = Rng::new(7);
    let hub = mlxk_fs::store::HubCache::open(&fx.cache).unwrap();
    let repos = hub.repos().unwrap();
    let mut files = 0;
    let cache_root = fs::canonicalize(&fx.cache).unwrap();
    for repo in repos.iter().map(|r| r.repo_id.as_str()) {
        // The default snapshot (refs/main, else the newest), as the mount shows it.
        let snap = mlxk_fs::store::resolve(Some(&hub), repo)
            .unwrap()
            .dir()
            .to_path_buf();
        for e in fs::read_dir(&snap).unwrap() {
            let blob_path = e.unwrap().path();
            let name = blob_path.file_name().unwrap().to_str().unwrap().to_string();
            let mounted = m.path(&format!("{repo}/{name}"));
            let inside = fs::canonicalize(&blob_path).is_ok_and(|p| p.starts_with(&cache_root));
            let (true, Ok(expected)) = (inside, fs::read(&blob_path)) else {
                // A dangling link, or one leaving the cache, is not served.
                assert!(!mounted.exists(), "{repo}/{name} is served");
                continue;
            };
            if name == INDEX_FILE {
                continue; // served rebuilt; checked separately
            }
            files += 1;
            assert_eq!(
                fs::metadata(&mounted)
                    .unwrap_or_else(|e| panic!("{repo}/{name}: {e}"))
                    .len(),
                expected.len() as u64,
                "{repo}/{name} size"
            );
            assert_eq!(fs::read(&mounted).unwrap(), expected, "{repo}/{name}: read");
            let f = File::open(&mounted).unwrap();
            for _ in 0..16 {
                let off = (rng.next_u64() % expected.len() as u64) as usize;
                let len = ((rng.next_u64() % 8192) as usize).min(expected.len() - off);
                let mut buf = vec![0u8; len];
                f.read_exact_at(&mut buf, off as u64).unwrap();
                assert_eq!(
                    buf,
                    expected[off..off + len],
                    "{repo}/{name}: pread at {off}+{len}"
                );
            }
            let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
            assert_eq!(&map[..], &expected[..], "{repo}/{name}: mmap");
        }
    }
    assert!(files > 80, "only {files} files compared");
}

#[test]
fn reads_equal_the_blobs_with_and_without_passthrough() {
    if !fuse_available("reads_equal_the_blobs_with_and_without_passthrough") {
        return;
    }
    let fx = Fixture::new();
    let m = mount(&fx, "mnt-pt", &[]);
    assert_eq!(
        m.record["passthrough"], true,
        "passthrough is expected on this machine"
    );
    assert_reads_equal(&m, &fx);
    let c = m.counters();
    assert!(c["passthrough_opens"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(c["passthrough"], true);

    let m2 = mount(&fx, "mnt-fallback", &["--no-passthrough"]);
    assert_eq!(m2.record["passthrough"], false);
    assert_reads_equal(&m2, &fx);
    let c = m2.counters();
    assert_eq!(c["passthrough_opens"], 0, "{c}");
    assert!(
        c["bytes_read"].as_u64().unwrap() > 100_000,
        "the daemon served the reads: {c}"
    );
}

#[test]
fn the_624_model_is_served_as_a_repaired_managed_workspace() {
    if !fuse_available("the_624_model_is_served_as_a_repaired_managed_workspace") {
        return;
    }
    let fx = Fixture::new();
    let m = mount(&fx, "mnt", &[]);
    let dir = m.path("mlx-community/Qwen2.5-VL-tiny-4bit");
    let snap = snapshot_dir(&fx.cache, "mlx-community/Qwen2.5-VL-tiny-4bit");

    let served = fs::read(dir.join(INDEX_FILE)).unwrap();
    let index = WeightIndex::parse(&served).unwrap();
    assert_eq!(index.shard_names().len(), 4);
    assert_eq!(
        fs::read(dir.join("model.safetensors.index.json.orig")).unwrap(),
        fs::read(snap.join(INDEX_FILE)).unwrap()
    );
    // Byte-identical on every read, and equal to what convert --repair-index writes.
    assert_eq!(fs::read(dir.join(INDEX_FILE)).unwrap(), served);
    let ws = fx.path("ws");
    let out = fx.mlxk(&[
        "convert",
        "mlx-community/Qwen2.5-VL-tiny-4bit",
        ws.to_str().unwrap(),
        "--repair-index",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(fs::read(ws.join(INDEX_FILE)).unwrap(), served);

    // convert with a mounted source reads the cache snapshot directly (provenance: the repo).
    let ws2 = fx.path("ws-from-mount");
    let state = fx.path("state");
    let env = [("MLXK_FS_STATE_DIR", state.to_str().unwrap())];
    let out = common::mlxk(
        &[
            "convert",
            dir.to_str().unwrap(),
            ws2.to_str().unwrap(),
            "--repair-index",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(fs::read(ws2.join(INDEX_FILE)).unwrap(), served);
    let s2 = Sentinel::read(&ws2).unwrap().unwrap();
    assert_eq!(
        s2.source_repo.as_deref(),
        Some("mlx-community/Qwen2.5-VL-tiny-4bit")
    );
    assert_eq!(
        s2.source_revision.as_deref(),
        snap.file_name().unwrap().to_str()
    );
    assert!(!ws2.join("model.safetensors.index.json.orig").exists());
    // A target inside the mount is written straight into the overlay directory and shows at
    // once; a non-empty one is refused.
    let target = m.path("mlx-community/x");
    let convert_into_mount = |target: &std::path::Path| {
        common::mlxk(
            &[
                "convert",
                dir.to_str().unwrap(),
                target.to_str().unwrap(),
                "--repair-index",
            ],
            &env,
        )
    };
    let out = convert_into_mount(&target);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let in_overlay = state.join("overlay-mnt/mlx-community/x");
    assert_eq!(fs::read(in_overlay.join(INDEX_FILE)).unwrap(), served);
    assert_eq!(fs::read(target.join(INDEX_FILE)).unwrap(), served);
    assert_healthy(&target, &env);
    let out = convert_into_mount(&dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("not empty"),
        "{}",
        common::stderr(&out)
    );

    let sentinel_bytes = fs::read(dir.join(SENTINEL_FILE)).unwrap();
    assert_eq!(fs::read(dir.join(SENTINEL_FILE)).unwrap(), sentinel_bytes);
    let sentinel = Sentinel::parse(&sentinel_bytes).unwrap();
    assert!(sentinel.managed);
    assert_eq!(sentinel.operation, "mount");
    assert_eq!(
        sentinel.source_repo.as_deref(),
        Some("mlx-community/Qwen2.5-VL-tiny-4bit")
    );
    assert_eq!(
        sentinel.source_revision.as_deref(),
        snap.file_name().unwrap().to_str()
    );
    let repairs = sentinel.extra["repairs"].as_array().unwrap();
    assert!(
        repairs.iter().any(|r| r["code"] == "index_shard_missing"),
        "{sentinel:?}"
    );

    // mlxk on the mounted path: healthy, managed, and it says what the mount repaired.
    let (code, v) = fx.json(&[
        "health",
        dir.to_str().unwrap(),
        "--details",
        "--fail-on-unhealthy",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["data"]["healthy"][0]["managed"], true);
    assert!(
        !v["data"]["healthy"][0]["repairs"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{v:#}"
    );
    let human = stdout(&fx.mlxk(&["health", dir.to_str().unwrap()]));
    assert!(human.contains("repaired by mlxk-fs"), "{human}");

    // A healthy model: no .orig, the served index equals the cached one byte for byte.
    let f16 = m.path("mlx-community/Llama-tiny-f16");
    assert!(!f16.join("model.safetensors.index.json.orig").exists());
    let cached =
        fs::read(snapshot_dir(&fx.cache, "mlx-community/Llama-tiny-f16").join(INDEX_FILE)).unwrap();
    assert_eq!(fs::read(f16.join(INDEX_FILE)).unwrap(), cached);
    let s = Sentinel::parse(&fs::read(f16.join(SENTINEL_FILE)).unwrap()).unwrap();
    assert!(s.extra["repairs"].as_array().unwrap().is_empty());
    // A single shard without an index gets none; a model with unreadable headers keeps its own.
    assert!(!m
        .path("mlx-community/Llama-tiny-f32")
        .join(INDEX_FILE)
        .exists());
    let truncated = m.path("broken/truncated-shard");
    let original =
        fs::read(snapshot_dir(&fx.cache, "broken/truncated-shard").join(INDEX_FILE)).unwrap();
    assert_eq!(fs::read(truncated.join(INDEX_FILE)).unwrap(), original);
    let s = Sentinel::parse(&fs::read(truncated.join(SENTINEL_FILE)).unwrap()).unwrap();
    assert!(s.extra["unrepaired"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["code"] == "shard_truncated"));
    let (code, v) = fx.json(&["health", truncated.to_str().unwrap(), "--details"]);
    assert_eq!(code, 0);
    assert_eq!(v["data"]["summary"]["unhealthy_count"], 1);
    assert!(common::problem_codes(&v).contains(&"shard_truncated".to_string()));
}

#[test]
fn the_tree_lists_orgs_models_revisions_and_not_datasets() {
    if !fuse_available("the_tree_lists_orgs_models_revisions_and_not_datasets") {
        return;
    }
    let fx = Fixture::new();
    let m = mount(&fx, "mnt", &[]);
    let orgs = names_in(&m.mountpoint);
    assert_eq!(
        orgs,
        vec![
            "TheBloke",
            "broken",
            "meta-test",
            "mlx-community",
            "test-org"
        ]
    );
    assert_eq!(names_in(&m.path("test-org")).len(), 2);
    // Laziness: listing the root and an org read no header.
    for org in &orgs {
        fs::read_dir(m.path(org)).unwrap().for_each(drop);
    }
    let c = m.counters();
    assert_eq!(c["header_bytes_read"], 0, "{c}");
    assert_eq!(c["models_viewed"], 0, "{c}");
    // Default = refs/main (2 layers); @dev and @<sha prefix> reach the other snapshot (3 layers).
    let layers = |p: &Path| -> u64 {
        let c: Value = serde_json::from_slice(&fs::read(p.join("config.json")).unwrap()).unwrap();
        c["num_hidden_layers"].as_u64().unwrap()
    };
    assert_eq!(layers(&m.path("test-org/Multi-snap")), 2);
    assert_eq!(layers(&m.path("test-org/Multi-snap@dev")), 3);
    let new_sha = mlxk_fs::testkit::fake_sha("test-org/Multi-snap@new");
    assert_eq!(
        layers(&m.path(&format!("test-org/Multi-snap@{}", &new_sha[..8]))),
        3
    );
    let s =
        Sentinel::parse(&fs::read(m.path("test-org/Multi-snap@dev").join(SENTINEL_FILE)).unwrap())
            .unwrap();
    assert_eq!(s.source_revision.as_deref(), Some(new_sha.as_str()));
    assert!(!m.path("test-org/Multi-snap@nope").exists());
    assert!(!m.path("someone").exists(), "datasets are not shown");
    // Missing and escaping links are not served.
    assert!(!m
        .path("broken/incomplete-download/model.safetensors")
        .exists());
    assert!(!m.path("broken/escaping-link/model.safetensors").exists());
    // statfs answers for the cache's filesystem.
    let st = nix::sys::statvfs::statvfs(&m.mountpoint).unwrap();
    assert!(st.blocks() > 0);
}

/// A reader walking an org's models in order (`ls -lR`) finds the next models' views built
/// ahead of it; listing the org alone builds none, and what a view built ahead shows is the
/// model as it is.
#[test]
fn the_views_of_the_next_models_are_built_ahead_of_a_walk_in_order() {
    if !fuse_available("the_views_of_the_next_models_are_built_ahead_of_a_walk_in_order") {
        return;
    }
    let fx = Fixture::new();
    let (cache, files) = cache_writer(&fx);
    for i in 0..4 {
        cache
            .add_model(&format!("walk/m{i}"), "v1", &files)
            .unwrap();
    }
    let m = mount(&fx, "mnt", &[]);
    assert_eq!(names_in(&m.path("walk")), ["m0", "m1", "m2", "m3"]);
    assert_eq!(m.counters()["models_viewed"], 0);
    let m0 = names_in(&m.path("walk/m0"));
    assert_eq!(
        m.counters()["views_read_ahead"],
        0,
        "one model is not a walk"
    );
    assert_eq!(names_in(&m.path("walk/m1")), m0);
    wait_until(
        "the views of m2 and m3 built ahead",
        Duration::from_secs(5),
        || {
            let c = m.counters();
            c["views_read_ahead"] == 2 && c["models_viewed"] == 4
        },
    );
    assert!(m.counters()["header_bytes_read"].as_u64().unwrap() > 0);
    assert_eq!(names_in(&m.path("walk/m3")), m0);
    assert_eq!(layers_shown(&m.path("walk/m3")), 2);
}

/// The names in directory `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The fixture's cache, to add models to as huggingface_hub would, and the files of a
/// two-shard model.
fn cache_writer(fx: &Fixture) -> (mlxk_fs::testkit::FixtureCache, Vec<(String, Vec<u8>)>) {
    let cache = mlxk_fs::testkit::FixtureCache {
        root: fx.cache.clone(),
    };
    let files = mlxk_fs::testkit::llama_model_files(
        &mlxk_fs::testkit::LlamaSpec::default(),
        2,
        true,
        "mlx",
    );
    (cache, files)
}

/// The kernel keeps a watched model directory's entry and attributes for seconds (no LOOKUP
/// per model in `ls -lR`): the daemon invalidates them when the watcher reports the repo gone,
/// so a model removed from the cache leaves the mount at once all the same.
#[test]
fn a_watched_model_directory_kept_by_the_kernel_goes_when_its_repo_goes() {
    if !fuse_available("a_watched_model_directory_kept_by_the_kernel_goes_when_its_repo_goes") {
        return;
    }
    let fx = Fixture::new();
    let (cache, files) = cache_writer(&fx);
    // Two models: the org stays when one goes (its own entry lasts only a second).
    cache.add_model("kept/m", "v1", &files).unwrap();
    cache.add_model("kept/other", "v1", &files).unwrap();
    let m = mount(&fx, "mnt", &[]);
    let repos = fs::read_dir(&fx.cache)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("models--")
        })
        .count() as u64;
    wait_until("every repo watched", Duration::from_secs(5), || {
        m.counters()["repos_watched"].as_u64() == Some(repos)
    });
    // Listed (READDIRPLUS: entries and attributes at once) and stat'ed: held by the kernel.
    assert_eq!(names_in(&m.path("kept")), ["m", "other"]);
    assert!(m.path("kept/m").is_dir());
    fs::remove_dir_all(cache.repo_dir("kept/m")).unwrap();
    wait_until("the removed model gone", Duration::from_secs(2), || {
        !m.path("kept/m").exists()
    });
    assert!(m.path("kept/other").is_dir());
}

/// `num_hidden_layers` of the model directory's config.json as the mount shows it now (0 while
/// it cannot be read: the tests wait for a change).
fn layers_shown(model_dir: &Path) -> u64 {
    fs::read(model_dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|c| c["num_hidden_layers"].as_u64())
        .unwrap_or(0)
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn models_pulled_or_removed_while_mounted_appear_and_disappear() {
    if !fuse_available("models_pulled_or_removed_while_mounted_appear_and_disappear") {
        return;
    }
    let fx = Fixture::new();
    let m = mount(&fx, "mnt", &[]);
    let org = m.path("new-org");
    assert!(!org.exists());
    let listed = |p: &Path| -> Vec<String> {
        fs::read_dir(p)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default()
    };
    let before_root = listed(&m.mountpoint);
    // "Pull" a model: write it into the cache as huggingface_hub would.
    let (cache, files) = cache_writer(&fx);
    cache.add_model("new-org/Fresh-4bit", "v1", &files).unwrap();
    wait_until("new org listed", Duration::from_secs(2), || {
        listed(&m.mountpoint).contains(&"new-org".to_string())
    });
    wait_until("new model listed", Duration::from_secs(2), || {
        listed(&org) == vec!["Fresh-4bit".to_string()]
    });
    assert!(org.join("Fresh-4bit/config.json").exists());
    // A repo that appeared while mounted is covered by the watcher once its directories are
    // watched: a moved refs/main is seen through the watcher's word, not only a timeout.
    let fresh_layers = || layers_shown(&org.join("Fresh-4bit"));
    let before = fresh_layers();
    let deeper = mlxk_fs::testkit::LlamaSpec {
        layers: before as usize + 1,
        ..mlxk_fs::testkit::LlamaSpec::default()
    };
    let v2 = cache
        .add_snapshot(
            "new-org/Fresh-4bit",
            "v2",
            &mlxk_fs::testkit::llama_model_files(&deeper, 1, false, "mlx"),
        )
        .unwrap();
    // Past the one-second time an answer lasts without the watcher.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fresh_layers(), before);
    cache.set_ref("new-org/Fresh-4bit", "main", &v2).unwrap();
    wait_until(
        "refs/main of a new repo followed",
        Duration::from_secs(2),
        || fresh_layers() == before + 1,
    );
    // A second model in an existing org.
    cache
        .add_model("mlx-community/Also-new", "v1", &files)
        .unwrap();
    wait_until("model in existing org", Duration::from_secs(2), || {
        m.path("mlx-community/Also-new/config.json").exists()
    });
    // Remove it again.
    fs::remove_dir_all(cache.repo_dir("new-org/Fresh-4bit")).unwrap();
    wait_until("removed model gone", Duration::from_secs(2), || {
        !org.join("Fresh-4bit").exists()
    });
    wait_until("root back to before", Duration::from_secs(2), || {
        listed(&m.mountpoint) == before_root
    });
    // refs/main moves: the default view follows.
    let repo = "test-org/Multi-snap";
    let new_sha = mlxk_fs::testkit::fake_sha("test-org/Multi-snap@new");
    let layers = || layers_shown(&m.path(repo));
    assert_eq!(layers(), 2);
    cache.set_ref(repo, "main", &new_sha).unwrap();
    wait_until("refs/main followed", Duration::from_secs(2), || {
        layers() == 3
    });
}

#[test]
fn daemon_lifecycle_background_status_umount_sigterm_kill_and_stale_mounts() {
    if !fuse_available("daemon_lifecycle_background_status_umount_sigterm_kill_and_stale_mounts") {
        return;
    }
    let fx = Fixture::new();
    let state = fx.path("state");
    let mp = fx.path("bg");
    fs::create_dir_all(&mp).unwrap();
    let cache = fx.cache.to_str().unwrap();
    let mps = mp.to_str().unwrap();

    // Background mount returns once the mount works.
    let out = mlxk_fs(&state, &["mount", mps, "--cache", cache]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mp.join("mlx-community/Llama-tiny-f16/config.json").exists());
    let out = mlxk_fs(&state, &["--json", "status"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"]["count"], 1, "{v:#}");
    let entry = &v["data"]["mounts"][0];
    assert_eq!(entry["state"], "active");
    assert_eq!(entry["passthrough"], true);
    assert_eq!(
        entry["cache"],
        fs::canonicalize(&fx.cache).unwrap().to_str().unwrap()
    );
    assert!(entry["counters"]["lookups"].as_u64().is_some(), "{entry}");
    // Mounting the same place twice is refused.
    let out = mlxk_fs(&state, &["mount", mps, "--cache", cache]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already an mlxk-fs mount"));
    // A second mount of the same cache elsewhere works at the same time.
    let mut second = MountGuard::new(&fx.cache, &fx.path("second"), &state, &[]);
    assert_eq!(
        fs::read(second.path("mlx-community/Llama-tiny-f16/config.json")).unwrap(),
        fs::read(mp.join("mlx-community/Llama-tiny-f16/config.json")).unwrap()
    );
    let v: Value = serde_json::from_slice(&mlxk_fs(&state, &["--json", "status"]).stdout).unwrap();
    assert_eq!(v["data"]["count"], 2);
    // umount: the daemon exits and the record goes.
    let out = mlxk_fs(&state, &["--json", "umount", mps]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Not pinned by the second daemon's namespace: the session really ended.
    assert_eq!(v["data"]["daemon_exited"], true, "{v:#}");
    assert!(!mp.join("mlx-community").exists());
    // And it mounts again.
    let out = mlxk_fs(&state, &["mount", mps, "--cache", cache]);
    assert_eq!(out.status.code(), Some(0));
    assert!(mp.join("mlx-community").exists());
    assert_eq!(mlxk_fs(&state, &["umount", mps]).status.code(), Some(0));

    // SIGTERM on a foreground daemon: clean unmount, exit 0, record removed.
    let status = second.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(!second.path("mlx-community").exists());
    // SIGINT (Ctrl-C on a foreground mount) too.
    let mut third = MountGuard::new(&fx.cache, &fx.path("third"), &state, &[]);
    let status = third.stop(nix::sys::signal::Signal::SIGINT);
    assert!(status.success(), "{status}");
    assert!(!third.path("mlx-community").exists());
    let v: Value = serde_json::from_slice(&mlxk_fs(&state, &["--json", "status"]).stdout).unwrap();
    assert_eq!(v["data"]["count"], 0, "{v:#}");

    // Unmounted from outside: the daemon notices and exits.
    let mut outside = MountGuard::new(&fx.cache, &fx.path("outside"), &state, &[]);
    nix::mount::umount2(&outside.mountpoint, nix::mount::MntFlags::empty()).unwrap();
    let status = outside.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status}");

    // kill -9: a stale mount that status reports and mount refuses, both with the fix.
    let mut killed = MountGuard::new(&fx.cache, &fx.path("killed"), &state, &[]);
    let kp = killed.mountpoint.clone();
    let mut child = killed.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let err = fs::metadata(kp.join("mlx-community")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN));
    let v: Value = serde_json::from_slice(&mlxk_fs(&state, &["--json", "status"]).stdout).unwrap();
    let stale = v["data"]["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mountpoint"] == kp.to_str().unwrap())
        .cloned()
        .unwrap();
    assert_eq!(stale["state"], "stale", "{v:#}");
    assert!(stale["fix"].as_str().unwrap().contains("mlxk-fs umount"));
    let human = stdout(&mlxk_fs(&state, &["status"]));
    assert!(
        human.contains("stale") && human.contains("fix: mlxk-fs umount"),
        "{human}"
    );
    let out = mlxk_fs(&state, &["mount", kp.to_str().unwrap(), "--cache", cache]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stale mount") && err.contains("mlxk-fs umount"),
        "{err}"
    );
    let out = mlxk_fs(&state, &["umount", kp.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::metadata(&kp).unwrap().is_dir());
    let v: Value = serde_json::from_slice(&mlxk_fs(&state, &["--json", "status"]).stdout).unwrap();
    assert_eq!(v["data"]["count"], 0, "{v:#}");

    // A serving mount whose daemon's record is in another state directory: detached, and
    // said so (not called stale); its daemon exits.
    let elsewhere = fx.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let out = mlxk_fs(
        &state,
        &["mount", elsewhere.to_str().unwrap(), "--cache", cache],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&mlxk_fs(&state, &["--json", "status"]).stdout).unwrap();
    let pid = v["data"]["mounts"][0]["pid"].as_u64().unwrap() as i32;
    let out = mlxk_fs(
        &fx.path("other-state"),
        &["umount", elsewhere.to_str().unwrap()],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = stdout(&out);
    assert!(
        said.contains("detached") && said.contains("MLXK_FS_STATE_DIR") && !said.contains("stale"),
        "{said}"
    );
    assert!(!elsewhere.join("mlx-community").exists(), "still mounted");
    let gone = || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(), "the detached mount's daemon {pid} did not exit");
    let v: Value = serde_json::from_slice(&mlxk_fs(&state, &["--json", "status"]).stdout).unwrap();
    assert_eq!(v["data"]["count"], 0, "{v:#}");

    // Clear errors for a missing mountpoint.
    let out = mlxk_fs(
        &state,
        &["mount", fx.path("nope").to_str().unwrap(), "--cache", cache],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

/// `convert --quantize` into a mount: the bytes go straight into the overlay directory (not
/// through FUSE), the mount shows the new workspace at once, healthy, with shards identical to a
/// convert into a plain directory; the cache is untouched.
#[test]
fn quantize_into_the_mount_lands_in_the_overlay() {
    if !fuse_available("quantize_into_the_mount_lands_in_the_overlay") {
        return;
    }
    let fx = Fixture::new();
    let before = common::tree_state(&fx.cache);
    let m = mount(&fx, "mnt", &[]);
    let state = fx.path("state");
    let env = [("MLXK_FS_STATE_DIR", state.to_str().unwrap())];
    let src = m.path("meta-test/Llama-tiny");
    let target = m.path("meta-test/Llama-tiny-4bit");
    let out = common::mlxk(
        &[
            "--json",
            "convert",
            src.to_str().unwrap(),
            target.to_str().unwrap(),
            "--quantize",
            "4",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"]["health_status"], "healthy", "{v:#}");
    let in_overlay = state.join("overlay-mnt/meta-test/Llama-tiny-4bit");
    let plain = fx.path("plain-4bit");
    let out = fx.mlxk(&[
        "convert",
        "meta-test/Llama-tiny",
        plain.to_str().unwrap(),
        "--quantize",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    for f in [
        "model.safetensors",
        INDEX_FILE,
        "config.json",
        "tokenizer.json",
    ] {
        let want = common::sha256_file(&plain.join(f));
        assert_eq!(
            common::sha256_file(&in_overlay.join(f)),
            want,
            "{f} in the overlay"
        );
        assert_eq!(
            common::sha256_file(&target.join(f)),
            want,
            "{f} through the mount"
        );
    }
    let sentinel = Sentinel::read(&target).unwrap().unwrap();
    assert_eq!(sentinel.mode.as_deref(), Some("quantize"));
    assert!(!sentinel.is_incomplete());
    assert_healthy(&target, &env);
    drop(m);
    assert_eq!(before, common::tree_state(&fx.cache), "the cache changed");
}

/// `mlxk health --fail-on-unhealthy` of `dir` succeeds (exit 0 only when healthy).
fn assert_healthy(dir: &Path, env: &[(&str, &str)]) {
    let out = common::mlxk(
        &[
            "--json",
            "health",
            dir.to_str().unwrap(),
            "--fail-on-unhealthy",
        ],
        env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", common::stdout(&out));
}
