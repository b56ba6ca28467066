//! `mlxk health`: one model or the whole cache, every problem with its code and fix.

use serde_json::{json, Value};

use super::output::Style;
use super::{open_cache, require_cache, CliError, HealthArgs, MlxkArgs, Outcome};
use crate::store::health::{self, CheckedModel};
use crate::store::spec;
use crate::store::summary::{mount_repairs, HealthEntry};
use crate::store::StoreError;

pub(super) fn health(args: &MlxkArgs, a: &HealthArgs) -> Result<Outcome, CliError> {
    let checked: Vec<CheckedModel> = match &a.model {
        Some(name) => match spec::resolve(open_cache(args)?.as_ref(), name) {
            Ok(model) => {
                let report = health::check(&model);
                vec![CheckedModel { model, report }]
            }
            // mlx-knife: a name nothing matches is a check of zero models, not an error.
            Err(StoreError::ModelNotFound { .. }) => vec![],
            Err(e) => return Err(e.into()),
        },
        None => health::check_cache(&require_cache(args)?)?,
    };
    let style = Style::detect();
    let (mut healthy, mut unhealthy) = (Vec::new(), Vec::new());
    let mut human = String::new();
    for c in &checked {
        human.push_str(&render(c, style));
        let entry = HealthEntry::new(&c.model, &c.report, a.details);
        if c.report.healthy() {
            healthy.push(entry);
        } else {
            unhealthy.push(entry);
        }
    }
    match (&a.model, checked.len()) {
        (Some(name), 0) => human.push_str(&format!("No model matches `{name}`.\n")),
        (None, 0) => human.push_str("No models in the cache.\n"),
        (_, 1) => {}
        (_, n) => human.push_str(&format!(
            "\n{n} models: {} healthy, {} unhealthy\n",
            healthy.len(),
            unhealthy.len()
        )),
    }
    // The check ran, so the command succeeded (mlx-knife's semantics); CI asks for a failing
    // exit with --fail-on-unhealthy.
    let failure = if !a.fail_on_unhealthy {
        None
    } else if !unhealthy.is_empty() {
        Some(CliError::new(
            "HealthCheckFailed",
            format!("{} of {} models unhealthy", unhealthy.len(), checked.len()),
        ))
    } else if checked.is_empty() {
        Some(CliError::new(
            "HealthCheckFailed",
            match &a.model {
                Some(name) => format!("no model matches `{name}`: nothing was checked"),
                None => "the cache holds no models: nothing was checked".to_string(),
            },
        ))
    } else {
        None
    };
    let mut summary = json!({
        "total": checked.len(),
        "healthy_count": healthy.len(),
        "unhealthy_count": unhealthy.len(),
    });
    if a.details {
        summary["bytes_read"] = json!(checked.iter().map(|c| c.report.bytes_read).sum::<u64>());
    }
    let data = json!({"healthy": healthy, "unhealthy": unhealthy, "summary": summary});
    Ok(Outcome {
        data,
        human,
        failure,
        printed: false,
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
