//! The model store as a library: spec resolution over a real cache layout, header-only I/O on a
//! 64-shard model, and convert's clean-up when it fails after creating the target.

mod common;

use std::fs;
use std::path::Path;

use common::Fixture;
use mlxk_fs::convert::repair_index::{repair_index, RepairOptions};
use mlxk_fs::store::spec::{find_revision, open_workspace, resolve};
use mlxk_fs::store::{check, HubCache, StoreError, INDEX_FILE};
use mlxk_fs::testkit::{fake_sha, llama_model_files, FixtureCache, LlamaSpec};

fn cache(fx: &Fixture) -> HubCache {
    HubCache::open(&fx.cache).unwrap()
}

#[test]
fn bare_names_prefer_mlx_community_then_a_unique_substring() {
    let fx = Fixture::new();
    let c = cache(&fx);
    assert_eq!(
        resolve(Some(&c), "Llama-tiny-f16").unwrap().name,
        "mlx-community/Llama-tiny-f16"
    );
    assert_eq!(
        resolve(Some(&c), "llama-TINY-F16").unwrap().name,
        "mlx-community/Llama-tiny-f16"
    );
    // Exact org/name wins even though it is a substring of other names.
    assert_eq!(
        resolve(Some(&c), "meta-test/Llama-tiny").unwrap().name,
        "meta-test/Llama-tiny"
    );
    assert_eq!(
        resolve(Some(&c), "tiny-GGUF").unwrap().name,
        "TheBloke/tiny-GGUF"
    );
    match resolve(Some(&c), "Llama-tiny") {
        Err(StoreError::AmbiguousMatch { matches, .. }) => assert_eq!(matches.len(), 5),
        other => panic!("expected ambiguity, got {other:?}"),
    }
    match resolve(Some(&c), "broken") {
        Err(StoreError::AmbiguousMatch { matches, .. }) => {
            assert!(matches.iter().all(|m| m.starts_with("broken/")))
        }
        other => panic!("expected ambiguity, got {other:?}"),
    }
    assert!(matches!(
        resolve(Some(&c), "zzz-unknown"),
        Err(StoreError::ModelNotFound { .. })
    ));
    // Datasets are not models.
    assert!(matches!(
        resolve(Some(&c), "someone/data"),
        Err(StoreError::ModelNotFound { .. })
    ));
}

#[test]
fn refs_main_wins_over_the_newest_snapshot_and_revisions_resolve() {
    let fx = Fixture::new();
    let c = cache(&fx);
    let old = fake_sha("test-org/Multi-snap@old");
    let new = fake_sha("test-org/Multi-snap@new");
    assert_eq!(
        resolve(Some(&c), "test-org/Multi-snap")
            .unwrap()
            .snapshot_sha(),
        Some(old.as_str())
    );
    assert_eq!(
        resolve(Some(&c), "test-org/Multi-snap@dev")
            .unwrap()
            .snapshot_sha(),
        Some(new.as_str())
    );
    assert_eq!(
        resolve(Some(&c), "test-org/Multi-snap@main")
            .unwrap()
            .snapshot_sha(),
        Some(old.as_str())
    );
    assert_eq!(
        resolve(Some(&c), &format!("Multi-snap@{}", &new[..7]))
            .unwrap()
            .snapshot_sha(),
        Some(new.as_str())
    );
    assert_eq!(
        resolve(
            Some(&c),
            &format!("test-org/Multi-snap@{}", new.to_uppercase())
        )
        .unwrap()
        .snapshot_sha(),
        Some(new.as_str())
    );
    // Without refs/main: the newest snapshot by mtime.
    let a = fake_sha("test-org/No-refs@a");
    assert_eq!(
        resolve(Some(&c), "test-org/No-refs")
            .unwrap()
            .snapshot_sha(),
        Some(a.as_str())
    );
    assert!(matches!(
        resolve(Some(&c), "test-org/Multi-snap@0000000"),
        Err(StoreError::RevisionNotFound { .. })
    ));
}

#[test]
fn an_ambiguous_sha_prefix_lists_the_candidates() {
    let tmp = tempfile::tempdir().unwrap();
    let fc = FixtureCache::create(&tmp.path().join("hub")).unwrap();
    let files = llama_model_files(&LlamaSpec::default(), 1, true, "mlx");
    for sha in [
        "abc1000000000000000000000000000000000000",
        "abc2000000000000000000000000000000000000",
    ] {
        for (rel, bytes) in &files {
            let etag = fc.write_blob("o/m", bytes).unwrap();
            fc.link("o/m", sha, rel, &etag).unwrap();
        }
    }
    let c = HubCache::open(&fc.root).unwrap();
    let repo = c.repo("o/m").unwrap();
    match find_revision(&repo, "abc") {
        Err(StoreError::AmbiguousRevision { matches, .. }) => assert_eq!(matches.len(), 2),
        other => panic!("expected ambiguity, got {other:?}"),
    }
    assert_eq!(
        find_revision(&repo, "abc2").unwrap().sha,
        "abc2000000000000000000000000000000000000"
    );
    // A nested file links with deeper ../ and is followed.
    let etag = fc.write_blob("o/m", b"nested").unwrap();
    fc.link(
        "o/m",
        "abc1000000000000000000000000000000000000",
        "sub/dir/n.txt",
        &etag,
    )
    .unwrap();
    let m = resolve(Some(&c), "o/m@abc1").unwrap();
    let f = m.file("sub/dir/n.txt").unwrap();
    assert_eq!(fs::read(f.readable().unwrap()).unwrap(), b"nested");
}

