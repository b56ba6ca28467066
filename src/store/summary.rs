//! The model object users know from mlx-knife's `list` / `show`, derived from a health report.

use std::fs;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use super::cache::HubCache;
use super::config::ModelConfig;
use super::error::StoreError;
use super::files::read_small;
use super::health::{check, check_cache, HealthReport, Problem};
use super::sentinel::{iso8601, Sentinel};
use super::spec::{ModelLocation, ResolvedModel};

/// mlx-knife's model object, exactly its fields (its JSON schema admits no others): what this
/// project knows beyond them goes beside it (`show`'s data) or behind `--details`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub hash: Option<String>,
    pub size_bytes: u64,
    /// ISO 8601 UTC (`Z`): the snapshot's time, or a workspace's newest file (or the directory).
    pub last_modified: String,
    pub framework: &'static str,
    pub model_type: &'static str,
    pub capabilities: Vec<&'static str>,
    pub health: &'static str,
    pub runtime_compatible: bool,
    /// Why the model is unhealthy or cannot run; `None` for a healthy, runnable model.
    pub reason: Option<String>,
    pub cached: bool,
    /// A workspace's source repo (from its sentinel); `None` for cache models.
    pub origin: Option<String>,
    /// A workspace's recorded content hash (`sha256:<hex>`).
    pub content_hash: Option<String>,
    /// When `content_hash` was taken.
    pub hash_modified: Option<String>,
    /// Whether a workspace is unchanged since its content hash was taken; `None` when unknown.
    pub clean: Option<bool>,
    /// A workspace's path as the user gave it.
    pub display_name: Option<String>,
    /// config.json's quantization defaults (bits, group_size, mode), `None` when unquantized.
    pub quantization: Option<Value>,
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
        ModelLocation::Cache { snapshot, .. } => snapshot.modified,
        ModelLocation::Workspace { dir, .. } => model
            .files
            .iter()
            .filter_map(|f| f.modified())
            .max()
            .or_else(|| fs::metadata(dir).and_then(|m| m.modified()).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH),
    };
    let workspace = matches!(model.location, ModelLocation::Workspace { .. });
    let sentinel = model.sentinel();
    ModelSummary {
        name: model.name.clone(),
        hash: model.snapshot_sha().map(str::to_string),
        size_bytes: report.size_bytes,
        last_modified: iso8601(last_modified),
        framework: report.framework.as_str(),
        model_type: kind,
        capabilities,
        health: health_word(report),
        runtime_compatible,
        reason: if report.healthy() {
            runtime_reason
        } else {
            Some(report.reason())
        },
        cached: !workspace,
        origin: sentinel.and_then(|s| s.source_repo.clone()),
        content_hash: sentinel
            .and_then(Sentinel::content_hash)
            .map(str::to_string),
        hash_modified: sentinel
            .filter(|s| s.content_hash().is_some())
            .and_then(Sentinel::hash_modified)
            .map(str::to_string),
        clean: sentinel.and_then(|s| s.clean(&model.files)),
        display_name: workspace.then(|| model.name.clone()),
        quantization: metadata(report.config.as_ref()).quantization,
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

/// The models of `cache` whose name contains `pattern` (case-insensitive), every framework
/// (mlx-knife's JSON lists them all; the table filters).
pub fn list(cache: &HubCache, pattern: Option<&str>) -> Result<ListReport, StoreError> {
    let pattern = pattern.map(str::to_lowercase);
    let models = check_cache(cache)?
        .into_iter()
        .filter(|c| {
            pattern
                .as_ref()
                .is_none_or(|p| c.model.name.to_lowercase().contains(p))
        })
        .map(|c| summarize(&c.model, &c.report))
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

/// Why `show --recalc-hash` recorded nothing.
#[derive(Debug, thiserror::Error)]
pub enum RecalcError {
    #[error("a cache model has no content hash to record (its blobs are named by theirs)")]
    CacheModel,
    #[error("an unmanaged workspace has no sentinel to record a content hash in (`mlxk convert` makes a managed one)")]
    Unmanaged,
    #[error("a mounted model's sentinel is the mount's (read-only); convert it into a workspace to pin its content")]
    Mounted,
    #[error("cannot hash the workspace: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Sentinel(#[from] super::sentinel::SentinelError),
}

/// One file as `show --files` lists it: mlx-knife's fields, the size as text (`1.2 KB`, or
/// `missing`).
#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    pub name: String,
    pub size: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// What `show --files` knows of a file beyond [`FileEntry`]: the exact size, and whether its
/// content is there (`data.file_details`, beside mlx-knife's `files`).
#[derive(Debug, Clone, Serialize)]
pub struct FileDetail {
    pub name: String,
    pub size_bytes: Option<u64>,
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

    /// mlx-knife's `show --recalc-hash`: hashes a managed workspace's content now and records
    /// it in the sentinel, pinning the current state as clean.
    pub fn recalc_hash(&mut self) -> Result<(), RecalcError> {
        let ModelLocation::Workspace { dir, sentinel, .. } = &mut self.model.location else {
            return Err(RecalcError::CacheModel);
        };
        let Some(sentinel) = sentinel.as_mut().filter(|s| s.managed) else {
            return Err(RecalcError::Unmanaged);
        };
        if sentinel.operation == "mount" {
            return Err(RecalcError::Mounted);
        }
        let stamp = super::content::stamp(&self.model.files)?;
        sentinel.record_content(&stamp);
        sentinel.write_atomic(dir)?;
        self.summary.content_hash = Some(stamp.content_hash);
        self.summary.hash_modified = sentinel.hash_modified().map(str::to_string);
        self.summary.clean = Some(true);
        Ok(())
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
                size: f.size().map_or_else(|| "missing".to_string(), human_size),
                kind: f.kind().as_str(),
            })
            .collect()
    }

    pub fn file_details(&self) -> Vec<FileDetail> {
        self.model
            .files
            .iter()
            .map(|f| FileDetail {
                name: f.rel_path.clone(),
                size_bytes: f.size(),
                present: f.readable().is_some(),
            })
            .collect()
    }
}

/// One model as `health` reports it: mlx-knife's `healthy[]` / `unhealthy[]` entry, and with
/// `--details` what this project adds (problems with their fixes, notes, bytes read...).
#[derive(Debug, Clone, Serialize)]
pub struct HealthEntry {
    pub name: String,
    pub status: &'static str,
    pub reason: String,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub details: Option<HealthDetails>,
}

/// The `--details` part of a [`HealthEntry`] (mlx-knife's schema admits no extra keys there,
/// so it is opt-in).
#[derive(Debug, Clone, Serialize)]
pub struct HealthDetails {
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
    pub fn new(model: &ResolvedModel, report: &HealthReport, details: bool) -> HealthEntry {
        HealthEntry {
            name: model.name.clone(),
            status: health_word(report),
            reason: report.reason(),
            details: details.then(|| HealthDetails {
                problems: report.problems.clone(),
                notes: report.notes.clone(),
                framework: report.framework.as_str(),
                bytes_read: report.bytes_read,
                managed: model.managed(),
                repairs: mount_repairs(model).cloned(),
                hash: model.snapshot_sha().map(str::to_string),
            }),
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

/// `1.2 GB`, `523.0 MB`, `12.0 KB`, `100 B` (decimal units, as model hubs show sizes).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KB", "MB", "GB", "TB", "PB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}
