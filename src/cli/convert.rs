//! `mlxk convert`: builds the request, shows progress, renders the outcome.

use serde_json::{json, Value};

use super::output::{human_size, Style};
use super::{open_cache, CliError, ConvertArgs, MlxkArgs, Outcome};
use crate::convert::copy::CopyStats;
use crate::convert::plan::{Operation, QuantizeSpec};
use crate::convert::{
    self, ConvertOperation, ConvertOutcome, ConvertProgress, ConvertRequest, RepairOutcome,
    WeightsOutcome,
};
use crate::store::health::HealthReport;
use crate::store::spec::{self, ResolvedModel};

pub(super) fn convert(args: &MlxkArgs, a: &ConvertArgs) -> Result<Outcome, CliError> {
    let cache = open_cache(args)?;
    let source = spec::resolve_any(cache.as_ref(), &a.source)?;
    let operation = if a.repair_index {
        ConvertOperation::RepairIndex
    } else {
        ConvertOperation::Weights(match a.quantize {
            Some(bits) => Operation::Quantize(QuantizeSpec {
                mode: a.q_mode,
                bits,
                group_size: a.q_group_size,
                recipe: a.mixed_recipe,
                dtype: a.dtype,
            }),
            None => Operation::Dequantize { dtype: a.dtype },
        })
    };
    let request = ConvertRequest {
        source: &source,
        target: &a.target,
        operation,
        skip_health: a.skip_health,
    };
    let bar = progress_bar(args.json);
    let mut on_progress = |p: ConvertProgress<'_>| {
        let Some(bar) = &bar else { return };
        let (done, total, what) = match p {
            ConvertProgress::Files(p) => (
                p.bytes_done,
                p.bytes_total,
                format!("{}/{} files {}", p.files_done, p.files_total, p.current),
            ),
            ConvertProgress::Tensors(p) => (
                p.bytes_done,
                p.bytes_total,
                format!(
                    "{}/{} tensors {}",
                    p.tensors_done, p.tensors_total, p.current
                ),
            ),
        };
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(what);
    };
    let result = convert::convert(cache.as_ref(), &request, &mut on_progress);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let target = a.target.display().to_string();
    Ok(match result? {
        ConvertOutcome::Repair(o) => render_repair(a, &source, &target, &o),
        ConvertOutcome::Weights(o) => render_weights(a, &source, &target, &o),
    })
}

fn render_repair(
    a: &ConvertArgs,
    source: &ResolvedModel,
    target: &str,
    outcome: &RepairOutcome,
) -> Outcome {
    let style = Style::detect();
    let verdict = Verdict::of(outcome.health.as_ref());
    let message = match &outcome.index {
        Some(_) if outcome.repaired.is_empty() => format!("{} converted to {target}; its index was already right and was rewritten from the headers", source.name),
        Some(_) => format!("{} converted to {target}; index rebuilt from the shard headers ({} problems fixed)", source.name, outcome.repaired.len()),
        None => format!("{} converted to {target}; single-file model, no index needed", source.name),
    };
    let data = Reply {
        skip_health: a.skip_health,
        source,
        target,
        mode: "repair-index",
        verdict: &verdict,
        message: &message,
        copy: outcome.copy,
        content_hash: &outcome.content_hash,
    }
    .data(
        json!({
            "index_written": outcome.index.is_some(),
            "index_bytes_read": outcome.index_bytes_read,
            "repairs": outcome.repaired,
        }),
        outcome.health.as_ref(),
    );
    let mut human = format!("{} {message}\n", style.green("✓"));
    human.push_str(&format!(
        "  {} files, {} ({} reflinked)\n",
        outcome.copy.files,
        human_size(outcome.copy.bytes),
        outcome.copy.reflinked
    ));
    // One line per kind of repair: a 624 index can have dozens of each.
    let mut kinds: Vec<(&str, usize, &str)> = Vec::new();
    for p in &outcome.repaired {
        match kinds
            .iter_mut()
            .find(|(code, _, _)| *code == p.code.as_str())
        {
            Some(k) => k.1 += 1,
            None => kinds.push((p.code.as_str(), 1, &p.message)),
        }
    }
    for (code, n, first) in kinds {
        let count = if n > 1 {
            format!("{n}x ")
        } else {
            String::new()
        };
        human.push_str(&format!(
            "  repaired: {count}{} ({first})\n",
            style.yellow(code)
        ));
    }
    human.push_str(&health_lines(outcome.health.as_ref(), style));
    verdict.outcome(data, human, target)
}

