//! `mlxk list / show / health` over the real fixture cache, in human and JSON mode.

mod common;

use std::fs;

use common::{problem_codes, stderr, stdout, Fixture};
use serde_json::Value;

#[test]
fn health_reports_every_broken_variant_with_its_code_and_a_fix() {
    let fx = Fixture::new();
    let cases: &[(&str, &[&str])] = &[
        (
            "broken/missing-shard",
            &[
                "index_shard_missing",
                "index_key_extra",
                "index_total_size_mismatch",
            ],
        ),
        (
            "broken/unlisted-shard",
            &["index_shard_unlisted", "index_key_wrong_shard"],
        ),
        ("broken/truncated-shard", &["shard_truncated"]),
        ("broken/corrupt-header", &["shard_header_invalid"]),
        ("broken/absurd-header", &["shard_header_too_large"]),
        ("broken/lfs-pointer", &["lfs_pointer"]),
        ("broken/incomplete-download", &["download_incomplete"]),
        ("broken/no-index", &["index_missing"]),
        ("broken/duplicate-key", &["tensor_duplicated"]),
        ("broken/escaping-link", &["link_escapes_cache"]),
        ("broken/no-tokenizer", &["tokenizer_missing"]),
        ("broken/bad-config", &["config_model_type_missing"]),
    ];
    for (repo, expected) in cases {
        let (code, v) = fx.json(&["health", repo]);
        assert_eq!(code, 1, "{repo}: unhealthy exits 1");
        assert_eq!(v["status"], "error", "{repo}");
        assert_eq!(v["error"]["type"], "HealthCheckFailed", "{repo}");
        assert_eq!(v["data"]["summary"]["unhealthy_count"], 1, "{repo}");
        let mut codes = problem_codes(&v);
        codes.sort();
        codes.dedup();
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(codes, want, "{repo}: {v:#}");
        for p in v["data"]["unhealthy"][0]["problems"].as_array().unwrap() {
            assert!(
                !p["hint"].as_str().unwrap().is_empty(),
                "{repo}: every problem has a fix: {p}"
            );
            let msg = p["message"].as_str().unwrap();
            if let Some(file) = p["file"].as_str() {
                // The message names the file (or, for per-key index problems, the index).
                assert!(
                    msg.contains(file) || msg.contains("model.safetensors.index.json"),
                    "{repo}: {msg} / {file}"
                );
            }
        }
        // Human mode says the same.
        let out = fx.mlxk(&["health", repo]);
        assert_eq!(out.status.code(), Some(1));
        let text = stdout(&out);
        for c in *expected {
            assert!(text.contains(c), "{repo}: human output lacks {c}:\n{text}");
        }
        assert!(text.contains("fix: "), "{text}");
    }
}

#[test]
fn health_on_the_624_fixture_lists_each_mismatch_and_the_repair() {
    let fx = Fixture::new();
    let (code, v) = fx.json(&["health", "mlx-community/Qwen2.5-VL-tiny-4bit"]);
    assert_eq!(code, 1);
    let problems = v["data"]["unhealthy"][0]["problems"]
        .as_array()
        .unwrap()
        .clone();
    let missing: Vec<&str> = problems
        .iter()
        .filter(|p| p["code"] == "index_shard_missing")
        .map(|p| p["file"].as_str().unwrap())
        .collect();
    let expected_missing: Vec<String> = (1..=10)
        .map(|i| format!("model-{i:05}-of-00010.safetensors"))
        .collect();
    assert_eq!(missing, expected_missing);
    let unlisted: Vec<&str> = problems
        .iter()
        .filter(|p| p["code"] == "index_shard_unlisted")
        .map(|p| p["file"].as_str().unwrap())
        .collect();
    assert_eq!(unlisted.len(), 4);
    assert!(problems
        .iter()
        .any(|p| p["code"] == "index_total_size_mismatch"));
    assert!(problems.iter().any(|p| p["code"] == "index_key_missing"));
    assert!(problems
        .iter()
        .any(|p| p["message"].as_str().unwrap().contains("#624")));
    for p in &problems {
        assert_eq!(
            p["hint"], "mlxk convert mlx-community/Qwen2.5-VL-tiny-4bit <output> --repair-index",
            "{p}"
        );
    }
    let human = stdout(&fx.mlxk(&["health", "Qwen2.5-VL-tiny-4bit"]));
    assert!(
        human.contains(
            "fix: mlxk convert mlx-community/Qwen2.5-VL-tiny-4bit <output> --repair-index"
        ),
        "{human}"
    );
    assert!(
        human.contains("model-00007-of-00010.safetensors"),
        "{human}"
    );
}

