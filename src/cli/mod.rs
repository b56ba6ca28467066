//! `mlxk`: clap definitions and human / JSON rendering. The work is done by `store` and `convert`.

mod commands;
#[cfg(target_os = "linux")]
pub mod fs;
pub mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::convert::ConvertError;
use crate::store::StoreError;

#[derive(Debug, Parser)]
#[command(
    name = "mlxk",
    version,
    about = "Inspect, check and convert the MLX models in your Hugging Face cache",
    long_about = "Inspect, check and convert the MLX models in your Hugging Face cache.\n\n\
        Models are named as `org/name`, `org/name@<ref or sha prefix>`, a bare `name` (tried as \
        mlx-community/<name>, then as a unique substring), or a directory path (a workspace).",
    after_help = "Cache location: --cache, else HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.\n\
        Logs: RUST_LOG=debug. Exit codes: 0 success, 1 error or unhealthy, 2 usage."
)]
pub struct MlxkArgs {
    /// The Hugging Face hub cache directory.
    #[arg(long, global = true, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Print the result as JSON (mlx-knife's envelope: status / command / data / error).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List cached models (MLX ones unless --all).
    List(ListArgs),
    /// Show one model: identity, architecture, health, workspace sentinel.
    Show(ShowArgs),
    /// Check models strictly: files, links, every shard header, the index, config, tokenizer.
    Health(HealthArgs),
    /// Create a managed workspace from a model.
    Convert(ConvertArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only models whose name contains this (case-insensitive).
    pub pattern: Option<String>,
    /// Include every framework (PyTorch, GGUF, unknown), not only MLX.
    #[arg(long)]
    pub all: bool,
    /// Add the health column.
    #[arg(long)]
    pub health: bool,
    /// Show full snapshot hashes and the health reason.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Model spec or workspace path.
    pub model: String,
    /// List the model's files.
    #[arg(long, conflicts_with = "config")]
    pub files: bool,
    /// Print config.json.
    #[arg(long)]
    pub config: bool,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Model spec or workspace path; every cached model when omitted.
    pub model: Option<String>,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Source: a cache model spec, a workspace, or any model directory (only ever read).
    pub source: String,
    /// Target directory: must not exist or be empty, and must be outside the cache.
    pub target: PathBuf,
    /// Rebuild model.safetensors.index.json from the shard headers; weights are copied byte for byte.
    #[arg(long, required = true)]
    pub repair_index: bool,
    /// Do not run a health check on the result.
    #[arg(long)]
    pub skip_health: bool,
}

/// A failure as the CLI reports it: the JSON error type, the message, extra JSON fields.
#[derive(Debug)]
pub struct CliError {
    pub kind: &'static str,
    pub message: String,
    pub extra: Value,
}

impl CliError {
    pub fn new(kind: &'static str, message: impl Into<String>) -> CliError {
        CliError {
            kind,
            message: message.into(),
            extra: json!({}),
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> CliError {
        let extra = match &e {
            StoreError::AmbiguousMatch { matches, .. }
            | StoreError::AmbiguousRevision { matches, .. } => {
                json!({ "matches": matches })
            }
            StoreError::ModelNotFound { suggestions, .. } => json!({ "suggestions": suggestions }),
            _ => json!({}),
        };
        CliError {
            kind: e.kind(),
            message: e.to_string(),
            extra,
        }
    }
}

impl From<ConvertError> for CliError {
    fn from(e: ConvertError) -> CliError {
        let extra = match &e {
            ConvertError::SourceUnusable { problems, .. } => json!({ "problems": problems }),
            _ => json!({}),
        };
        CliError {
            kind: e.kind(),
            message: e.to_string(),
            extra,
        }
    }
}

/// What a command produced: its JSON data, its human text, and whether it counts as success.
pub struct Outcome {
    pub data: Value,
    pub human: String,
    pub ok: bool,
    /// Shown on failure when `ok` is false (the JSON error type and message).
    pub failure: Option<CliError>,
}

/// Entry point of the `mlxk` binary.
pub fn mlxk_main() -> ExitCode {
    init_logging();
    let args = MlxkArgs::parse();
    let name = match &args.command {
        Command::List(_) => "list",
        Command::Show(_) => "show",
        Command::Health(_) => "health",
        Command::Convert(_) => "convert",
    };
    let result = match &args.command {
        Command::List(a) => commands::list(&args, a),
        Command::Show(a) => commands::show(&args, a),
        Command::Health(a) => commands::health(&args, a),
        Command::Convert(a) => commands::convert(&args, a),
    };
    match result {
        Ok(outcome) => {
            if args.json {
                match (&outcome.failure, outcome.ok) {
                    (Some(f), false) => {
                        output::print_error(name, f.kind, &f.message, &f.extra, outcome.data)
                    }
                    _ => output::print_success(name, outcome.data),
                }
            } else {
                print!("{}", outcome.human);
                if let (Some(f), false) = (&outcome.failure, outcome.ok) {
                    eprintln!("error: {}", f.message);
                }
            }
            if outcome.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            if args.json {
                output::print_error(name, e.kind, &e.message, &e.extra, Value::Null);
            } else {
                eprintln!("error: {}", e.message);
            }
            ExitCode::from(1)
        }
    }
}

/// tracing to stderr, filtered by RUST_LOG (default: warnings).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