fn render_weights(
    a: &ConvertArgs,
    source: &ResolvedModel,
    target: &str,
    outcome: &WeightsOutcome,
) -> Outcome {
    let style = Style::detect();
    let verdict = Verdict::of(outcome.health.as_ref());
    let secs = outcome.elapsed.as_secs_f64();
    let (mode, what) = match outcome.scheme {
        Some(s) => {
            let recipe = a
                .mixed_recipe
                .map(|r| format!(", {}", r.name()))
                .unwrap_or_default();
            (
                "quantize",
                format!(
                    "quantized to {target} ({}-bit {}, group {}{recipe}): {:.3} bits per weight",
                    s.bits(),
                    s.mode(),
                    s.group_size(),
                    outcome.bits_per_weight()
                ),
            )
        }
        None => (
            "dequantize",
            format!(
                "dequantized to {target} ({})",
                outcome
                    .dtype
                    .map_or("the scales' dtype".to_string(), |d| d.name().to_string())
            ),
        ),
    };
    let message = format!("{} {what}", source.name);
    let reply = Reply {
        skip_health: a.skip_health,
        source,
        target,
        mode,
        verdict: &verdict,
        message: &message,
        copy: outcome.copy,
        content_hash: &outcome.content_hash,
    };
    let data = reply.data(
        json!({
            "index_written": true,
            "bits": outcome.scheme.map(|s| s.bits()),
            "group_size": outcome.scheme.map(|s| s.group_size()),
            "q_mode": outcome.scheme.map(|s| s.mode()),
            "mixed_recipe": a.mixed_recipe.map(|r| r.name()),
            "dtype": outcome.dtype.map(|d| d.name()),
            "bits_per_weight": (outcome.scheme.is_some()).then(|| (outcome.bits_per_weight() * 1000.0).round() / 1000.0),
            "quantization": outcome.quantization,
            "tensors_converted": outcome.converted_tensors,
            "tensors_kept": outcome.kept_tensors,
            "tensors_dropped": outcome.dropped,
            "shards": outcome.shards,
            "source_bytes": outcome.source_bytes,
            "output_bytes": outcome.output_bytes,
            "total_parameters": outcome.index.total_parameters,
            "elapsed_s": (secs * 1000.0).round() / 1000.0,
        }),
        outcome.health.as_ref(),
    );
    let mut human = format!("{} {message}\n", style.green("✓"));
    let verb = if mode == "quantize" {
        "quantized"
    } else {
        "dequantized"
    };
    let dropped = if outcome.dropped.is_empty() {
        String::new()
    } else {
        format!(
            ", {} dropped ({})",
            outcome.dropped.len(),
            outcome.dropped.join(", ")
        )
    };
    human.push_str(&format!(
        "  {} tensors {verb}, {} kept{dropped}\n",
        outcome.converted_tensors, outcome.kept_tensors,
    ));
    human.push_str(&format!(
        "  {} in {} shard{} from {} in {:.1} s ({}/s)\n",
        human_size(outcome.output_bytes),
        outcome.shards.len(),
        if outcome.shards.len() == 1 { "" } else { "s" },
        human_size(outcome.source_bytes),
        secs,
        human_size((outcome.source_bytes as f64 / secs.max(1e-3)) as u64),
    ));
    human.push_str(&format!(
        "  {} files carried over ({} reflinked)\n",
        outcome.copy.files, outcome.copy.reflinked
    ));
    human.push_str(&health_lines(outcome.health.as_ref(), style));
    verdict.outcome(data, human, target)
}

/// What every convert's JSON reply says first.
struct Reply<'a> {
    skip_health: bool,
    source: &'a ResolvedModel,
    target: &'a str,
    mode: &'a str,
    verdict: &'a Verdict,
    message: &'a str,
    copy: CopyStats,
    content_hash: &'a str,
}

impl Reply<'_> {
    /// The JSON data in its fixed order: the common fields, the operation's `own`, then the
    /// problems of the result's health check.
    fn data(&self, own: Value, health: Option<&HealthReport>) -> Value {
        let mut data = json!({
            "source": self.source.name,
            "target": self.target,
            "mode": self.mode,
            "health_check": !self.skip_health,
        });
        // mlx-knife's schema knows healthy | unhealthy: a skipped check has neither key.
        if let Some(status) = self.verdict.status {
            data["health_status"] = json!(status);
            data["health_reason"] = json!(self.verdict.reason);
        }
        data["message"] = json!(self.message);
        data["content_hash"] = json!(self.content_hash);
        data["files_copied"] = json!(self.copy.files);
        data["files_reflinked"] = json!(self.copy.reflinked);
        data["bytes_copied"] = json!(self.copy.bytes);
        if let (Some(d), Value::Object(own)) = (data.as_object_mut(), own) {
            // A field this operation does not have is left out, never null (the schema wants
            // integers where it names bits and group_size).
            d.extend(own.into_iter().filter(|(_, v)| !v.is_null()));
        }
        data["problems"] = json!(health.map(|h| h.problems.clone()).unwrap_or_default());
        data
    }
}

/// The health of a convert's result, as the reply states it.
struct Verdict {
    /// healthy | unhealthy; `None` when the check was skipped.
    status: Option<&'static str>,
    reason: String,
    healthy: bool,
}

impl Verdict {
    fn of(report: Option<&HealthReport>) -> Verdict {
        let (status, reason, healthy) = match report {
            None => (None, "health check skipped (--skip-health)".into(), true),
            Some(r) if r.healthy() => (Some("healthy"), r.reason(), true),
            Some(r) => (Some("unhealthy"), r.reason(), false),
        };
        Verdict {
            status,
            reason,
            healthy,
        }
    }

    /// A written but unhealthy workspace is a failure (exit 1) that still reports the data.
    fn outcome(self, data: Value, human: String, target: &str) -> Outcome {
        Outcome {
            data,
            human,
            printed: false,
            failure: (!self.healthy).then(|| {
                CliError::new(
                    "HealthCheckFailed",
                    format!(
                        "the workspace {target} was written but is unhealthy: {}",
                        self.reason
                    ),
                )
            }),
        }
    }
}

fn health_lines(report: Option<&HealthReport>, style: Style) -> String {
    match report {
        Some(r) if r.healthy() => format!("  health: {}\n", style.green("healthy")),
        Some(r) => {
            let mut out = format!("  health: {}\n", style.red("unhealthy"));
            for p in &r.problems {
                out.push_str(&format!(
                    "    {} {}\n",
                    style.yellow(p.code.as_str()),
                    p.message
                ));
            }
            out
        }
        None => "  health: skipped\n".to_string(),
    }
}

fn progress_bar(json: bool) -> Option<indicatif::ProgressBar> {
    super::output::byte_bar(json, "{bytes}/{total_bytes} {bytes_per_sec} {msg}")
}
