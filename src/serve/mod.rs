//! `mlxk serve`: an OpenAI-compatible HTTP server over the CPU engine. Layers, one way:
//! [`http`] (axum routes, API key, body limit, SSE) → [`models`] (names to loaded models,
//! memory budget, LRU) → `engine::scheduler` (continuous batching, one thread per model) →
//! `engine::model` (one step of many sequences). docs/serve.md describes the API and design.

pub mod api;
pub mod error;
pub mod http;
pub mod models;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::scheduler::SchedulerOptions;
use crate::store::cache::HubCache;
use crate::store::summary::human_size;
use http::AppState;
use models::Registry;

/// Seconds since the Unix epoch of `t` (0 before it): OpenAI's `created`.
pub(crate) fn epoch_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The largest request body taken (a long chat is far smaller).
pub const DEFAULT_BODY_LIMIT: usize = 8 << 20;
/// After SIGINT/SIGTERM, in-flight requests get this long to finish before they are cancelled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// And cancelled streams this long to say so before the server exits regardless.
const SHUTDOWN_HARD: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub cache: Option<HubCache>,
    /// Models loaded before the server answers.
    pub preload: Vec<String>,
    pub scheduling: SchedulerOptions,
    pub api_key: Option<String>,
    /// Bytes of weights loaded at once; `None`: MemAvailable at start.
    pub memory_budget: Option<u64>,
    pub body_limit: usize,
}

/// What the server says once it listens.
#[derive(Debug, Clone)]
pub struct Started {
    pub addr: SocketAddr,
    pub preloaded: Vec<String>,
    pub memory_budget: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load {model}: {message}")]
    Preload { model: String, message: String },
    #[error("the server failed: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Serves until SIGINT or SIGTERM; `on_started` is called once the socket listens and the
/// preloaded models are in.
pub fn serve(opts: ServeOptions, on_started: impl FnOnce(&Started)) -> Result<(), ServeError> {
    // One thread is plenty for the HTTP side; more would compete for the cores with the
    // engine's pool, which spins between the parallel regions of a step.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("mlxk-serve")
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(run(opts, on_started))
}

async fn run(opts: ServeOptions, on_started: impl FnOnce(&Started)) -> Result<(), ServeError> {
    let budget = opts
        .memory_budget
        .or_else(crate::engine::session::available_memory)
        .unwrap_or(u64::MAX);
    let registry = Arc::new(Registry::new(opts.cache.clone(), opts.scheduling, budget));
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(ServeError::Runtime)?;
    for model in &opts.preload {
        registry.get(model).await.map_err(|e| ServeError::Preload {
            model: model.clone(),
            message: e.message,
        })?;
    }
    tracing::info!(%local, budget = %human_size(budget), "listening");
    on_started(&Started {
        addr: local,
        preloaded: opts.preload.clone(),
        memory_budget: budget,
    });
    let state = Arc::new(AppState {
        registry: registry.clone(),
        api_key: opts.api_key.clone(),
        body_limit: opts.body_limit,
        requests: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: no new connections; in-flight requests get a moment");
        let _ = stop_tx.send(true);
    });
    let stopping = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|&stop| stop).await;
    };
    let server = axum::serve(listener, http::router(state))
        .with_graceful_shutdown(stopping(stop_rx.clone()));
    let deadline = async {
        stopping(stop_rx).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        tracing::info!("cancelling the requests still running");
        registry.cancel_all();
        tokio::time::sleep(SHUTDOWN_HARD).await;
    };
    tokio::select! {
        served = server => served.map_err(ServeError::Runtime),
        _ = deadline => Ok(()),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
