//! `mlxk-fs`: mount / umount / status, rendered for humans or as JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use super::output::{self, table, Style};
use crate::fs::daemon::{self, MountOptions, MountState, Unmounted};
use crate::store::cache::cache_root;
use crate::store::mounts::{self, MountRecord};
use crate::store::overlay::OverlayDir;

#[derive(Debug, Parser)]
#[command(
    name = "mlxk-fs",
    version,
    about = "Present every model of a Hugging Face cache as a managed MLX workspace (FUSE)",
    long_about = "Present every model of a Hugging Face cache as a managed MLX workspace.\n\n\
        `mlxk-fs mount ~/mlx` shows every cached model as ~/mlx/<org>/<name>/ (the snapshot \
        refs/main names; ~/mlx/<org>/<name>@<ref-or-sha>/ for any other): files served \
        zero-copy from the cache (kernel FUSE passthrough), a synthesized .mlxk_workspace.json, \
        and model.safetensors.index.json rebuilt from the shard headers (a differing cached \
        index stays readable as model.safetensors.index.json.orig). Every write lands in the \
        overlay directory (--overlay); the cache is never modified.",
    after_help = "Unprivileged mounts need fusermount3 (Debian: apt install fuse3). Logs: RUST_LOG=debug, --log-file."
)]
pub struct MlxkFsArgs {
    /// Print results as JSON (status / command / data / error).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: FsCommand,
}

#[derive(Debug, Subcommand)]
pub enum FsCommand {
    /// Mount the cache at MOUNTPOINT (in the background unless -f).
    Mount(MountArgs),
    /// Unmount (also clears a stale mount left by a killed daemon).
    #[command(alias = "unmount")]
    Umount(UmountArgs),
    /// List active mounts: mountpoint, cache, pid, passthrough, counters; and stale ones.
    Status,
    /// What the overlay holds: `ls [MODEL]`, `diff MODEL`, `reset MODEL`.
    #[command(subcommand)]
    Overlay(OverlayCommand),
}

#[derive(Debug, Subcommand)]
pub enum OverlayCommand {
    /// Models the overlay changes (files written, deleted, moved), with their sizes.
    Ls(OverlayTarget),
    /// Every change the overlay holds for MODEL, against the cache below.
    Diff(OverlayModel),
    /// Drop every change the overlay holds for MODEL: the mount shows the cache's model again.
    Reset(OverlayModel),
}

#[derive(Debug, Args)]
pub struct OverlayTarget {
    /// `org/name` (or a prefix: `org`), or a path inside a mount.
    pub model: Option<String>,
    #[command(flatten)]
    pub which: WhichOverlay,
}

#[derive(Debug, Args)]
pub struct OverlayModel {
    /// `org/name`, or a path inside a mount (`~/mlx/org/name`).
    pub model: String,
    #[command(flatten)]
    pub which: WhichOverlay,
}

#[derive(Debug, Args)]
pub struct WhichOverlay {
    /// The overlay directory (default: the one of the mount MODEL is in, else
    /// $XDG_DATA_HOME/mlxk-fs/overlay).
    #[arg(long, value_name = "DIR")]
    pub overlay: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    pub mountpoint: PathBuf,
    /// The Hugging Face hub cache (else HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Where every write into the mount lands (default: $XDG_DATA_HOME/mlxk-fs/overlay, else
    /// ~/.local/share/mlxk-fs/overlay). Never inside the cache.
    #[arg(long, value_name = "DIR")]
    pub overlay: Option<PathBuf>,
    /// Stay in the foreground (Ctrl-C unmounts).
    #[arg(short, long)]
    pub foreground: bool,
    /// Let other users see the mount (needs user_allow_other in /etc/fuse.conf when not root).
    #[arg(long)]
    pub allow_other: bool,
    /// Serve reads from the daemon instead of kernel passthrough.
    #[arg(long)]
    pub no_passthrough: bool,
    /// Where the daemon logs (RUST_LOG sets the level).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Serve extended attributes of the files written into the mount. Off by default on
    /// Linux: a file system that has none is never asked again, which saves `ls -l` two round
    /// trips per entry (docs/mount.md, "Extended attributes"). Always on with macFUSE.
    #[arg(long)]
    pub xattrs: bool,
    /// Where what the daemon learns from headers is kept across mounts (default:
    /// $XDG_CACHE_HOME/mlxk-fs/views, else ~/.cache/mlxk-fs/views). Never inside the HF cache.
    #[arg(long, value_name = "DIR", conflicts_with = "no_view_cache")]
    pub view_cache: Option<PathBuf>,
    /// Keep nothing across mounts: every mount reads the headers again.
    #[arg(long)]
    pub no_view_cache: bool,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    pub mountpoint: PathBuf,
}

