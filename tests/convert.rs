//! `mlxk convert --repair-index`: every success path and every hard error, over one fixture
//! cache whose full-tree fingerprint must be identical before and after the whole battery.

mod common;

use std::fs;
use std::path::Path;

use common::{sha256_file, snapshot_dir, stderr, stdout, tree_state, Fixture};
use mlxk_fs::store::{Sentinel, WeightIndex, INDEX_FILE, SENTINEL_FILE};

fn files_equal_to_source(src: &Path, dst: &Path, except: &[&str]) {
    for e in fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if except.contains(&name.as_str()) {
            continue;
        }
        assert_eq!(
            sha256_file(&p),
            sha256_file(&dst.join(&name)),
            "{name} differs from the source"
        );
    }
}

#[test]
fn convert_battery_leaves_the_cache_untouched() {
    let fx = Fixture::new();
    let before = tree_state(&fx.cache);
    let outside_before = sha256_file(&fx.path("outside-the-cache.safetensors"));

    repairs_the_624_model_into_a_healthy_managed_workspace(&fx);
    single_shard_models(&fx);
    already_correct_sharded_index_is_rewritten_identically(&fx);
    sources_may_be_workspaces_and_third_party_directories(&fx);
    hard_errors_leave_no_target(&fx);
    unhealthy_sources_are_refused_before_anything_is_written(&fx);
    json_output_has_mlx_knife_fields(&fx);

    let after = tree_state(&fx.cache);
    assert_eq!(
        before.len(),
        after.len(),
        "entries added or removed in the cache"
    );
    for (path, node) in &before {
        assert_eq!(
            Some(node),
            after.get(path),
            "cache entry {} changed",
            path.display()
        );
    }
    assert_eq!(
        outside_before,
        sha256_file(&fx.path("outside-the-cache.safetensors"))
    );
}