#[test]
fn directories_resolve_as_workspaces_and_snapshot_paths_as_cache_models() {
    let fx = Fixture::new();
    let c = cache(&fx);
    let snap = common::snapshot_dir(&fx.cache, "mlx-community/Llama-tiny-4bit");
    let m = resolve(Some(&c), snap.to_str().unwrap()).unwrap();
    assert_eq!(m.name, "mlx-community/Llama-tiny-4bit");
    assert!(m.managed().is_none());
    let ws = fx.path("ws");
    fs::create_dir(&ws).unwrap();
    fs::write(ws.join("config.json"), br#"{"model_type": "llama"}"#).unwrap();
    let m = resolve(Some(&c), ws.to_str().unwrap()).unwrap();
    assert_eq!(m.managed(), Some(false));
    // Without a cache at all, paths still work and names do not.
    assert!(resolve(None, ws.to_str().unwrap()).is_ok());
    assert!(matches!(
        resolve(None, "Llama-tiny-f16"),
        Err(StoreError::ModelNotFound { .. })
    ));
}

/// 64 shards whose headers describe 1 GiB of data each, held as sparse holes: health and the
/// index rebuild must read the 8 + N header bytes of each and nothing more.
#[test]
fn health_and_index_rebuild_read_only_header_bytes_of_64_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let fc = FixtureCache::create(&tmp.path().join("hub")).unwrap();
    fc.add_sparse_model("big/sparse", 64, 1 << 30).unwrap();
    let c = HubCache::open(&fc.root).unwrap();
    let model = resolve(Some(&c), "big/sparse").unwrap();

    let header_bytes: u64 = model
        .files
        .iter()
        .filter(|f| f.rel_path.ends_with(".safetensors"))
        .map(|f| {
            mlxk_fs::store::read_header(f.readable().unwrap(), &f.rel_path)
                .unwrap()
                .bytes_read()
        })
        .sum();
    let small_files: u64 = model
        .files
        .iter()
        .filter(|f| !f.rel_path.ends_with(".safetensors"))
        .map(|f| f.size().unwrap())
        .sum();
    let report = check(&model);
    assert!(report.healthy(), "{:?}", report.problems);
    assert_eq!(report.shards.len(), 64);
    assert_eq!(
        report.size_bytes,
        header_bytes + 64 * (1 << 30) + small_files
    );
    // Headers, plus config.json and the index read whole; not one byte of tensor data.
    assert_eq!(
        report.bytes_read,
        header_bytes + small_files,
        "health read more than headers"
    );
    assert!(report.bytes_read < 64 * 1024);

    // The CLI reports the same accounting.
    let out = common::mlxk(
        &[
            "--cache",
            fc.root.to_str().unwrap(),
            "--json",
            "health",
            "big/sparse",
            "--details",
        ],
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["data"]["summary"]["bytes_read"],
        header_bytes + small_files
    );

    // Repair-index on a 64-shard model with small holes (the copy itself must read the data):
    // the rebuild reads exactly the headers of the 64 copies.
    let fc2 = FixtureCache::create(&tmp.path().join("hub2")).unwrap();
    fc2.add_sparse_model("big/sparse", 64, 1 << 16).unwrap();
    let c2 = HubCache::open(&fc2.root).unwrap();
    let model = resolve(Some(&c2), "big/sparse").unwrap();
    let header_bytes: u64 = check(&model).shards.iter().map(|s| s.bytes_read()).sum();
    let target = tmp.path().join("ws");
    let outcome = repair_index(
        &model,
        &target,
        &[&c2],
        &RepairOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(outcome.index_bytes_read, header_bytes);
    assert_eq!(outcome.index.as_ref().unwrap().weight_map.len(), 64);
    assert!(outcome.health.unwrap().healthy());
}

#[test]
fn a_convert_that_fails_after_creating_the_target_removes_what_it_wrote() {
    let fx = Fixture::new();
    let src = fx.copy_of("mlx-community/Llama-tiny-f16", "src");
    let model = open_workspace(&src).unwrap();
    // A file vanishes between resolution and the copy.
    fs::remove_file(src.join("tokenizer.json")).unwrap();
    let c = cache(&fx);

    let created = fx.path("new/deeper/ws");
    let mut seen = Vec::new();
    let err = repair_index(
        &model,
        &created,
        &[&c],
        &RepairOptions::default(),
        &mut |p| seen.push(p.current.to_string()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    assert!(
        !fx.path("new").exists(),
        "directories this call created are removed"
    );
    assert!(!seen.is_empty(), "progress was reported");

    let existing = fx.path("existing-empty");
    fs::create_dir(&existing).unwrap();
    assert!(repair_index(
        &model,
        &existing,
        &[&c],
        &RepairOptions::default(),
        &mut |_| {}
    )
    .is_err());
    assert!(existing.is_dir(), "a directory the user made stays");
    assert_eq!(
        fs::read_dir(&existing).unwrap().count(),
        0,
        "and is empty again"
    );
    let _ = Path::new(INDEX_FILE);
}

#[test]
fn an_interrupted_convert_is_reported_by_health() {
    let fx = Fixture::new();
    let ws = fx.copy_of("mlx-community/Llama-tiny-f32", "half");
    // What a convert killed mid-copy leaves: the sentinel, still marked in progress.
    let mut s =
        mlxk_fs::store::Sentinel::new("convert", Some("repair-index"), Some("x/y".into()), None);
    s.convert_state = Some(mlxk_fs::store::Sentinel::IN_PROGRESS.into());
    s.write_atomic(&ws).unwrap();
    let report = check(&open_workspace(&ws).unwrap());
    let codes: Vec<&str> = report.problems.iter().map(|p| p.code.as_str()).collect();
    assert_eq!(codes, vec!["convert_incomplete"]);
}
