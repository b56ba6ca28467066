//! The four commands: resolve, call the store / convert, render.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::output::{human_size, short_time, table, Style};
use super::{CliError, ConvertArgs, HealthArgs, ListArgs, MlxkArgs, Outcome, ShowArgs};
use crate::convert::plan::{MixedRecipe, Operation, QuantMode, QuantizeSpec};
use crate::convert::quant::FloatDtype;
use crate::convert::repair_index::{repair_index, Progress, RepairOptions};
use crate::convert::weights::{self, WeightsOptions, WeightsProgress};
use crate::store::cache::{cache_root, HubCache};
use crate::store::health::{self, HealthReport};
use crate::store::spec::{self, open_snapshot, ResolvedModel};
use crate::store::summary::{metadata, summarize};

/// The cache, if it exists: workspace paths work without one.
pub(super) fn open_cache(args: &MlxkArgs) -> Result<Option<HubCache>, CliError> {
    let root = cache_root(args.cache.as_deref());
    if !root.exists() {
        if args.cache.is_some() {
            return Err(CliError::new(
                "CommandError",
                format!("cache directory {} does not exist", root.display()),
            ));
        }
        tracing::debug!(root = %root.display(), "no Hugging Face cache");
        return Ok(None);
    }
    Ok(Some(HubCache::open(&root)?))
}

fn require_cache(args: &MlxkArgs) -> Result<HubCache, CliError> {
    open_cache(args)?.ok_or_else(|| {
        CliError::new(
            "CommandError",
            format!(
                "no Hugging Face cache at {} (set --cache, HF_HUB_CACHE or HF_HOME)",
                cache_root(args.cache.as_deref()).display()
            ),
        )
    })
}

/// Every cached model at its default snapshot, checked in parallel (header reads only).
fn all_cached(cache: &HubCache) -> Result<Vec<(ResolvedModel, HealthReport)>, CliError> {
    let repos = cache.repos()?;
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let chunk = repos.len().div_ceil(threads).max(1);
    let mut out: Vec<(ResolvedModel, HealthReport)> = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = repos
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .filter_map(|repo| {
                            let snapshot = repo.default_snapshot()?;
                            match open_snapshot(cache, repo.clone(), snapshot) {
                                Ok(m) => {
                                    let r = health::check(&m);
                                    Some((m, r))
                                }
                                Err(e) => {
                                    tracing::warn!("{e}");
                                    None
                                }
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            if let Ok(v) = h.join() {
                out.extend(v);
            }
        }
    });
    out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(out)
}

