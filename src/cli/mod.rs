//! `mlxk`: clap definitions and human / JSON rendering. The work is done by `store`,
//! `convert` and `engine`, each returning a report that a command module here renders.

mod clone;
mod convert;
#[cfg(target_os = "linux")]
pub mod fs;
mod health;
mod list;
pub mod output;
mod pull;
mod rm;
mod run;
mod serve;
mod show;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::convert::plan::{MixedRecipe, QuantMode};
use crate::convert::ConvertError;
use crate::mlx::FloatDtype;
use crate::store::cache::{cache_root, HubCache};
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
        Logs: RUST_LOG=debug. Exit codes: 0 success, 1 error (or an unhealthy model under `health --fail-on-unhealthy`), 2 usage."
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
    /// List cached models (the table: MLX ones unless --all; --json: every framework).
    List(ListArgs),
    /// Show one model: identity, architecture, health, workspace sentinel.
    Show(ShowArgs),
    /// Check models strictly: files, links, every shard header, the index, config, tokenizer.
    Health(HealthArgs),
    /// Create a managed workspace from a model.
    Convert(ConvertArgs),
    /// Generate text from a model on the CPU (prompt, stdin with `-`, or an interactive chat).
    Run(RunArgs),
    /// Download a model from the Hugging Face hub into the cache (resumable, verified).
    Pull(PullArgs),
    /// Remove a model, or one snapshot of it (`org/name@rev`), from the cache.
    Rm(RmArgs),
    /// Make a managed workspace from a model: copied from the cache, or downloaded straight
    /// into the workspace when the cache does not have it (the cache is left alone).
    Clone(CloneArgs),
    /// Serve models over an OpenAI-compatible HTTP API (chat and completions, streamed or
    /// whole), batching concurrent requests.
    #[command(alias = "server")]
    Serve(ServeArgs),
    /// Print the version of mlxk and of the JSON API it speaks.
    Version,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    mlxk serve                                     (http://127.0.0.1:8000/v1, models load on first use)\n  \
    mlxk serve --model Qwen3-0.6B-4bit --port 8080  (loaded before the first request)\n  \
    mlxk serve --host 0.0.0.0 --api-key \"$KEY\"     (other machines, each request with the key)\n\n\
    Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, GET /health. \
    docs/serve.md describes the fields, limits and errors.")]
pub struct ServeArgs {
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// A model to load before serving (spec, workspace or mounted path); repeatable. Others
    /// load on first use.
    #[arg(long = "model", value_name = "MODEL")]
    pub models: Vec<String>,
    /// Requests generating at once per model (the batch); more wait in a queue.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_concurrency: u16,
    /// Requests waiting per model beyond --max-concurrency; past it the answer is 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Every request (but /health) must send `Authorization: Bearer KEY`.
    #[arg(long, env = "MLXK_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Bytes of weights loaded at once, e.g. 12G or 800M (default: the memory available at
    /// start); the least recently used idle model is unloaded to make room.
    #[arg(long, value_parser = parse_size)]
    pub memory_budget: Option<u64>,
    /// Prompt tokens prefilled per batch step: smaller keeps running streams smoother while a
    /// long prompt comes in, larger gets that prompt's first token sooner.
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
}

/// `800M`, `12G`, `1.5G`, or plain bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return Err(format!("`{s}`: the unit must be K, M, G or T")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 800M, 12G)"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("`{s}`: the size must be positive"));
    }
    Ok((n * mult as f64) as u64)
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    mlxk pull mlx-community/Qwen3-0.6B-4bit\n  \
    mlxk pull Qwen3-0.6B-4bit                      (a bare name is mlx-community/<name>)\n  \
    mlxk pull org/name@v1.0                        (a branch, tag, refs/pr/N or commit sha)\n  \
    mlxk pull org/name --include '*.json' --exclude '*.gguf'\n\n\
    Environment: HF_ENDPOINT (default https://huggingface.co), HF_TOKEN (else $HF_HOME/token, \
    as `hf auth login` writes it), HF_HUB_CACHE / HF_HOME, HF_HUB_OFFLINE=1 (refuses). \
    An interrupted pull resumes where it stopped when run again.")]
