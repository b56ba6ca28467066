//! `mlxk run`: resolve the model, check it can run, load it, build the prompt (chat template,
//! system prompt, stdin), stream the answer; or an interactive chat that keeps its history.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use serde_json::json;

use super::commands::open_cache;
use super::{CliError, MlxkArgs, Outcome, RunArgs};
use crate::engine::model::CpuEngine;
use crate::engine::sampler::SamplerOptions;
use crate::engine::template::{ChatTemplate, Message};
use crate::engine::tokenizer::TextTokenizer;
use crate::engine::{generate, Engine, EngineError, GenerateOptions, Generation};
use crate::store::spec;

impl From<EngineError> for CliError {
    fn from(e: EngineError) -> CliError {
        let kind = match e {
            EngineError::Model { .. } => "ModelNotSupported",
            EngineError::Template(_) => "TemplateError",
            EngineError::Input(_) => "InvalidInput",
        };
        CliError::new(kind, e.to_string())
    }
}

/// What a prompt turns into: the model, its tokenizer, its template, the options.
struct Session {
    engine: CpuEngine,
    tok: TextTokenizer,
    template: Option<ChatTemplate>,
    opts: GenerateOptions,
    use_template: bool,
    /// Tokens the engine holds (prompt and answers so far), for reusing the KV cache.
    context: Vec<u32>,
}

impl Session {
    fn prompt_text(&self, messages: &[Message]) -> Result<String, CliError> {
        match (&self.template, self.use_template) {
            (Some(t), true) => Ok(t.render(
                messages,
                self.tok.bos_token.as_deref(),
                self.tok.eos_token.as_deref(),
            )?),
            _ => Ok(messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n\n")),
        }
    }

    /// Generates the answer to `messages`, reusing the cached prefix the new prompt shares
    /// with what the engine already holds.
    fn answer(
        &mut self,
        messages: &[Message],
        on_text: &mut dyn FnMut(&str),
    ) -> Result<(String, Generation), CliError> {
        let text = self.prompt_text(messages)?;
        let ids = self.tok.encode_prompt(&text)?;
        if ids.is_empty() {
            return Err(CliError::new("InvalidInput", "the prompt is empty"));
        }
        // Keep the common prefix (at least one token must be run to get logits).
        let common = self
            .context
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len() - 1);
        self.engine.rewind(common);
        let mut g = generate(
            &mut self.engine,
            &self.tok,
            &ids[common..],
            &self.opts,
            on_text,
        )?;
        g.prompt_tokens = ids.len();
        g.cached_tokens = common;
        self.context = ids;
        self.context.extend(&g.tokens);
        Ok((text, g))
    }
}

/// MemAvailable of /proc/meminfo, in bytes (Linux).
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn weights_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("model") && n.ends_with(".safetensors")
                })
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

