//! `mlxk run`: the prompt (argument, stdin, or an interactive chat) in, the answer streamed
//! out. The model, its template, stops and KV-cache reuse live in `engine::session`.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::json;

use super::output::human_size;
use super::{open_cache, CliError, MlxkArgs, Outcome, RunArgs};
use crate::engine::reasoning::{self, Format, Part, ReasoningSplitter};
use crate::engine::sampler::SamplerOptions;
use crate::engine::session::{ChatSession, SessionOptions};
use crate::engine::template::Message;
use crate::engine::{EngineError, GenerateOptions, Generation};
use crate::store::spec;

impl From<EngineError> for CliError {
    fn from(e: EngineError) -> CliError {
        let kind = match e {
            EngineError::Model { .. } => "ModelNotSupported",
            EngineError::Template(_) => "TemplateError",
            EngineError::Input(_) => "InvalidInput",
            EngineError::InsufficientMemory { .. } => "InsufficientMemory",
        };
        CliError::new(kind, e.to_string())
    }
}

pub(super) fn run(args: &MlxkArgs, a: &RunArgs) -> Result<Outcome, CliError> {
    let cache = open_cache(args)?;
    let model = spec::resolve_any(cache.as_ref(), &a.model)?;
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let opts = SessionOptions {
        generate: GenerateOptions {
            max_tokens: a.max_tokens,
            sampler: SamplerOptions {
                temperature: a.temperature,
                top_p: a.top_p,
                repetition_penalty: a.repetition_penalty,
                seed,
                ..SamplerOptions::default()
            },
            stop: Vec::new(),
        },
        use_template: !a.no_chat_template,
    };
    let mut session = ChatSession::load(&model, opts).map_err(|e| match e {
        EngineError::InsufficientMemory { need, available } => CliError::new(
            "InsufficientMemory",
            format!(
                "{}: the weights need {} but only {} of memory is available",
                model.name,
                human_size(need),
                human_size(available)
            ),
        ),
        other => other.into(),
    })?;
    if a.verbose {
        let engine = session.engine();
        eprintln!(
            "[mlxk run] {} ({}, {} layers, {} weights mapped, {} bytes read per token) loaded in {:.2} s",
            model.name,
            engine.args().model_type,
            engine.args().layers,
            human_size(engine.model().weight_bytes),
            engine.model().weight_bytes_per_token,
            session.load_time.as_secs_f64()
        );
    }
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
            s.trim_end_matches('\n').to_string()
        }
        Some(p) => p.to_string(),
        None => {
            return chat(
                &mut session,
                messages,
                args.json,
                a.verbose,
                !a.no_reasoning,
            )
        }
    };
    messages.push(Message::new("user", &prompt));
    let stream = !args.json && !a.no_stream;
    let text = session.prompt_text(&messages)?;
    let format = session.reasoning_format(&text);
    let mut printer = AnswerPrinter::new(format, !a.no_reasoning);
    let mut stdout = std::io::stdout();
    let mut on_text = |piece: &str| {
        if stream {
            printer.piece(piece, &mut stdout);
        }
    };
    let g = session.answer(&text, &mut on_text)?;
    if stream {
        printer.finish(&mut stdout);
        // End the streamed line before any timing report on stderr.
        println!();
    }
    if a.verbose {
        report_timing(&g);
    }
    let human = if stream {
        String::new()
    } else {
        let mut printer = AnswerPrinter::new(format, !a.no_reasoning);
        let mut text = Vec::new();
        printer.piece(&g.text, &mut text);
        printer.finish(&mut text);
        format!("{}\n", String::from_utf8_lossy(&text))
    };
    let (reasoning, response) = match format {
        Some(format) => reasoning::split(&g.text, format),
        None => (None, g.text.clone()),
    };
    Ok(Outcome::success(
        json!({
            "model": model.name,
            "prompt": prompt,
            "response": response,
            "reasoning": reasoning,
            "finish_reason": g.finish_reason,
            "tokens_generated": g.tokens.len(),
            "generation_time_s": ((g.prompt_time + g.decode_time).as_secs_f64() * 1000.0).round() / 1000.0,
            "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.tokens.len()},
            "timing": {
                "prompt_tps": (g.prompt_tps() * 10.0).round() / 10.0,
                "decode_tps": (g.decode_tps() * 10.0).round() / 10.0,
            },
        }),
        human,
    ))
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
    session: &mut ChatSession,
    system: Vec<Message>,
    json: bool,
    verbose: bool,
    show_reasoning: bool,
) -> Result<Outcome, CliError> {
    let prompts = std::io::stdin().is_terminal() && !json;
    if prompts {
        eprintln!(
            "Chat with the model: /clear forgets the conversation, /exit (or Ctrl-D) leaves."
        );
    }
    let mut messages = system.clone();
    let mut turns = Vec::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if prompts {
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
                if prompts {
                    eprintln!("(conversation cleared)");
                }
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", line));
        let text = session.prompt_text(&messages)?;
        let format = session.reasoning_format(&text);
        let mut printer = AnswerPrinter::new(format, show_reasoning);
        let mut stdout = std::io::stdout();
        let mut on_text = |piece: &str| {
            if !json {
                printer.piece(piece, &mut stdout);
            }
        };
        let g = session.answer(&text, &mut on_text)?;
        if !json {
            printer.finish(&mut stdout);
            println!();
        }
        let (reasoning, response) = match format {
            Some(format) => reasoning::split(&g.text, format),
            None => (None, g.text.clone()),
        };
        if verbose {
            report_timing(&g);
        }
        // The answer alone: a template drops earlier turns' reasoning anyway (Qwen3 cuts at
        // `</think>`), and harmony's takes the content as the final channel's message.
        messages.push(Message::new("assistant", &response));
        turns.push(
            json!({"prompt": line, "response": response, "reasoning": reasoning,
            "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.tokens.len()}}),
        );
    }
    Ok(Outcome::success(json!({"turns": turns}), String::new()))
}

/// Writes an answer as it streams: a reasoning model's thinking dim on a terminal, between its
/// `<think>` markers elsewhere (or left out), then the answer.
struct AnswerPrinter {
    splitter: Option<ReasoningSplitter>,
    show_reasoning: bool,
    dim: bool,
    /// The reasoning shown so far is open (its end marker not written yet).
    open: bool,
}

impl AnswerPrinter {
    /// `thinking`: [`ChatSession::reasoning_format`] (`None`: the model writes no reasoning).
    fn new(thinking: Option<Format>, show_reasoning: bool) -> AnswerPrinter {
        AnswerPrinter {
            splitter: thinking.map(ReasoningSplitter::new),
            show_reasoning,
            dim: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            open: false,
        }
    }

    fn piece(&mut self, piece: &str, w: &mut dyn Write) {
        let Some(splitter) = self.splitter.as_mut() else {
            let _ = w.write_all(piece.as_bytes());
            let _ = w.flush();
            return;
        };
        let (show, dim, open) = (self.show_reasoning, self.dim, &mut self.open);
        splitter.push(piece, &mut |part, text| {
            write_part(w, part, text, show, dim, open)
        });
        let _ = w.flush();
    }

    fn finish(&mut self, w: &mut dyn Write) {
        let (show, dim, open) = (self.show_reasoning, self.dim, &mut self.open);
        if let Some(splitter) = self.splitter.as_mut() {
            splitter.finish(&mut |part, text| write_part(w, part, text, show, dim, open));
        }
        if *open {
            let _ = w.write_all(if dim { b"\x1b[0m" } else { b"</think>" });
            *open = false;
        }
        let _ = w.flush();
    }
}

fn write_part(w: &mut dyn Write, part: Part, text: &str, show: bool, dim: bool, open: &mut bool) {
    match part {
        Part::Reasoning if !show => {}
        Part::Reasoning => {
            if !*open {
                let _ = w.write_all(if dim { b"\x1b[2m" } else { b"<think>" });
                *open = true;
            }
            let _ = w.write_all(text.as_bytes());
        }
        Part::Answer => {
            if *open {
                let _ = w.write_all(if dim { b"\x1b[0m\n" } else { b"</think>\n\n" });
                *open = false;
            }
            let _ = w.write_all(text.as_bytes());
        }
    }
}