/// Entry point of the `mlxk-fs` binary.
pub fn mlxk_fs_main() -> ExitCode {
    let args = MlxkFsArgs::parse();
    let log_file = match &args.command {
        FsCommand::Mount(m) => m.log_file.clone(),
        _ => None,
    };
    init_logging(log_file.as_deref());
    let (name, result) = match &args.command {
        FsCommand::Mount(m) => ("mount", mount(m)),
        FsCommand::Umount(u) => ("umount", umount(u)),
        FsCommand::Status => ("status", status()),
        FsCommand::Overlay(OverlayCommand::Ls(t)) => ("overlay ls", overlay_ls(t)),
        FsCommand::Overlay(OverlayCommand::Diff(m)) => ("overlay diff", overlay_diff(m)),
        FsCommand::Overlay(OverlayCommand::Reset(m)) => ("overlay reset", overlay_reset(m)),
    };
    match result {
        Ok((data, human)) => {
            if args.json {
                output::print_success(name, data);
            } else {
                print!("{human}");
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            daemon::report_error(&message);
            if args.json {
                output::print_error(name, "CommandError", &message, &json!({}), Value::Null);
            } else {
                eprintln!("mlxk-fs: {message}");
            }
            ExitCode::from(1)
        }
    }
}

fn init_logging(file: Option<&std::path::Path>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let opened = file.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match opened {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

fn record_json(r: &MountRecord) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

fn mount(m: &MountArgs) -> Result<(Value, String), String> {
    let cache = std::path::absolute(cache_root(m.cache.as_deref())).map_err(|e| e.to_string())?;
    if !cache.is_dir() {
        return Err(format!(
            "no Hugging Face cache at {} (set --cache, HF_HUB_CACHE or HF_HOME)",
            cache.display()
        ));
    }
    let log_file = match &m.log_file {
        Some(p) => Some(std::path::absolute(p).map_err(|e| e.to_string())?),
        None => None,
    };
    let overlay = std::path::absolute(
        m.overlay
            .clone()
            .unwrap_or_else(crate::store::overlay::default_dir),
    )
    .map_err(|e| e.to_string())?;
    let view_cache = if m.no_view_cache {
        None
    } else {
        let dir = m
            .view_cache
            .clone()
            .unwrap_or_else(crate::store::mounts::view_cache_dir);
        Some(std::path::absolute(dir).map_err(|e| e.to_string())?)
    };
    if m.foreground {
        let opts = MountOptions {
            mountpoint: m.mountpoint.clone(),
            cache,
            overlay,
            allow_other: m.allow_other,
            passthrough: !m.no_passthrough,
            threads: m.threads,
            xattrs: m.xattrs || cfg!(target_os = "macos"),
            view_cache,
            log_file,
        };
        daemon::serve(&opts, |record| {
            tracing::info!(mountpoint = %record.mountpoint.display(), passthrough = record.passthrough, "mounted");
            daemon::report_ready(record);
        })
        .map_err(|e| e.to_string())?;
        return Ok((json!({"unmounted": m.mountpoint}), String::new()));
    }
    // Fail fast on what the parent can see, with the same messages the daemon would give.
    daemon::preflight(&m.mountpoint).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut child_args: Vec<String> = vec![
        "mount".into(),
        std::path::absolute(&m.mountpoint)
            .map_err(|e| e.to_string())?
            .display()
            .to_string(),
        "--foreground".into(),
        "--cache".into(),
        cache.display().to_string(),
        "--overlay".into(),
        overlay.display().to_string(),
        "--threads".into(),
        m.threads.to_string(),
    ];
    if m.allow_other {
        child_args.push("--allow-other".into());
    }
    if m.no_passthrough {
        child_args.push("--no-passthrough".into());
    }
    if m.xattrs {
        child_args.push("--xattrs".into());
    }
    match &view_cache {
        Some(dir) => {
            child_args.push("--view-cache".into());
            child_args.push(dir.display().to_string());
        }
        None => child_args.push("--no-view-cache".into()),
    }
    if let Some(l) = &log_file {
        child_args.push("--log-file".into());
        child_args.push(l.display().to_string());
    }
    let record = daemon::spawn_background(&exe, &child_args, log_file.as_deref())
        .map_err(|e| e.to_string())?;
    let human = format!(
        "mounted {} (cache {}, overlay {}, pid {}, passthrough {})\n",
        record.mountpoint.display(),
        record.cache.display(),
        record
            .overlay
            .as_deref()
            .map(|o| o.display().to_string())
            .unwrap_or_default(),
        record.pid,
        match (record.passthrough, m.no_passthrough) {
            (true, _) => "on",
            (false, true) => "off",
            (false, false) if nix::unistd::geteuid().is_root() => "off: this kernel lacks it",
            (false, false) => "off: it needs root; the daemon serves every read",
        }
    );
    Ok((record_json(&record), human))
}

fn umount(u: &UmountArgs) -> Result<(Value, String), String> {
    match daemon::unmount(&u.mountpoint).map_err(|e| e.to_string())? {
        Unmounted::Daemon { pid, exited } => Ok((
            json!({"mountpoint": u.mountpoint, "pid": pid, "stale": false, "daemon_exited": exited}),
            if exited {
                format!(
                    "unmounted {} (daemon {pid} exited)\n",
                    u.mountpoint.display()
                )
            } else {
                format!(
                    "unmounted {} (daemon {pid} exits once the files it serves are closed)\n",
                    u.mountpoint.display()
                )
            },
        )),
        Unmounted::Detached { stale: true } => Ok((
            json!({"mountpoint": u.mountpoint, "pid": null, "stale": true}),
            format!("detached stale mount {}\n", u.mountpoint.display()),
        )),
        Unmounted::Detached { stale: false } => Ok((
            json!({"mountpoint": u.mountpoint, "pid": null, "stale": false}),
            format!(
                "detached {} (its daemon has no record in {}: mounted with another \
                 MLXK_FS_STATE_DIR? It exits once the files it serves are closed)\n",
                u.mountpoint.display(),
                mounts::registry_dir().display()
            ),
        )),
    }
}

fn status() -> Result<(Value, String), String> {
    let style = Style::detect();
    let mut rows = Vec::new();
    let mut entries = Vec::new();
    for m in daemon::status() {
        let state = m.state.as_str();
        let fix = (m.state == MountState::Stale)
            .then(|| format!("mlxk-fs umount {}", m.mountpoint.display()));
        let activity = match (&m.counters, &fix) {
            (Some(c), _) if c.get("opens").is_some() => {
                format!("{} opens, {} lookups", c["opens"], c["lookups"])
            }
            (_, Some(f)) => format!("fix: {f}"),
            _ => String::new(),
        };
        let state_cell = if m.state == MountState::Active {
            style.green(state)
        } else {
            style.red(state)
        };
        let Some(r) = &m.record else {
            rows.push(vec![
                m.mountpoint.display().to_string(),
                "?".into(),
                "-".into(),
                "-".into(),
                state_cell,
                activity,
            ]);
            entries.push(json!({"mountpoint": m.mountpoint, "state": state, "fix": fix}));
            continue;
        };
        // The daemon's live word wins over the record's: passthrough can be refused later.
        let passthrough = m
            .counters
            .as_ref()
            .and_then(|c| c["passthrough"].as_bool())
            .unwrap_or(r.passthrough);
        rows.push(vec![
            r.mountpoint.display().to_string(),
            r.cache.display().to_string(),
            r.pid.to_string(),
            if passthrough { "on" } else { "off" }.into(),
            state_cell,
            activity,
        ]);
        let mut e = record_json(r);
        e["passthrough"] = json!(passthrough);
        e["state"] = json!(state);
        e["counters"] = m.counters.clone().unwrap_or(Value::Null);
        e["fix"] = json!(fix);
        entries.push(e);
    }
    let human = if rows.is_empty() {
        "no mlxk-fs mounts\n".to_string()
    } else {
        table(
            &[
                "MOUNTPOINT",
                "CACHE",
                "PID",
                "PASSTHROUGH",
                "STATE",
                "ACTIVITY",
            ],
            &rows,
            style,
        )
    };
    Ok((json!({"mounts": entries, "count": entries.len()}), human))
}

/// Which overlay and which model path in it: a path inside a live mount names both; otherwise
/// `--overlay` (or the default directory) and `org/name` as given.
struct OverlayScope {
    overlay: OverlayDir,
    rel: String,
    /// The mount showing this overlay, when there is one (its kernel cache is refreshed).
    mountpoint: Option<PathBuf>,
}

fn overlay_scope(model: Option<&str>, which: &WhichOverlay) -> Result<OverlayScope, String> {
    if let Some(m) = model {
        let p = std::path::Path::new(m);
        if p.is_absolute() || m.starts_with('.') || p.exists() {
            if let Some(t) = mounts::overlay_target(p) {
                return Ok(OverlayScope {
                    overlay: OverlayDir::at(t.record.overlay.as_deref().unwrap_or(p)),
                    rel: t.rel,
                    mountpoint: Some(t.record.mountpoint),
                });
            }
            if p.is_absolute() {
                return Err(format!(
                    "{m} is not inside a live mlxk-fs mount; name the model as org/name (with --overlay DIR if it is not the default)"
                ));
            }
        }
    }
    let dir = which
        .overlay
        .clone()
        .unwrap_or_else(crate::store::overlay::default_dir);
    if !dir.is_dir() {
        return Err(format!(
            "no overlay directory at {} (mount with --overlay DIR, or pass --overlay)",
            dir.display()
        ));
    }
    let dir = std::fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mountpoint = mounts::list()
        .into_iter()
        .find(|r| r.alive() && r.overlay.as_deref() == Some(dir.as_path()))
        .map(|r| r.mountpoint);
    let rel = model.unwrap_or("").trim_matches('/').to_string();
    if rel
        .split('/')
        .any(|c| c == ".." || crate::store::overlay::is_internal(c))
    {
        return Err(format!("{rel}: not a model path"));
    }
    Ok(OverlayScope {
        overlay: OverlayDir::at(&dir),
        rel,
        mountpoint,
    })
}

fn overlay_ls(t: &OverlayTarget) -> Result<(Value, String), String> {
    let scope = overlay_scope(t.model.as_deref(), &t.which)?;
    let style = Style::detect();
    let models = scope.overlay.models().map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    let mut entries = Vec::new();
    for model in models.iter().filter(|m| {
        scope.rel.is_empty() || *m == &scope.rel || m.starts_with(&format!("{}/", scope.rel))
    }) {
        let changes = scope.overlay.changes(model).map_err(|e| e.to_string())?;
        let (parent, name) = model.rsplit_once('/').unwrap_or(("", model));
        let own = scope.overlay.marker(parent, name);
        let count = |k: &str| changes.iter().filter(|c| c.kind == k).count();
        let bytes: u64 = changes.iter().filter_map(|c| c.size).sum();
        let state = match (&own, scope.overlay.path(model).is_dir()) {
            (Some(crate::store::overlay::Marker::Whiteout), false) => "deleted".to_string(),
            (Some(crate::store::overlay::Marker::Ref(from)), _) => format!("moved from {from}"),
            _ => "changed".to_string(),
        };
        rows.push(vec![
            model.clone(),
            count("written").to_string(),
            output::human_size(bytes),
            count("deleted").to_string(),
            count("moved").to_string(),
            state.clone(),
        ]);
        entries.push(json!({
            "model": model,
            "written": count("written"),
            "bytes": bytes,
            "deleted": count("deleted"),
            "moved": count("moved"),
            "state": state,
        }));
    }
    let human = if rows.is_empty() {
        format!(
            "the overlay {} holds no changes{}\n",
            scope.overlay.root().display(),
            if scope.rel.is_empty() {
                String::new()
            } else {
                format!(" under {}", scope.rel)
            }
        )
    } else {
        table(
            &["MODEL", "WRITTEN", "SIZE", "DELETED", "MOVED", "STATE"],
            &rows,
            style,
        )
    };
    Ok((
        json!({"overlay": scope.overlay.root(), "models": entries, "count": entries.len()}),
        human,
    ))
}

fn overlay_diff(m: &OverlayModel) -> Result<(Value, String), String> {
    let scope = overlay_scope(Some(&m.model), &m.which)?;
    if scope.rel.is_empty() {
        return Err("name a model (org/name)".into());
    }
    let style = Style::detect();
    let changes = scope
        .overlay
        .changes(&scope.rel)
        .map_err(|e| e.to_string())?;
    let (parent, name) = scope.rel.rsplit_once('/').unwrap_or(("", &scope.rel));
    let own = scope.overlay.marker(parent, name);
    let mut human = String::new();
    match &own {
        Some(crate::store::overlay::Marker::Whiteout)
            if !scope.overlay.path(&scope.rel).is_dir() =>
        {
            human.push_str(&format!(
                "{} {} (the whole model is deleted)\n",
                style.red("-"),
                scope.rel
            ));
        }
        Some(crate::store::overlay::Marker::Ref(from)) => {
            human.push_str(&format!(
                "{} {} (moved from {from})\n",
                style.yellow(">"),
                scope.rel
            ));
        }
        _ => {}
    }
    for c in &changes {
        let line = match c.kind {
            "written" => format!(
                "{} {} ({})",
                style.green("+"),
                c.path,
                output::human_size(c.size.unwrap_or(0))
            ),
            "deleted" => format!("{} {}", style.red("-"), c.path),
            "moved" => format!(
                "{} {} (from {})",
                style.yellow(">"),
                c.path,
                c.from.as_deref().unwrap_or("?")
            ),
            "opaque" => format!(
                "{} {} (hides the cache's content)",
                style.yellow("*"),
                c.path
            ),
            _ => format!("  {}/", c.path),
        };
        human.push_str(&line);
        human.push('\n');
    }
    if human.is_empty() {
        human = format!("{}: no changes in the overlay\n", scope.rel);
    }
    let model_state = match own {
        Some(crate::store::overlay::Marker::Whiteout) => json!({"deleted": true}),
        Some(crate::store::overlay::Marker::Ref(from)) => json!({"moved_from": from}),
        None => json!({}),
    };
    Ok((
        json!({"model": scope.rel, "overlay": scope.overlay.root(), "model_state": model_state, "changes": changes}),
        human,
    ))
}

fn overlay_reset(m: &OverlayModel) -> Result<(Value, String), String> {
    let scope = overlay_scope(Some(&m.model), &m.which)?;
    if scope.rel.is_empty() {
        return Err("name a model (org/name)".into());
    }
    let changes = scope
        .overlay
        .changes(&scope.rel)
        .map_err(|e| e.to_string())?
        .len();
    let removed = scope
        .overlay
        .reset(&scope.rel)
        .map_err(|e| format!("{}: {e}", scope.rel))?;
    if let Some(mp) = &scope.mountpoint {
        if let Err(e) = mounts::ask_to_invalidate(mp, &scope.rel) {
            tracing::debug!(
                "cannot ask {} to invalidate {}: {e}",
                mp.display(),
                scope.rel
            );
        }
    }
    let human = if removed {
        format!(
            "{}: {changes} changes dropped; the mount shows the cache's model again\n",
            scope.rel
        )
    } else {
        format!("{}: the overlay held nothing for it\n", scope.rel)
    };
    Ok((
        json!({"model": scope.rel, "reset": removed, "changes_dropped": changes}),
        human,
    ))
}
