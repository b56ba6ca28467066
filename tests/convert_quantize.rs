//! `mlxk convert --quantize / --dequantize` through the binary: the workspace it writes (files,
//! sentinel, config, index, health, JSON), every refusal (with what it names and that nothing is
//! left behind), disk full and kill -9 (a workspace marked incomplete that health reports, and a
//! rerun into a fresh directory that works), all over a fixture cache whose full-tree
//! fingerprint must not change. Bit-exactness against mlx-lm is tests/convert_peers.rs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{sha256_file, snapshot_dir, stderr, tree_state, Fixture};
use mlxk_fs::store::{Sentinel, WeightIndex, INDEX_FILE};
use mlxk_fs::testkit::{llama_model_files, LlamaSpec, WeightDtype};
use serde_json::Value;

/// A model directory written from a spec (outside the cache).
fn model_dir(root: &Path, name: &str, spec: &LlamaSpec, shards: usize) -> PathBuf {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    for (file, bytes) in llama_model_files(spec, shards, shards > 1, "pt") {
        fs::write(dir.join(file), bytes).unwrap();
    }
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn quantize_battery_leaves_the_cache_untouched() {
    let fx = Fixture::new();
    let before = tree_state(&fx.cache);
    quantize_then_dequantize_a_cache_model(&fx);
    refusals_name_the_problem_and_leave_no_target(&fx);
    let after = tree_state(&fx.cache);
    assert_eq!(before, after, "the cache changed");
}

fn quantize_then_dequantize_a_cache_model(fx: &Fixture) {
    let ws = fx.path("ws-4bit");
    let (code, v) = fx.json(&["convert", "meta-test/Llama-tiny", s(&ws), "--quantize", "4"]);
    assert_eq!(code, 0, "{v:#}");
    let d = &v["data"];
    assert_eq!(d["mode"], "quantize");
    assert_eq!(d["bits"], 4);
    assert_eq!(d["group_size"], 64);
    assert_eq!(d["q_mode"], "affine");
    assert_eq!(d["health_status"], "healthy", "{d:#}");
    assert_eq!(d["dtype"], "bfloat16", "the source's torch_dtype");
    assert_eq!(d["shards"], serde_json::json!(["model.safetensors"]));
    let bpw = d["bits_per_weight"].as_f64().unwrap();
    assert!((4.0..6.0).contains(&bpw), "bits per weight {bpw}");
    let out_bytes = d["output_bytes"].as_u64().unwrap();
    assert!(out_bytes > 0 && out_bytes < d["source_bytes"].as_u64().unwrap() / 2);
    // 2 layers × 7 linears + embedding + lm_head; 5 norms kept.
    assert_eq!(d["tensors_converted"], 16);
    assert_eq!(d["tensors_kept"], 5);

    // The sentinel: managed, convert / quantize, its quantization, complete.
    let sentinel = Sentinel::read(&ws).unwrap().unwrap();
    assert_eq!(sentinel.operation, "convert");
    assert_eq!(sentinel.mode.as_deref(), Some("quantize"));
    assert_eq!(sentinel.convert_state, None);
    assert_eq!(
        sentinel.source_repo.as_deref(),
        Some("meta-test/Llama-tiny")
    );
    assert_eq!(
        sentinel.extra["quantization"],
        serde_json::json!({"bits": 4, "group_size": 64, "mode": "affine"})
    );
    // Tokenizer and generation config carried over byte for byte; config gets the blocks.
    let snap = snapshot_dir(&fx.cache, "meta-test/Llama-tiny");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
    ] {
        assert_eq!(sha256_file(&snap.join(f)), sha256_file(&ws.join(f)), "{f}");
    }
    let config: Value = serde_json::from_slice(&fs::read(ws.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization"], config["quantization_config"]);
    assert_eq!(config["quantization"]["bits"], 4);
    let keys: Vec<&String> = config.as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "config keys sorted as mlx-lm writes them");
    let index = WeightIndex::parse(&fs::read(ws.join(INDEX_FILE)).unwrap()).unwrap();
    assert!(index
        .weight_map
        .contains_key("model.layers.0.mlp.down_proj.scales"));
    assert!(index.weight_map.values().all(|f| f == "model.safetensors"));
    // No shard of the source survives into the target.
    assert!(!ws.join("model-00001-of-00003.safetensors").exists());

    // Human output names what happened.
    let human = fx.mlxk(&[
        "convert",
        "meta-test/Llama-tiny",
        s(&fx.path("ws-3bit")),
        "--q-bits",
        "3",
        "--q-group-size",
        "32",
    ]);
    assert_eq!(human.status.code(), Some(0), "{}", stderr(&human));
    let text = common::stdout(&human);
    assert!(
        text.contains("3-bit affine, group 32") && text.contains("health: healthy"),
        "{text}"
    );

    // Dequantize the result: float weights again, no quantization block.
    let back = fx.path("ws-back");
    let (code, v) = fx.json(&["convert", s(&ws), s(&back), "--dequantize"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["data"]["mode"], "dequantize");
    assert_eq!(v["data"]["tensors_converted"], 16);
    assert!(
        v["data"].get("bits").is_none() && v["data"].get("group_size").is_none(),
        "no null where the schema wants an integer: {v:#}"
    );
    let config: Value =
        serde_json::from_slice(&fs::read(back.join("config.json")).unwrap()).unwrap();
    assert!(config.get("quantization").is_none() && config.get("quantization_config").is_none());
    let sentinel = Sentinel::read(&back).unwrap().unwrap();
    assert_eq!(sentinel.mode.as_deref(), Some("dequantize"));
    let index = WeightIndex::parse(&fs::read(back.join(INDEX_FILE)).unwrap()).unwrap();
    assert!(!index.weight_map.keys().any(|k| k.ends_with(".scales")));
}

fn refusals_name_the_problem_and_leave_no_target(fx: &Fixture) {
    let refuse = |args: &[&str], kind: &str, needles: &[&str]| {
        let mut all = vec!["convert"];
        all.extend_from_slice(args);
        let (code, v) = fx.json(&all);
        assert_eq!(code, 1, "{args:?}: {v:#}");
        assert_eq!(v["error"]["type"], kind, "{args:?}: {v:#}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        for n in needles {
            assert!(msg.contains(n), "{args:?}: `{msg}` does not mention `{n}`");
        }
        // The target (always the second argument) was not created.
        assert!(!Path::new(args[1]).exists(), "{args:?} left {}", args[1]);
    };
    let cache = s(&fx.cache).to_string();
    let t = |name: &str| fx.path(name).display().to_string();

    // The target inside the cache.
    refuse(
        &[
            "meta-test/Llama-tiny",
            &format!("{cache}/ws"),
            "--quantize",
            "4",
        ],
        "target_in_cache",
        &["cache"],
    );
    // An existing, non-empty target.
    let full = fx.path("full");
    fs::create_dir_all(&full).unwrap();
    fs::write(full.join("x"), b"x").unwrap();
    let (code, v) = fx.json(&["convert", "meta-test/Llama-tiny", s(&full), "--quantize"]);
    assert_eq!(
        (code, v["error"]["type"].as_str()),
        (1, Some("target_exists"))
    );
    assert_eq!(fs::read_dir(&full).unwrap().count(), 1);

    // Already quantized: dequantize first.
    refuse(
        &[
            "mlx-community/Llama-tiny-4bit",
            &t("q-of-q"),
            "--quantize",
            "4",
        ],
        "source_unsupported",
        &["already quantized", "--dequantize"],
    );
    // Nothing to dequantize.
    refuse(
        &["meta-test/Llama-tiny", &t("deq-of-float"), "--dequantize"],
        "source_unsupported",
        &["not quantized"],
    );
    // Unknown model type, listing the supported ones.
    let gemma = fx.copy_of("meta-test/Llama-tiny", "gemma");
    let mut config: Value =
        serde_json::from_slice(&fs::read(gemma.join("config.json")).unwrap()).unwrap();
    config["model_type"] = "gemma3".into();
    fs::write(gemma.join("config.json"), config.to_string()).unwrap();
    refuse(
        &[s(&gemma), &t("ws-gemma"), "--quantize", "4"],
        "source_unsupported",
        &["gemma3", "llama, mistral, qwen2, qwen3, qwen3_moe"],
    );
    // No config.json at all.
    let bare = fx.copy_of("meta-test/Llama-tiny", "bare");
    fs::remove_file(bare.join("config.json")).unwrap();
    refuse(
        &[s(&bare), &t("ws-bare"), "--quantize", "4"],
        "source_unhealthy",
        &["config.json"],
    );
    // A tensor the model does not have (mlx-lm's strict loader would refuse it).
    let spec = LlamaSpec {
        seed: 40,
        ..LlamaSpec::default()
    };
    let extra = model_dir(fx.tmp.path(), "extra-tensor", &spec, 1);
    let mut tensors = spec.tensors();
    tensors.push(mlxk_fs::testkit::TensorSpec {
        name: "vision_tower.patch_embed.weight".into(),
        dtype: safetensors::Dtype::F16,
        shape: vec![2, 2],
        data: vec![0; 8],
    });
    fs::write(
        extra.join("model.safetensors"),
        mlxk_fs::testkit::safetensors_bytes(&tensors, Some("pt")),
    )
    .unwrap();
    refuse(
        &[s(&extra), &t("ws-extra"), "--quantize", "4"],
        "source_unsupported",
        &[
            "model.safetensors",
            "vision_tower.patch_embed.weight",
            "llama",
        ],
    );
    // A truncated shard: refused by the health gate before anything is created.
    let cut = fx.copy_of("meta-test/Llama-tiny", "truncated");
    let shard = cut.join("model-00002-of-00003.safetensors");
    let len = fs::metadata(&shard).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    refuse(
        &[s(&cut), &t("ws-truncated"), "--quantize", "4"],
        "source_unhealthy",
        &["model-00002-of-00003.safetensors"],
    );
    // Parameters MLX does not accept.
    refuse(
        &["meta-test/Llama-tiny", &t("ws-b7"), "--quantize", "7"],
        "source_unsupported",
        &["bits", "7"],
    );
    refuse(
        &[
            "meta-test/Llama-tiny",
            &t("ws-fp-g64"),
            "--quantize",
            "--q-mode",
            "mxfp4",
            "--q-group-size",
            "64",
        ],
        "source_unsupported",
        &["mxfp4", "group size 32"],
    );
    // Usage errors (exit 2): --dtype with --repair-index, two operations.
    for args in [
        &[
            "meta-test/Llama-tiny",
            "x",
            "--repair-index",
            "--dtype",
            "float16",
        ][..],
        &[
            "meta-test/Llama-tiny",
            "x",
            "--quantize",
            "4",
            "--dequantize",
        ][..],
        &["meta-test/Llama-tiny", "x", "--q-group-size", "32"][..],
    ] {
        let mut all = vec!["convert"];
        all.extend_from_slice(args);
        assert_eq!(fx.mlxk(&all).status.code(), Some(2), "{args:?}");
    }
}

/// A model big enough that converting it takes a while in a debug build (about 84 MB bf16).
fn big_spec() -> LlamaSpec {
    LlamaSpec {
        hidden: 512,
        heads: 8,
        kv_heads: 4,
        intermediate: 2048,
        layers: 8,
        vocab: 8192,
        dtype: WeightDtype::BF16,
        seed: 41,
        ..LlamaSpec::default()
    }
}

fn assert_incomplete(fx: &Fixture, ws: &Path) {
    let sentinel = Sentinel::read(ws).unwrap().unwrap();
    assert!(sentinel.is_incomplete(), "{sentinel:?}");
    let (code, v) = fx.json(&["health", s(ws), "--details", "--fail-on-unhealthy"]);
    assert_eq!(code, 1, "{v:#}");
    let unhealthy = &v["data"]["unhealthy"][0];
    assert_eq!(
        unhealthy["problems"][0]["code"], "convert_incomplete",
        "{v:#}"
    );
    assert!(
        unhealthy["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("incomplete convert"),
        "{v:#}"
    );
    assert!(!ws.join(INDEX_FILE).exists(), "the index is written last");
}

#[test]
fn killed_convert_leaves_an_incomplete_workspace_and_a_rerun_works() {
    let fx = Fixture::new();
    let src = model_dir(fx.tmp.path(), "big", &big_spec(), 2);
    let ws = fx.path("ws-killed");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mlxk"))
        .args(["convert", s(&src), s(&ws), "--quantize", "4"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill as soon as tensor data is being written.
    let deadline = Instant::now() + Duration::from_secs(60);
    let shard = ws.join("model.safetensors");
    while !shard.exists() {
        assert!(
            Instant::now() < deadline,
            "the convert never started writing"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the convert ended early"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_incomplete(&fx, &ws);

    let fresh = fx.path("ws-rerun");
    let (code, v) = fx.json(&["convert", s(&src), s(&fresh), "--quantize", "4"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["data"]["health_status"], "healthy");
    assert_eq!(fx.json(&["health", s(&fresh), "--fail-on-unhealthy"]).0, 0);
}

#[test]
fn disk_full_leaves_an_incomplete_workspace_without_its_shards() {
    let fx = Fixture::new();
    let small = fx.path("small");
    let Some(_tmpfs) = common::SmallTmpfs::mount(
        "disk_full_leaves_an_incomplete_workspace_without_its_shards",
        &small,
        "2m",
    ) else {
        return;
    };
    let src = model_dir(fx.tmp.path(), "big", &big_spec(), 1);
    let ws = small.join("ws");
    let (code, v) = fx.json(&["convert", s(&src), s(&ws), "--quantize", "4"]);
    assert_eq!(code, 1, "{v:#}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("No space left on device") && msg.contains("model.safetensors"),
        "{msg}"
    );
    // The partial shard is gone (the space is given back); the sentinel says incomplete.
    assert!(!ws.join("model.safetensors").exists());
    assert_incomplete(&fx, &ws);
    // A rerun into a fresh directory with room works.
    let fresh = fx.path("ws-roomy");
    let (code, v) = fx.json(&["convert", s(&src), s(&fresh), "--quantize", "4"]);
    assert_eq!(code, 0, "{v:#}");
}

/// Reads every tensor of a model directory's `model*.safetensors`: name -> (dtype, shape, bytes).
fn all_tensors(dir: &Path) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let mut out = std::collections::BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if !(name.starts_with("model") && name.ends_with(".safetensors")) {
            continue;
        }
        let bytes = fs::read(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (t, view) in st.tensors() {
            let prev = out.insert(
                t.clone(),
                (
                    format!("{:?}", view.dtype()),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ),
            );
            assert!(prev.is_none(), "{t} in two shards");
        }
    }
    out
}

/// mlx-lm's shard split and names, at a small shard size: the same tensors as one shard holds,
/// a complete index, a healthy workspace.
#[test]
fn output_is_split_into_shards_named_like_mlx_lm() {
    use mlxk_fs::convert::plan::{Operation, QuantMode, QuantizeSpec};
    use mlxk_fs::convert::weights::{convert_weights, WeightsOptions};
    let tmp = tempfile::tempdir().unwrap();
    let spec = LlamaSpec {
        hidden: 128,
        heads: 4,
        kv_heads: 2,
        intermediate: 256,
        layers: 4,
        vocab: 512,
        seed: 42,
        ..LlamaSpec::default()
    };
    let src = model_dir(tmp.path(), "src", &spec, 1);
    let model = mlxk_fs::store::spec::open_workspace(&src).unwrap();
    let op = Operation::Quantize(QuantizeSpec {
        mode: QuantMode::Affine,
        bits: Some(4),
        group_size: None,
        recipe: None,
        dtype: None,
    });
    let convert = |dst: &Path, max: Option<u64>| {
        let opts = WeightsOptions {
            skip_health: false,
            max_shard_bytes: max,
        };
        convert_weights(&model, dst, &[], &op, &opts, &mut |_| {}).unwrap()
    };
    let one = convert(&tmp.path().join("one"), None);
    assert_eq!(one.shards, ["model.safetensors"]);
    let max = 40_000u64;
    let many = convert(&tmp.path().join("many"), Some(max));
    let n = many.shards.len();
    assert!(n >= 3, "{:?}", many.shards);
    for (i, name) in many.shards.iter().enumerate() {
        assert_eq!(name, &format!("model-{:05}-of-{n:05}.safetensors", i + 1));
        let header =
            mlxk_fs::store::read_header(&tmp.path().join("many").join(name), name).unwrap();
        assert!(
            header.data_len() <= max || header.tensors.len() == 1,
            "{name}: {} bytes of data in {} tensors",
            header.data_len(),
            header.tensors.len()
        );
    }
    assert!(many.health.as_ref().unwrap().healthy());
    let shard_names: std::collections::BTreeSet<&String> = many.index.weight_map.values().collect();
    assert_eq!(shard_names.len(), n);
    assert_eq!(many.index.total_size, one.index.total_size);
    assert_eq!(
        all_tensors(&tmp.path().join("many")),
        all_tensors(&tmp.path().join("one"))
    );
}
