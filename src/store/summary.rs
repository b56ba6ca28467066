//! The model object users know from mlx-knife's `list` / `show`, derived from a health report.

use serde::Serialize;
use serde_json::Value;

use super::config::ModelConfig;
use super::files::read_bounded;
use super::health::HealthReport;
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
        health: if report.healthy() {
            "healthy"
        } else {
            "unhealthy"
        },
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
    read_bounded(path, 16 * 1024 * 1024, &mut 0)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v.get("chat_template").is_some_and(|t| !t.is_null()))
}
