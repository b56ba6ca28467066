//! `mlxk rm`: a model (or one snapshot of it) out of the cache, after a confirmation.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::json;

use super::output::{human_size, Style};
use super::{require_cache, CliError, MlxkArgs, Outcome, RmArgs};
use crate::hub::remove;
use crate::store::cache::ModelRepo;
use crate::store::spec;

pub(super) fn rm(args: &MlxkArgs, a: &RmArgs) -> Result<Outcome, CliError> {
    let cache = require_cache(args)?;
    let path = crate::store::cache::expand_tilde(std::path::Path::new(&a.model));
    if spec::looks_like_path(&a.model) || path.join("config.json").is_file() {
        return Err(CliError::new(
            "CommandError",
            format!(
                "{} is a workspace (a plain directory), not a cached model: remove it with `rm -r` if you mean to",
                a.model
            ),
        ));
    }
    let (name, rev) = match a.model.rsplit_once('@') {
        Some((n, r)) if !r.is_empty() => (n, Some(r)),
        _ => (a.model.as_str(), None),
    };
    let repo = exact_repo(&cache, name)?;
    let snapshot = rev.map(|r| spec::find_revision(&repo, r)).transpose()?;
    let plan = remove::plan(&repo, snapshot.as_ref());
    let what = match &plan.snapshot {
        Some(sha) => format!(
            "snapshot {} of {} ({} blobs only it uses, {})",
            &sha[..sha.len().min(12)],
            plan.repo,
            plan.blobs,
            human_size(plan.bytes)
        ),
        None => format!(
            "{} ({} snapshot{}, {})",
            plan.repo,
            plan.snapshots,
            if plan.snapshots == 1 { "" } else { "s" },
            human_size(plan.bytes)
        ),
    };
    if !a.force {
        let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        if args.json || !interactive {
            return Err(CliError::new(
                "CommandError",
                format!(
                    "removing {what} needs confirmation: pass -f (there is no terminal to ask on)"
                ),
            ));
        }
        eprint!("Remove {what}? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            return Ok(Outcome::success(
                json!({"model": plan.repo, "action": "cancelled", "message": "nothing removed"}),
                "nothing removed\n".into(),
            ));
        }
    }
    let done = remove::remove(&cache, &repo, snapshot.as_ref())?;
    let message = format!("removed {what}");
    let style = Style::detect();
    Ok(Outcome::success(
        json!({
            "model": done.repo,
            "action": "removed",
            "message": message,
            "snapshot": done.snapshot,
            "snapshots_removed": done.snapshots,
            "blobs_removed": done.blobs,
            "bytes_freed": done.bytes,
        }),
        format!("{} {message}\n", style.green("✓")),
    ))
}

/// The cached repository named exactly: removal never acts on a substring match.
fn exact_repo(cache: &crate::store::cache::HubCache, name: &str) -> Result<ModelRepo, CliError> {
    if let Some(r) = spec::exact_repo(cache, name)? {
        return Ok(r);
    }
    let lower = name.to_lowercase();
    let close: Vec<String> = cache
        .repos()?
        .iter()
        .filter(|r| r.repo_id.to_lowercase().contains(&lower))
        .map(|r| r.repo_id.clone())
        .collect();
    let mut e = CliError::new(
        "model_not_found",
        if close.is_empty() {
            format!("`{name}` is not in the cache")
        } else {
            format!(
                "`{name}` is not a cached repository; rm takes the exact name: {}",
                close.join(", ")
            )
        },
    );
    e.extra = json!({ "matches": close });
    Err(e)
}
