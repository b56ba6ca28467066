//! `mlxk pull`: a model from the hub into the cache, then its strict health verdict.

use serde_json::json;

use super::output::{human_size, Style};
use super::{CliError, MlxkArgs, Outcome, PullArgs};
use crate::hub::{self, FileFilter, HubClient, HubConfig, HubError, PullProgress, PullRequest};
use crate::store::cache::{cache_root, HubCache};
use crate::store::{health, spec};

/// `org/name[@revision]`; a bare `name` means `mlx-community/name`, as in mlx-knife.
pub(super) struct RepoSpec {
    pub repo: String,
    pub revision: Option<String>,
    /// Set when a bare name was expanded.
    pub expanded: bool,
}

impl RepoSpec {
    pub(super) fn parse(spec: &str) -> Result<RepoSpec, CliError> {
        let (name, revision) = match spec.rsplit_once('@') {
            Some((n, r)) if !r.is_empty() => (n, Some(r.to_string())),
            Some((n, _)) => (n, None),
            None => (spec, None),
        };
        let expanded = !name.contains('/');
        let repo = if expanded {
            format!("{}/{name}", spec::DEFAULT_ORG)
        } else {
            name.to_string()
        };
        hub::check_repo_id(&repo).map_err(CliError::from)?;
        Ok(RepoSpec {
            repo,
            revision,
            expanded,
        })
    }
}

impl From<HubError> for CliError {
    fn from(e: HubError) -> CliError {
        CliError::new(e.kind(), e.to_string())
    }
}

pub(super) fn pull(args: &MlxkArgs, a: &PullArgs) -> Result<Outcome, CliError> {
    let spec = RepoSpec::parse(&a.model)?;
    let filter = FileFilter::new(&a.include, &a.exclude)?;
    let client = HubClient::new(HubConfig::from_env())?;
    let root = cache_root(args.cache.as_deref());
    std::fs::create_dir_all(&root).map_err(|e| {
        CliError::new(
            "CommandError",
            format!("cannot create the cache {}: {e}", root.display()),
        )
    })?;
    let bar = progress_bar(args.json);
    let on_progress = bar_updater(bar.as_ref());
    let request = PullRequest {
        repo: &spec.repo,
        revision: spec.revision.as_deref(),
        filter: &filter,
        workers: a.workers,
    };
    let result = hub::pull(&client, &root, &request, &on_progress);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let outcome = result?;

    // The strict check of what was pulled (a partial pull with --include is judged as it is).
    let cache = HubCache::open(&root)?;
    let model = spec::resolve(
        Some(&cache),
        &format!("{}@{}", outcome.repo, outcome.commit),
    )?;
    let report = health::check(&model);
    let style = Style::detect();
    let secs = outcome.elapsed.as_secs_f64();
    let short = &outcome.commit[..12];
    let message = if outcome.files_downloaded == 0 {
        format!(
            "{}@{} (commit {short}) is already in the cache: {} files, {}",
            outcome.repo,
            outcome.revision,
            outcome.files,
            human_size(outcome.bytes_total)
        )
    } else {
        format!(
            "pulled {}@{} (commit {short}): {} of {} files, {} in {:.1} s ({}/s){}",
            outcome.repo,
            outcome.revision,
            outcome.files_downloaded,
            outcome.files,
            human_size(outcome.bytes_downloaded),
            secs,
            human_size((outcome.bytes_downloaded as f64 / secs.max(1e-3)) as u64),
            if outcome.bytes_resumed > 0 {
                format!(", {} resumed", human_size(outcome.bytes_resumed))
            } else {
                String::new()
            }
        )
    };
    let mut human = format!("{} {message}\n", style.green("✓"));
    if report.healthy() {
        human.push_str(&format!("  health: {}\n", style.green("healthy")));
    } else {
        human.push_str(&format!(
            "  health: {} — mount it (`mlxk-fs mount`) or repair it (`mlxk convert {} <dir> --repair-index`)\n",
            style.red("unhealthy"),
            outcome.repo
        ));
        for p in &report.problems {
            human.push_str(&format!(
                "    {} {}\n",
                style.yellow(p.code.as_str()),
                p.message
            ));
        }
    }
    let data = json!({
        "model": outcome.repo,
        "download_status": if outcome.files_downloaded == 0 { "already_present" } else { "success" },
        "message": message,
        "expanded_name": spec.expanded.then(|| outcome.repo.clone()),
        "revision": outcome.revision,
        "commit": outcome.commit,
        "files": outcome.files,
        "files_downloaded": outcome.files_downloaded,
        "files_present": outcome.files_present,
        "bytes_downloaded": outcome.bytes_downloaded,
        "bytes_resumed": outcome.bytes_resumed,
        "bytes_total": outcome.bytes_total,
        "elapsed_s": (secs * 1000.0).round() / 1000.0,
        "snapshot": outcome.snapshot,
        "health": if report.healthy() { "healthy" } else { "unhealthy" },
        "health_reason": report.reason(),
        "problems": report.problems,
    });
    Ok(Outcome::success(data, human))
}

/// Feeds a pull's progress to `bar`: bytes, and `done/total files` with the last one finished.
pub(super) fn bar_updater(
    bar: Option<&indicatif::ProgressBar>,
) -> impl Fn(PullProgress<'_>) + Sync + '_ {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let total = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    move |p| {
        let Some(bar) = bar else { return };
        match p {
            PullProgress::Plan {
                files,
                bytes_to_get,
            } => {
                total.store(files, Ordering::Relaxed);
                bar.set_length(bytes_to_get);
                bar.set_message(format!("0/{files} files"));
            }
            PullProgress::Bytes(n) => bar.inc(n),
            PullProgress::FileDone(path) => {
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                bar.set_message(format!(
                    "{d}/{} files ({path})",
                    total.load(Ordering::Relaxed)
                ));
            }
        }
    }
}

/// Bytes, rate, ETA and files done, on stderr when it is a terminal (never with --json).
pub(super) fn progress_bar(json: bool) -> Option<indicatif::ProgressBar> {
    super::output::byte_bar(
        json,
        "{bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_msg}",
    )
}