pub struct PullArgs {
    /// `org/name[@revision]`.
    pub model: String,
    /// Only files matching this pattern (fnmatch: `*` matches `/` too; `dir/` is everything
    /// below dir); repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Leave out files matching this pattern; repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Files downloaded at once.
    #[arg(long, default_value_t = crate::hub::pull::DEFAULT_WORKERS, value_name = "N")]
    pub workers: usize,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    mlxk clone mlx-community/Qwen3-0.6B-4bit ./ws\n  \
    mlxk clone org/name@v1.0 ./ws-v1\n\n\
    The target must be new or empty, and outside the cache. An interrupted download resumes \
    when the same command is run again.")]
pub struct CloneArgs {
    /// `org/name[@revision]` (a bare name is mlx-community/<name>).
    pub model: String,
    /// The workspace directory to create.
    pub target: std::path::PathBuf,
    /// Do not run a health check on the result.
    #[arg(long, visible_alias = "no-health-check")]
    pub skip_health: bool,
    /// Files downloaded at once (when not in the cache).
    #[arg(long, default_value_t = crate::hub::pull::DEFAULT_WORKERS, value_name = "N")]
    pub workers: usize,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// `org/name` (exactly), or `org/name@<ref or sha prefix>` for one snapshot.
    pub model: String,
    /// Do not ask for confirmation (needed without a terminal, and with --json).
    #[arg(long, short)]
    pub force: bool,
}

/// The version of mlx-knife's JSON API (its schema, API 0.2.4) that `--json` replies follow.
pub const JSON_API_SPEC_VERSION: &str = "0.2.4";

/// The commands of mlx-knife's JSON envelope (`command`), which its schema enumerates.
const ENVELOPE_COMMANDS: [&str; 12] = [
    "list", "show", "health", "pull", "rm", "clone", "convert", "version", "push", "run", "server",
    "embed",
];

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    mlxk run mlx-community/Qwen3-0.6B-4bit \"Why is the sky blue?\"\n  \
    mlxk run ~/mlx/org/name-4bit \"...\" --max-tokens 256 --temperature 0.7 --top-p 0.9 --seed 1\n  \
    mlxk run ./ws \"...\" --system \"You are terse.\"\n  \
    echo \"prompt\" | mlxk run ./ws -\n  \
    mlxk run ./ws          (interactive chat: /clear, /exit)")]
pub struct RunArgs {
    /// Model spec, workspace or mounted path.
    pub model: String,
    /// The prompt; `-` reads it from stdin; none starts an interactive chat.
    pub prompt: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches this.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    /// Penalty for tokens among the last 20 (1 turns it off).
    #[arg(long, default_value_t = 1.1)]
    pub repetition_penalty: f32,
    /// Seed of the sampler (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// A system prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Send the prompt as it is, without the model's chat template.
    #[arg(long)]
    pub no_chat_template: bool,
    /// Print the answer when it is complete instead of as it is generated.
    #[arg(long)]
    pub no_stream: bool,
    /// Leave out a reasoning model's thinking (`<think>…</think>`); with --json it is always
    /// apart, in `data.reasoning`.
    #[arg(long)]
    pub no_reasoning: bool,
    /// Timings and model facts on stderr.
    #[arg(long)]
    pub verbose: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only models whose name contains this (case-insensitive).
    pub pattern: Option<String>,
    /// Include every framework (PyTorch, GGUF, unknown) in the table, not only MLX (--json always does).
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
    /// Hash a managed workspace's content now (reads every file) and record it in its
    /// sentinel: the current state becomes the clean one.
    #[arg(long)]
    pub recalc_hash: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "The check succeeds (exit 0) whatever it finds, as mlx-knife's does; \
    unhealthy models are listed under `unhealthy`. For CI, --fail-on-unhealthy exits 1 when a \
    model is unhealthy or nothing matched."
)]
pub struct HealthArgs {
    /// Model spec or workspace path; every cached model when omitted.
    pub model: Option<String>,
    /// Exit 1 (JSON: error HealthCheckFailed) when any model is unhealthy or none matched.
    #[arg(long)]
    pub fail_on_unhealthy: bool,
    /// With --json: each entry's problems (code, file, message, fix), notes, framework, bytes
    /// read (an extension of mlx-knife's schema, which admits none there).
    #[arg(long)]
    pub details: bool,
}

