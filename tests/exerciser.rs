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
use mlxk_fs::testkit::Rng;
use ops::{apply, copy_view, diff, op_dirs, snapshot, snapshot_dirs, touched, Gen, ALL_MODES};

/// The part of the mount the exerciser works in: an org with several cached models.
const WORK: &str = "mlx-community";

#[test]
fn randomized_operations_match_a_reference_directory() {
    if !fuse_available("randomized_operations_match_a_reference_directory") {
        return;
    }
    let ops: usize = std::env::var("MLXK_EXERCISER_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seed: u64 = std::env::var("MLXK_EXERCISER_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    // Compare the whole trees every this many steps (the directories an operation touched are
    // compared at every step either way). 1 in scripts/test.sh; scripts/stress.sh raises it.
    let tree_every: usize = std::env::var("MLXK_EXERCISER_TREE_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1);
    eprintln!(
        "exerciser: {ops} operations, MLXK_EXERCISER_SEED={seed}, whole trees compared every {tree_every} step(s)"
    );

    let fx = Fixture::new();
    let cache_before = tree_state(&fx.cache);
    let m = MountGuard::new(&fx.cache, &fx.path("mnt"), &fx.path("state"), &[]);
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

    let mut gen = Gen {
        rng: Rng::new(seed),
        modes: ALL_MODES,
    };
    let mut tree = snapshot(&reference, false);
    for step in 0..ops {
        let op = gen.op(&tree);
        let got = apply(&work, &op);
        let want = apply(&reference, &op);
        let last = step + 1 == ops;
        let whole = step % tree_every == tree_every - 1 || last;
        // Every file's content too, every 50 steps (or at each whole-tree step when rarer).
        let content_every = tree_every.max(50);
        let full = step % content_every == content_every - 1 || last;
        let b = snapshot(&reference, full);
        let d = if whole {
            diff(&snapshot(&work, full), &b)
        } else {
            let dirs = op_dirs(&op);
            diff(
                &snapshot_dirs(&work, &dirs),
                &snapshot_dirs(&reference, &dirs),
            )
        };
        if got != want || !d.is_empty() {
            panic!(
                "seed {seed}, step {step}: {op:?}\n  mount: {got:?}  reference: {want:?}\n{d}\
                 reproduce: MLXK_EXERCISER_SEED={seed} MLXK_EXERCISER_OPS={} cargo test --test exerciser",
                step + 1
            );
        }
        tree = b;
        if (step + 1) % 10_000 == 0 {
            eprintln!(
                "exerciser: {} operations done, {} entries in the tree",
                step + 1,
                tree.len()
            );
        }
        // Content of what the operation touched, every step.
        for t in touched(&op) {
            let (x, y) = (
                fs::read(work.join(t)).ok(),
                fs::read(reference.join(t)).ok(),
            );
            assert!(
                x == y,
                "seed {seed}, step {step}: content of {t} differs after {op:?}"
            );
        }
    }
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
        "seed {seed}: the cache changed"
    );
}
