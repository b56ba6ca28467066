//! `mlxk run`'s engine against mlx-lm (0.32.2, mlx 0.32.4 CPU): for generated models — llama
//! f32 / f16 / bf16 (tied and untied), 4-bit and 8-bit made by `mlx_lm.convert`, qwen2 with
//! biases, qwen3 with q/k norms; and every other family the engine runs (gemma3_text, gemma3's
//! text part, gemma2, phi3, granite, olmo2, smollm3, llama's sliding layers, mixtral,
//! qwen3_moe, gpt_oss) built by mlx-lm's own model classes, in f32, 4-bit and the microscaling float
//! modes — teacher-forced on mlx-lm's greedy sequence, the logits agree at every step within
//! a per-format tolerance and the argmax agrees wherever mlx-lm's top-1 / top-2 margin exceeds
//! it; on the f32 models the greedy tokens are identical. Chat templates render
//! byte-identically to transformers' `apply_chat_template`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use mlxk_fs::engine::model::CpuEngine;
use mlxk_fs::engine::template::{ChatTemplate, Message};
use mlxk_fs::engine::tokenizer::TextTokenizer;
use mlxk_fs::engine::Engine;
use mlxk_fs::testkit::{llama_model_files, LlamaSpec, WeightDtype};
use serde_json::{json, Value};

const STEPS: usize = 32;

fn oracle(py: &Path, work: &Path, jobs: &[Value]) -> Vec<Value> {
    let results = common::run_peer_batch(py, "lm_oracle.py", work, jobs);
    for (job, r) in jobs.iter().zip(&results) {
        assert!(r.get("error").is_none(), "{job}: {}", r["error"]);
    }
    results
}