#[derive(Debug, Args)]
#[command(
    group = clap::ArgGroup::new("operation").required(true).args(["repair_index", "quantize", "dequantize"]),
    after_help = "Examples:\n  \
        mlxk convert mlx-community/Qwen2.5-VL-7B-Instruct-4bit ./ws --repair-index\n  \
        mlxk convert Qwen/Qwen3-8B ./ws-4bit --quantize 4 --q-group-size 64\n  \
        mlxk convert Qwen/Qwen3-8B ./ws-mxfp4 --quantize --q-mode mxfp4\n  \
        mlxk convert Qwen/Qwen3-8B ./ws-mixed --quantize 4 --mixed-recipe mixed_3_6\n  \
        mlxk convert ~/mlx/Qwen/Qwen3-8B ~/mlx/Qwen/Qwen3-8B-4bit --quantize 4   (lands in the mount's overlay)\n  \
        mlxk convert ./ws-4bit ./ws-bf16 --dequantize --dtype bfloat16\n\n\
        Quantize and dequantize are bit-exact with `python -m mlx_lm convert` (mlx-lm 0.32.2, mlx 0.32.4, CPU)."
)]
pub struct ConvertArgs {
    /// Source: a cache model spec, a workspace, or any model directory (only ever read).
    pub source: String,
    /// Target directory: must not exist or be empty, and must be outside the cache.
    pub target: PathBuf,
    /// Rebuild model.safetensors.index.json from the shard headers; weights are copied byte for byte.
    #[arg(long)]
    pub repair_index: bool,
    /// Quantize the weights to N bits (affine: 1-6 or 8, default 4; the float modes fix their own).
    #[arg(long, visible_alias = "q-bits", value_name = "N", num_args = 0..=1)]
    pub quantize: Option<Option<u32>>,
    /// Dequantize a quantized model back to float weights.
    #[arg(long)]
    pub dequantize: bool,
    /// Values per quantization group: 32, 64 (default) or 128 for affine.
    #[arg(long, value_name = "N", requires = "quantize")]
    pub q_group_size: Option<usize>,
    /// Quantization mode.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = QuantMode::Affine,
          requires = "quantize")]
    pub q_mode: QuantMode,
    /// A mixed-precision recipe of mlx-lm (layer bits low/high); N is then the recorded default.
    #[arg(
        long,
        visible_alias = "quant-predicate",
        value_name = "RECIPE",
        value_enum,
        requires = "quantize"
    )]
    pub mixed_recipe: Option<MixedRecipe>,
    /// Cast every float tensor to this dtype first (default: config.json's torch_dtype).
    #[arg(
        long,
        value_name = "DTYPE",
        value_enum,
        conflicts_with = "repair_index"
    )]
    pub dtype: Option<FloatDtype>,
    /// Do not run a health check on the result.
    #[arg(long)]
    pub skip_health: bool,
}

// The value names come from the types themselves (one list each, in the layer that owns it).
impl ValueEnum for QuantMode {
    fn value_variants<'a>() -> &'a [Self] {
        &QuantMode::ALL
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()))
    }
}

impl ValueEnum for MixedRecipe {
    fn value_variants<'a>() -> &'a [Self] {
        &MixedRecipe::ALL
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()))
    }
}

impl ValueEnum for FloatDtype {
    fn value_variants<'a>() -> &'a [Self] {
        &FloatDtype::ALL
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()))
    }
}

