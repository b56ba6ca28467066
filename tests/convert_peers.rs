//! `mlxk convert --quantize / --dequantize` against `mlx_lm.convert` itself (mlx-lm 0.32.2,
//! mlx 0.32.4 on the CPU): for a grid of generated models and flags, both converters run on the
//! same source and every output tensor must be bit-identical, the config's `quantization` /
//! `quantization_config` blocks equal as JSON; `mlx_lm.load` + greedy generation on mlxk's
//! output gives the tokens it gives on mlx-lm's.
//!
//! The whole grid (every model × bits {2,3,4,5,6,8} × group {32,64,128}, the float modes, the
//! mixed recipes, `--dtype`, dequantize: about 200 cells) runs in scripts/test.sh: mlx-lm runs
//! in one Python process for all cells, which keeps it near 20 s.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use mlxk_fs::testkit::{llama_model_files, LlamaSpec, WeightDtype};
use serde_json::{json, Value};

struct Model {
    name: &'static str,
    spec: LlamaSpec,
    shards: usize,
}

fn models() -> Vec<Model> {
    let base = common::peer_model_base();
    let m = |name, shards, spec| Model { name, spec, shards };
    vec![
        m(
            "llama-f16",
            1,
            LlamaSpec {
                seed: 11,
                ..base.clone()
            },
        ),
        m(
            "llama-bf16-tied",
            1,
            LlamaSpec {
                dtype: WeightDtype::BF16,
                tie_embeddings: true,
                seed: 12,
                ..base.clone()
            },
        ),
        m(
            "llama-f32",
            1,
            LlamaSpec {
                dtype: WeightDtype::F32,
                seed: 13,
                ..base.clone()
            },
        ),
        m(
            "llama-bias",
            1,
            LlamaSpec {
                dtype: WeightDtype::BF16,
                attention_bias: true,
                seed: 14,
                ..base.clone()
            },
        ),
        // 8 layers, so the mixed recipes give layers both bit widths.
        m(
            "llama-sharded",
            3,
            LlamaSpec {
                dtype: WeightDtype::BF16,
                layers: 8,
                hidden: 64,
                intermediate: 128,
                seed: 15,
                ..base.clone()
            },
        ),
        m(
            "mistral",
            1,
            LlamaSpec {
                model_type: "mistral",
                seed: 16,
                ..base.clone()
            },
        ),
        m(
            "qwen2",
            1,
            LlamaSpec {
                model_type: "qwen2",
                dtype: WeightDtype::BF16,
                seed: 17,
                ..base.clone()
            },
        ),
        m(
            "qwen3",
            1,
            LlamaSpec {
                model_type: "qwen3",
                dtype: WeightDtype::BF16,
                tie_embeddings: true,
                seed: 18,
                ..base.clone()
            },
        ),
        m(
            "qwen3-moe",
            2,
            LlamaSpec {
                model_type: "qwen3_moe",
                dtype: WeightDtype::BF16,
                experts: 4,
                moe_intermediate: 128,
                seed: 19,
                ..base.clone()
            },
        ),
    ]
}

/// One cell: a source, mlxk's flags, mlx-lm's `convert()` keyword arguments.
struct Case {
    name: String,
    src: String,
    ours: Vec<String>,
    theirs: Value,
    generate: usize,
}

