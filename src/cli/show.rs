//! `mlxk show`: one model's identity, architecture, health and workspace sentinel.

use serde_json::{json, Value};

use super::output::{human_size, short_time, table, Style};
use super::{open_cache, CliError, MlxkArgs, Outcome, ShowArgs};
use crate::store::spec;
use crate::store::summary::ShowReport;

pub(super) fn show(args: &MlxkArgs, a: &ShowArgs) -> Result<Outcome, CliError> {
    let cache = open_cache(args)?;
    let mut report = ShowReport::new(spec::resolve(cache.as_ref(), &a.model)?);
    if a.recalc_hash {
        report.recalc_hash().map_err(|e| {
            CliError::new(
                "CommandError",
                format!("{}: --recalc-hash: {e}", report.model.name),
            )
        })?;
    }
    let style = Style::detect();
    // mlx-knife's keys first; what it does not have goes beside them (show's data admits it).
    let mut data = json!({
        "model": report.summary,
        "workspace_metadata": report.model.sentinel(),
        "metadata": report.metadata,
        "path": report.model.dir(),
        "managed": report.model.managed(),
    });
    let human = if a.config {
        let config = report.config().ok_or_else(|| {
            CliError::new(
                "CommandError",
                format!("{}: config.json is missing or invalid", report.model.name),
            )
        })?;
        let text = format!(
            "{}\n",
            serde_json::to_string_pretty(&config).unwrap_or_default()
        );
        data["config"] = config;
        text
    } else if a.files {
        let files = report.files();
        let rows: Vec<Vec<String>> = files
            .iter()
            .map(|f| {
                let size = if f.size == "missing" {
                    style.red("missing")
                } else {
                    f.size.clone()
                };
                vec![f.name.clone(), size, f.kind.to_string()]
            })
            .collect();
        data["files"] = json!(files);
        data["file_details"] = json!(report.file_details());
        table(&["FILE", "SIZE", "TYPE"], &rows, style)
    } else {
        render(&report, style)
    };
    Ok(Outcome::success(data, human))
}

fn render(r: &ShowReport, style: Style) -> String {
    let (model, s, meta) = (&r.model, &r.summary, &r.metadata);
    let field = |k: &str, v: &str| format!("{:<20}{v}\n", format!("{k}:"));
    let opt = |v: Option<&str>| v.unwrap_or("-").to_string();
    let num = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
    let mut out = format!("{}\n", style.bold(&model.name));
    match model.snapshot_sha() {
        Some(sha) => out.push_str(&field("Snapshot", sha)),
        None => out.push_str(&field("Path", &model.dir().display().to_string())),
    }
    out.push_str(&field("Size", &human_size(r.report.size_bytes)));
    out.push_str(&field("Modified", &short_time(Some(&s.last_modified))));
    out.push_str(&field("Framework", s.framework));
    out.push_str(&field("Type", s.model_type));
    out.push_str(&field("Capabilities", &s.capabilities.join(", ")));
    let health = if r.report.healthy() {
        style.green("healthy")
    } else {
        style.red("unhealthy")
    };
    out.push_str(&field("Health", &health));
    for p in &r.report.problems {
        out.push_str(&format!(
            "  {} {}\n",
            style.yellow(p.code.as_str()),
            p.message
        ));
    }
    let runnable = match (&s.reason, s.runtime_compatible) {
        (None, _) => "yes".to_string(),
        (Some(why), true) => format!("yes ({why})"),
        (Some(why), false) => format!("no ({why})"),
    };
    out.push_str(&field("Runtime compatible", &runnable));
    out.push_str(&field("Model type", &opt(meta.model_type.as_deref())));
    out.push_str(&field("Architecture", &opt(meta.architecture.as_deref())));
    if let Some(q) = meta.quantization.as_ref().and_then(Value::as_object) {
        let parts: Vec<String> = q
            .iter()
            .map(|(k, v)| match v {
                Value::Null => format!("{k}=-"),
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect();
        out.push_str(&field("Quantization", &parts.join(", ")));
    }
    for (label, value) in [
        ("Context length", meta.context_length),
        ("Vocab size", meta.vocab_size),
        ("Hidden size", meta.hidden_size),
        ("Attention heads", meta.num_attention_heads),
        ("Layers", meta.num_hidden_layers),
    ] {
        out.push_str(&field(label, &num(value)));
    }
    if let Some(managed) = model.managed() {
        out.push_str(&field(
            "Workspace",
            if managed { "managed" } else { "unmanaged" },
        ));
        if let Some(sentinel) = model.sentinel() {
            out.push_str(&field(
                "  Created",
                &format!(
                    "{} by mlxk {} ({})",
                    sentinel.created_at, sentinel.mlxk_version, sentinel.operation
                ),
            ));
            if let Some(src) = &sentinel.source_repo {
                let rev = sentinel
                    .source_revision
                    .as_deref()
                    .map(|r| format!("@{r}"))
                    .unwrap_or_default();
                out.push_str(&field("  Source", &format!("{src}{rev}")));
            }
        }
        if let Some(hash) = &s.content_hash {
            let when = s.hash_modified.as_deref().unwrap_or("-");
            out.push_str(&field("  Content hash", &format!("{hash} ({when})")));
        }
        let clean = match s.clean {
            Some(true) => "yes (unchanged since the content hash was taken)",
            Some(false) => "no (modified since the content hash was taken)",
            None => "unknown (no content hash recorded)",
        };
        out.push_str(&field("  Clean", clean));
    }
    out
}
