//! `mlxk serve` as users meet it: the real binary on a loopback port, driven by the official
//! `openai` Python client (peer venv) and by raw HTTP for the error cases. Answers are checked
//! against `mlxk run` on the same model; batching against each request's answer alone.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Fixture;
use mlxk_fs::testkit::{llama_model_files, LlamaSpec};
use serde_json::{json, Value};

const TINY: &str = "mlx-community/Llama-tiny-f16";
const TINY_Q4: &str = "mlx-community/Llama-tiny-4bit";

/// A running `mlxk serve`, stopped (SIGTERM, exit 0 asserted by `stop`) or killed on drop.
struct Server {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    startup: String,
}

impl Server {
    fn start(cache: &Path, extra: &[&str]) -> Server {
        let mut args: Vec<String> = vec![
            "--cache".into(),
            cache.to_str().unwrap().into(),
            "--json".into(),
            "serve".into(),
            "--port".into(),
            "0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_mlxk"))
            .args(&args)
            .env_remove("MLXK_API_KEY")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mlxk serve");
        // The startup envelope comes once the socket listens (and --model is loaded).
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut startup = String::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).unwrap();
            assert!(n > 0, "mlxk serve exited before listening: {startup}");
            startup.push_str(&line);
            if line.trim_end() == "}" {
                break;
            }
        }
        let v: Value = serde_json::from_str(&startup).unwrap();
        assert_eq!(v["status"], "success", "{v:#}");
        assert_eq!(v["command"], "server");
        let port = v["data"]["port"].as_u64().unwrap() as u16;
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
        });
        Server {
            child: Some(child),
            port,
            args,
            startup,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn base(&self) -> String {
        self.url("/v1")
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    /// SIGTERM; the exit status within `within`.
    fn stop_within(&mut self, within: Duration) -> std::process::ExitStatus {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("mlxk serve did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server and records its startup envelope for the schema check.
    fn stop(mut self) {
        let status = self.stop_within(Duration::from_secs(15));
        assert_eq!(status.code(), Some(0), "mlxk serve exits 0 on SIGTERM");
        let out = std::process::Output {
            status,
            stdout: self.startup.clone().into_bytes(),
            stderr: Vec::new(),
        };
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        common::record_json_reply(&args, &out);
    }

    fn health(&self) -> Value {
        let (status, v) = http(&self.url("/health"), "GET", None, &[]);
        assert_eq!(status, 200, "{v}");
        v
    }

    /// The /health entry of a loaded model.
    fn loaded(&self, id: &str) -> Option<Value> {
        self.health()["models_loaded"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One raw HTTP request: (status, JSON body or the text as a JSON string).
fn http(url: &str, method: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut resp = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        (m, b) => {
            let mut r = ureq::http::Request::builder().method(m).uri(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            let req = r
                .header("content-type", "application/json")
                .body(b.unwrap_or_default().to_vec())
                .unwrap();
            agent.run(req)
        }
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    http(
        &server.url(path),
        "POST",
        Some(body.to_string().as_bytes()),
        &[],
    )
}

/// Runs tests/peers/serve_client.py with `ops`; one result per op.
fn client(py: &Path, server: &Server, api_key: Option<&str>, ops: Value) -> Vec<Value> {
    let plan = json!({"api_key": api_key, "ops": ops});
    let out = Command::new(py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/serve_client.py"))
        .arg(server.base())
        .arg(plan.to_string())
        .output()
        .expect("run the openai client");
    assert!(
        out.status.success(),
        "serve_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn chat(model: &str, prompt: &str, extra: Value) -> Value {
    let mut args = json!({"model": model, "messages": [{"role": "user", "content": prompt}]});
    merge(&mut args, extra);
    args
}

fn merge(into: &mut Value, extra: Value) {
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            into[k] = v;
        }
    }
}

fn request(kind: &str, stream: bool, args: Value) -> Value {
    json!({"op": "request", "request": {"kind": kind, "stream": stream, "args": args}})
}

/// `mlxk run`'s greedy answer without penalty: (text, prompt tokens, completion tokens).
fn run_greedy(
    fx: &Fixture,
    model: &str,
    prompt: &str,
    max_tokens: usize,
    raw: bool,
) -> (String, u64, u64) {
    let n = max_tokens.to_string();
    let mut args = vec![
        "run",
        model,
        prompt,
        "--temperature",
        "0",
        "--repetition-penalty",
        "1",
        "--max-tokens",
        &n,
    ];
    if raw {
        args.push("--no-chat-template");
    }
    let (code, v) = fx.json(&args);
    assert_eq!(code, 0, "{v:#}");
    let d = &v["data"];
    (
        d["response"].as_str().unwrap().to_string(),
        d["usage"]["prompt_tokens"].as_u64().unwrap(),
        d["usage"]["completion_tokens"].as_u64().unwrap(),
    )
}

/// A 4-bit model in a plain directory whose answers never end early: no eos id anywhere, so a
/// request runs to its max_tokens (long streams for hang-ups and shutdowns, fixed lengths for
/// batching).
fn endless_model(root: &Path, name: &str, layers: usize) -> PathBuf {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    let spec = LlamaSpec {
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        intermediate: 512,
        layers,
        std: 0.3,
        seed: 17,
        quantization: Some((4, 64)),
        ..LlamaSpec::default()
    };
    for (f, bytes) in llama_model_files(&spec, 1, false, "mlx") {
        fs::write(dir.join(f), bytes).unwrap();
    }
    for file in [
        "config.json",
        "generation_config.json",
        "tokenizer_config.json",
    ] {
        let path = dir.join(file);
        let mut v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("eos_token_id");
        o.remove("eos_token");
        fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
    dir
}

/// A 200-token stream of `model` on a thread, returned once the server runs it (its status and
/// body when joined).
fn long_stream(server: &Server, model: &str) -> std::thread::JoinHandle<(u16, Value)> {
    // Long enough that it still runs when the test's next request arrives on a loaded machine
    // (at 200 tokens it could finish first while the other tests compete for the two cores).
    let body = json!({"model": model, "prompt": "go", "max_tokens": 1000, "stream": true});
    let url = server.url("/v1/completions");
    let long =
        std::thread::spawn(move || http(&url, "POST", Some(body.to_string().as_bytes()), &[]));
    wait_until("the long request runs", Duration::from_secs(60), || {
        server.loaded(model).is_some_and(|m| m["in_flight"] == 1)
    });
    long
}

fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn chat_and_completions_answer_as_mlxk_run_does() {
    let Some(py) = common::peer_python("chat_and_completions_answer_as_mlxk_run_does") else {
        return;
    };
    let fx = Fixture::new();
    let server = Server::start(&fx.cache, &["--model", TINY]);
    let prompt = "Why is the sky blue?";
    let (run_text, run_prompt_tokens, run_tokens) = run_greedy(&fx, TINY, prompt, 24, false);
    let (raw_text, raw_prompt_tokens, _) = run_greedy(&fx, TINY, prompt, 16, true);
    let greedy = json!({"max_tokens": 24, "temperature": 0});
    let r = client(
        &py,
        &server,
        None,
        json!([
            {"op": "models"},
            request("chat", false, chat(TINY, prompt, greedy.clone())),
            request("chat", true, chat(TINY, prompt, json!({"max_tokens": 24, "temperature": 0,
                "stream_options": {"include_usage": true}}))),
            request("complete", false, json!({"model": TINY, "prompt": prompt,
                "max_tokens": 16, "temperature": 0})),
            request("complete", true, json!({"model": TINY, "prompt": prompt,
                "max_tokens": 16, "temperature": 0})),
            request("chat", false, chat(TINY, prompt, json!({"max_tokens": 24, "seed": 42}))),
            request("chat", false, chat(TINY, prompt, json!({"max_tokens": 24, "seed": 42}))),
            request("chat", false, chat(TINY, prompt, json!({"max_tokens": 24, "seed": 43}))),
        ]),
    );
    // Models: the runnable cache models by org/name, not the broken or the vision ones.
    let ids: Vec<&str> = r[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&TINY) && ids.contains(&TINY_Q4), "{ids:?}");
    assert!(!ids.iter().any(|id| id.starts_with("broken/")), "{ids:?}");
    assert!(r[0]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["object"] == "model"));

    // Greedy without penalty is `mlxk run --temperature 0 --repetition-penalty 1`, whole or
    // streamed, with the same counts.
    let whole = &r[1];
    assert_eq!(whole["text"], run_text.as_str());
    assert_eq!(whole["object"], "chat.completion");
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(whole["model"], TINY);
    assert_eq!(whole["finish_reason"], "length");
    let usage = &whole["usage"];
    assert_eq!(usage["prompt_tokens"], run_prompt_tokens);
    assert_eq!(usage["completion_tokens"], run_tokens);
    assert_eq!(usage["total_tokens"], run_prompt_tokens + run_tokens);
    let streamed = &r[2];
    assert_eq!(streamed["text"], run_text.as_str());
    assert_eq!(streamed["roles"], json!(["assistant"]));
    assert_eq!(streamed["finish_reason"], "length");
    assert_eq!(streamed["usage"]["completion_tokens"], run_tokens);
    assert!(streamed["chunks"].as_u64().unwrap() > 3);
    // Completions: the prompt as it is, no template.
    assert_eq!(r[3]["text"], raw_text.as_str());
    assert_eq!(r[3]["object"], "text_completion");
    assert_eq!(r[3]["usage"]["prompt_tokens"], raw_prompt_tokens);
    assert_eq!(r[4]["text"], raw_text.as_str());
    assert!(r[4]["usage"].is_null(), "usage only when asked for");
    // Seeds: the same seed the same text, another seed another.
    assert_eq!(r[5]["text"], r[6]["text"]);
    assert_ne!(r[5]["text"], r[7]["text"]);

    // Stop strings: the text ends just before the first one, whole and streamed.
    let chars: Vec<char> = run_text.chars().collect();
    let stop: String = chars[6..9].iter().collect();
    let expected = &run_text[..run_text.find(&stop).unwrap()];
    let r = client(
        &py,
        &server,
        None,
        json!([
            request(
                "chat",
                false,
                chat(
                    TINY,
                    prompt,
                    json!({"max_tokens": 24,
                "temperature": 0, "stop": stop})
                )
            ),
            request(
                "chat",
                true,
                chat(
                    TINY,
                    prompt,
                    json!({"max_tokens": 24,
                "temperature": 0, "stop": ["\u{1}never", stop]})
                )
            ),
        ]),
    );
    for answer in &r {
        assert_eq!(answer["text"], expected, "stop {stop:?} in {run_text:?}");
        assert_eq!(answer["finish_reason"], "stop");
    }
    // Penalties change a greedy answer (they are off unless asked).
    let (s, v) = post(
        &server,
        "/v1/chat/completions",
        &chat(
            TINY,
            prompt,
            json!({"max_tokens": 24, "temperature": 0,
            "frequency_penalty": 2.0, "presence_penalty": 2.0}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    assert_ne!(v["choices"][0]["message"]["content"], run_text.as_str());
    server.stop();
}

#[test]
fn concurrent_greedy_requests_equal_their_single_answers() {
    let Some(py) = common::peer_python("concurrent_greedy_requests_equal_their_single_answers")
    else {
        return;
    };
    let fx = Fixture::new();
    let dir = endless_model(fx.tmp.path(), "endless", 2);
    let model = dir.to_str().unwrap();
    // Small prefill chunks: the long prompt is prefilled over several steps, between the
    // decode steps of the others.
    let server = Server::start(
        &fx.cache,
        &["--prefill-chunk", "16", "--max-concurrency", "8"],
    );
    let long_prompt = "a longer question that takes several prefill chunks ".repeat(4);
    let requests: Vec<Value> = (0..8)
        .map(|i| {
            let (kind, args) = if i == 7 {
                (
                    "complete",
                    json!({"model": model, "prompt": long_prompt,
                    "max_tokens": 30, "temperature": 0}),
                )
            } else {
                (
                    "chat",
                    chat(
                        model,
                        &format!("question number {i}"),
                        json!({"max_tokens": 20 + 6 * i, "temperature": 0}),
                    ),
                )
            };
            json!({"kind": kind, "stream": i % 2 == 0, "args": args})
        })
        .collect();
    let alone: Vec<Value> = requests
        .iter()
        .map(|r| json!({"op": "request", "request": r}))
        .collect();
    let mut ops = alone.clone();
    ops.push(json!({"op": "concurrent", "requests": requests}));
    let r = client(&py, &server, None, Value::Array(ops));
    let together = r[8].as_array().unwrap();
    for (i, (one, many)) in r[..8].iter().zip(together).enumerate() {
        assert!(many.get("exception").is_none(), "request {i}: {many}");
        assert_eq!(
            one["text"], many["text"],
            "request {i} alone vs in a batch of 8"
        );
        assert_eq!(one["finish_reason"], "length");
    }
    // The long prompt prefilled in chunks of 16 gives what `mlxk run` gives from one prefill.
    let (run_text, _, _) = run_greedy(&fx, model, &long_prompt, 30, true);
    assert_eq!(r[7]["text"], run_text.as_str());
    // And they did run together.
    let stats = server.loaded(model).expect("the model is loaded");
    assert!(stats["peak_batch"].as_u64().unwrap() >= 4, "{stats}");
    server.stop();
}

#[test]
fn a_client_hanging_up_frees_its_slot() {
    let Some(py) = common::peer_python("a_client_hanging_up_frees_its_slot") else {
        return;
    };
    let fx = Fixture::new();
    let dir = endless_model(fx.tmp.path(), "endless", 4);
    let model = dir.to_str().unwrap();
    // One place and no queue: the next request gets in only if the first one's slot is free.
    let server = Server::start(
        &fx.cache,
        &[
            "--model",
            model,
            "--max-concurrency",
            "1",
            "--max-queue",
            "0",
        ],
    );
    let long = json!({"kind": "complete", "args": {"model": model, "prompt": "go on",
        "max_tokens": 1900, "temperature": 0}});
    let r = client(
        &py,
        &server,
        None,
        json!([{"op": "hangup", "request": long, "after_chunks": 3}]),
    );
    assert_eq!(r[0]["chunks_read"], 3);
    wait_until("the slot is freed", Duration::from_secs(10), || {
        server.loaded(model).unwrap()["in_flight"] == 0
    });
    let generated = server.loaded(model).unwrap()["tokens_generated"]
        .as_u64()
        .unwrap();
    assert!(
        generated < 1900,
        "the abandoned stream ran on: {generated} tokens"
    );
    let (s, v) = post(
        &server,
        "/v1/completions",
        &json!({"model": model, "prompt": "next", "max_tokens": 4}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    server.stop();
}

#[test]
fn bad_requests_get_openais_error_envelope() {
    let fx = Fixture::new();
    let dir = endless_model(fx.tmp.path(), "endless", 4);
    let model = dir.to_str().unwrap();
    let server = Server::start(&fx.cache, &["--max-concurrency", "1", "--max-queue", "0"]);
    let check = |status: u16, v: &Value, want: u16, says: &str| {
        assert_eq!(status, want, "{v}");
        let e = &v["error"];
        assert!(
            e["message"].as_str().unwrap().contains(says),
            "{want}: {says:?} not in {e}"
        );
        assert!(e["type"].is_string(), "{e}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{e}");
    };
    let raw = |path: &str, body: &[u8]| http(&server.url(path), "POST", Some(body), &[]);
    let (s, v) = raw("/v1/chat/completions", b"{\"model\": ");
    check(s, &v, 400, "not valid JSON");
    let (s, v) = post(&server, "/v1/chat/completions", &json!({"messages": []}));
    check(s, &v, 400, "`model` is required");
    let (s, v) = post(
        &server,
        "/v1/chat/completions",
        &chat(TINY, "hi", json!({"n": 2})),
    );
    check(s, &v, 400, "n = 2");
    let (s, v) = post(
        &server,
        "/v1/chat/completions",
        &chat(TINY, "hi", json!({"max_tokens": -5})),
    );
    check(s, &v, 400, "max_tokens");
    assert_eq!(v["error"]["param"], "max_tokens");
    let (s, v) = post(
        &server,
        "/v1/completions",
        &json!({"model": TINY, "prompt": "x",
        "temperature": 1e9}),
    );
    check(s, &v, 400, "between 0 and 2");
    let (s, v) = post(
        &server,
        "/v1/chat/completions",
        &chat("no-such/model", "hi", json!({})),
    );
    check(s, &v, 404, "no model matches");
    assert_eq!(v["error"]["code"], "model_not_found");
    // An architecture `mlxk run` refuses is refused with its message.
    let (code, run) = fx.json(&["run", "broken/bad-config", "hi"]);
    assert_eq!(code, 1);
    let (s, v) = post(
        &server,
        "/v1/chat/completions",
        &chat("broken/bad-config", "hi", json!({})),
    );
    check(s, &v, 400, "no `model_type`");
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no `model_type`"),
        "{run}"
    );
    // The context: the numbers are in the message.
    let (s, v) = post(
        &server,
        "/v1/chat/completions",
        &chat(TINY, "hi", json!({"max_tokens": 5000})),
    );
    check(s, &v, 400, "context is 2048 tokens");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    // 8 MiB is the most a body may be. A body well past it still gets its 413 (not a reset
    // connection while the client writes the rest).
    let big = vec![b' '; 32 << 20];
    let (s, v) = raw("/v1/completions", &big);
    check(s, &v, 413, "larger than");
    let (s, v) = http(&server.url("/v2/anything"), "GET", None, &[]);
    check(s, &v, 404, "no such endpoint");
    let (s, v) = http(&server.url("/v1/models"), "DELETE", None, &[]);
    check(s, &v, 405, "DELETE");

    // 429: the only place is taken (a long stream) and the queue holds nothing.
    let long = long_stream(&server, model);
    let (s, v) = post(
        &server,
        "/v1/completions",
        &json!({"model": model, "prompt": "x",
        "max_tokens": 2}),
    );
    check(s, &v, 429, "retry later");
    let (s, _) = long.join().unwrap();
    assert_eq!(s, 200);
    // After all of it the server still answers.
    let (s, v) = post(
        &server,
        "/v1/completions",
        &json!({"model": TINY, "prompt": "x",
        "max_tokens": 2}),
    );
    assert_eq!(s, 200, "{v}");
    server.stop();
}

#[test]
fn the_memory_budget_unloads_the_least_recently_used_model() {
    let fx = Fixture::new();
    let dir = endless_model(fx.tmp.path(), "endless", 4);
    let model = dir.to_str().unwrap();
    let size = |d: &Path| -> u64 {
        fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    };
    let tiny = size(&common::snapshot_dir(&fx.cache, TINY));
    let q4 = size(&common::snapshot_dir(&fx.cache, TINY_Q4));
    let endless = size(&dir);
    assert!(endless > tiny && endless > q4);
    // Room for the endless model alone, or both tiny ones.
    let budget = (endless + 1).max(tiny + q4 + 1).to_string();
    let server = Server::start(&fx.cache, &["--memory-budget", &budget]);
    let ask = |m: &str| {
        post(
            &server,
            "/v1/completions",
            &json!({"model": m, "prompt": "x", "max_tokens": 2}),
        )
    };
    assert_eq!(ask(TINY).0, 200);
    assert_eq!(ask(TINY_Q4).0, 200);
    let ids = |s: &Server| -> Vec<String> {
        s.health()["models_loaded"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&server), [TINY_Q4, TINY], "most recently used first");
    // The endless model needs the room of both: both go, least recently used first.
    assert_eq!(ask(model).0, 200);
    assert_eq!(ids(&server), [model]);
    // While it serves a long stream it cannot be unloaded: 503, saying why.
    let long = long_stream(&server, model);
    let (s, v) = ask(TINY);
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "insufficient_memory");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("retry"),
        "{v}"
    );
    assert_eq!(long.join().unwrap().0, 200);
    server.stop();

    // A model larger than the whole budget: 507, and nothing was unloaded for it.
    let budget = (tiny + 1).to_string();
    let server = Server::start(&fx.cache, &["--memory-budget", &budget, "--model", TINY]);
    let (s, v) = post(
        &server,
        "/v1/completions",
        &json!({"model": model, "prompt": "x"}),
    );
    assert_eq!(s, 507, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("memory budget"),
        "{v}"
    );
    assert_eq!(ids(&server), [TINY]);
    server.stop();
}

#[test]
fn an_api_key_guards_every_endpoint_but_health() {
    let Some(py) = common::peer_python("an_api_key_guards_every_endpoint_but_health") else {
        return;
    };
    let fx = Fixture::new();
    let server = Server::start(&fx.cache, &["--api-key", "sesame"]);
    assert!(server.startup.contains("\"api_key_required\": true"));
    let (s, v) = http(&server.url("/v1/models"), "GET", None, &[]);
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let (s, _) = http(
        &server.url("/v1/models"),
        "GET",
        None,
        &[("authorization", "Bearer wrong")],
    );
    assert_eq!(s, 401);
    let (s, _) = http(
        &server.url("/v1/models"),
        "GET",
        None,
        &[("authorization", "Bearer sesame")],
    );
    assert_eq!(s, 200);
    assert_eq!(http(&server.url("/health"), "GET", None, &[]).0, 200);
    let r = client(
        &py,
        &server,
        Some("sesame"),
        json!([request(
            "complete",
            false,
            // Greedy: a sampled answer may end at the eos before 3 tokens (seen once in CI).
            json!({"model": TINY, "prompt": "x",
            "max_tokens": 3, "temperature": 0})
        )]),
    );
    assert_eq!(r[0]["usage"]["completion_tokens"], 3);
    let r = client(
        &py,
        &server,
        Some("wrong"),
        json!([{"op": "error", "request": {"kind": "complete",
            "args": {"model": TINY, "prompt": "x"}}}]),
    );
    assert_eq!(r[0]["status"], 401);
    assert_eq!(r[0]["class"], "AuthenticationError");
    server.stop();
}

#[test]
fn workspaces_and_mounted_paths_are_models() {
    if !common::mount::fuse_available("workspaces_and_mounted_paths_are_models") {
        return;
    }
    let fx = Fixture::new();
    let ws = fx.path("ws-tiny");
    let out = fx.repair(TINY, ws.to_str().unwrap());
    assert!(out.status.success(), "{}", common::stderr(&out));
    let m = common::mount::MountGuard::new(&fx.cache, &fx.path("mnt"), &fx.path("state"), &[]);
    let mounted = m.path(TINY);
    let server = Server::start(&fx.cache, &[]);
    let (run_text, _, _) = run_greedy(&fx, TINY, "hi", 8, false);
    for model in [ws.to_str().unwrap(), mounted.to_str().unwrap()] {
        let (s, v) = post(
            &server,
            "/v1/chat/completions",
            &chat(model, "hi", json!({"max_tokens": 8, "temperature": 0})),
        );
        assert_eq!(s, 200, "{model}: {v}");
        assert_eq!(v["model"], model);
        assert_eq!(
            v["choices"][0]["message"]["content"],
            run_text.as_str(),
            "{model}"
        );
    }
    // Once asked for, a workspace is listed by its path.
    let (_, list) = http(&server.url("/v1/models"), "GET", None, &[]);
    let ws_entry = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == ws.to_str().unwrap())
        .cloned()
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(ws_entry["owned_by"], "workspace");
    server.stop();
}

/// A reasoning model's thinking comes in `reasoning_content`, apart from `content`, whole and
/// streamed (gpt-oss's harmony analysis channel here); a completion's text is as generated.
#[test]
fn reasoning_comes_apart_from_the_content() {
    let Some(py) = common::peer_python("reasoning_comes_apart_from_the_content") else {
        return;
    };
    let fx = Fixture::new();
    let dir = fx.path("harmony");
    common::harmony_model(&dir);
    let model = dir.to_str().unwrap();
    let server = Server::start(&fx.cache, &[]);
    let greedy = json!({"temperature": 0, "max_tokens": 40});
    let results = client(
        &py,
        &server,
        None,
        json!([
            request("chat", false, chat(model, "Hi", greedy.clone())),
            request("chat", true, chat(model, "Hi", greedy.clone())),
        ]),
    );
    for r in &results {
        assert_eq!(r["text"], common::HARMONY_ANSWER, "{r}");
        assert_eq!(r["reasoning"], common::HARMONY_REASONING, "{r}");
        assert_eq!(r["finish_reason"], "stop", "{r}");
    }
    let mut args =
        json!({"model": model, "prompt": "<|start|>user<|message|>Hi<|end|><|start|>assistant"});
    merge(&mut args, greedy);
    let (s, v) = post(&server, "/v1/completions", &args);
    assert_eq!(s, 200, "{v}");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("<|channel|>analysis<|message|>Thinking")
            && text.ends_with("<|message|>Hello!"),
        "{text:?}"
    );
    server.stop();
}

#[test]
fn sigterm_ends_running_streams_and_exits_zero() {
    let Some(py) = common::peer_python("sigterm_ends_running_streams_and_exits_zero") else {
        return;
    };
    let fx = Fixture::new();
    let dir = endless_model(fx.tmp.path(), "endless", 8);
    let model = dir.to_str().unwrap().to_string();
    let mut server = Server::start(&fx.cache, &["--model", &model]);
    let long = |i: usize| {
        json!({"kind": if i == 0 { "chat" } else { "complete" }, "stream": true,
        "args": if i == 0 {
            chat(&model, "go", json!({"max_tokens": 1900}))
        } else {
            json!({"model": model, "prompt": "go", "max_tokens": 1900})
        }})
    };
    let plan = json!({"api_key": null, "ops": [{"op": "concurrent",
        "requests": [long(0), long(1)]}]});
    let streams = Command::new(&py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/serve_client.py"))
        .arg(server.base())
        .arg(plan.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("both streams run", Duration::from_secs(60), || {
        server.loaded(&model).is_some_and(|m| m["in_flight"] == 2)
    });
    let port = server.port;
    let status = server.stop_within(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    let out = streams.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for s in r[0].as_array().unwrap() {
        // Cut short: the stream says the server is shutting down (the client raises it).
        let said = s["exception"].as_str().unwrap_or_else(|| panic!("{s}"));
        assert!(said.contains("shutting down"), "{said}");
    }
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn a_server_that_cannot_start_says_why() {
    let fx = Fixture::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let cache = fx.cache.to_str().unwrap();
    let out = common::mlxk(&["--cache", cache, "--json", "serve", "--port", &port], &[]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["command"], "server");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot listen"),
        "{v}"
    );
    let out = common::mlxk(
        &[
            "--cache",
            cache,
            "--json",
            "serve",
            "--port",
            "0",
            "--model",
            "broken/bad-config",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no `model_type`"),
        "{v}"
    );
}

#[test]
fn a_model_added_to_the_cache_while_serving_is_listed() {
    let fx = Fixture::new();
    let server = Server::start(&fx.cache, &[]);
    let ids = || -> Vec<String> {
        let (s, v) = http(&server.url("/v1/models"), "GET", None, &[]);
        assert_eq!(s, 200, "{v}");
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(!ids().contains(&"late/Llama-tiny".to_string()));
    // A repo as a pull leaves it (its links are relative inside the repo directory).
    let status = Command::new("cp")
        .arg("-a")
        .arg(fx.cache.join("models--mlx-community--Llama-tiny-f16"))
        .arg(fx.cache.join("models--late--Llama-tiny"))
        .status()
        .unwrap();
    assert!(status.success());
    // The listing is reused for a few seconds, then made again.
    wait_until("the new model is listed", Duration::from_secs(30), || {
        ids().contains(&"late/Llama-tiny".to_string())
    });
    server.stop();
}