fn quantize_case(model: &str, bits: u32, group: usize, generate: usize) -> Case {
    Case {
        name: format!("{model}-q{bits}-g{group}"),
        src: model.into(),
        ours: vec![
            "--quantize".into(),
            bits.to_string(),
            "--q-group-size".into(),
            group.to_string(),
        ],
        theirs: json!({"quantize": true, "q_bits": bits, "q_group_size": group}),
        generate,
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let names: Vec<&str> = models().iter().map(|m| m.name).collect();
    // Every model at mlx-lm's defaults (4 bits, group 64), generating from both outputs.
    for m in &names {
        cases.push(Case {
            name: format!("{m}-default"),
            src: m.to_string(),
            ours: vec!["--quantize".into()],
            theirs: json!({"quantize": true}),
            generate: 6,
        });
    }
    // The kernel grid: every bits × group on every model.
    for m in &names {
        for bits in [2, 3, 4, 5, 6, 8] {
            for group in [32, 64, 128] {
                let generate = if bits == 3 && group == 32 { 4 } else { 0 };
                cases.push(quantize_case(m, bits, group, generate));
            }
        }
    }
    // The float modes.
    for m in ["llama-bf16-tied", "qwen3-moe", "llama-f32"] {
        for mode in ["mxfp4", "mxfp8", "nvfp4"] {
            cases.push(Case {
                name: format!("{m}-{mode}"),
                src: m.into(),
                ours: vec!["--quantize".into(), "--q-mode".into(), mode.into()],
                theirs: json!({"quantize": true, "q_mode": mode}),
                generate: 4,
            });
        }
    }
    // Mixed recipes (group size given and not: mlx-lm then records `null` per layer).
    for (i, recipe) in ["mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"]
        .iter()
        .enumerate()
    {
        let mut ours = vec![
            "--quantize".into(),
            "4".into(),
            "--mixed-recipe".into(),
            recipe.to_string(),
        ];
        let mut theirs = json!({"quantize": true, "q_bits": 4, "quant_predicate": recipe});
        if i % 2 == 1 {
            ours.extend(["--q-group-size".into(), "32".into()]);
            theirs["q_group_size"] = json!(32);
        }
        cases.push(Case {
            name: format!("llama-sharded-{recipe}"),
            src: "llama-sharded".into(),
            ours,
            theirs,
            generate: 4,
        });
    }
    cases.push(Case {
        name: "qwen3-moe-mixed_3_6".into(),
        src: "qwen3-moe".into(),
        ours: vec![
            "--quantize".into(),
            "--mixed-recipe".into(),
            "mixed_3_6".into(),
        ],
        theirs: json!({"quantize": true, "quant_predicate": "mixed_3_6"}),
        generate: 0,
    });
    // --dtype: every float tensor cast before quantizing.
    for (m, dtype) in [
        ("llama-f16", "bfloat16"),
        ("llama-bf16-tied", "float32"),
        ("llama-f32", "float16"),
        ("qwen3-moe", "float16"),
    ] {
        cases.push(Case {
            name: format!("{m}-q4-{dtype}"),
            src: m.into(),
            ours: vec![
                "--quantize".into(),
                "4".into(),
                "--dtype".into(),
                dtype.into(),
            ],
            theirs: json!({"quantize": true, "q_bits": 4, "dtype": dtype}),
            generate: 0,
        });
    }
    cases
}

/// Dequantize cells: sources are mlxk's own quantized outputs of earlier cells (bit-identical
/// to mlx-lm's, checked by those cells).
fn dequantize_cases() -> Vec<Case> {
    let mut out = Vec::new();
    // MLX's CPU cannot run a float MoE in bf16 (GatherMM supports float32 only): the bf16
    // MoE cell compares tensors without generating.
    for (src, dtype, generate) in [
        ("llama-f16-q3-g32", None, 4),
        ("llama-bf16-tied-default", Some("float32"), 4),
        ("llama-sharded-mixed_3_6", None, 4),
        ("qwen3-moe-default", Some("float32"), 4),
        ("qwen3-moe-default", None, 0),
        ("llama-bf16-tied-mxfp4", None, 4),
        ("qwen3-moe-nvfp4", None, 0),
        ("llama-f32-mxfp8", None, 4),
        ("llama-f16-q4-bfloat16", Some("float16"), 4),
    ] {
        let mut ours = vec!["--dequantize".to_string()];
        let mut theirs = json!({"dequantize": true});
        if let Some(d) = dtype {
            ours.extend(["--dtype".into(), d.into()]);
            theirs["dtype"] = json!(d);
        }
        out.push(Case {
            name: format!(
                "{src}-deq{}",
                dtype.map(|d| format!("-{d}")).unwrap_or_default()
            ),
            src: format!("@{src}"),
            ours,
            theirs,
            generate,
        });
    }
    out
}

fn write_model(dir: &Path, m: &Model) {
    fs::create_dir_all(dir).unwrap();
    for (name, bytes) in llama_model_files(&m.spec, m.shards, m.shards > 1, "pt") {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

fn run_ours(case: &Case, src: &Path, out: &Path) {
    let mut args = vec![
        "convert".to_string(),
        src.display().to_string(),
        out.display().to_string(),
    ];
    args.extend(case.ours.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = common::mlxk(&args, &[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}: mlxk {args:?} failed:\n{}{}",
        case.name,
        common::stdout(&o),
        common::stderr(&o)
    );
}

fn run_batch(py: &Path, work: &Path, cases: &[(Case, PathBuf, PathBuf, PathBuf)]) -> Vec<Value> {
    let jobs: Vec<Value> = cases
        .iter()
        .map(|(c, src, ours, theirs)| {
            json!({"name": c.name, "src": src, "ours": ours, "theirs": theirs,
                   "args": c.theirs, "generate": c.generate})
        })
        .collect();
    common::run_peer_batch(py, "convert_batch.py", work, &jobs)
}

fn check(results: &[Value], cases: &[(Case, PathBuf, PathBuf, PathBuf)]) -> Vec<String> {
    let mut failures = Vec::new();
    assert_eq!(results.len(), cases.len());
    for (r, (c, ..)) in results.iter().zip(cases) {
        if let Some(e) = r.get("error") {
            failures.push(format!("{}: mlx-lm side failed: {e}", c.name));
            continue;
        }
        let mismatches = r["mismatches"].as_array().cloned().unwrap_or_default();
        if !mismatches.is_empty() {
            failures.push(format!("{}: {}", c.name, Value::Array(mismatches)));
        }
        assert!(
            r["tensors"].as_u64().unwrap_or(0) > 0,
            "{}: no tensors",
            c.name
        );
        if c.generate > 0 {
            let ours = &r["tokens_ours"];
            let theirs = &r["tokens_theirs"];
            if ours != theirs || ours.as_array().map_or(0, Vec::len) != c.generate {
                failures.push(format!(
                    "{}: greedy tokens differ: ours {ours} theirs {theirs}",
                    c.name
                ));
            }
        }
    }
    failures
}

#[test]
fn quantize_and_dequantize_are_bit_identical_with_mlx_lm() {
    let Some(py) = common::peer_python("quantize_and_dequantize_are_bit_identical_with_mlx_lm")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    for m in models() {
        write_model(&work.join("src").join(m.name), &m);
    }
    let mut failures = Vec::new();
    let mut total = 0;
    for phase in [cases(), dequantize_cases()] {
        let mut batch = Vec::new();
        for c in phase {
            let src = match c.src.strip_prefix('@') {
                Some(earlier) => work.join("ours").join(earlier),
                None => work.join("src").join(&c.src),
            };
            let ours = work.join("ours").join(&c.name);
            let theirs = work.join("theirs").join(&c.name);
            run_ours(&c, &src, &ours);
            batch.push((c, src, ours, theirs));
        }
        total += batch.len();
        let results = run_batch(&py, work, &batch);
        failures.extend(check(&results, &batch));
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cells differ from mlx-lm:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{total} convert cells bit-identical with mlx-lm");
}
