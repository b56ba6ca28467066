//! The server's models: found by the names `mlxk run` takes (cache specs, workspaces, paths in
//! a mount), loaded on first use, kept within a memory budget — the least recently used idle
//! model is unloaded first — each with its own batching scheduler.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde_json::{json, Value};

use super::epoch_secs;
use super::error::ApiError;
use crate::engine::scheduler::{Scheduler, SchedulerOptions};
use crate::engine::session::LoadedModel;
use crate::engine::weights::weight_files_size;
use crate::engine::EngineError;
use crate::store::cache::HubCache;
use crate::store::error::StoreError;
use crate::store::health::{check_cache, Framework};
use crate::store::spec::{self, ModelLocation};
use crate::store::summary::{human_size, summarize};

/// A model as requests get it.
#[derive(Clone)]
pub struct ModelHandle {
    pub loaded: Arc<LoadedModel>,
    pub scheduler: Arc<Scheduler>,
}

struct Entry {
    /// The directory the weights came from: one entry however the model is named.
    dir: PathBuf,
    /// The name it was first asked for (the id /v1/models lists).
    id: String,
    owned_by: String,
    created: u64,
    bytes: u64,
    handle: ModelHandle,
    last_used: Instant,
}

#[derive(Default)]
struct Loaded {
    entries: Vec<Entry>,
    /// Requested name -> directory, so that a known name skips resolving.
    names: HashMap<String, PathBuf>,
}

pub struct Registry {
    cache: Option<HubCache>,
    scheduling: SchedulerOptions,
    /// Bytes of weights that may be loaded at once.
    pub budget: u64,
    state: Mutex<Loaded>,
    /// One load at a time: two requests for a new model load it once.
    loading: tokio::sync::Mutex<()>,
    /// The cache's part of `/v1/models` and when it was made: a strict check of every model
    /// (headers of every shard) is not redone for each of a front-end's frequent calls.
    listing: Mutex<Option<(Instant, Vec<Value>)>>,
}

/// How long a listing of the cache's models is reused (a pull shows up after at most this).
const LISTING_TTL: std::time::Duration = std::time::Duration::from_secs(5);

impl Registry {
    pub fn new(cache: Option<HubCache>, scheduling: SchedulerOptions, budget: u64) -> Registry {
        Registry {
            cache,
            scheduling,
            budget,
            state: Mutex::new(Loaded::default()),
            loading: tokio::sync::Mutex::new(()),
            listing: Mutex::new(None),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The model `name` names, loading it if it is not loaded.
    pub async fn get(self: &Arc<Self>, name: &str) -> Result<ModelHandle, ApiError> {
        if let Some(h) = self.lookup(name) {
            return Ok(h);
        }
        let _one_load = self.loading.lock().await;
        if let Some(h) = self.lookup(name) {
            return Ok(h);
        }
        let this = self.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || this.load(&name))
            .await
            .map_err(|e| ApiError::internal(format!("loading the model failed: {e}")))?
    }

    fn lookup(&self, name: &str) -> Option<ModelHandle> {
        let mut state = self.state();
        let dir = state.names.get(name)?.clone();
        let entry = state.entries.iter_mut().find(|e| e.dir == dir)?;
        entry.last_used = Instant::now();
        Some(entry.handle.clone())
    }

    /// Resolves, checks and loads `name` (blocking: reads configs, maps the weights).
    pub fn load(&self, name: &str) -> Result<ModelHandle, ApiError> {
        let model = spec::resolve_any(self.cache.as_ref(), name).map_err(not_found)?;
        let dir = model.dir().to_path_buf();
        {
            let mut state = self.state();
            if let Some(entry) = state.entries.iter_mut().find(|e| e.dir == dir) {
                entry.last_used = Instant::now();
                let handle = entry.handle.clone();
                state.names.insert(name.to_string(), dir);
                return Ok(handle);
            }
        }
        // Refused before anything is unloaded for it: what `mlxk run` would refuse.
        LoadedModel::check(&model).map_err(|e| engine_refusal(name, e))?;
        let need = weight_files_size(&dir);
        if need > self.budget {
            return Err(ApiError::insufficient_memory(format!(
                "{name}: the weights need {} but the server's memory budget is {} \
                 (--memory-budget; default: the memory available at start)",
                human_size(need),
                human_size(self.budget)
            )));
        }
        self.make_room(name, need)?;
        let loaded = Arc::new(LoadedModel::load(&model).map_err(|e| engine_refusal(name, e))?);
        let scheduler = Scheduler::start(loaded.clone(), self.scheduling).map_err(|e| {
            ApiError::internal(format!("cannot start the model's batching thread: {e}"))
        })?;
        let handle = ModelHandle {
            loaded,
            scheduler: Arc::new(scheduler),
        };
        tracing::info!(model = name, dir = %dir.display(), bytes = need, "loaded");
        let (owned_by, created) = match &model.location {
            ModelLocation::Cache { .. } => (
                name.split('/').next().unwrap_or("cache").to_string(),
                modified_secs(&dir),
            ),
            ModelLocation::Workspace { .. } => ("workspace".to_string(), modified_secs(&dir)),
        };
        let mut state = self.state();
        state.names.insert(name.to_string(), dir.clone());
        state.entries.push(Entry {
            dir,
            id: name.to_string(),
            owned_by,
            created,
            bytes: need,
            handle: handle.clone(),
            last_used: Instant::now(),
        });
        Ok(handle)
    }

    /// Unloads idle models, least recently used first, until `need` more bytes fit the budget.
    fn make_room(&self, name: &str, need: u64) -> Result<(), ApiError> {
        let mut state = self.state();
        loop {
            let used: u64 = state.entries.iter().map(|e| e.bytes).sum();
            if used + need <= self.budget {
                return Ok(());
            }
            let idle = state
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.handle.scheduler.in_flight() == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i);
            let Some(i) = idle else {
                return Err(ApiError::unavailable(
                    "insufficient_memory",
                    format!(
                        "{name} needs {} and the models loaded now hold {} of the {} budget \
                         while serving requests; retry when they are done",
                        human_size(need),
                        human_size(used),
                        human_size(self.budget)
                    ),
                ));
            };
            let gone = state.entries.remove(i);
            state.names.retain(|_, d| *d != gone.dir);
            tracing::info!(
                model = gone.id,
                bytes = gone.bytes,
                "unloaded (least recently used)"
            );
        }
    }