fn repairs_the_624_model_into_a_healthy_managed_workspace(fx: &Fixture) {
    let out_dir = fx.path("ws-624");
    let out = fx.mlxk(&[
        "convert",
        "mlx-community/Qwen2.5-VL-tiny-4bit",
        out_dir.to_str().unwrap(),
        "--repair-index",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(
        text.contains("index rebuilt") && text.contains("health: healthy"),
        "{text}"
    );

    let snap = snapshot_dir(&fx.cache, "mlx-community/Qwen2.5-VL-tiny-4bit");
    files_equal_to_source(&snap, &out_dir, &[INDEX_FILE]);
    // The rebuilt index names exactly the 4 real shards, every key of their headers.
    let index = WeightIndex::parse(&fs::read(out_dir.join(INDEX_FILE)).unwrap()).unwrap();
    let shards = index.shard_names();
    assert_eq!(
        shards,
        (1..=4)
            .map(|i| format!("model-{i:05}-of-00004.safetensors"))
            .collect::<Vec<_>>()
    );
    let mut expected_keys = Vec::new();
    let mut data_bytes = 0;
    for s in &shards {
        let h = mlxk_fs::store::read_header(&out_dir.join(s), s).unwrap();
        data_bytes += h.data_len();
        expected_keys.extend(h.tensors.keys().cloned());
    }
    expected_keys.sort();
    assert_eq!(
        index.weight_map.keys().cloned().collect::<Vec<_>>(),
        expected_keys
    );
    assert_eq!(index.total_size, data_bytes);
    assert!(index.weight_map.contains_key("lm_head.scales"));

    let sentinel = Sentinel::read(&out_dir).unwrap().unwrap();
    assert!(sentinel.managed);
    assert_eq!(sentinel.operation, "convert");
    assert_eq!(sentinel.mode.as_deref(), Some("repair-index"));
    assert_eq!(
        sentinel.source_repo.as_deref(),
        Some("mlx-community/Qwen2.5-VL-tiny-4bit")
    );
    assert_eq!(
        sentinel.source_revision.as_deref(),
        Some(snap.file_name().unwrap().to_str().unwrap())
    );
    assert_eq!(sentinel.mlxk_version, env!("CARGO_PKG_VERSION"));
    assert!(!sentinel.is_incomplete());

    let (code, v) = fx.json(&[
        "health",
        out_dir.to_str().unwrap(),
        "--details",
        "--fail-on-unhealthy",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["data"]["healthy"][0]["managed"], true);
    // Regular files, not links into the cache.
    assert!(!fs::symlink_metadata(out_dir.join("config.json"))
        .unwrap()
        .file_type()
        .is_symlink());
}

fn single_shard_models(fx: &Fixture) {
    // No index in the source, one shard: none is invented.
    let out_dir = fx.path("ws-f32");
    let out = fx.repair("mlx-community/Llama-tiny-f32", out_dir.to_str().unwrap());
    assert!(!out_dir.join(INDEX_FILE).exists());
    assert!(stdout(&out).contains("no index needed"), "{}", stdout(&out));
    files_equal_to_source(
        &snapshot_dir(&fx.cache, "mlx-community/Llama-tiny-f32"),
        &out_dir,
        &[],
    );

    // A single shard with a stale index: the index is rebuilt.
    let src = fx.copy_of("mlx-community/Llama-tiny-bf16", "stale-single");
    let good = fs::read(src.join(INDEX_FILE)).unwrap();
    fs::write(
        src.join(INDEX_FILE),
        br#"{"metadata": {"total_size": 1}, "weight_map": {"x": "model.safetensors"}}"#,
    )
    .unwrap();
    let out_dir = fx.path("ws-stale-single");
    fx.repair(src.to_str().unwrap(), out_dir.to_str().unwrap());
    assert_eq!(
        fs::read(out_dir.join(INDEX_FILE)).unwrap(),
        good,
        "rebuilt exactly as the fixture (mlx-lm form)"
    );
}

fn already_correct_sharded_index_is_rewritten_identically(fx: &Fixture) {
    let out_dir = fx.path("ws-f16");
    let out = fx.repair("mlx-community/Llama-tiny-f16", out_dir.to_str().unwrap());
    files_equal_to_source(
        &snapshot_dir(&fx.cache, "mlx-community/Llama-tiny-f16"),
        &out_dir,
        &[],
    );
    assert!(stdout(&out).contains("already right"), "{}", stdout(&out));

    // And the index of a model whose index is missing is created.
    let out_dir = fx.path("ws-no-index");
    fx.repair("broken/no-index", out_dir.to_str().unwrap());
    let index = WeightIndex::parse(&fs::read(out_dir.join(INDEX_FILE)).unwrap()).unwrap();
    assert_eq!(
        index.shard_names(),
        vec![
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"
        ]
    );

    // Unlisted and missing-shard variants are repaired too.
    for (repo, dir) in [
        ("broken/unlisted-shard", "ws-unlisted"),
        ("broken/missing-shard", "ws-missing"),
    ] {
        let out_dir = fx.path(dir);
        fx.repair(repo, out_dir.to_str().unwrap());
        let (code, _) = fx.json(&["health", out_dir.to_str().unwrap(), "--fail-on-unhealthy"]);
        assert_eq!(code, 0, "{repo}");
    }
}

fn sources_may_be_workspaces_and_third_party_directories(fx: &Fixture) {
    // A managed workspace as the source: its provenance is carried over, its sentinel is not copied.
    let src = fx.path("ws-624");
    let out_dir = fx.path("ws-624-again");
    fx.repair(src.to_str().unwrap(), out_dir.to_str().unwrap());
    let s = Sentinel::read(&out_dir).unwrap().unwrap();
    assert_eq!(
        s.source_repo.as_deref(),
        Some("mlx-community/Qwen2.5-VL-tiny-4bit")
    );
    files_equal_to_source(&src, &out_dir, &[SENTINEL_FILE]);

    // A third-party directory with a subdirectory and no sentinel: source_repo is its path.
    let src = fx.copy_of("broken/no-index", "third-party");
    fs::create_dir_all(src.join("extras/nested")).unwrap();
    fs::write(src.join("extras/nested/notes.txt"), b"hello").unwrap();
    let before = tree_state(&src);
    // An empty existing target directory is accepted.
    let out_dir = fx.path("empty-target");
    fs::create_dir(&out_dir).unwrap();
    // Relative paths, resolved against the working directory.
    let out = fx.mlxk_in(
        fx.tmp.path(),
        &["convert", "./third-party", "empty-target", "--repair-index"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        fs::read(out_dir.join("extras/nested/notes.txt")).unwrap(),
        b"hello"
    );
    let s = Sentinel::read(&out_dir).unwrap().unwrap();
    assert_eq!(s.source_repo.as_deref(), Some(src.to_str().unwrap()));
    assert_eq!(s.source_revision, None);
    assert_eq!(
        before,
        tree_state(&src),
        "the source directory is only read"
    );
}

fn hard_errors_leave_no_target(fx: &Fixture) {
    let cache = fx.cache.to_str().unwrap();
    // Target inside the cache, directly and through a symlink.
    for target in [
        format!("{cache}/new-ws"),
        format!("{cache}/models--broken--no-index/x"),
    ] {
        let (code, v) = fx.json(&[
            "convert",
            "mlx-community/Llama-tiny-f16",
            &target,
            "--repair-index",
        ]);
        assert_eq!(code, 1);
        assert_eq!(v["error"]["type"], "target_in_cache", "{v:#}");
        assert!(!Path::new(&target).exists());
    }
    let link = fx.path("link-into-cache");
    std::os::unix::fs::symlink(&fx.cache, &link).unwrap();
    let target = link.join("sneaky");
    let out = fx.mlxk(&[
        "convert",
        "mlx-community/Llama-tiny-f16",
        target.to_str().unwrap(),
        "--repair-index",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("inside the Hugging Face cache"),
        "{}",
        stderr(&out)
    );
    assert!(!fx.cache.join("sneaky").exists());

    // Target not empty / a file.
    let busy = fx.path("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("keep.txt"), b"mine").unwrap();
    let (code, v) = fx.json(&[
        "convert",
        "mlx-community/Llama-tiny-f16",
        busy.to_str().unwrap(),
        "--repair-index",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["type"], "target_exists");
    assert_eq!(fs::read_dir(&busy).unwrap().count(), 1);
    let file = fx.path("a-file");
    fs::write(&file, b"x").unwrap();
    let (code, v) = fx.json(&[
        "convert",
        "mlx-community/Llama-tiny-f16",
        file.to_str().unwrap(),
        "--repair-index",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["type"], "target_exists");

    // Source missing.
    let (code, v) = fx.json(&[
        "convert",
        "no-such-model-anywhere",
        fx.path("never").to_str().unwrap(),
        "--repair-index",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["type"], "model_not_found");
    assert!(!fx.path("never").exists());
    let (code, _) = fx.json(&[
        "convert",
        fx.path("nope-dir/").to_str().unwrap(),
        fx.path("never").to_str().unwrap(),
        "--repair-index",
    ]);
    assert_eq!(code, 1);

    // Target inside the source workspace.
    let src = fx.path("ws-f16");
    let (code, v) = fx.json(&[
        "convert",
        src.to_str().unwrap(),
        src.join("sub").to_str().unwrap(),
        "--repair-index",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["type"], "target_in_source");
    assert!(!src.join("sub").exists());
}

fn unhealthy_sources_are_refused_before_anything_is_written(fx: &Fixture) {
    for (repo, code_expected) in [
        ("broken/truncated-shard", "shard_truncated"),
        ("broken/corrupt-header", "shard_header_invalid"),
        ("broken/absurd-header", "shard_header_too_large"),
        ("broken/lfs-pointer", "lfs_pointer"),
        ("broken/incomplete-download", "download_incomplete"),
        ("broken/duplicate-key", "tensor_duplicated"),
        ("broken/escaping-link", "link_escapes_cache"),
    ] {
        let target = fx.path(&format!("refused-{}", repo.replace('/', "-")));
        let (code, v) = fx.json(&["convert", repo, target.to_str().unwrap(), "--repair-index"]);
        assert_eq!(code, 1, "{repo}");
        assert_eq!(v["error"]["type"], "source_unhealthy", "{repo}: {v:#}");
        let problems = v["error"]["problems"].as_array().unwrap();
        assert!(
            problems.iter().any(|p| p["code"] == code_expected),
            "{repo}: {v:#}"
        );
        assert!(v["error"]["message"].as_str().unwrap().contains(repo));
        assert!(!target.exists(), "{repo}: nothing may be left behind");
    }
}

fn json_output_has_mlx_knife_fields(fx: &Fixture) {
    let target = fx.path("ws-json");
    let (code, v) = fx.json(&[
        "convert",
        "mlx-community/Qwen2.5-VL-tiny-4bit",
        target.to_str().unwrap(),
        "--repair-index",
        "--skip-health",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["status"], "success");
    assert_eq!(v["command"], "convert");
    let d = &v["data"];
    for key in [
        "source",
        "target",
        "mode",
        "health_check",
        "message",
        "content_hash",
    ] {
        assert!(d.get(key).is_some(), "convert data lacks `{key}`: {d}");
    }
    assert_eq!(d["mode"], "repair-index");
    assert_eq!(d["health_check"], false);
    // The schema knows healthy | unhealthy: a skipped check states neither.
    assert!(
        d.get("health_status").is_none() && d.get("health_reason").is_none(),
        "{d:#}"
    );
    // Repair has no bits: the key is left out, never null.
    assert!(
        d.get("bits").is_none() && d.get("group_size").is_none(),
        "{d:#}"
    );
    assert_eq!(
        d["content_hash"],
        Sentinel::read(&target)
            .unwrap()
            .unwrap()
            .content_hash()
            .unwrap(),
        "the reply's content hash is the one the sentinel records"
    );
    assert_eq!(d["index_written"], true);
    assert!(d["repairs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["code"] == "index_shard_missing"));
    assert_eq!(
        d["files_copied"].as_u64(),
        Some(fs::read_dir(&target).unwrap().count() as u64 - 2)
    );
}
