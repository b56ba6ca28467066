//! `mlxk health`: one model or the whole cache, every problem with its code and fix.

use serde_json::{json, Value};

use super::output::Style;
use super::{open_cache, require_cache, CliError, HealthArgs, MlxkArgs, Outcome};
use crate::store::health::{self, CheckedModel};
use crate::store::spec;
use crate::store::summary::{mount_repairs, HealthEntry};

pub(super) fn health(args: &MlxkArgs, a: &HealthArgs) -> Result<Outcome, CliError> {
    let checked: Vec<CheckedModel> = match &a.model {
        Some(name) => {
            let model = spec::resolve(open_cache(args)?.as_ref(), name)?;
            let report = health::check(&model);
            vec![CheckedModel { model, report }]
        }
        None => health::check_cache(&require_cache(args)?)?,
    };
    let style = Style::detect();
    let (mut healthy, mut unhealthy) = (Vec::new(), Vec::new());
    let mut human = String::new();
    for c in &checked {
        human.push_str(&render(c, style));
        let entry = HealthEntry::new(&c.model, &c.report);
        if c.report.healthy() {
            healthy.push(entry);
        } else {
            unhealthy.push(entry);
        }
    }
    if checked.len() != 1 {
        human.push_str(&format!(
            "\n{} models: {} healthy, {} unhealthy\n",
            checked.len(),
            healthy.len(),
            unhealthy.len()
        ));
    }
    let failure = (!unhealthy.is_empty()).then(|| {
        CliError::new(
            "HealthCheckFailed",
            format!("{} of {} models unhealthy", unhealthy.len(), checked.len()),
        )
    });
    let summary = json!({
        "total": checked.len(),
        "healthy_count": healthy.len(),
        "unhealthy_count": unhealthy.len(),
        "bytes_read": checked.iter().map(|c| c.report.bytes_read).sum::<u64>(),
    });
    let data = json!({"healthy": healthy, "unhealthy": unhealthy, "summary": summary});
    Ok(Outcome {
        data,
        human,
        failure,
    })
}

/// One model's lines: a mark and verdict, then its problems with their fixes, then notes.
fn render(c: &CheckedModel, style: Style) -> String {
    let (model, report) = (&c.model, &c.report);
    let managed = match model.managed() {
        Some(true) => " [managed workspace]",
        Some(false) => " [unmanaged workspace]",
        None => "",
    };
    let mut notes: String = report
        .notes
        .iter()
        .map(|n| format!("    {:<26} {}\n", style.dim("note"), n.message))
        .collect();
    if let Some(r) = mount_repairs(model).and_then(Value::as_array) {
        notes.push_str(&format!(
            "    {:<26} {} problems of the cached index (see .mlxk_workspace.json; the original is model.safetensors.index.json.orig)\n",
            style.dim("repaired by mlxk-fs"),
            r.len()
        ));
    }
    if report.healthy() {
        return format!(
            "{} {}{managed}: healthy\n{notes}",
            style.green("✓"),
            model.name
        );
    }
    let n = report.problems.len();
    let mut out = format!(
        "{} {}{managed}: unhealthy ({n} problem{})\n",
        style.red("✗"),
        model.name,
        if n == 1 { "" } else { "s" }
    );
    let mut last_hint = "";
    for p in &report.problems {
        out.push_str(&format!(
            "    {:<26} {}\n",
            style.yellow(p.code.as_str()),
            p.message
        ));
        if p.hint != last_hint {
            let fix = style.dim(&format!("fix: {}", p.hint));
            out.push_str(&format!("    {:<26} {fix}\n", ""));
            last_hint = &p.hint;
        }
    }
    out.push_str(&notes);
    out
}