    /// The loaded models, most recently used first: id, weight bytes, requests in flight and
    /// what their scheduler has done.
    pub fn loaded(&self) -> Vec<Value> {
        let state = self.state();
        let mut entries: Vec<&Entry> = state.entries.iter().collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        entries
            .iter()
            .map(|e| {
                let s = &e.handle.scheduler;
                let stats = &s.stats;
                json!({
                    "id": e.id,
                    "weight_bytes": e.bytes,
                    "in_flight": s.in_flight(),
                    "steps": stats.steps.load(Ordering::Relaxed),
                    "peak_batch": stats.peak_batch.load(Ordering::Relaxed),
                    "tokens_generated": stats.tokens_generated.load(Ordering::Relaxed),
                })
            })
            .collect()
    }

    /// Drops a loaded model (its scheduler has stopped); the next request for it loads it again.
    pub fn forget(&self, handle: &ModelHandle) {
        let mut state = self.state();
        if let Some(i) = state
            .entries
            .iter()
            .position(|e| Arc::ptr_eq(&e.handle.scheduler, &handle.scheduler))
        {
            let gone = state.entries.remove(i);
            state.names.retain(|_, d| *d != gone.dir);
        }
    }

    /// Ends every request of every model (shutdown).
    pub fn cancel_all(&self) {
        for e in &self.state().entries {
            e.handle.scheduler.cancel_all();
        }
    }

    /// `/v1/models`: every healthy MLX cache model `mlxk run` can run, as org/name, then the
    /// loaded workspaces and mounted paths by the path they were asked for.
    pub fn list(&self) -> Vec<Value> {
        let mut out = self.cache_listing();
        let state = self.state();
        for e in &state.entries {
            if !out.iter().any(|m| m["id"] == e.id.as_str()) {
                out.push(model_object(&e.id, e.created, &e.owned_by));
            }
        }
        out
    }

    /// The cache's runnable models, as listed at most [`LISTING_TTL`] ago.
    fn cache_listing(&self) -> Vec<Value> {
        let mut listing = self.listing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, models)) = listing.as_ref() {
            if at.elapsed() < LISTING_TTL {
                return models.clone();
            }
        }
        let mut out = Vec::new();
        if let Some(cache) = &self.cache {
            match check_cache(cache) {
                Ok(models) => {
                    for c in models {
                        if !c.report.healthy()
                            || c.report.framework != Framework::Mlx
                            || LoadedModel::check(&c.model).is_err()
                        {
                            continue;
                        }
                        let created =
                            humantime::parse_rfc3339(&summarize(&c.model, &c.report).last_modified)
                                .map_or(0, epoch_secs);
                        let owned_by = c.model.name.split('/').next().unwrap_or("cache");
                        out.push(model_object(&c.model.name, created, owned_by));
                    }
                }
                Err(e) => tracing::warn!("cannot list the cache: {e}"),
            }
        }
        *listing = Some((Instant::now(), out.clone()));
        out
    }
}

fn model_object(id: &str, created: u64, owned_by: &str) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": owned_by})
}

fn modified_secs(dir: &std::path::Path) -> u64 {
    epoch_secs(
        std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now()),
    )
}

fn not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::AmbiguousMatch { .. } => ApiError::field("model", e.to_string()),
        StoreError::ModelNotFound { .. }
        | StoreError::RevisionNotFound { .. }
        | StoreError::AmbiguousRevision { .. }
        | StoreError::NoSnapshot { .. }
        | StoreError::PathNotFound { .. } => ApiError::model_not_found(e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

/// `mlxk run`'s refusal of a model, as the server says it.
fn engine_refusal(name: &str, e: EngineError) -> ApiError {
    match e {
        EngineError::InsufficientMemory { need, available } => ApiError::unavailable(
            "insufficient_memory",
            format!(
                "{name}: the weights need {} but only {} of memory is available now",
                human_size(need),
                human_size(available)
            ),
        ),
        // The words `mlxk run` uses for the same model.
        EngineError::Model { .. } | EngineError::Template(_) => ApiError {
            code: Some("model_not_supported"),
            ..ApiError::field("model", e.to_string())
        },
        EngineError::Input(m) => ApiError::invalid(m),
    }
}