#[test]
fn health_of_healthy_models_and_of_the_whole_cache() {
    let fx = Fixture::new();
    for repo in [
        "mlx-community/Llama-tiny-f16",
        "mlx-community/Llama-tiny-bf16",
        "mlx-community/Llama-tiny-f32",
        "mlx-community/Llama-tiny-4bit",
        "meta-test/Llama-tiny",
        "TheBloke/tiny-GGUF",
    ] {
        let (code, v) = fx.json(&["health", repo]);
        assert_eq!(code, 0, "{repo}: {v:#}");
        assert_eq!(v["status"], "success");
        assert_eq!(v["data"]["healthy"][0]["status"], "healthy");
        assert_eq!(v["data"]["healthy"][0]["name"], repo);
        assert!(
            v["data"]["healthy"][0].get("managed").is_none(),
            "cache models are not workspaces"
        );
    }
    let (code, v) = fx.json(&["health"]);
    assert_eq!(code, 1);
    let s = &v["data"]["summary"];
    assert_eq!(s["total"], 21, "datasets and .locks are not models: {s}");
    assert_eq!(s["healthy_count"], 8);
    assert_eq!(s["unhealthy_count"], 13);
    let human = stdout(&fx.mlxk(&["health"]));
    assert!(
        human.contains("21 models: 8 healthy, 13 unhealthy"),
        "{human}"
    );
}