pub fn run(args: &MlxkArgs, a: &RunArgs) -> Result<Outcome, CliError> {
    let cache = open_cache(args)?;
    let model = match spec::resolve_mounted(Path::new(&a.model)) {
        Some(m) => m,
        None => spec::resolve(cache.as_ref(), &a.model)?,
    };
    let dir = model.dir().to_path_buf();
    // Refuse what cannot run before mapping anything.
    let model_args = crate::engine::args::ModelArgs::load(&dir)?;
    let need = weights_size(&dir);
    if let Some(avail) = available_memory() {
        if need > avail {
            return Err(CliError::new(
                "InsufficientMemory",
                format!(
                    "{}: the weights need {} but only {} of memory is available",
                    model.name,
                    super::output::human_size(need),
                    super::output::human_size(avail)
                ),
            ));
        }
    }
    let started = std::time::Instant::now();
    let engine = CpuEngine::load_with(&dir, model_args)?;
    let tok = TextTokenizer::load(&dir)?;
    let template = ChatTemplate::load(&dir, &tok.config)?;
    let mut stop = engine.args().eos.clone();
    if let Some(id) = tok.eos_token.as_deref().and_then(|t| tok.token_id(t)) {
        if !stop.contains(&id) {
            stop.push(id);
        }
    }
    if a.verbose {
        eprintln!(
            "[mlxk run] {} ({}, {} layers, {} weights mapped, {} bytes read per token) loaded in {:.2} s",
            model.name,
            engine.args().model_type,
            engine.args().layers,
            super::output::human_size(engine.weight_bytes),
            engine.weight_bytes_per_token,
            started.elapsed().as_secs_f64()
        );
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let mut session = Session {
        engine,
        tok,
        use_template: !a.no_chat_template,
        template,
        opts: GenerateOptions {
            max_tokens: a.max_tokens,
            sampler: SamplerOptions {
                temperature: a.temperature,
                top_p: a.top_p,
                repetition_penalty: a.repetition_penalty,
                seed,
                ..SamplerOptions::default()
            },
            stop,
        },
        context: Vec::new(),
    };
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(Message::new("system", s));
    }
    let prompt = match a.prompt.as_deref() {
        Some("-") => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| {
                CliError::new(
                    "InvalidInput",
                    format!("cannot read the prompt from stdin: {e}"),
                )
            })?;
            Some(s.trim_end_matches('\n').to_string())
        }
        Some(p) => Some(p.to_string()),
        None => None,
    };
    let Some(prompt) = prompt else {
        return chat(&mut session, messages, args.json, a.verbose);
    };
    messages.push(Message::new("user", &prompt));
    let stream = !args.json && !a.no_stream;
    let mut stdout = std::io::stdout();
    let mut on_text = |piece: &str| {
        if stream {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
    };
    let (_, g) = session.answer(&messages, &mut on_text)?;
    if stream {
        // End the streamed line before any timing report on stderr.
        println!();
    }
    if a.verbose {
        report_timing(&g);
    }
    let human = if stream {
        String::new()
    } else {
        format!("{}\n", g.text)
    };
    Ok(Outcome {
        data: json!({
            "model": model.name,
            "prompt": prompt,
            "response": g.text,
            "finish_reason": g.finish_reason,
            "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.tokens.len()},
            "timing": {
                "prompt_tps": (g.prompt_tps() * 10.0).round() / 10.0,
                "decode_tps": (g.decode_tps() * 10.0).round() / 10.0,
            },
        }),
        human,
        ok: true,
        failure: None,
    })
}

fn report_timing(g: &Generation) {
    eprintln!(
        "[mlxk run] prompt: {} tokens ({} cached), {:.1} tok/s; generated: {} tokens, {:.1} tok/s ({})",
        g.prompt_tokens,
        g.cached_tokens,
        g.prompt_tps(),
        g.tokens.len(),
        g.decode_tps(),
        g.finish_reason
    );
}

/// The interactive chat: one line per user turn; `/clear` forgets the history, `/exit` (or
/// end of input) leaves.
fn chat(
    session: &mut Session,
    system: Vec<Message>,
    json: bool,
    verbose: bool,
) -> Result<Outcome, CliError> {
    let tty = std::io::stdin().is_terminal();
    if tty && !json {
        eprintln!(
            "Chat with the model: /clear forgets the conversation, /exit (or Ctrl-D) leaves."
        );
    }
    let mut messages = system.clone();
    let mut turns = Vec::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if tty && !json {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.map_err(|e| CliError::new("InvalidInput", format!("stdin: {e}")))?;
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/clear" => {
                messages = system.clone();
                if tty && !json {
                    eprintln!("(conversation cleared)");
                }
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", line));
        let mut stdout = std::io::stdout();
        let mut on_text = |piece: &str| {
            if !json {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }
        };
        let (_, g) = session.answer(&messages, &mut on_text)?;
        if !json {
            println!();
        }
        if verbose {
            report_timing(&g);
        }
        messages.push(Message::new("assistant", &g.text));
        turns.push(json!({"prompt": line, "response": g.text,
            "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.tokens.len()}}));
    }
    Ok(Outcome {
        data: json!({"turns": turns}),
        human: String::new(),
        ok: true,
        failure: None,
    })
}