/// The cache, if it exists: workspace paths work without one.
fn open_cache(args: &MlxkArgs) -> Result<Option<HubCache>, CliError> {
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

/// What a command produced: its JSON data, its human text, and the failure it amounts to
/// (a check that found problems, a workspace written unhealthy), if any.
pub struct Outcome {
    pub data: Value,
    pub human: String,
    /// The JSON error type and message; the command exits 1.
    pub failure: Option<CliError>,
    /// The command printed its own report (the server's startup line): nothing more is.
    pub printed: bool,
}

impl Outcome {
    fn success(data: Value, human: String) -> Outcome {
        Outcome {
            data,
            human,
            failure: None,
            printed: false,
        }
    }
}

/// Entry point of the `mlxk` binary.
pub fn mlxk_main() -> ExitCode {
    init_logging();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let want_json = argv.iter().skip(1).any(|a| a == "--json");
    let args = match MlxkArgs::try_parse_from(&argv) {
        Ok(args) => args,
        Err(e) => return usage_error(e, &argv, want_json),
    };
    let name = match &args.command {
        Command::List(_) => "list",
        Command::Show(_) => "show",
        Command::Health(_) => "health",
        Command::Convert(_) => "convert",
        Command::Run(_) => "run",
        Command::Pull(_) => "pull",
        Command::Rm(_) => "rm",
        Command::Clone(_) => "clone",
        Command::Serve(_) => "server",
        Command::Version => "version",
    };
    let result = match &args.command {
        Command::List(a) => list::list(&args, a),
        Command::Show(a) => show::show(&args, a),
        Command::Health(a) => health::health(&args, a),
        Command::Convert(a) => convert::convert(&args, a),
        Command::Run(a) => run::run(&args, a),
        Command::Pull(a) => pull::pull(&args, a),
        Command::Rm(a) => rm::rm(&args, a),
        Command::Clone(a) => clone::clone(&args, a),
        Command::Serve(a) => serve::serve(&args, a),
        Command::Version => Ok(version()),
    };
    match result {
        Ok(outcome) => {
            let failed = outcome.failure.is_some();
            if outcome.printed {
            } else if args.json {
                match &outcome.failure {
                    Some(f) => {
                        output::print_error(name, f.kind, &f.message, &f.extra, outcome.data)
                    }
                    None => output::print_success(name, outcome.data),
                }
            } else {
                print!("{}", outcome.human);
                if let Some(f) = &outcome.failure {
                    eprintln!("error: {}", f.message);
                }
            }
            if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
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

/// What clap refused. With --json: `--version` prints the version envelope, `--help` the help
/// text, and a usage error mlx-knife's error envelope (type CommandError, exit 2), naming the
/// command when it is one of the envelope's (null otherwise, as mlx-knife does).
fn usage_error(e: clap::Error, argv: &[std::ffi::OsString], want_json: bool) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayVersion if want_json => {
            output::print_success("version", version().data);
            ExitCode::SUCCESS
        }
        _ if !want_json || !e.use_stderr() => {
            let _ = e.print();
            ExitCode::from(e.exit_code().clamp(0, 255) as u8)
        }
        _ => {
            let command = argv
                .iter()
                .skip(1)
                .filter_map(|a| a.to_str())
                .map(|a| if a == "serve" { "server" } else { a })
                .find(|a| ENVELOPE_COMMANDS.contains(a));
            // clap's message on one line, without its `error: ` prefix and the usage footer.
            let text = e.to_string();
            let message = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let message = message
                .strip_prefix("error: ")
                .unwrap_or(&message)
                .to_string();
            output::print_json(&json!({
                "status": "error",
                "command": command,
                "data": null,
                "error": {"type": "CommandError", "message": message},
            }));
            ExitCode::from(2)
        }
    }
}

/// `mlxk version`: the CLI's version, the JSON API's, and the machine's memory.
fn version() -> Outcome {
    let memory = total_memory_bytes();
    Outcome::success(
        json!({
            "cli_version": crate::VERSION,
            "json_api_spec_version": JSON_API_SPEC_VERSION,
            "system": memory.map(|m| json!({"memory_total_bytes": m})),
        }),
        format!(
            "mlxk {} (JSON API {JSON_API_SPEC_VERSION})\n",
            crate::VERSION
        ),
    )
}

#[cfg(target_os = "linux")]
fn total_memory_bytes() -> Option<u64> {
    use nix::unistd::{sysconf, SysconfVar};
    let pages = sysconf(SysconfVar::_PHYS_PAGES).ok()??;
    let page = sysconf(SysconfVar::PAGE_SIZE).ok()??;
    u64::try_from(pages)
        .ok()?
        .checked_mul(u64::try_from(page).ok()?)
}

#[cfg(not(target_os = "linux"))]
fn total_memory_bytes() -> Option<u64> {
    None
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
