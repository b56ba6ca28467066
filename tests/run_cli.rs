//! `mlxk run` through the binary: prompt, stdin, `--system`, JSON, greedy and seeded
//! determinism, eos stops, the interactive chat (`/clear`, `/exit`), mounted and cached models,
//! refusals before loading; and the streaming decoder never splitting a UTF-8 character.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{stderr, stdout, Fixture};
use mlxk_fs::engine::model::CpuEngine;
use mlxk_fs::engine::tokenizer::{StreamDecoder, TextTokenizer};
use mlxk_fs::engine::Engine;
use mlxk_fs::testkit::{llama_model_files, safetensors_bytes, LlamaSpec, TensorSpec};
use safetensors::Dtype;
use serde_json::Value;

fn model(root: &Path, name: &str, spec: &LlamaSpec) -> PathBuf {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    for (f, bytes) in llama_model_files(spec, 1, false, "mlx") {
        fs::write(dir.join(f), bytes).unwrap();
    }
    dir
}

fn spec() -> LlamaSpec {
    LlamaSpec {
        std: 0.3,
        seed: 61,
        ..LlamaSpec::default()
    }
}

fn run_json(fx: &Fixture, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    fx.json(&all)
}

fn with_stdin(fx: &Fixture, args: &[&str], input: &str) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlxk"));
    cmd.arg("--cache").arg(&fx.cache).args(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    common::record_json_reply(args, &out);
    out
}

