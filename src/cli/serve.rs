//! `mlxk serve`: starts the server (src/serve) and says where it listens — a line for people,
//! mlx-knife's startup envelope with --json — then serves until SIGINT/SIGTERM.

use std::io::Write;

use serde_json::json;

use super::output::{human_size, print_success};
use super::{open_cache, CliError, MlxkArgs, Outcome, ServeArgs};
use crate::engine::scheduler::SchedulerOptions;
use crate::serve::{self, ServeError, ServeOptions, Started, DEFAULT_BODY_LIMIT};

pub(super) fn serve(args: &MlxkArgs, a: &ServeArgs) -> Result<Outcome, CliError> {
    let opts = ServeOptions {
        host: a.host.clone(),
        port: a.port,
        cache: open_cache(args)?,
        preload: a.models.clone(),
        scheduling: SchedulerOptions {
            max_batch: a.max_concurrency as usize,
            max_queue: a.max_queue,
            prefill_chunk: a.prefill_chunk.max(1),
        },
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        memory_budget: a.memory_budget,
        body_limit: DEFAULT_BODY_LIMIT,
    };
    let json = args.json;
    let auth = opts.api_key.is_some();
    let scheduling = opts.scheduling;
    let on_started = |s: &Started| {
        let url = format!("http://{}/v1", s.addr);
        if json {
            print_success(
                "server",
                json!({
                    "host": s.addr.ip().to_string(),
                    "port": s.addr.port(),
                    "url": url,
                    "models": s.preloaded,
                    "max_concurrency": scheduling.max_batch,
                    "max_queue": scheduling.max_queue,
                    "memory_budget_bytes": s.memory_budget,
                    "api_key_required": auth,
                }),
            );
        } else {
            let models = if s.preloaded.is_empty() {
                "models load on first use".to_string()
            } else {
                format!("loaded: {}", s.preloaded.join(", "))
            };
            println!(
                "mlxk serve: listening on {url} ({models}; batches of up to {}, {} of weights at once{}); Ctrl-C stops",
                scheduling.max_batch,
                human_size(s.memory_budget),
                if auth { "; API key required" } else { "" }
            );
        }
        let _ = std::io::stdout().flush();
    };
    serve::serve(opts, on_started).map_err(|e| {
        let kind = match &e {
            ServeError::Bind { .. } => "CommandError",
            ServeError::Preload { .. } => "ModelNotSupported",
            ServeError::Runtime(_) => "InternalError",
        };
        CliError::new(kind, e.to_string())
    })?;
    Ok(Outcome {
        printed: true,
        ..Outcome::success(json!(null), String::new())
    })
}