#[test]
fn list_shows_mlx_models_and_all_with_mlx_knife_fields() {
    let fx = Fixture::new();
    let (code, v) = fx.json(&["list"]);
    assert_eq!(code, 0);
    let models = v["data"]["models"].as_array().unwrap();
    assert_eq!(v["data"]["count"], models.len());
    assert!(models.iter().all(|m| m["framework"] == "MLX"), "{v:#}");
    assert!(!models.iter().any(|m| m["name"] == "meta-test/Llama-tiny"));
    let m = models
        .iter()
        .find(|m| m["name"] == "mlx-community/Llama-tiny-4bit")
        .unwrap();
    for key in [
        "name",
        "hash",
        "size_bytes",
        "last_modified",
        "framework",
        "model_type",
        "capabilities",
        "health",
        "runtime_compatible",
        "reason",
        "cached",
    ] {
        assert!(m.get(key).is_some(), "model object lacks `{key}`: {m}");
    }
    assert_eq!(m["hash"].as_str().unwrap().len(), 40);
    assert!(m["last_modified"].as_str().unwrap().ends_with('Z'));
    assert_eq!(m["health"], "healthy");
    assert_eq!(m["runtime_compatible"], true);
    assert_eq!(m["model_type"], "chat");
    assert_eq!(m["cached"], true);
    let broken = models
        .iter()
        .find(|m| m["name"] == "mlx-community/Qwen2.5-VL-tiny-4bit")
        .unwrap();
    assert_eq!(broken["health"], "unhealthy");
    assert_eq!(broken["runtime_compatible"], false);
    assert!(
        broken["reason"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{broken}"
    );

    let (_, all) = fx.json(&["list", "--all"]);
    let names: Vec<&str> = all["data"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 21);
    assert!(names.contains(&"meta-test/Llama-tiny") && names.contains(&"TheBloke/tiny-GGUF"));
    let gguf = all["data"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "TheBloke/tiny-GGUF")
        .unwrap();
    assert_eq!(gguf["framework"], "GGUF");
    let pt = all["data"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "meta-test/Llama-tiny")
        .unwrap();
    assert_eq!(pt["framework"], "PyTorch");

    let (_, filtered) = fx.json(&["list", "--all", "TINY-4bit"]);
    let names: Vec<&str> = filtered["data"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "mlx-community/Llama-tiny-4bit",
            "mlx-community/Qwen2.5-VL-tiny-4bit"
        ]
    );

    let out = fx.mlxk(&["list", "--health"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("FRAMEWORK") && header.contains("HEALTH"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("mlx-community/Llama-tiny-f16 "))
        .unwrap();
    assert!(row.contains("healthy") && row.contains(" KB"), "{row}");
    // Columns are aligned: every row's second column starts where the header's does.
    let id_col = header.find("ID").unwrap();
    for line in text.lines().skip(1) {
        assert_eq!(&line[id_col - 2..id_col], "  ", "misaligned: {line}");
    }
    assert!(!text.contains('\x1b'), "no colour when stdout is not a TTY");
}

#[test]
fn list_without_a_cache_is_empty_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().to_str().unwrap();
    let out = common::mlxk(
        &["--json", "list"],
        &[("HOME", home), ("XDG_CACHE_HOME", home)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"]["count"], 0);
    // An explicit --cache that does not exist is an error, named.
    let out = common::mlxk(&["--cache", "/nonexistent/hub", "list"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/hub"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn cache_root_comes_from_hf_hub_cache_then_hf_home() {
    let fx = Fixture::new();
    let cache = fx.cache.to_str().unwrap();
    let out = common::mlxk(&["--json", "list", "--all"], &[("HF_HUB_CACHE", cache)]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"]["count"], 21);
    let home = fx.tmp.path().to_str().unwrap(); // <tmp>/hub is $HF_HOME/hub
    let out = common::mlxk(&["--json", "list", "--all"], &[("HF_HOME", home)]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"]["count"], 21);
}

#[test]
fn show_model_files_and_config() {
    let fx = Fixture::new();
    let (code, v) = fx.json(&["show", "Llama-tiny-4bit"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["command"], "show");
    assert_eq!(v["data"]["model"]["name"], "mlx-community/Llama-tiny-4bit");
    assert_eq!(v["data"]["workspace_metadata"], Value::Null);
    let meta = &v["data"]["metadata"];
    assert_eq!(meta["model_type"], "llama");
    assert_eq!(meta["architecture"], "LlamaForCausalLM");
    assert_eq!(meta["quantization"]["bits"], 4);
    assert_eq!(meta["quantization"]["group_size"], 64);
    assert_eq!(meta["hidden_size"], 64);
    assert_eq!(meta["num_hidden_layers"], 2);
    assert_eq!(meta["context_length"], 2048);

    let (_, v) = fx.json(&["show", "mlx-community/Llama-tiny-f16", "--files"]);
    let files = v["data"]["files"].as_array().unwrap();
    let names: Vec<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert!(
        names.contains(&"model-00001-of-00002.safetensors") && names.contains(&"tokenizer.json")
    );
    let shard = files
        .iter()
        .find(|f| f["name"] == "model-00001-of-00002.safetensors")
        .unwrap();
    assert_eq!(shard["type"], "weights");
    assert!(shard["size"].as_u64().unwrap() > 1000);

    let (_, v) = fx.json(&["show", "mlx-community/Llama-tiny-f16", "--config"]);
    assert_eq!(v["data"]["config"]["model_type"], "llama");
    let text = stdout(&fx.mlxk(&["show", "mlx-community/Llama-tiny-f16", "--config"]));
    let parsed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed["hidden_size"], 64);

    let text = stdout(&fx.mlxk(&["show", "mlx-community/Llama-tiny-4bit"]));
    for needle in [
        "Framework:",
        "MLX",
        "Quantization:",
        "bits=4",
        "Health:",
        "healthy",
        "Layers:",
    ] {
        assert!(text.contains(needle), "lacks {needle}:\n{text}");
    }
    let text = stdout(&fx.mlxk(&["show", "broken/incomplete-download", "--files"]));
    assert!(text.contains("missing"), "{text}");
}

#[test]
fn resolution_errors_are_typed() {
    let fx = Fixture::new();
    let (code, v) = fx.json(&["show", "Llama-tiny"]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["type"], "ambiguous_match");
    assert_eq!(v["error"]["matches"].as_array().unwrap().len(), 5);
    let (code, v) = fx.json(&["show", "Llama-tiny-f61"]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["type"], "model_not_found");
    let suggestions = v["error"]["suggestions"].as_array().unwrap();
    assert!(
        suggestions
            .iter()
            .any(|s| s == "mlx-community/Llama-tiny-f16"),
        "{v:#}"
    );
    let out = fx.mlxk(&["show", "Llama-tiny"]);
    assert!(
        stderr(&out).contains("matches 5 models"),
        "{}",
        stderr(&out)
    );
    let (code, v) = fx.json(&["show", "test-org/Multi-snap@nope"]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["type"], "revision_not_found");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("dev"),
        "lists the refs: {v:#}"
    );
    let (code, v) = fx.json(&["show", "./no/such/dir"]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["type"], "model_not_found");
    // Usage errors exit 2.
    assert_eq!(fx.mlxk(&["show"]).status.code(), Some(2));
    assert_eq!(fx.mlxk(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        fx.mlxk(&["convert", "a", "b"]).status.code(),
        Some(2),
        "a mode is required"
    );
}

#[test]
fn workspaces_report_managed_and_unmanaged() {
    let fx = Fixture::new();
    // An unmanaged third-party directory: a copy of a snapshot's files.
    let dir = fx.copy_of("mlx-community/Llama-tiny-f16", "third-party");
    let d = dir.to_str().unwrap();
    let (code, v) = fx.json(&["health", d]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["data"]["healthy"][0]["managed"], false);
    assert!(stdout(&fx.mlxk(&["health", d])).contains("[unmanaged workspace]"));
    // A broken sentinel is reported.
    std::fs::write(dir.join(".mlxk_workspace.json"), b"{not json").unwrap();
    let (code, v) = fx.json(&["health", d]);
    assert_eq!(code, 1);
    assert_eq!(problem_codes(&v), vec!["sentinel_invalid"]);
    assert_eq!(v["data"]["unhealthy"][0]["managed"], false);
    // A snapshot directory given as a path is that cache model.
    let snap = common::snapshot_dir(&fx.cache, "mlx-community/Llama-tiny-f16");
    let (code, v) = fx.json(&["show", snap.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(v["data"]["model"]["name"], "mlx-community/Llama-tiny-f16");
    assert_eq!(v["data"]["model"]["cached"], true);
}

#[test]
fn an_index_total_in_the_file_size_convention_is_noted_not_failed() {
    let fx = Fixture::new();
    let dir = fx.copy_of("mlx-community/Llama-tiny-f16", "old-convention");
    let file_sizes: u64 = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    let mut index: Value =
        serde_json::from_slice(&fs::read(dir.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    index["metadata"]["total_size"] = file_sizes.into();
    fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let (code, v) = fx.json(&["health", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{v:#}");
    let notes = v["data"]["healthy"][0]["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0]["code"], "index_total_size_file_convention");
    assert!(
        stdout(&fx.mlxk(&["health", dir.to_str().unwrap()])).contains("older tools' convention")
    );
    // One byte off either convention is a real mismatch.
    index["metadata"]["total_size"] = (file_sizes + 1).into();
    fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let (code, v) = fx.json(&["health", dir.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(problem_codes(&v), vec!["index_total_size_mismatch"]);
}
