//! The model object users know from mlx-knife's `list` / `show`, derived from a health report.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use super::cache::HubCache;
use super::config::ModelConfig;
use super::error::StoreError;
use super::files::read_small;
use super::health::{check, check_cache, Framework, HealthReport, Problem};
use super::sentinel::iso8601;
use super::spec::{ModelLocation, ResolvedModel};

/// mlx-knife's model object (its field names), plus `managed` for workspaces.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub hash: Option<String>,
    pub size_bytes: u64,
    pub last_modified: Option<String>,
    pub framework: &'static str,
    pub model_type: &'static str,
    pub capabilities: Vec<&'static str>,
    pub health: &'static str,
    pub runtime_compatible: bool,
    pub reason: String,
    pub cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The architecture facts `show` prints (mlx-knife's `metadata` object).
#[derive(Debug, Clone, Serialize)]
pub struct ModelMetadata {
    pub model_type: Option<String>,
    pub architecture: Option<String>,
    pub quantization: Option<Value>,
    pub context_length: Option<u64>,
    pub vocab_size: Option<u64>,
    pub hidden_size: Option<u64>,
    pub num_attention_heads: Option<u64>,
    pub num_hidden_layers: Option<u64>,
}

pub fn summarize(model: &ResolvedModel, report: &HealthReport) -> ModelSummary {
    let (runtime_compatible, runtime_reason) = report.runtime_compatibility();
    let kind = model_kind(model, report.config.as_ref());
    let mut capabilities = Vec::new();
    match kind {
        "embedding" => capabilities.push("embeddings"),
        "audio" => capabilities.push("audio"),
        _ => capabilities.push("text-generation"),
    }
    if kind == "chat" {
        capabilities.push("chat");
    }
    if report.config.as_ref().is_some_and(ModelConfig::has_vision) {
        capabilities.push("vision");
    }
    let last_modified = match &model.location {
        ModelLocation::Cache { snapshot, .. } => Some(snapshot.modified),
        ModelLocation::Workspace { .. } => model.files.iter().filter_map(|f| f.modified()).max(),
    };
    ModelSummary {
        name: model.name.clone(),
        hash: model.snapshot_sha().map(str::to_string),
        size_bytes: report.size_bytes,
        last_modified: last_modified.map(iso8601),
        framework: report.framework.as_str(),
        model_type: kind,
        capabilities,
        health: health_word(report),
        runtime_compatible,
        reason: if report.healthy() {
            runtime_reason
        } else {
            report.reason()
        },
        cached: matches!(model.location, ModelLocation::Cache { .. }),
        managed: model.managed(),
        path: match &model.location {
            ModelLocation::Cache { .. } => None,
            ModelLocation::Workspace { dir, .. } => Some(dir.display().to_string()),
        },
    }
}

pub fn metadata(config: Option<&ModelConfig>) -> ModelMetadata {
    ModelMetadata {
        model_type: config.and_then(ModelConfig::model_type).map(str::to_string),
        architecture: config.and_then(|c| c.architectures().first().map(|s| s.to_string())),
        quantization: config.and_then(ModelConfig::quantization_value).map(|q| {
            // Only the defaults: per-layer overrides can number in the hundreds.
            let mut q = q.clone();
            if let Some(obj) = q.as_object_mut() {
                obj.retain(|_, v| !v.is_object() && !v.is_boolean());
            }
            q
        }),
        context_length: config.and_then(ModelConfig::context_length),
        vocab_size: config.and_then(ModelConfig::vocab_size),
        hidden_size: config.and_then(ModelConfig::hidden_size),
        num_attention_heads: config.and_then(ModelConfig::num_attention_heads),
        num_hidden_layers: config.and_then(ModelConfig::num_hidden_layers),
    }
}

/// chat | base | embedding | audio, as mlx-knife classifies models.
fn model_kind(model: &ResolvedModel, config: Option<&ModelConfig>) -> &'static str {
    let name = model.name.to_lowercase();
    if config.is_some_and(ModelConfig::has_audio) {
        return "audio";
    }
    let embedding_arch = config.is_some_and(|c| {
        c.architectures()
            .iter()
            .any(|a| a.contains("Embedding") || a.ends_with("Model") && !a.ends_with("LMHeadModel"))
    });
    if embedding_arch || name.contains("embed") {
        return "embedding";
    }
    if has_chat_template(model) || ["instruct", "chat", "-it"].iter().any(|w| name.contains(w)) {
        return "chat";
    }
    "base"
}

