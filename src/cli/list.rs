//! `mlxk list`: the cache's models as a table or mlx-knife's JSON.

use serde_json::json;

use super::output::{human_size, short_time, table, Style};
use super::{open_cache, CliError, ListArgs, MlxkArgs, Outcome};
use crate::store::health::Framework;
use crate::store::summary::{self, ListReport};

pub(super) fn list(args: &MlxkArgs, a: &ListArgs) -> Result<Outcome, CliError> {
    let Some(cache) = open_cache(args)? else {
        return Ok(Outcome::success(
            json!({"models": [], "count": 0}),
            "No models (no Hugging Face cache found).\n".into(),
        ));
    };
    // JSON lists every framework, as mlx-knife does; the table keeps to MLX unless --all.
    let mut report = summary::list(&cache, a.pattern.as_deref())?;
    let data = json!({"models": report.models, "count": report.models.len()});
    if !a.all {
        report
            .models
            .retain(|m| m.framework == Framework::Mlx.as_str());
    }
    Ok(Outcome::success(data, render(&report, a, Style::detect())))
}

fn render(report: &ListReport, a: &ListArgs, style: Style) -> String {
    if report.models.is_empty() {
        let (scope, hint) = if a.all {
            ("", "")
        } else {
            (" MLX", " (--all shows every framework)")
        };
        return format!(
            "No{scope} models found in {}{hint}\n",
            report.cache_root.display()
        );
    }
    let with_health = a.health || a.verbose;
    let rows: Vec<Vec<String>> = report
        .models
        .iter()
        .map(|s| {
            let hash = s.hash.as_deref().unwrap_or("-");
            let mut row = vec![
                s.name.clone(),
                if a.verbose {
                    hash.to_string()
                } else {
                    hash.chars().take(8).collect()
                },
                human_size(s.size_bytes),
                short_time(Some(&s.last_modified)),
                s.framework.to_string(),
                s.model_type.to_string(),
            ];
            if with_health {
                row.push(if s.health == "healthy" {
                    style.green("healthy")
                } else {
                    style.red("unhealthy")
                });
            }
            if a.verbose {
                row.push(s.reason.clone().unwrap_or_else(|| "ready to run".into()));
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "ID", "SIZE", "MODIFIED", "FRAMEWORK", "TYPE"];
    if with_health {
        header.push("HEALTH");
    }
    if a.verbose {
        header.push("REASON");
    }
    table(&header, &rows, style)
}
