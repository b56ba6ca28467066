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
        // mlx-knife's semantics: the check ran, so it succeeded; the model is under `unhealthy`
        // as {name, status, reason} and nothing else.
        let (code, v) = fx.json(&["health", repo]);
        assert_eq!(code, 0, "{repo}: a check that ran exits 0");
        assert_eq!(v["status"], "success", "{repo}");
        assert_eq!(v["data"]["summary"]["unhealthy_count"], 1, "{repo}");
        let entry = v["data"]["unhealthy"][0].as_object().unwrap();
        let keys: Vec<&str> = entry.keys().map(String::as_str).collect();
        assert_eq!(keys, ["name", "status", "reason"], "{repo}");
        assert_eq!(entry["status"], "unhealthy");
        // CI's flag fails it; --details adds the problems.
        let (code, v) = fx.json(&["health", repo, "--fail-on-unhealthy", "--details"]);
        assert_eq!(code, 1, "{repo}: --fail-on-unhealthy exits 1");
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
        // Human mode says the same, and exits as JSON mode does.
        assert_eq!(
            fx.mlxk(&["health", repo, "--fail-on-unhealthy"])
                .status
                .code(),
            Some(1)
        );
        let out = fx.mlxk(&["health", repo]);
        assert_eq!(out.status.code(), Some(0));
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
    let (code, v) = fx.json(&["health", "mlx-community/Qwen2.5-VL-tiny-4bit", "--details"]);
    assert_eq!(code, 0);
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
    assert_eq!(code, 0, "the check ran: success, as mlx-knife's");
    assert_eq!(v["status"], "success");
    assert_eq!(fx.json(&["health", "--fail-on-unhealthy"]).0, 1);
    let s = &v["data"]["summary"];
    assert_eq!(s["total"], 21, "datasets and .locks are not models: {s}");
    assert_eq!(s["healthy_count"], 8);
    assert_eq!(s["unhealthy_count"], 13);
    let human = stdout(&fx.mlxk(&["health"]));
    assert!(
        human.contains("21 models: 8 healthy, 13 unhealthy"),
        "{human}"
    );
    // A name nothing matches is a check of nothing (mlx-knife), unless CI asks otherwise.
    let (code, v) = fx.json(&["health", "no-such-model-anywhere"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["summary"]["total"], 0);
    let out = fx.mlxk(&["health", "no-such-model-anywhere"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("No model matches `no-such-model-anywhere`"));
    let (code, v) = fx.json(&["health", "no-such-model-anywhere", "--fail-on-unhealthy"]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["type"], "HealthCheckFailed");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nothing was checked"));
}

#[test]
fn list_shows_mlx_models_and_all_with_mlx_knife_fields() {
    let fx = Fixture::new();
    let (code, v) = fx.json(&["list"]);
    assert_eq!(code, 0);
    let models = v["data"]["models"].as_array().unwrap();
    assert_eq!(v["data"]["count"], models.len());
    // JSON lists every framework, as mlx-knife does; the table keeps to MLX unless --all.
    assert!(models.iter().any(|m| m["name"] == "meta-test/Llama-tiny"));
    assert_eq!(models.len(), 21);
    let table = stdout(&fx.mlxk(&["list"]));
    assert!(!table.contains("meta-test/Llama-tiny"), "{table}");
    assert!(table.contains("mlx-community/Llama-tiny-4bit"), "{table}");
    assert!(stdout(&fx.mlxk(&["list", "--all"])).contains("meta-test/Llama-tiny"));
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
    assert_eq!(
        m["reason"],
        Value::Null,
        "a healthy, runnable model has no reason"
    );
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
    // mlx-knife's size is text; the bytes are in `file_details` beside it.
    assert!(shard["size"].as_str().unwrap().ends_with(" KB"), "{shard}");
    assert_eq!(shard.as_object().unwrap().len(), 3, "{shard}");
    let detail = v["data"]["file_details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "model-00001-of-00002.safetensors")
        .unwrap();
    assert!(detail["size_bytes"].as_u64().unwrap() > 1000);
    assert_eq!(detail["present"], true);

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
    let (code, v) = fx.json(&["health", d, "--details"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["data"]["healthy"][0]["managed"], false);
    assert!(stdout(&fx.mlxk(&["health", d])).contains("[unmanaged workspace]"));
    // A broken sentinel is reported.
    std::fs::write(dir.join(".mlxk_workspace.json"), b"{not json").unwrap();
    let (code, v) = fx.json(&["health", d, "--details"]);
    assert_eq!(code, 0);
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
    let (code, v) = fx.json(&["health", dir.to_str().unwrap(), "--details"]);
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
    let (code, v) = fx.json(&["health", dir.to_str().unwrap(), "--details"]);
    assert_eq!(code, 0);
    assert_eq!(v["data"]["summary"]["unhealthy_count"], 1);
    assert_eq!(problem_codes(&v), vec!["index_total_size_mismatch"]);
}

#[test]
fn version_and_usage_errors_speak_mlx_knifes_envelope() {
    let fx = Fixture::new();
    for args in [&["version"][..], &["--version"][..]] {
        let (code, v) = fx.json(args);
        assert_eq!(code, 0, "{args:?}: {v:#}");
        assert_eq!(v["status"], "success");
        assert_eq!(v["command"], "version");
        assert_eq!(v["data"]["cli_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["data"]["json_api_spec_version"], "0.2.4");
        assert!(v["data"]["system"]["memory_total_bytes"].as_u64().unwrap() > 0);
    }
    let text = stdout(&fx.mlxk(&["version"]));
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")) && text.contains("0.2.4"),
        "{text}"
    );
    assert_eq!(
        stdout(&fx.mlxk(&["--version"])).trim(),
        format!("mlxk {}", env!("CARGO_PKG_VERSION"))
    );

    for (args, command, needle) in [
        (&["show"][..], "show", "<MODEL>"),
        (&["list", "--bogus"][..], "list", "--bogus"),
        (&["convert", "a", "b"][..], "convert", "--repair-index"),
        (&["run", "m", "--max-tokens", "many"][..], "run", "many"),
        (
            &["health", "--fail-on-unhealthy=yes"][..],
            "health",
            "fail-on-unhealthy",
        ),
    ] {
        let (code, v) = fx.json(args);
        assert_eq!(code, 2, "{args:?}: usage errors exit 2: {v:#}");
        assert_eq!(v["status"], "error");
        assert_eq!(v["command"], command, "{args:?}");
        assert_eq!(v["data"], Value::Null);
        assert_eq!(v["error"]["type"], "CommandError");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{args:?}: {msg}");
        assert!(
            !msg.contains("Usage:") && !msg.starts_with("error:"),
            "{msg}"
        );
    }
    // A command mlx-knife does not have either: its envelope's command is null, as mlx-knife's.
    let (code, v) = fx.json(&["frobnicate"]);
    assert_eq!(code, 2);
    assert_eq!(v["command"], Value::Null);
    assert_eq!(v["error"]["type"], "CommandError");
    // Without --json a usage error stays clap's text on stderr.
    let out = fx.mlxk(&["list", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty() && stderr(&out).contains("Usage:"));
}

/// The documented `content_hash`: `sha256:` + SHA-256 of `<path>\0<sha256 of the file>\n` over
/// the workspace's files in path order, the sentinel excluded.
fn content_hash_of(dir: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    fn walk(dir: &std::path::Path, prefix: &str, out: &mut Vec<(String, std::path::PathBuf)>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &rel, out);
            } else if rel != ".mlxk_workspace.json" {
                out.push((rel, e.path()));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, "", &mut files);
    files.sort();
    let mut all = Sha256::new();
    for (rel, path) in files {
        all.update(format!("{rel}\0{}\n", common::sha256_file(&path)).as_bytes());
    }
    format!("sha256:{:x}", all.finalize())
}

#[test]
fn a_workspace_in_show_carries_origin_content_hash_and_clean() {
    let fx = Fixture::new();
    let ws = fx.path("ws");
    let w = ws.to_str().unwrap();
    fx.repair("mlx-community/Llama-tiny-f16", w);
    let (code, v) = fx.json(&["show", w]);
    assert_eq!(code, 0, "{v:#}");
    let m = &v["data"]["model"];
    assert_eq!(m["origin"], "mlx-community/Llama-tiny-f16");
    assert_eq!(m["content_hash"], content_hash_of(&ws), "{m:#}");
    assert!(m["hash_modified"].as_str().unwrap().ends_with('Z'));
    assert_eq!(m["clean"], true);
    assert_eq!(m["cached"], false);
    assert_eq!(m["hash"], Value::Null);
    assert_eq!(m["display_name"], w);
    // What the model object may not hold is beside it.
    assert_eq!(v["data"]["managed"], true);
    assert_eq!(v["data"]["path"], w);
    assert!(m.get("managed").is_none() && m.get("path").is_none());
    let text = stdout(&fx.mlxk(&["show", w]));
    assert!(text.contains("Clean:") && text.contains("yes"), "{text}");

    // An edit makes it unclean; the recorded hash stays what convert wrote.
    let recorded = m["content_hash"].clone();
    fs::write(ws.join("README.md"), "edited\n").unwrap();
    let (_, v) = fx.json(&["show", w]);
    assert_eq!(v["data"]["model"]["clean"], false);
    assert_eq!(v["data"]["model"]["content_hash"], recorded);
    assert!(stdout(&fx.mlxk(&["show", w])).contains("modified since"));

    // --recalc-hash pins the current state (mlx-knife's flag): recorded in the sentinel.
    let (code, v) = fx.json(&["show", w, "--recalc-hash"]);
    assert_eq!(code, 0, "{v:#}");
    let pinned = &v["data"]["model"]["content_hash"];
    assert_eq!(*pinned, content_hash_of(&ws));
    assert_ne!(*pinned, recorded);
    assert_eq!(v["data"]["model"]["clean"], true);
    let (_, v) = fx.json(&["show", w]);
    assert_eq!(v["data"]["model"]["clean"], true);
    assert_eq!(v["data"]["model"]["content_hash"], *pinned);

    // An unmanaged directory: nothing recorded, clean unknown; nothing to pin into.
    let third = fx.copy_of("mlx-community/Llama-tiny-f16", "third-party");
    let t = third.to_str().unwrap();
    let (_, v) = fx.json(&["show", t]);
    let m = &v["data"]["model"];
    assert_eq!(m["origin"], Value::Null);
    assert_eq!(m["content_hash"], Value::Null);
    assert_eq!(m["clean"], Value::Null);
    assert_eq!(v["data"]["managed"], false);
    let (code, v) = fx.json(&["show", t, "--recalc-hash"]);
    assert_eq!(code, 1);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unmanaged"),
        "{v:#}"
    );
    assert!(!third.join(".mlxk_workspace.json").exists());
    // A cache model has none of these.
    let (_, v) = fx.json(&["show", "mlx-community/Llama-tiny-f16"]);
    let m = &v["data"]["model"];
    for key in [
        "origin",
        "content_hash",
        "hash_modified",
        "clean",
        "display_name",
    ] {
        assert_eq!(m[key], Value::Null, "{key}");
    }
}
