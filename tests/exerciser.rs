//! The randomized operation exerciser (in the spirit of fsx and of mountpoint-s3's reference-model
//! tests): random operations applied to a directory of the mount AND to a plain reference
//! directory that started as a copy of the same view. After every step the two give the same
//! result (success, or the same errno) and the two trees compare equal (names, types, sizes,
//! modes, content, link targets, user xattrs); at the end the cache's full-tree fingerprint
//! (content, mode, mtime, link targets) is unchanged, and files held open read-only (with
//! passthrough) since the start still read the cache's bytes.
//!
//! `MLXK_EXERCISER_OPS` (default 2,000) and `MLXK_EXERCISER_SEED` (default: from the clock)
//! steer it; the seed is printed, and named in every failure. `MLXK_EXERCISER_TREE_EVERY`
//! (default 1) spaces out the whole-tree comparisons (the touched directories are compared at
//! every step regardless). scripts/stress.sh runs 100,000.

mod common;

mod ops;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;

use common::mount::{fuse_available, MountGuard};
use common::{tree_state, Fixture};
use ops::{copy_view, diff, snapshot, Dir, Run, ALL_MODES};

/// The part of the mount the exerciser works in: an org with several cached models.
const WORK: &str = "mlx-community";

#[test]
fn randomized_operations_match_a_reference_directory() {
    if !fuse_available("randomized_operations_match_a_reference_directory") {
        return;
    }
    let run = Run::from_env("MLXK_EXERCISER", "exerciser", 2000, 1);
    let fx = Fixture::new();
    let cache_before = tree_state(&fx.cache);
    // Extended attributes are among the compared state: served here (off by default).
    let m = MountGuard::new(&fx.cache, &fx.path("mnt"), &fx.path("state"), &["--xattrs"]);
    let work = m.path(WORK);
    // The index a model shows is recomputed when its shards change in the overlay; a plain
    // directory has no such file. Making the virtual files ordinary overlay files first (a
    // write-intent open copies them up) lets the two trees be compared byte for byte.
    for e in fs::read_dir(&work).unwrap() {
        let model = e.unwrap().path();
        for name in [
            mlxk_fs::store::INDEX_FILE,
            mlxk_fs::store::SENTINEL_FILE,
            "model.safetensors.index.json.orig",
        ] {
            if model.join(name).exists() {
                OpenOptions::new()
                    .append(true)
                    .open(model.join(name))
                    .unwrap();
            }
        }
    }
    let reference = fx.path("reference");
    copy_view(&work, &reference);
    assert_eq!(
        diff(&snapshot(&work, true), &snapshot(&reference, true)),
        "",
        "the copy differs from the view"
    );

    // Cache-backed files held open read-only (passthrough) through the whole run.
    let held: Vec<(File, Vec<u8>)> = snapshot(&work, false)
        .iter()
        .filter(|(k, e)| e.kind == "file" && k.ends_with(".safetensors"))
        .map(|(k, _)| {
            let p = work.join(k);
            (File::open(&p).unwrap(), fs::read(&p).unwrap())
        })
        .collect();
    assert!(held.len() >= 4);

    run.go(&mut Dir(work.clone()), &reference, ALL_MODES);
    for (f, bytes) in &held {
        let mut again = vec![0u8; bytes.len()];
        f.read_exact_at(&mut again, 0).unwrap();
        assert!(
            again == *bytes,
            "a handle opened before the run no longer reads the cache's bytes"
        );
    }
    drop(held);
    let c = m.counters();
    eprintln!("exerciser counters: {c}");
    drop(m);
    assert_eq!(
        cache_before,
        tree_state(&fx.cache),
        "seed {}: the cache changed",
        run.seed
    );
}