#[test]
fn run_answers_prompts_stdin_and_chats() {
    let fx = Fixture::new();
    let dir = model(fx.tmp.path(), "ws", &spec());
    let ws = dir.to_str().unwrap();

    let greedy = ["--temperature", "0", "--max-tokens", "12"];
    let mut args = vec![ws, "Why is the sky blue?"];
    args.extend_from_slice(&greedy);
    let (code, v) = run_json(&fx, &args);
    assert_eq!(code, 0, "{v:#}");
    let d = &v["data"];
    assert_eq!(v["command"], "run");
    assert_eq!(d["model"], ws);
    assert_eq!(d["prompt"], "Why is the sky blue?");
    assert_eq!(d["usage"]["completion_tokens"], 12);
    assert!(
        d["usage"]["prompt_tokens"].as_u64().unwrap() > 20,
        "chat template applied"
    );
    assert!(d["timing"]["prompt_tps"].as_f64().unwrap() > 0.0);
    assert!(d["timing"]["decode_tps"].as_f64().unwrap() > 0.0);
    assert_eq!(d["finish_reason"], "length");
    // Greedy is deterministic; the streamed text is the JSON response.
    let (_, again) = run_json(&fx, &args);
    assert_eq!(again["data"]["response"], d["response"]);
    let mut plain = vec!["run"];
    plain.extend_from_slice(&args);
    let out = fx.mlxk(&plain);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("{}\n", d["response"].as_str().unwrap())
    );

    // Without the template the prompt is shorter; a system prompt makes it longer.
    let (_, raw) = run_json(
        &fx,
        &[
            ws,
            "Why is the sky blue?",
            "--no-chat-template",
            "--max-tokens",
            "1",
        ],
    );
    let (_, sys) = run_json(
        &fx,
        &[
            ws,
            "Why is the sky blue?",
            "--system",
            "You are terse.",
            "--max-tokens",
            "1",
        ],
    );
    let n = |v: &Value| v["data"]["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        n(&raw) < n(&v) && n(&v) < n(&sys),
        "{} {} {}",
        n(&raw),
        n(&v),
        n(&sys)
    );

    // Seeded sampling is reproducible.
    let seeded = [
        ws,
        "Hi",
        "--seed",
        "5",
        "--max-tokens",
        "16",
        "--temperature",
        "1.0",
    ];
    let (_, a) = run_json(&fx, &seeded);
    let (_, b) = run_json(&fx, &seeded);
    assert_eq!(a["data"]["response"], b["data"]["response"]);

    // `-` reads the prompt from stdin.
    let mut stdin_args = vec!["--json", "run", ws, "-"];
    stdin_args.extend_from_slice(&greedy);
    let out = with_stdin(&fx, &stdin_args, "Why is the sky blue?\n");
    let v2: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v2["data"]["prompt"], "Why is the sky blue?");
    assert_eq!(v2["data"]["response"], d["response"]);

    // The chat: history is kept (the second turn's prompt holds the first), /clear forgets it.
    let mut chat_args = vec!["--json", "run", ws];
    chat_args.extend_from_slice(&greedy);
    let out = with_stdin(
        &fx,
        &chat_args,
        "Why is the sky blue?\nAnd at night?\n/clear\nAnd at night?\n/exit\nnever read\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v3: Value = serde_json::from_slice(&out.stdout).unwrap();
    let turns = v3["data"]["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 3, "{v3:#}");
    assert_eq!(
        turns[0]["response"], d["response"],
        "first turn = single prompt"
    );
    let p = |i: usize| turns[i]["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(p(1) > p(0) + 12, "the second turn carries the history");
    let mut alone_args = vec![ws, "And at night?"];
    alone_args.extend_from_slice(&greedy);
    let (_, alone) = run_json(&fx, &alone_args);
    assert_eq!(p(2), n(&alone), "after /clear the history is gone");
    assert!(p(2) < p(1));
    // The third turn reused the cached prefix it shares with the conversation before /clear
    // (the template's start): the answer is exactly a fresh run's.
    assert_eq!(turns[2]["response"], alone["data"]["response"]);
}

#[test]
fn generation_stops_on_every_eos_id() {
    let fx = Fixture::new();
    let dir = model(fx.tmp.path(), "ws", &spec());
    // The greedy first token of this prompt, made an eos id in generation_config.json only.
    let tok = TextTokenizer::load(&dir).unwrap();
    let ids = tok.encode_prompt("Hello").unwrap();
    let mut engine = CpuEngine::load(&dir).unwrap();
    let first = mlxk_fs::engine::sampler::argmax(engine.prefill(&ids).unwrap());
    let gen_path = dir.join("generation_config.json");
    let mut g: Value = serde_json::from_slice(&fs::read(&gen_path).unwrap()).unwrap();
    g["eos_token_id"] = serde_json::json!([258, first]);
    fs::write(&gen_path, g.to_string()).unwrap();
    let (code, v) = run_json(
        &fx,
        &[
            dir.to_str().unwrap(),
            "Hello",
            "--no-chat-template",
            "--temperature",
            "0",
        ],
    );
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["data"]["finish_reason"], "stop");
    assert_eq!(v["data"]["usage"]["completion_tokens"], 0);
    assert_eq!(v["data"]["response"], "");
}

#[test]
fn cached_quantized_and_mounted_models_run() {
    let fx = Fixture::new();
    // A 4-bit cache model (random packed weights) runs by its spec.
    // Greedy, so the outcome is fixed: four tokens, unless this random model's argmax is its
    // eos token first (then generation stops, as it must).
    let (code, v) = run_json(
        &fx,
        &[
            "mlx-community/Llama-tiny-4bit",
            "Hi",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
        ],
    );
    assert_eq!(code, 0, "{v:#}");
    let d = &v["data"];
    assert!(
        (d["usage"]["completion_tokens"] == 4 && d["finish_reason"] == "length")
            || d["finish_reason"] == "stop",
        "{v:#}"
    );
    if !common::mount::fuse_available("cached_quantized_and_mounted_models_run") {
        return;
    }
    let m = common::mount::MountGuard::new(&fx.cache, &fx.path("mnt"), &fx.path("state"), &[]);
    let greedy = ["Hi", "--temperature", "0", "--max-tokens", "6"];
    let mounted = m.path("mlx-community/Llama-tiny-f16");
    let mut a = vec![mounted.to_str().unwrap()];
    a.extend_from_slice(&greedy);
    let (code, through_mount) = run_json(&fx, &a);
    assert_eq!(code, 0, "{through_mount:#}");
    let mut b = vec!["mlx-community/Llama-tiny-f16"];
    b.extend_from_slice(&greedy);
    let (_, from_cache) = run_json(&fx, &b);
    assert_eq!(
        through_mount["data"]["response"],
        from_cache["data"]["response"]
    );
}

/// A routed-experts model (qwen3_moe, per-expert tensors as Hugging Face ships them) runs
/// through `mlxk run`, greedy output the same on a second run.
#[test]
fn a_moe_model_runs() {
    let fx = Fixture::new();
    let dir = model(
        fx.tmp.path(),
        "moe",
        &LlamaSpec {
            model_type: "qwen3_moe",
            ..spec()
        },
    );
    let args = [
        dir.to_str().unwrap(),
        "Hi",
        "--max-tokens",
        "5",
        "--temperature",
        "0",
    ];
    let (code, first) = run_json(&fx, &args);
    assert_eq!(code, 0, "{first:#}");
    let d = &first["data"];
    assert!(
        (d["usage"]["completion_tokens"] == 5 && d["finish_reason"] == "length")
            || d["finish_reason"] == "stop",
        "{first:#}"
    );
    let (_, second) = run_json(&fx, &args);
    assert_eq!(first["data"]["response"], second["data"]["response"]);
}

/// A reasoning model whose template opens `<think>`: everything generated before a
/// `</think>` is reasoning — `data.reasoning` under --json (the answer apart), between its
/// markers on a pipe, left out with --no-reasoning.
#[test]
fn reasoning_is_kept_apart_from_the_answer() {
    let fx = Fixture::new();
    // Room in the vocabulary for the two markers the tokenizer gains (ids 259, 260).
    let thinker = LlamaSpec {
        vocab: 261,
        ..spec()
    };
    let dir = model(fx.tmp.path(), "thinker", &thinker);
    let tj = dir.join("tokenizer.json");
    let mut t: Value = serde_json::from_slice(&fs::read(&tj).unwrap()).unwrap();
    for (id, content) in [(259, "<think>"), (260, "</think>")] {
        t["added_tokens"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
            "id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": false}));
    }
    fs::write(&tj, t.to_string()).unwrap();
    let tc = dir.join("tokenizer_config.json");
    let mut c: Value = serde_json::from_slice(&fs::read(&tc).unwrap()).unwrap();
    c["chat_template"] = "{% for m in messages %}{{ m.content }}{% endfor %}<think>\n".into();
    fs::write(&tc, c.to_string()).unwrap();
    let greedy = ["Hi", "--max-tokens", "6", "--temperature", "0"];
    let mut args = vec![dir.to_str().unwrap()];
    args.extend_from_slice(&greedy);
    let (code, v) = run_json(&fx, &args);
    assert_eq!(code, 0, "{v:#}");
    let d = &v["data"];
    assert_eq!(d["response"], "", "{v:#}");
    let generated = d["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(generated > 0, "the random model wrote something: {v:#}");
    let reasoning = d["reasoning"].as_str().expect("reasoning").to_string();
    // On a pipe: the thinking between its markers.
    let shown = fx.mlxk(&[&["run"][..], &args].concat());
    assert!(shown.status.success());
    let out = String::from_utf8(shown.stdout).unwrap();
    assert!(
        out.starts_with("<think>") && out.trim_end().ends_with("</think>"),
        "{out:?}"
    );
    assert_eq!(
        out.trim_end()
            .trim_start_matches("<think>")
            .trim_end_matches("</think>")
            .trim(),
        reasoning
    );
    // --no-reasoning: nothing but the (empty) answer.
    let hidden = fx.mlxk(&[&["run"][..], &args, &["--no-reasoning"]].concat());
    assert!(hidden.status.success());
    assert_eq!(String::from_utf8(hidden.stdout).unwrap(), "\n");
    // A model without the markers in its vocabulary has no reasoning: null.
    let plain = model(fx.tmp.path(), "plain", &spec());
    let mut args = vec![plain.to_str().unwrap()];
    args.extend_from_slice(&greedy);
    let (_, v) = run_json(&fx, &args);
    assert!(v["data"]["reasoning"].is_null(), "{v:#}");
}

/// gpt-oss's harmony format: the analysis channel is the reasoning, the final channel the
/// answer; the markers (special tokens) never reach the user.
#[test]
fn harmony_analysis_is_kept_apart_from_the_final_answer() {
    let fx = Fixture::new();
    let dir = fx.path("harmony");
    common::harmony_model(&dir);
    let d = dir.to_str().unwrap();
    let greedy = [d, "Hi", "--temperature", "0", "--repetition-penalty", "1"];
    let (code, v) = run_json(&fx, &greedy);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["data"]["reasoning"], common::HARMONY_REASONING, "{v:#}");
    assert_eq!(v["data"]["response"], common::HARMONY_ANSWER, "{v:#}");
    assert_eq!(v["data"]["finish_reason"], "stop", "{v:#}");
    // On a pipe: the reasoning between `<think>` markers, then the answer.
    let shown = fx.mlxk(&[&["run"][..], &greedy].concat());
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert_eq!(
        stdout(&shown),
        format!(
            "<think>{}</think>\n\n{}\n",
            common::HARMONY_REASONING,
            common::HARMONY_ANSWER
        )
    );
    let hidden = fx.mlxk(&[&["run"][..], &greedy, &["--no-reasoning"]].concat());
    assert_eq!(stdout(&hidden), format!("{}\n", common::HARMONY_ANSWER));
    // A chat: every turn split the same way, the history holding the answers.
    let out = with_stdin(
        &fx,
        &[
            "--json",
            "run",
            d,
            "--temperature",
            "0",
            "--repetition-penalty",
            "1",
        ],
        "Hi\nAgain\n",
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let turns = v["data"]["turns"].as_array().expect("turns");
    assert_eq!(turns.len(), 2, "{v:#}");
    for t in turns {
        assert_eq!(t["reasoning"], common::HARMONY_REASONING, "{v:#}");
        assert_eq!(t["response"], common::HARMONY_ANSWER, "{v:#}");
    }
}

#[test]
fn refusals_come_before_loading() {
    let fx = Fixture::new();
    let refuse = |dir: &Path, needle: &str| {
        let (code, v) = run_json(&fx, &[dir.to_str().unwrap(), "Hi"]);
        assert_eq!(code, 1, "{v:#}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "`{msg}` lacks `{needle}`");
    };
    let edit = |name: &str, f: &dyn Fn(&mut Value)| {
        let dir = model(fx.tmp.path(), name, &spec());
        let p = dir.join("config.json");
        let mut c: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        f(&mut c);
        fs::write(&p, c.to_string()).unwrap();
        dir
    };
    refuse(
        &edit("mamba", &|c| c["model_type"] = "mamba".into()),
        "llama, mistral, qwen2, qwen3, qwen3_moe, gemma2, gemma3",
    );
    refuse(
        &edit("gemma3-without-text", &|c| {
            c["model_type"] = "gemma3".into()
        }),
        "without a `text_config`",
    );
    refuse(
        &edit("moe-top-k", &|c| {
            c["model_type"] = "qwen3_moe".into();
            for (k, v) in [
                ("num_experts", 2),
                ("num_experts_per_tok", 3),
                ("decoder_sparse_step", 1),
                ("moe_intermediate_size", 64),
                ("head_dim", 16),
            ] {
                c[k] = v.into();
            }
        }),
        "3 experts per token of 2 experts",
    );
    refuse(
        &edit("vlm", &|c| {
            c["vision_config"] = serde_json::json!({"depth": 2})
        }),
        "vision model",
    );
    refuse(
        &edit(
            "awq",
            &|c| {
                c["quantization"] =
                    serde_json::json!({"group_size": 32, "bits": 4, "mode": "int4_awq"})
            },
        ),
        "`int4_awq` is not implemented by `mlxk run` (affine, mxfp4, mxfp8, nvfp4)",
    );
    let no_tok = model(fx.tmp.path(), "no-tokenizer", &spec());
    fs::remove_file(no_tok.join("tokenizer.json")).unwrap();
    refuse(&no_tok, "tokenizer.json");
}

/// A model whose weights do not fit its config is refused at load with the tensor named (exit
/// 1, the JSON error envelope), never a panic inside the kernels.
#[test]
fn malformed_weights_are_load_errors_naming_the_tensor() {
    let fx = Fixture::new();
    let quantized = LlamaSpec {
        quantization: Some((4, 32)),
        ..spec()
    };
    let broken = |name: &str, spec: &LlamaSpec, edit: &dyn Fn(&mut Vec<TensorSpec>)| {
        let dir = model(fx.tmp.path(), name, spec);
        let mut tensors = spec.tensors();
        edit(&mut tensors);
        fs::write(
            dir.join("model.safetensors"),
            safetensors_bytes(&tensors, Some("mlx")),
        )
        .unwrap();
        dir
    };
    let find = |ts: &mut Vec<TensorSpec>, name: &str| -> usize {
        ts.iter().position(|t| t.name == name).unwrap()
    };
    let cases: Vec<(PathBuf, &str, &str)> = vec![
        (
            // Biases stored as f32 beside f16 scales (same shape, twice the bytes).
            broken("bias-dtype", &quantized, &|ts| {
                let i = find(ts, "model.layers.1.mlp.up_proj.biases");
                let t = &mut ts[i];
                let values: Vec<f32> = t
                    .data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect();
                t.dtype = Dtype::F32;
                t.data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            }),
            "model.layers.1.mlp.up_proj",
            "biases are F32 but scales are F16",
        ),
        (
            // Scales as integers.
            broken("scale-dtype", &quantized, &|ts| {
                let i = find(ts, "model.layers.0.self_attn.k_proj.scales");
                ts[i].dtype = Dtype::I16;
            }),
            "model.layers.0.self_attn.k_proj",
            "not a float dtype",
        ),
        (
            // Scales of another group count than the biases.
            broken("scale-shape", &quantized, &|ts| {
                let i = find(ts, "model.layers.0.self_attn.v_proj.scales");
                let t = &mut ts[i];
                t.shape[1] /= 2;
                t.data.truncate(t.data.len() / 2);
            }),
            "model.layers.0.self_attn.v_proj",
            "do not fit",
        ),
        (
            // A float matrix of the wrong shape.
            broken("weight-shape", &spec(), &|ts| {
                let i = find(ts, "model.layers.0.mlp.down_proj.weight");
                let t = &mut ts[i];
                t.shape.swap(0, 1);
            }),
            "model.layers.0.mlp.down_proj.weight",
            "shape",
        ),
        (
            // A norm of the wrong length.
            broken("norm-length", &spec(), &|ts| {
                let i = find(ts, "model.norm.weight");
                let t = &mut ts[i];
                t.shape[0] -= 1;
                t.data.truncate(t.data.len() - 2);
            }),
            "model.norm.weight",
            "expected 64 float values",
        ),
    ];
    for (dir, tensor, what) in cases {
        let out = fx.mlxk(&["run", dir.to_str().unwrap(), "Hi", "--json"]);
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{}: {text}", dir.display());
        assert!(!text.contains("panicked"), "{text}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(v["error"]["type"], "ModelNotSupported", "{v:#}");
        assert!(
            msg.contains(tensor) && msg.contains(what),
            "`{msg}` lacks `{tensor}` / `{what}`"
        );
    }
}

#[test]
fn streaming_never_splits_a_character() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model(tmp.path(), "ws", &spec());
    let tok = TextTokenizer::load(&dir).unwrap();
    // The fixture tokenizer is byte-level: "é€" is 2 + 3 byte tokens.
    let ids = tok.encode("é€!", false).unwrap();
    assert_eq!(ids.len(), 6, "{ids:?}");
    let mut s = StreamDecoder::default();
    let pieces: Vec<String> = ids.iter().map(|&id| s.push(&tok, id)).collect();
    assert_eq!(pieces, ["", "é", "", "", "€", "!"]);
    assert_eq!(s.finish(&tok), "");
}

#[test]
fn invalid_bytes_stream_as_they_come_and_only_an_open_sequence_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model(tmp.path(), "ws", &spec());
    let tok = TextTokenizer::load(&dir).unwrap();
    // Byte tokens 0xC3 x5, then "a": each 0xC3 is a lead byte the next one does not continue,
    // so each decodes as its own U+FFFD. The last three are held (they could be the start of
    // a character still arriving, as SentencePiece's byte fallback shows them); older ones
    // are invalid for good and go out at once instead of stalling the stream.
    let c3 = {
        let e = tok.encode("é", false).unwrap(); // 0xC3 0xA9
        assert_eq!(e.len(), 2);
        e[0]
    };
    let a = tok.encode("a", false).unwrap()[0];
    let mut s = StreamDecoder::default();
    let pieces: Vec<String> = [c3, c3, c3, c3, c3, a]
        .iter()
        .map(|&id| s.push(&tok, id))
        .collect();
    let r = "\u{FFFD}";
    assert_eq!(pieces, ["", "", "", r, r, &format!("{r}{r}{r}a")]);
    assert_eq!(s.finish(&tok), "");
    // An open sequence at the end comes out (as U+FFFD) when the generation ends.
    let mut s = StreamDecoder::default();
    assert_eq!(s.push(&tok, a), "a");
    assert_eq!(s.push(&tok, c3), "");
    assert_eq!(s.finish(&tok), "\u{FFFD}");
}
