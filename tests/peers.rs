//! The real peers as oracles (Python `safetensors`, `mlx`, `mlx-lm` from scripts/peers.sh):
//! the repaired index equals the one Python derives from the shards and the one mlx-lm writes,
//! and mlx-lm loads the repaired workspace and generates what it generates from the original.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{snapshot_dir, stderr, Fixture};
use mlxk_fs::store::INDEX_FILE;

fn python(py: &Path, args: &[&str]) -> String {
    let out = Command::new(py)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn repaired_624_index_equals_pythons_and_mlx_lm_loads_the_workspace() {
    let Some(py) =
        common::peer_python("repaired_624_index_equals_pythons_and_mlx_lm_loads_the_workspace")
    else {
        return;
    };
    let fx = Fixture::new();
    let ws = fx.path("ws-624");
    fx.repair("mlx-community/Qwen2.5-VL-tiny-4bit", ws.to_str().unwrap());

    let derived = python(&py, &[&script("derive_index.py"), ws.to_str().unwrap()]);
    let ours = fs::read_to_string(ws.join(INDEX_FILE)).unwrap();
    assert_eq!(
        ours, derived,
        "the repaired index differs from the one Python's safetensors derives"
    );

    // The real loader: same greedy tokens from the repaired workspace as from the cache snapshot.
    let snap = snapshot_dir(&fx.cache, "mlx-community/Qwen2.5-VL-tiny-4bit");
    let from_ws = python(
        &py,
        &[&script("load_generate.py"), ws.to_str().unwrap(), "8"],
    );
    let from_cache = python(
        &py,
        &[&script("load_generate.py"), snap.to_str().unwrap(), "8"],
    );
    assert_eq!(from_ws, from_cache);
    assert_eq!(serde_json::from_str::<Vec<u32>>(&from_ws).unwrap().len(), 8);
}

#[test]
fn rebuilt_index_is_byte_identical_to_what_mlx_lm_convert_writes() {
    let Some(py) =
        common::peer_python("rebuilt_index_is_byte_identical_to_what_mlx_lm_convert_writes")
    else {
        return;
    };
    let fx = Fixture::new();
    let src = snapshot_dir(&fx.cache, "meta-test/Llama-tiny");
    for (name, extra) in [
        (
            "mlx-q4",
            vec!["-q", "--q-bits", "4", "--q-group-size", "64"],
        ),
        (
            "mlx-q8-g32",
            vec!["-q", "--q-bits", "8", "--q-group-size", "32"],
        ),
        ("mlx-mixed", vec!["-q", "--quant-predicate", "mixed_3_6"]),
        ("mlx-f16", vec!["--dtype", "float16"]),
    ] {
        let mlx_out = fx.path(name);
        let mut args = vec![
            "-m",
            "mlx_lm",
            "convert",
            "--hf-path",
            src.to_str().unwrap(),
            "--mlx-path",
            mlx_out.to_str().unwrap(),
        ];
        args.extend(extra);
        python(&py, &args);
        let reference = fs::read(mlx_out.join(INDEX_FILE)).unwrap();
        // Break it the way mlx-vlm did (the source's index copied over), then repair.
        fs::copy(src.join(INDEX_FILE), mlx_out.join(INDEX_FILE)).unwrap();
        let (code, _) = fx.json(&["health", mlx_out.to_str().unwrap(), "--fail-on-unhealthy"]);
        assert_eq!(code, 1, "{name}: the broken index is noticed");
        let ws = fx.path(&format!("{name}-repaired"));
        let out = fx.mlxk(&[
            "convert",
            mlx_out.to_str().unwrap(),
            ws.to_str().unwrap(),
            "--repair-index",
        ]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        let ours = fs::read(ws.join(INDEX_FILE)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&reference),
            "{name}: index differs from mlx-lm's"
        );
    }
}

/// The user's promise: mlx_lm.load on the mounted 624 model generates what it generates from the
/// snapshot directory, and Python's json / safetensors agree with the served index.
#[test]
fn mlx_lm_loads_the_mounted_624_model() {
    let Some(py) = common::peer_python("mlx_lm_loads_the_mounted_624_model") else {
        return;
    };
    if !common::mount::fuse_available("mlx_lm_loads_the_mounted_624_model") {
        return;
    }
    let fx = Fixture::new();
    for extra in [&[][..], &["--no-passthrough"][..]] {
        let m =
            common::mount::MountGuard::new(&fx.cache, &fx.path("mnt"), &fx.path("state"), extra);
        let dir = m.path("mlx-community/Qwen2.5-VL-tiny-4bit");
        let derived = python(&py, &[&script("derive_index.py"), dir.to_str().unwrap()]);
        let served = fs::read_to_string(dir.join(INDEX_FILE)).unwrap();
        assert_eq!(
            served, derived,
            "{extra:?}: served index differs from Python's derivation"
        );
        let snap = snapshot_dir(&fx.cache, "mlx-community/Qwen2.5-VL-tiny-4bit");
        let from_mount = python(
            &py,
            &[&script("load_generate.py"), dir.to_str().unwrap(), "8"],
        );
        let from_cache = python(
            &py,
            &[&script("load_generate.py"), snap.to_str().unwrap(), "8"],
        );
        assert_eq!(from_mount, from_cache, "{extra:?}");
    }
}
