//! `mlxk show`: one model's identity, architecture, health and workspace sentinel.

use serde_json::{json, Value};

use super::output::{human_size, short_time, table, Style};
use super::{open_cache, CliError, MlxkArgs, Outcome, ShowArgs};
use crate::store::spec;
use crate::store::summary::ShowReport;

pub(super) fn show(args: &MlxkArgs, a: &ShowArgs) -> Result<Outcome, CliError> {
    let cache = open_cache(args)?;
    let report = ShowReport::new(spec::resolve(cache.as_ref(), &a.model)?);
    let style = Style::detect();
    let mut data = json!({
        "model": report.summary,
        "workspace_metadata": report.model.sentinel(),
        "metadata": report.metadata,
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
                vec![
                    f.name.clone(),
                    f.size
                        .map(human_size)
                        .unwrap_or_else(|| style.red("missing")),
                    f.kind.to_string(),
                ]
            })
            .collect();
        data["files"] = json!(files);
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
    out.push_str(&field("Modified", &short_time(s.last_modified.as_deref())));
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
    let runnable = if s.runtime_compatible { "yes" } else { "no" };
    out.push_str(&field(
        "Runtime compatible",
        &format!("{runnable} ({})", s.reason),
    ));
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
    }
    out
}
