//! `mlxk clone`: a managed workspace from a model — copied from the cache when it is there,
//! otherwise downloaded straight into the workspace (the cache is left alone).

use serde_json::json;

use super::output::{human_size, Style};
use super::pull::{bar_updater, progress_bar, RepoSpec};
use super::{open_cache, CliError, CloneArgs, MlxkArgs, Outcome};
use crate::convert::clone::{self as clone_op, CloneOutcome};
use crate::hub::{self, HubClient, HubConfig};
use crate::store::cache::HubCache;
use crate::store::spec;

pub(super) fn clone(args: &MlxkArgs, a: &CloneArgs) -> Result<Outcome, CliError> {
    let wanted = RepoSpec::parse(&a.model)?;
    let cache = open_cache(args)?;
    let caches: Vec<&HubCache> = cache.iter().collect();
    let style = Style::detect();

    // From the cache when the repository (and the revision asked for) is there.
    let cached = match &cache {
        Some(c) => cached_snapshot(c, &a.model)?,
        None => None,
    };
    let (outcome, from_cache, downloaded) = match cached {
        Some(model) => (
            clone_op::clone_model(&model, &a.target, &caches, a.skip_health)?,
            true,
            0,
        ),
        None => {
            let client = HubClient::new(HubConfig::from_env())?;
            let revision = wanted.revision.as_deref().unwrap_or("main");
            let commit = if hub::pull::is_commit_sha(revision) {
                revision.to_string()
            } else {
                client.commit_of(&wanted.repo, revision)?
            };
            let files = client.tree(&wanted.repo, &commit)?;
            let pending = clone_op::begin(&a.target, &caches, &wanted.repo, &commit)?;
            let bar = progress_bar(args.json);
            let on_progress = bar_updater(bar.as_ref());
            let totals = hub::fetch_into_dir(
                &client,
                &wanted.repo,
                &commit,
                &files,
                pending.dir(),
                a.workers,
                &on_progress,
            );
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            // On failure the workspace stays marked in progress: the same command resumes it.
            let totals = totals?;
            (pending.finish(a.skip_health)?, false, totals.received)
        }
    };
    Ok(render(&outcome, from_cache, downloaded, &a.model, style))
}

/// The cached snapshot `spec` names exactly (`org/name`, a bare mlx-community name, with an
/// optional `@ref` / `@sha-prefix`), if the cache has it.
fn cached_snapshot(
    cache: &HubCache,
    spec_text: &str,
) -> Result<Option<crate::store::spec::ResolvedModel>, CliError> {
    let (name, rev) = match spec_text.rsplit_once('@') {
        Some((n, r)) if !r.is_empty() => (n, Some(r)),
        _ => (spec_text, None),
    };
    let Some(repo) = spec::exact_repo(cache, name)? else {
        return Ok(None);
    };
    let snapshot = match rev {
        Some(r) => match spec::find_revision(&repo, r) {
            Ok(s) => s,
            // Not downloaded at that revision: the hub has it (or says it does not).
            Err(_) => return Ok(None),
        },
        None => match repo.default_snapshot() {
            Some(s) => s,
            None => return Ok(None),
        },
    };
    Ok(Some(spec::open_snapshot(cache, repo, snapshot)?))
}

fn render(
    o: &CloneOutcome,
    from_cache: bool,
    downloaded: u64,
    asked: &str,
    style: Style,
) -> Outcome {
    let source = o.source_repo.clone().unwrap_or_else(|| asked.to_string());
    let rev = o
        .source_revision
        .as_deref()
        .map(|r| format!("@{}", &r[..r.len().min(12)]))
        .unwrap_or_default();
    let how = if from_cache {
        format!(
            "from the cache ({} files, {}, {} reflinked)",
            o.copy.files,
            human_size(o.copy.bytes),
            o.copy.reflinked
        )
    } else {
        format!("from the hub ({} downloaded)", human_size(downloaded))
    };
    let message = format!("cloned {source}{rev} to {} {how}", o.target.display());
    let mut human = format!("{} {message}\n", style.green("✓"));
    let mut data = json!({
        "model": source,
        "clone_status": "success",
        "message": message,
        "target_dir": o.target,
        "health_check": o.health.is_some(),
        "from_cache": from_cache,
        "source_revision": o.source_revision,
        "content_hash": o.content_hash,
        "bytes_downloaded": downloaded,
    });
    match &o.health {
        Some(h) if h.healthy() => {
            human.push_str(&format!("  health: {}\n", style.green("healthy")));
            data["health"] = json!("healthy");
            data["health_reason"] = json!(h.reason());
        }
        Some(h) => {
            human.push_str(&format!(
                "  health: {} — `mlxk convert {} <dir> --repair-index` repairs an index\n",
                style.red("unhealthy"),
                o.target.display()
            ));
            for p in &h.problems {
                human.push_str(&format!(
                    "    {} {}\n",
                    style.yellow(p.code.as_str()),
                    p.message
                ));
            }
            data["health"] = json!("unhealthy");
            data["health_reason"] = json!(h.reason());
            data["problems"] = json!(h.problems);
        }
        None => human.push_str("  health: skipped\n"),
    }
    Outcome::success(data, human)
}