fn write_model(dir: &Path, spec: &LlamaSpec) {
    fs::create_dir_all(dir).unwrap();
    for (name, bytes) in llama_model_files(spec, 1, false, "mlx") {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

struct Case {
    name: &'static str,
    /// mlx-lm with every float parameter cast to f32 (the engine computes in f32).
    upcast: bool,
    /// Largest |ours - theirs| allowed, relative to the largest |logit| of the step.
    tolerance: f32,
}

/// The worst relative logit difference over the steps, and the steps where the argmax differs
/// although mlx-lm's top-1 / top-2 margin exceeds the tolerance.
fn compare(
    engine: &mut CpuEngine,
    prompt: &[u32],
    theirs: &Value,
    tolerance: f32,
) -> (f32, Vec<String>) {
    let tokens: Vec<u32> = serde_json::from_value(theirs["tokens"].clone()).unwrap();
    let logits: Vec<Vec<f32>> = serde_json::from_value(theirs["logits"].clone()).unwrap();
    let mut worst = 0f32;
    let mut bad = Vec::new();
    for step in 0..logits.len() {
        let ours = if step == 0 {
            engine.prefill(prompt).unwrap().to_vec()
        } else {
            engine.decode(tokens[step - 1]).unwrap().to_vec()
        };
        let want = &logits[step];
        assert_eq!(ours.len(), want.len());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let diff = ours
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        worst = worst.max(diff);
        let mut sorted = want.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let margin = (sorted[0] - sorted[1]) / scale;
        let our_top = mlxk_fs::engine::sampler::argmax(&ours);
        if margin > tolerance && our_top != tokens[step] {
            bad.push(format!(
                "step {step}: argmax {our_top} vs {} (margin {margin:.4})",
                tokens[step]
            ));
        }
    }
    (worst, bad)
}

/// Loads the model in `dir` and compares it with mlx-lm's run (`theirs`): prints the worst
/// difference, adds what is out of tolerance to `failures`; `false` when it does not load.
fn check(
    label: &str,
    dir: &Path,
    prompt: &[u32],
    theirs: &Value,
    tolerance: f32,
    failures: &mut Vec<String>,
) -> bool {
    let mut engine = match CpuEngine::load(dir) {
        Ok(e) => e,
        Err(e) => {
            failures.push(format!("{label}: does not load: {e}"));
            return false;
        }
    };
    let (worst, bad) = compare(&mut engine, prompt, theirs, tolerance);
    eprintln!("{label}: worst relative logit difference {worst:.2e} (tolerance {tolerance:.1e})");
    if worst > tolerance {
        failures.push(format!(
            "{label}: logits differ by {worst:.2e} > {tolerance:.1e}"
        ));
    }
    failures.extend(bad.into_iter().map(|b| format!("{label}: {b}")));
    true
}

#[test]
fn engine_matches_mlx_lm_logits_and_greedy_tokens() {
    let Some(py) = common::peer_python("engine_matches_mlx_lm_logits_and_greedy_tokens") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let base = common::peer_model_base();
    let specs = [
        (
            "llama-f32",
            LlamaSpec {
                dtype: WeightDtype::F32,
                seed: 51,
                ..base.clone()
            },
        ),
        (
            "llama-f16",
            LlamaSpec {
                dtype: WeightDtype::F16,
                seed: 52,
                ..base.clone()
            },
        ),
        (
            "llama-bf16-tied",
            LlamaSpec {
                dtype: WeightDtype::BF16,
                tie_embeddings: true,
                seed: 53,
                ..base.clone()
            },
        ),
        (
            "qwen2",
            LlamaSpec {
                model_type: "qwen2",
                dtype: WeightDtype::F32,
                seed: 54,
                ..base.clone()
            },
        ),
        (
            "qwen3",
            LlamaSpec {
                model_type: "qwen3",
                dtype: WeightDtype::F32,
                tie_embeddings: true,
                seed: 55,
                ..base.clone()
            },
        ),
    ];
    for (name, spec) in &specs {
        write_model(&work.join(name), spec);
    }
    // 4-bit and 8-bit made by mlx-lm itself, from the f32 model.
    let conversions: Vec<Value> = [
        ("llama-f32", "llama-q4", 4, 64),
        ("llama-f32", "llama-q8", 8, 32),
        ("llama-bf16-tied", "llama-q4-bf16-tied", 4, 64),
        ("qwen3", "qwen3-q3", 3, 32),
    ]
    .iter()
    .map(|(src, name, bits, group)| {
        json!({"convert": {"src": work.join(src), "dst": work.join(name),
               "args": {"quantize": true, "q_bits": bits, "q_group_size": group}}})
    })
    .collect();
    oracle(&py, work, &conversions);

    let tok = TextTokenizer::load(&work.join("llama-f32")).unwrap();
    let prompt = tok.encode_prompt("The quick brown fox").unwrap();
    assert!(prompt.len() > 10);
    // Tolerances (relative to the step's largest |logit|). f32 weights: both sides compute in
    // f32 and differ only in summation order. f16 / bf16 weights (and bf16 scales): MLX computes
    // the activations in that dtype while mlxk keeps f32, so against mlx-lm as users run it the
    // difference is the half-precision rounding of a forward pass; against mlx-lm with the model
    // cast to f32 (`upcast`) it is summation order again. Quantized weights: where the AVX-512
    // VNNI kernels run (every width, prompt and decode) the activations are rounded to 16 bits
    // per group, elsewhere they stay f32. Measured (32 teacher-forced steps): f32 ≤ 1.1e-5;
    // upcast ≤ 1.1e-5; with VNNI 4-bit ≤ 8.5e-4, 8-bit 1.1e-3, 3-bit 2.9e-4 (≤ 1.5e-5
    // without); as users run it f16 1.9e-2, bf16 6.2e-2, 4-bit with bf16 scales 3.3e-1 (MLX's
    // bf16 KV cache and activations drift over the steps with these std-0.3 random weights;
    // the upcast cells show the engine itself is exact).
    let case = |name, upcast, tolerance| Case {
        name,
        upcast,
        tolerance,
    };
    let cases = [
        case("llama-f32", false, 1e-4),
        case("qwen2", false, 1e-4),
        case("qwen3", false, 1e-4),
        case("llama-q4", false, 2e-3),
        case("llama-q8", false, 2e-3),
        case("qwen3-q3", false, 2e-3),
        case("llama-f16", false, 5e-2),
        case("llama-f16", true, 1e-4),
        case("llama-bf16-tied", false, 1.5e-1),
        case("llama-bf16-tied", true, 1e-4),
        case("llama-q4-bf16-tied", false, 5e-1),
        case("llama-q4-bf16-tied", true, 2e-3),
    ];
    let jobs: Vec<Value> = cases
        .iter()
        .map(|c| {
            json!({"generate": {"model": work.join(c.name), "prompt_ids": prompt,
                   "steps": STEPS, "upcast": c.upcast}})
        })
        .collect();
    let results = oracle(&py, work, &jobs);
    let mut failures = Vec::new();
    for (c, theirs) in cases.iter().zip(&results) {
        let label = format!(
            "{}{}",
            c.name,
            if c.upcast { " (mlx-lm in f32)" } else { "" }
        );
        check(
            &label,
            &work.join(c.name),
            &prompt,
            theirs,
            c.tolerance,
            &mut failures,
        );
    }
    // f32: the greedy tokens themselves, through the whole generate loop.
    let f32_theirs: Vec<u32> = serde_json::from_value(results[0]["tokens"].clone()).unwrap();
    let mut engine = CpuEngine::load(&work.join("llama-f32")).unwrap();
    let g = mlxk_fs::engine::generate(&mut engine, &tok, &prompt, &greedy(), &mut |_| {}).unwrap();
    if g.tokens != f32_theirs {
        failures.push(format!(
            "llama-f32 greedy tokens: ours {:?} theirs {f32_theirs:?}",
            g.tokens
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Generated models quantized to microscaling float modes: every mode on a dense and a routed
/// model, and gpt-oss in mxfp4 as it ships.
const FP_MODELS: [(&str, &str); 7] = [
    ("gemma3_text", "mxfp4"),
    ("gemma3_text", "mxfp8"),
    ("gemma3_text", "nvfp4"),
    ("qwen3_moe", "mxfp4"),
    ("qwen3_moe", "mxfp8"),
    ("qwen3_moe", "nvfp4"),
    ("gpt_oss", "mxfp4"),
];

/// One generated architecture: mlx-lm's own class for `config` builds it (random weights).
struct Family {
    name: &'static str,
    config: Value,
    /// Norm weights are drawn around this (1 for `w`, 0 for gemma's `1 + w`).
    norm_mean: f32,
    drop: &'static [&'static str],
    extra: Value,
    config_extra: Value,
}

/// The shapes every generated family shares (hidden 128, 4 heads of 32, 2 kv heads, 2
/// layers, the fixture's 259-token vocabulary), merged with the family's own keys.
fn family_config(model_type: &str, own: Value) -> Value {
    let mut c = json!({
        "model_type": model_type, "hidden_size": 128, "num_hidden_layers": 2,
        "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "vocab_size": 259, "max_position_embeddings": 4096,
        "rope_theta": 10000.0, "tie_word_embeddings": false,
    });
    for (k, v) in own.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn families() -> Vec<Family> {
    let plain = |name, config| Family {
        name,
        config,
        norm_mean: 1.0,
        drop: &[],
        extra: json!({}),
        config_extra: Value::Null,
    };
    let gemma3_text = json!({"head_dim": 32, "query_pre_attn_scalar": 24,
        "sliding_window": 8, "sliding_window_pattern": 2, "rope_local_base_freq": 10000.0,
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-6});
    vec![
        // Sliding-window layers (window 8, passed by the prompt alone) between global ones,
        // each with its own RoPE base.
        Family {
            norm_mean: 0.0,
            ..plain(
                "gemma3_text",
                family_config("gemma3_text", gemma3_text.clone()),
            )
        },
        // A Gemma 3 checkpoint with a vision tower: its text part, tied (no lm_head).
        Family {
            name: "gemma3",
            config: json!({"model_type": "gemma3", "vocab_size": 259,
                "text_config": family_config("gemma3_text", gemma3_text)}),
            norm_mean: 0.0,
            drop: &["language_model.lm_head.weight"],
            extra: json!({"vision_tower.patch_embedding.weight": [8, 4]}),
            config_extra: json!({"vision_config": {"model_type": "siglip_vision_model"}}),
        },
        // Soft-capped scores and logits, small enough caps that they bite.
        Family {
            norm_mean: 0.0,
            ..plain(
                "gemma2",
                family_config(
                    "gemma2",
                    json!({"head_dim": 32, "query_pre_attn_scalar": 32,
                    "attn_logit_softcapping": 5.0, "final_logit_softcapping": 8.0}),
                ),
            )
        },
        // Half the head rotated, longrope (long factors, the mscale of a 4x extension).
        plain(
            "phi3",
            family_config(
                "phi3",
                json!({"partial_rotary_factor": 0.5,
                "max_position_embeddings": 4096, "original_max_position_embeddings": 1024,
                "rope_scaling": {"type": "longrope",
                    "short_factor": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7],
                    "long_factor": [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]}}),
            ),
        ),
        plain(
            "granite",
            family_config(
                "granite",
                json!({"embedding_multiplier": 2.0,
                "attention_multiplier": 0.125, "residual_multiplier": 0.5,
                "logits_scaling": 0.25, "attention_bias": true, "mlp_bias": true,
                "tie_word_embeddings": true}),
            ),
        ),
        plain("olmo2", family_config("olmo2", json!({}))),
        // Layer 1 of 2 without RoPE.
        plain(
            "smollm3",
            family_config("smollm3", json!({"no_rope_layer_interval": 2})),
        ),
        // mistral-style sliding layers through llama's layer_types.
        plain(
            "llama-sliding",
            family_config(
                "llama",
                json!({"layer_types": ["sliding_attention", "full_attention"],
                "sliding_window": 6}),
            ),
        ),
        plain(
            "mixtral",
            family_config(
                "mixtral",
                json!({"num_local_experts": 4, "num_experts_per_tok": 2}),
            ),
        ),
        // Biased attention with sinks, a sliding layer (window 6) and a full one, YaRN RoPE,
        // 4 biased experts with the clamped SwiGLU, top-2.
        plain(
            "gpt_oss",
            family_config(
                "gpt_oss",
                json!({"head_dim": 32, "num_local_experts": 4,
                "num_experts_per_tok": 2, "sliding_window": 6, "rope_theta": 150000.0,
                "layer_types": ["sliding_attention", "full_attention"],
                "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                    "beta_slow": 1.0, "original_max_position_embeddings": 4096}}),
            ),
        ),
        // Layer 1 dense (mlp_only_layers), layer 0 routed over 8 experts.
        plain(
            "qwen3_moe",
            family_config(
                "qwen3_moe",
                json!({"head_dim": 32, "num_experts": 8,
                "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [1],
                "moe_intermediate_size": 128, "norm_topk_prob": true}),
            ),
        ),
    ]
}

/// Every family `mlxk run` added beyond llama/qwen, generated by mlx-lm's own model classes,
/// in f32 and 4-bit (mlx_lm.convert, with the family's own mixed-bit predicate where it has
/// one): teacher-forced logits within tolerance at every step, argmax equal wherever mlx-lm's
/// margin exceeds it, and the f32 greedy tokens equal to mlx-lm's. Prompt + generation run
/// past every sliding window.
#[test]
fn every_family_matches_mlx_lm() {
    let Some(py) = common::peer_python("every_family_matches_mlx_lm") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let fixture = work.join("fixture");
    write_model(&fixture, &LlamaSpec::default());
    let fams = families();
    let mut jobs: Vec<Value> = fams
        .iter()
        .enumerate()
        .map(|(i, f)| {
            json!({"make": {"dst": work.join(f.name), "config": f.config, "seed": 100 + i,
                "std": 0.3, "norm_mean": f.norm_mean, "tokenizer_from": fixture,
                "drop": f.drop, "extra": f.extra, "config_extra": f.config_extra}})
        })
        .collect();
    jobs.extend(fams.iter().map(|f| {
        json!({"convert": {"src": work.join(f.name), "dst": work.join(format!("{}-q4", f.name)),
               "args": {"quantize": true, "q_bits": 4, "q_group_size": 64}}})
    }));
    // MLX's microscaling float modes on a dense and a routed model, made by mlx_lm.convert.
    for (base, mode) in FP_MODELS {
        jobs.push(json!({"convert": {"src": work.join(base),
            "dst": work.join(format!("{base}-{mode}")),
            "args": {"quantize": true, "q_mode": mode}}}));
    }
    oracle(&py, work, &jobs);
    // And by `mlxk convert` (bit-exact with mx.quantize): its output runs as well.
    let mlxk_mxfp4 = work.join("qwen3_moe-mxfp4-by-mlxk");
    let out = common::mlxk(
        &[
            "convert",
            work.join("qwen3_moe").to_str().unwrap(),
            mlxk_mxfp4.to_str().unwrap(),
            "--quantize",
            "--q-mode",
            "mxfp4",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "mlxk convert --q-mode mxfp4: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let tok = TextTokenizer::load(&fixture).unwrap();
    let prompt = tok.encode_prompt("The quick brown fox").unwrap();
    assert!(
        prompt.len() > 8,
        "the prompt alone passes the sliding windows"
    );
    // Tolerances: f32 and 4-bit differ from mlx-lm by summation order alone (measured
    // ≤ 2.7e-5 over these families), except where the AVX-512 VNNI kernels run: they round
    // the activations to 16 bits per group, which longrope's mscale and the routed experts
    // amplify (measured ≤ 2.8e-3 for the 4-bit models, phi3 and mixtral the largest).
    let q4_tolerance = if mlxk_fs::simd::cpu().vnni {
        5e-3
    } else {
        1e-4
    };
    // (model, tolerance, mlx-lm's quantized embedding cast to f32)
    let mut cases: Vec<(String, f32, bool)> = Vec::new();
    for f in &fams {
        cases.push((f.name.to_string(), 1e-4, false));
        cases.push((format!("{}-q4", f.name), q4_tolerance, false));
    }
    // Microscaling floats: every weight is exact in f32 on both sides (element × scale), but
    // mx.dequantize returns bfloat16 for these modes, so mlx-lm's quantized embedding feeds
    // the first layer bf16 values (and gemma multiplies its scale in bf16): against mlx-lm as
    // users run it the difference is that rounding (measured ≤ 2.5e-3); with the embedding
    // cast to f32 it is summation order again — except that the routers of qwen3_moe and
    // gpt_oss are 8-bit affine (mlx-lm's predicates), and mxfp4 decodes on the VNNI integer
    // kernel where the CPU has it: the VNNI rounding applies there.
    for (base, mode) in FP_MODELS {
        let exact = if base == "gemma3_text" && mode != "mxfp4" {
            1e-4
        } else {
            q4_tolerance
        };
        cases.push((format!("{base}-{mode}"), 5e-3, false));
        cases.push((format!("{base}-{mode}"), exact, true));
    }
    cases.push(("qwen3_moe-mxfp4-by-mlxk".to_string(), q4_tolerance, true));
    let jobs: Vec<Value> = cases
        .iter()
        .map(|(name, _, f32_embedding)| {
            json!({"generate": {"model": work.join(name), "prompt_ids": prompt, "steps": STEPS,
                   "f32_embedding": f32_embedding}})
        })
        .collect();
    let results = oracle(&py, work, &jobs);
    let mut failures = Vec::new();
    for ((name, tolerance, f32_embedding), theirs) in cases.iter().zip(&results) {
        let dir = work.join(name);
        let label = if *f32_embedding {
            format!("{name} (mlx-lm's embedding in f32)")
        } else {
            name.clone()
        };
        if !check(&label, &dir, &prompt, theirs, *tolerance, &mut failures) {
            continue;
        }
        if !name.contains('-') || name == "llama-sliding" {
            let theirs: Vec<u32> = serde_json::from_value(theirs["tokens"].clone()).unwrap();
            let mut engine = CpuEngine::load(&dir).unwrap();
            let g = mlxk_fs::engine::generate(&mut engine, &tok, &prompt, &greedy(), &mut |_| {})
                .unwrap();
            if g.tokens != theirs {
                failures.push(format!(
                    "{name} greedy tokens: ours {:?} theirs {theirs:?}",
                    g.tokens
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn greedy() -> mlxk_fs::engine::GenerateOptions {
    mlxk_fs::engine::GenerateOptions {
        max_tokens: STEPS,
        sampler: mlxk_fs::engine::sampler::SamplerOptions {
            temperature: 0.0,
            repetition_penalty: 1.0,
            ..Default::default()
        },
        stop: vec![],
    }
}

/// Chat templates render exactly as transformers renders them.
#[test]
fn chat_templates_render_like_transformers() {
    let Some(py) = common::peer_python("chat_templates_render_like_transformers") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let templates_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/templates");
    let mut names = vec![("fixture".to_string(), None)];
    for e in fs::read_dir(&templates_dir).unwrap() {
        let p = e.unwrap().path();
        names.push((
            p.file_stem().unwrap().to_string_lossy().into_owned(),
            Some(fs::read_to_string(&p).unwrap()),
        ));
    }
    let conversations = [
        vec![Message::new("user", "Why is the sky blue?")],
        vec![
            Message::new("system", "You are terse."),
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello. What do you need?"),
            Message::new("user", "Über-naïve “quotes” and ünïcödé, please"),
        ],
    ];
    let mut jobs = Vec::new();
    let mut dirs = Vec::new();
    for (name, source) in &names {
        let dir = work.join(name);
        write_model(&dir, &LlamaSpec::default());
        if let Some(src) = source {
            let path = dir.join("tokenizer_config.json");
            let mut cfg: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
            cfg["chat_template"] = Value::String(src.clone());
            fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
        }
        for conv in &conversations {
            jobs.push(json!({"template": {"model": dir, "messages": conv}}));
            dirs.push((name.clone(), dir.clone(), conv.clone()));
        }
    }
    let results = oracle(&py, work, &jobs);
    assert!(
        names.len() >= 3,
        "the real-world templates are in tests/peers/templates"
    );
    for ((name, dir, conv), r) in dirs.iter().zip(&results) {
        let tok = TextTokenizer::load(dir).unwrap();
        let t = ChatTemplate::load(dir, &tok.config).unwrap().unwrap();
        let ours = t
            .render(conv, tok.bos_token.as_deref(), tok.eos_token.as_deref())
            .unwrap();
        assert_eq!(ours, r["text"].as_str().unwrap(), "{name}: {conv:?}");
    }
}