fn has_chat_template(model: &ResolvedModel) -> bool {
    if model.file("chat_template.jinja").is_some() || model.file("chat_template.json").is_some() {
        return true;
    }
    let Some(path) = model
        .file("tokenizer_config.json")
        .and_then(|f| f.readable())
    else {
        return false;
    };
    read_small(path, 16 << 20, &mut 0)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v.get("chat_template").is_some_and(|t| !t.is_null()))
}

/// What `list` shows: the cache's models at their default snapshots.
#[derive(Debug, Clone)]
pub struct ListReport {
    pub cache_root: PathBuf,
    pub models: Vec<ModelSummary>,
}

/// The models of `cache` whose name contains `pattern` (case-insensitive); MLX ones only
/// unless `all_frameworks`.
pub fn list(
    cache: &HubCache,
    pattern: Option<&str>,
    all_frameworks: bool,
) -> Result<ListReport, StoreError> {
    let pattern = pattern.map(str::to_lowercase);
    let models = check_cache(cache)?
        .into_iter()
        .filter(|c| {
            pattern
                .as_ref()
                .is_none_or(|p| c.model.name.to_lowercase().contains(p))
        })
        .map(|c| summarize(&c.model, &c.report))
        .filter(|s| all_frameworks || s.framework == Framework::Mlx.as_str())
        .collect();
    Ok(ListReport {
        cache_root: cache.root().to_path_buf(),
        models,
    })
}

/// What `show` shows of one model.
#[derive(Debug, Clone)]
pub struct ShowReport {
    pub model: ResolvedModel,
    pub report: HealthReport,
    pub summary: ModelSummary,
    pub metadata: ModelMetadata,
}

/// One file as `show --files` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    pub name: String,
    pub size: Option<u64>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub present: bool,
}

impl ShowReport {
    pub fn new(model: ResolvedModel) -> ShowReport {
        let report = check(&model);
        let summary = summarize(&model, &report);
        let metadata = metadata(report.config.as_ref());
        ShowReport {
            model,
            report,
            summary,
            metadata,
        }
    }

    /// config.json as parsed, when it is there and valid.
    pub fn config(&self) -> Option<Value> {
        self.report
            .config
            .as_ref()
            .map(|c| Value::Object(c.raw.clone()))
    }

    pub fn files(&self) -> Vec<FileEntry> {
        self.model
            .files
            .iter()
            .map(|f| FileEntry {
                name: f.rel_path.clone(),
                size: f.size(),
                kind: f.kind().as_str(),
                present: f.readable().is_some(),
            })
            .collect()
    }
}

/// One model as `health` reports it (JSON `healthy[]` / `unhealthy[]` entries).
#[derive(Debug, Clone, Serialize)]
pub struct HealthEntry {
    pub name: String,
    pub status: &'static str,
    pub reason: String,
    pub problems: Vec<Problem>,
    pub notes: Vec<Problem>,
    pub framework: &'static str,
    pub bytes_read: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
    /// What a mount repaired (the virtual sentinel's `repairs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repairs: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

impl HealthEntry {
    pub fn new(model: &ResolvedModel, report: &HealthReport) -> HealthEntry {
        HealthEntry {
            name: model.name.clone(),
            status: health_word(report),
            reason: report.reason(),
            problems: report.problems.clone(),
            notes: report.notes.clone(),
            framework: report.framework.as_str(),
            bytes_read: report.bytes_read,
            managed: model.managed(),
            repairs: mount_repairs(model).cloned(),
            hash: model.snapshot_sha().map(str::to_string),
        }
    }
}

/// What mlxk-fs repaired in a mounted workspace: its virtual sentinel's non-empty `repairs`.
pub fn mount_repairs(model: &ResolvedModel) -> Option<&Value> {
    let sentinel = model.sentinel().filter(|s| s.operation == "mount")?;
    sentinel
        .extra
        .get("repairs")
        .filter(|r| r.as_array().is_some_and(|a| !a.is_empty()))
}

fn health_word(report: &HealthReport) -> &'static str {
    if report.healthy() {
        "healthy"
    } else {
        "unhealthy"
    }
}