pub fn list(args: &MlxkArgs, a: &ListArgs) -> Result<Outcome, CliError> {
    let style = Style::detect();
    let Some(cache) = open_cache(args)? else {
        return Ok(Outcome {
            data: json!({"models": [], "count": 0}),
            human: "No models (no Hugging Face cache found).\n".into(),
            ok: true,
            failure: None,
        });
    };
    let pattern = a.pattern.as_deref().map(str::to_lowercase);
    let models: Vec<_> = all_cached(&cache)?
        .into_iter()
        .filter(|(m, _)| {
            pattern
                .as_ref()
                .is_none_or(|p| m.name.to_lowercase().contains(p))
        })
        .map(|(m, r)| summarize(&m, &r))
        .filter(|s| a.all || s.framework == "MLX")
        .collect();
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|s| {
            let hash = s.hash.as_deref().unwrap_or("-");
            let mut row = vec![
                s.name.clone(),
                if a.verbose {
                    hash.to_string()
                } else {
                    hash.chars().take(8).collect()
                },
                human_size(s.size_bytes),
                short_time(s.last_modified.as_deref()),
                s.framework.to_string(),
                s.model_type.to_string(),
            ];
            if a.health || a.verbose {
                row.push(if s.health == "healthy" {
                    style.green("healthy")
                } else {
                    style.red("unhealthy")
                });
            }
            if a.verbose {
                row.push(s.reason.clone());
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "ID", "SIZE", "MODIFIED", "FRAMEWORK", "TYPE"];
    if a.health || a.verbose {
        header.push("HEALTH");
    }
    if a.verbose {
        header.push("REASON");
    }
    let human = if models.is_empty() {
        let scope = if a.all { "" } else { " MLX" };
        format!(
            "No{scope} models found in {}{}\n",
            cache.root().display(),
            if a.all {
                ""
            } else {
                " (--all shows every framework)"
            }
        )
    } else {
        table(&header, &rows, style)
    };
    Ok(Outcome {
        data: json!({"models": models, "count": models.len()}),
        human,
        ok: true,
        failure: None,
    })
}

pub fn show(args: &MlxkArgs, a: &ShowArgs) -> Result<Outcome, CliError> {
    let style = Style::detect();
    let cache = open_cache(args)?;
    let model = spec::resolve(cache.as_ref(), &a.model)?;
    let report = health::check(&model);
    let summary = summarize(&model, &report);
    let meta = metadata(report.config.as_ref());
    let mut data = json!({
        "model": summary,
        "workspace_metadata": model.sentinel(),
        "metadata": meta,
    });
    let mut human = String::new();
    if a.config {
        let config = report.config.as_ref().map(|c| Value::Object(c.raw.clone()));
        let Some(config) = config else {
            return Err(CliError::new(
                "CommandError",
                format!("{}: config.json is missing or invalid", model.name),
            ));
        };
        human = format!(
            "{}\n",
            serde_json::to_string_pretty(&config).unwrap_or_default()
        );
        data["config"] = config;
    } else if a.files {
        let files: Vec<Value> = model
            .files
            .iter()
            .map(|f| json!({"name": f.rel_path, "size": f.size(), "type": file_type(&f.rel_path), "present": f.readable().is_some()}))
            .collect();
        let rows: Vec<Vec<String>> = model
            .files
            .iter()
            .map(|f| {
                vec![
                    f.rel_path.clone(),
                    f.size()
                        .map(human_size)
                        .unwrap_or_else(|| style.red("missing")),
                    file_type(&f.rel_path).to_string(),
                ]
            })
            .collect();
        human = table(&["FILE", "SIZE", "TYPE"], &rows, style);
        data["files"] = Value::Array(files);
    } else {
        let s = &data["model"];
        let field = |k: &str, v: String| format!("{:<20}{v}\n", format!("{k}:"));
        let opt = |v: &Value| match v {
            Value::Null => "-".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        human.push_str(&style.bold(&model.name));
        human.push('\n');
        match model.snapshot_sha() {
            Some(sha) => human.push_str(&field("Snapshot", sha.to_string())),
            None => human.push_str(&field("Path", model.dir().display().to_string())),
        }
        human.push_str(&field("Size", human_size(report.size_bytes)));
        human.push_str(&field("Modified", short_time(s["last_modified"].as_str())));
        human.push_str(&field("Framework", opt(&s["framework"])));
        human.push_str(&field("Type", opt(&s["model_type"])));
        human.push_str(&field("Capabilities", summary_caps(s)));
        let health_text = if report.healthy() {
            style.green("healthy")
        } else {
            style.red("unhealthy")
        };
        human.push_str(&field("Health", health_text));
        for p in &report.problems {
            human.push_str(&format!("  {} {}\n", style.yellow(p.code), p.message));
        }
        human.push_str(&field(
            "Runtime compatible",
            format!(
                "{} ({})",
                if summary_bool(s, "runtime_compatible") {
                    "yes"
                } else {
                    "no"
                },
                opt(&s["reason"])
            ),
        ));
        human.push_str(&field("Model type", opt(&data["metadata"]["model_type"])));
        human.push_str(&field(
            "Architecture",
            opt(&data["metadata"]["architecture"]),
        ));
        if let Some(q) = data["metadata"]["quantization"].as_object() {
            let parts: Vec<String> = q.iter().map(|(k, v)| format!("{k}={}", opt(v))).collect();
            human.push_str(&field("Quantization", parts.join(", ")));
        }
        for (label, key) in [
            ("Context length", "context_length"),
            ("Vocab size", "vocab_size"),
            ("Hidden size", "hidden_size"),
            ("Attention heads", "num_attention_heads"),
            ("Layers", "num_hidden_layers"),
        ] {
            human.push_str(&field(label, opt(&data["metadata"][key])));
        }
        if let Some(managed) = model.managed() {
            human.push_str(&field(
                "Workspace",
                if managed {
                    "managed".into()
                } else {
                    "unmanaged".into()
                },
            ));
            if let Some(sentinel) = model.sentinel() {
                human.push_str(&field(
                    "  Created",
                    format!(
                        "{} by mlxk {} ({})",
                        sentinel.created_at, sentinel.mlxk_version, sentinel.operation
                    ),
                ));
                if let Some(src) = &sentinel.source_repo {
                    human.push_str(&field(
                        "  Source",
                        format!(
                            "{src}{}",
                            sentinel
                                .source_revision
                                .as_deref()
                                .map(|r| format!("@{r}"))
                                .unwrap_or_default()
                        ),
                    ));
                }
            }
        }
    }
    Ok(Outcome {
        data,
        human,
        ok: true,
        failure: None,
    })
}

fn summary_caps(s: &Value) -> String {
    s["capabilities"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn summary_bool(s: &Value, k: &str) -> bool {
    s[k].as_bool().unwrap_or(false)
}

fn file_type(rel: &str) -> &'static str {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    if name.ends_with(".safetensors")
        || name.ends_with(".gguf")
        || name.ends_with(".bin")
        || name.ends_with(".npz")
    {
        "weights"
    } else if name == crate::store::INDEX_FILE {
        "index"
    } else if name.starts_with("tokenizer")
        || name == "special_tokens_map.json"
        || name == "vocab.json"
        || name == "merges.txt"
    {
        "tokenizer"
    } else if name == crate::store::SENTINEL_FILE {
        "sentinel"
    } else if name.ends_with(".json") || name.ends_with(".jinja") {
        "config"
    } else if name.ends_with(".md") {
        "docs"
    } else if name.ends_with(".py") {
        "code"
    } else {
        "other"
    }
}

/// What mlxk-fs repaired in a mounted workspace (its virtual sentinel's `repairs`).
fn mount_repairs(model: &ResolvedModel) -> Option<&Value> {
    let sentinel = model.sentinel().filter(|s| s.operation == "mount")?;
    sentinel
        .extra
        .get("repairs")
        .filter(|r| r.as_array().is_some_and(|a| !a.is_empty()))
}

fn health_entry(model: &ResolvedModel, report: &HealthReport) -> Value {
    let mut v = json!({
        "name": model.name,
        "status": if report.healthy() { "healthy" } else { "unhealthy" },
        "reason": report.reason(),
        "problems": report.problems,
        "notes": report.notes,
        "framework": report.framework.as_str(),
        "bytes_read": report.bytes_read,
    });
    if let Some(managed) = model.managed() {
        v["managed"] = json!(managed);
    }
    if let Some(repairs) = mount_repairs(model) {
        v["repairs"] = repairs.clone();
    }
    if let Some(sha) = model.snapshot_sha() {
        v["hash"] = json!(sha);
    }
    v
}

pub fn health(args: &MlxkArgs, a: &HealthArgs) -> Result<Outcome, CliError> {
    let style = Style::detect();
    let checked: Vec<(ResolvedModel, HealthReport)> = match &a.model {
        Some(spec) => {
            let cache = open_cache(args)?;
            let model = spec::resolve(cache.as_ref(), spec)?;
            let report = health::check(&model);
            vec![(model, report)]
        }
        None => all_cached(&require_cache(args)?)?,
    };
    let mut healthy = Vec::new();
    let mut unhealthy = Vec::new();
    let mut human = String::new();
    let mut bytes_read = 0;
    for (model, report) in &checked {
        bytes_read += report.bytes_read;
        let mark = if report.healthy() {
            style.green("✓")
        } else {
            style.red("✗")
        };
        let managed = match model.managed() {
            Some(true) => " [managed workspace]",
            Some(false) => " [unmanaged workspace]",
            None => "",
        };
        let notes: String = report
            .notes
            .iter()
            .map(|n| format!("    {:<26} {}\n", style.dim("note"), n.message))
            .collect();
        let notes = match mount_repairs(model).and_then(Value::as_array) {
            Some(r) => format!(
                "{notes}    {:<26} {} problems of the cached index (see .mlxk_workspace.json; the original is model.safetensors.index.json.orig)\n",
                style.dim("repaired by mlxk-fs"),
                r.len()
            ),
            None => notes,
        };
        if report.healthy() {
            human.push_str(&format!("{mark} {}{managed}: healthy\n{notes}", model.name));
            healthy.push(health_entry(model, report));
        } else {
            let n = report.problems.len();
            human.push_str(&format!(
                "{mark} {}{managed}: unhealthy ({n} problem{})\n",
                model.name,
                if n == 1 { "" } else { "s" }
            ));
            let mut last_hint = String::new();
            for p in &report.problems {
                human.push_str(&format!("    {:<26} {}\n", style.yellow(p.code), p.message));
                if p.hint != last_hint {
                    human.push_str(&format!(
                        "    {:<26} {}\n",
                        "",
                        style.dim(&format!("fix: {}", p.hint))
                    ));
                    last_hint = p.hint.clone();
                }
            }
            human.push_str(&notes);
            unhealthy.push(health_entry(model, report));
        }
    }
    if checked.len() > 1 || checked.is_empty() {
        human.push_str(&format!(
            "\n{} models: {} healthy, {} unhealthy\n",
            checked.len(),
            healthy.len(),
            unhealthy.len()
        ));
    }
    let ok = unhealthy.is_empty();
    let data = json!({
        "healthy": healthy,
        "unhealthy": unhealthy,
        "summary": {
            "total": checked.len(),
            "healthy_count": healthy.len(),
            "unhealthy_count": unhealthy.len(),
            "bytes_read": bytes_read,
        },
    });
    Ok(Outcome {
        data,
        human,
        ok,
        failure: (!ok).then(|| {
            CliError::new(
                "HealthCheckFailed",
                format!("{} of {} models unhealthy", unhealthy.len(), checked.len()),
            )
        }),
    })
}

pub fn convert(args: &MlxkArgs, a: &ConvertArgs) -> Result<Outcome, CliError> {
    let cache = open_cache(args)?;
    // A model directory inside an mlxk-fs mount is read from its cache snapshot directly.
    let source = match spec::resolve_mounted(Path::new(&a.source)) {
        Some(m) => m,
        None => spec::resolve(cache.as_ref(), &a.source)?,
    };
    // Neither the configured cache nor the one the source lives in may receive the output.
    let source_cache = source_cache(&source);
    let caches: Vec<&HubCache> = cache.iter().chain(source_cache.iter()).collect();
    // A target inside a mount is written straight into its overlay directory.
    let mounted = mounted_target(&a.target)?;
    let write_to = mounted
        .as_ref()
        .map_or(a.target.clone(), |t| t.overlay_path.clone());
    let bar = progress_bar(args.json);
    let result = if a.repair_index {
        convert_repair(a, &source, &write_to, &caches, bar.as_ref())
    } else {
        convert_weights(a, &source, &write_to, &caches, bar.as_ref())
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some(t) = &mounted {
        t.invalidate();
    }
    result
}

fn convert_repair(
    a: &ConvertArgs,
    source: &ResolvedModel,
    write_to: &Path,
    caches: &[&HubCache],
    bar: Option<&indicatif::ProgressBar>,
) -> Result<Outcome, CliError> {
    let style = Style::detect();
    let opts = RepairOptions {
        skip_health: a.skip_health,
    };
    let mut on_progress = |p: Progress<'_>| {
        let what = || format!("{}/{} files {}", p.files_done, p.files_total, p.current);
        show_progress(bar, p.bytes_done, p.bytes_total, what);
    };
    let outcome = repair_index(source, write_to, caches, &opts, &mut on_progress);
    let outcome = outcome?;
    let target = display_path(&a.target);
    let (health_status, health_reason, healthy) = health_summary(outcome.health.as_ref());
    let message = match &outcome.index {
        Some(_) if outcome.repaired.is_empty() => format!("{} converted to {target}; its index was already right and was rewritten from the headers", source.name),
        Some(_) => format!("{} converted to {target}; index rebuilt from the shard headers ({} problems fixed)", source.name, outcome.repaired.len()),
        None => format!("{} converted to {target}; single-file model, no index needed", source.name),
    };
    let data = json!({
        "source": source.name,
        "target": target,
        "mode": "repair-index",
        "health_check": !a.skip_health,
        "health_status": health_status,
        "health_reason": health_reason,
        "message": message,
        "files_copied": outcome.copy.files,
        "files_reflinked": outcome.copy.reflinked,
        "bytes_copied": outcome.copy.bytes,
        "index_written": outcome.index.is_some(),
        "index_bytes_read": outcome.index_bytes_read,
        "repairs": outcome.repaired,
        "problems": outcome.health.as_ref().map(|h| h.problems.clone()).unwrap_or_default(),
    });
    let mut human = format!("{} {message}\n", style.green("✓"));
    human.push_str(&format!(
        "  {} files, {} ({} reflinked)\n",
        outcome.copy.files,
        human_size(outcome.copy.bytes),
        outcome.copy.reflinked
    ));
    // One line per kind of repair: a 624 index can have dozens of each.
    let mut kinds: Vec<(&str, usize, &str)> = Vec::new();
    for p in &outcome.repaired {
        match kinds.iter_mut().find(|(code, _, _)| *code == p.code) {
            Some(k) => k.1 += 1,
            None => kinds.push((p.code, 1, &p.message)),
        }
    }
    for (code, n, first) in kinds {
        let count = if n > 1 {
            format!("{n}x ")
        } else {
            String::new()
        };
        human.push_str(&format!(
            "  repaired: {count}{} ({first})\n",
            style.yellow(code)
        ));
    }
    human.push_str(&health_lines(outcome.health.as_ref(), &style));
    Ok(Outcome {
        data,
        human,
        ok: healthy,
        failure: health_failure(healthy, &target, &health_reason),
    })
}

/// (status, reason, healthy) of a convert's result.
fn health_summary(report: Option<&HealthReport>) -> (&'static str, String, bool) {
    match report {
        None => (
            "skipped",
            "health check skipped (--skip-health)".to_string(),
            true,
        ),
        Some(r) if r.healthy() => ("healthy", r.reason(), true),
        Some(r) => ("unhealthy", r.reason(), false),
    }
}

fn health_lines(report: Option<&HealthReport>, style: &Style) -> String {
    match report {
        Some(r) if r.healthy() => format!("  health: {}\n", style.green("healthy")),
        Some(r) => {
            let mut out = format!("  health: {}\n", style.red("unhealthy"));
            for p in &r.problems {
                out.push_str(&format!("    {} {}\n", style.yellow(p.code), p.message));
            }
            out
        }
        None => "  health: skipped\n".to_string(),
    }
}

fn health_failure(healthy: bool, target: &str, reason: &str) -> Option<CliError> {
    (!healthy).then(|| {
        CliError::new(
            "HealthCheckFailed",
            format!("the workspace {target} was written but is unhealthy: {reason}"),
        )
    })
}

fn convert_weights(
    a: &ConvertArgs,
    source: &ResolvedModel,
    write_to: &Path,
    caches: &[&HubCache],
    bar: Option<&indicatif::ProgressBar>,
) -> Result<Outcome, CliError> {
    let style = Style::detect();
    let dtype = a.dtype.as_deref().and_then(FloatDtype::parse);
    let op = match a.quantize {
        Some(bits) => {
            let mode = QuantMode::parse(&a.q_mode).ok_or_else(|| {
                CliError::new("InvalidArguments", format!("unknown --q-mode {}", a.q_mode))
            })?;
            Operation::Quantize(QuantizeSpec {
                mode,
                bits,
                group_size: a.q_group_size,
                recipe: a.mixed_recipe.as_deref().and_then(MixedRecipe::parse),
                dtype,
            })
        }
        None => Operation::Dequantize { dtype },
    };
    let opts = WeightsOptions {
        skip_health: a.skip_health,
        max_shard_bytes: None,
    };
    let mut on_progress = |p: WeightsProgress<'_>| {
        let what = || {
            format!(
                "{}/{} tensors {}",
                p.tensors_done, p.tensors_total, p.current
            )
        };
        show_progress(bar, p.bytes_done, p.bytes_total, what);
    };
    let outcome = weights::convert_weights(source, write_to, caches, &op, &opts, &mut on_progress)?;
    let target = display_path(&a.target);
    let (health_status, health_reason, healthy) = health_summary(outcome.health.as_ref());
    let secs = outcome.elapsed.as_secs_f64();
    let (mode, what) = match (&op, outcome.scheme) {
        (Operation::Quantize(q), Some(s)) => {
            let recipe = q
                .recipe
                .map(|r| format!(", {}", r.name()))
                .unwrap_or_default();
            (
                "quantize",
                format!(
                    "quantized to {target} ({}-bit {}, group {}{recipe}): {:.3} bits per weight",
                    s.bits(),
                    s.mode(),
                    s.group_size(),
                    outcome.bits_per_weight()
                ),
            )
        }
        _ => (
            "dequantize",
            format!(
                "dequantized to {target} ({})",
                outcome
                    .dtype
                    .map_or("the scales' dtype".to_string(), |d| d.name().to_string())
            ),
        ),
    };
    let message = format!("{} {what}", source.name);
    let data = json!({
        "source": source.name,
        "target": target,
        "mode": mode,
        "health_check": !a.skip_health,
        "health_status": health_status,
        "health_reason": health_reason,
        "message": message,
        "files_copied": outcome.copy.files,
        "files_reflinked": outcome.copy.reflinked,
        "bytes_copied": outcome.copy.bytes,
        "index_written": true,
        "bits": outcome.scheme.map(|s| s.bits()),
        "group_size": outcome.scheme.map(|s| s.group_size()),
        "q_mode": outcome.scheme.map(|s| s.mode()),
        "mixed_recipe": a.mixed_recipe,
        "dtype": outcome.dtype.map(|d| d.name()),
        "bits_per_weight": (outcome.scheme.is_some()).then(|| (outcome.bits_per_weight() * 1000.0).round() / 1000.0),
        "quantization": outcome.quantization,
        "tensors_converted": outcome.converted_tensors,
        "tensors_kept": outcome.kept_tensors,
        "tensors_dropped": outcome.dropped,
        "shards": outcome.shards,
        "source_bytes": outcome.source_bytes,
        "output_bytes": outcome.output_bytes,
        "total_parameters": outcome.index.total_parameters,
        "elapsed_s": (secs * 1000.0).round() / 1000.0,
        "problems": outcome.health.as_ref().map(|h| h.problems.clone()).unwrap_or_default(),
    });
    let mut human = format!("{} {message}\n", style.green("✓"));
    let verb = if mode == "quantize" {
        "quantized"
    } else {
        "dequantized"
    };
    human.push_str(&format!(
        "  {} tensors {verb}, {} kept{}\n",
        outcome.converted_tensors,
        outcome.kept_tensors,
        if outcome.dropped.is_empty() {
            String::new()
        } else {
            format!(
                ", {} dropped ({})",
                outcome.dropped.len(),
                outcome.dropped.join(", ")
            )
        }
    ));
    human.push_str(&format!(
        "  {} in {} shard{} from {} in {:.1} s ({}/s)\n",
        human_size(outcome.output_bytes),
        outcome.shards.len(),
        if outcome.shards.len() == 1 { "" } else { "s" },
        human_size(outcome.source_bytes),
        secs,
        human_size((outcome.source_bytes as f64 / secs.max(1e-3)) as u64),
    ));
    human.push_str(&format!(
        "  {} files carried over ({} reflinked)\n",
        outcome.copy.files, outcome.copy.reflinked
    ));
    human.push_str(&health_lines(outcome.health.as_ref(), &style));
    Ok(Outcome {
        data,
        human,
        ok: healthy,
        failure: health_failure(healthy, &target, &health_reason),
    })
}

/// The cache a cache model lives in.
fn source_cache(source: &ResolvedModel) -> Option<HubCache> {
    if !matches!(source.location, crate::store::ModelLocation::Cache { .. }) {
        return None;
    }
    let dir = source.dir();
    // <cache>/models--x/snapshots/<sha>
    dir.parent()?
        .parent()?
        .parent()
        .and_then(|root| HubCache::open(root).ok())
}

/// A convert target inside a live mount, checked as the mount shows it.
struct MountedTarget {
    overlay_path: PathBuf,
    mountpoint: PathBuf,
    rel: String,
}

impl MountedTarget {
    /// Tells the daemon to drop the kernel's cached entries along the target's path.
    fn invalidate(&self) {
        if let Err(e) = crate::store::mounts::ask_to_invalidate(&self.mountpoint, &self.rel) {
            tracing::debug!("cannot ask the mount to invalidate {}: {e}", self.rel);
        }
    }
}

fn mounted_target(target: &Path) -> Result<Option<MountedTarget>, CliError> {
    let Some(t) = crate::store::mounts::overlay_target(target) else {
        return Ok(None);
    };
    let bad = |msg: String| Err(CliError::new("InvalidTarget", msg));
    if t.rel.is_empty() {
        return bad(format!(
            "{} is the root of an mlxk-fs mount; convert into <mount>/<org>/<name>",
            target.display()
        ));
    }
    if let Some(c) = t
        .rel
        .split('/')
        .find(|c| crate::store::overlay::is_internal(c))
    {
        return bad(format!(
            "{}: names starting with `.wh.` are reserved by the mount's overlay format ({c})",
            target.display()
        ));
    }
    // What the mount shows there must be absent or an empty directory, as for any target.
    if let Ok(mut entries) = std::fs::read_dir(target) {
        if entries.next().is_some() {
            return bad(format!(
                "{} already exists in the mount and is not empty; choose a new name",
                target.display()
            ));
        }
    } else if target.exists() {
        return bad(format!(
            "{} already exists in the mount and is not a directory",
            target.display()
        ));
    }
    Ok(Some(MountedTarget {
        overlay_path: t.overlay_path,
        mountpoint: t.record.mountpoint,
        rel: t.rel,
    }))
}

fn display_path(p: &Path) -> String {
    p.display().to_string()
}

fn show_progress(
    bar: Option<&indicatif::ProgressBar>,
    done: u64,
    total: u64,
    message: impl FnOnce() -> String,
) {
    if let Some(bar) = bar {
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(message());
    }
}

/// A byte progress bar on stderr when it is a terminal (never with --json).
fn progress_bar(json: bool) -> Option<indicatif::ProgressBar> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}
