//! A chat session over a loaded model: the model, its tokenizer and template, the stop ids,
//! and the tokens the engine already holds, so that a new turn runs only what it does not
//! share with the conversation so far.

use std::time::{Duration, Instant};

use super::args::ModelArgs;
use super::model::CpuEngine;
use super::template::{ChatTemplate, Message};
use super::tokenizer::TextTokenizer;
use super::weights::weight_files_size;
use super::{generate, Engine, EngineError, GenerateOptions, Generation};
use crate::store::files::{is_mlx_lm_weights, FileState};
use crate::store::spec::ResolvedModel;

/// How a session samples and renders prompts.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Sampling and length; `stop` is extended with the model's own eos ids.
    pub generate: GenerateOptions,
    /// Render prompts with the model's chat template (when it has one).
    pub use_template: bool,
}

/// A model loaded for generation.
pub struct ChatSession {
    engine: CpuEngine,
    tok: TextTokenizer,
    template: Option<ChatTemplate>,
    opts: GenerateOptions,
    use_template: bool,
    /// Tokens the engine holds (prompts and answers so far), for reusing the KV cache.
    context: Vec<u32>,
    /// How long loading took.
    pub load_time: Duration,
}

impl ChatSession {
    /// Loads `model`: refuses what cannot run (a file it reads that is a link leaving the
    /// cache or not a regular file, an unsupported config, weights larger than the memory
    /// available) before mapping anything.
    pub fn load(
        model: &ResolvedModel,
        mut opts: SessionOptions,
    ) -> Result<ChatSession, EngineError> {
        check_files(model)?;
        let dir = model.dir();
        let args = ModelArgs::load(dir)?;
        let need = weight_files_size(dir);
        if let Some(available) = available_memory().filter(|&a| need > a) {
            return Err(EngineError::InsufficientMemory { need, available });
        }
        let started = Instant::now();
        let engine = CpuEngine::load_with(dir, args)?;
        let tok = TextTokenizer::load(dir)?;
        let template = ChatTemplate::load(dir, &tok.config)?;
        let stop = &mut opts.generate.stop;
        for id in engine
            .args()
            .eos
            .iter()
            .copied()
            .chain(tok.eos_token.as_deref().and_then(|t| tok.token_id(t)))
        {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
        Ok(ChatSession {
            engine,
            tok,
            template,
            opts: opts.generate,
            use_template: opts.use_template,
            context: Vec::new(),
            load_time: started.elapsed(),
        })
    }

    pub fn engine(&self) -> &CpuEngine {
        &self.engine
    }

    /// The prompt text of `messages`: the chat template's rendering, or the contents joined by
    /// blank lines without one.
    pub fn prompt_text(&self, messages: &[Message]) -> Result<String, EngineError> {
        match (&self.template, self.use_template) {
            (Some(t), true) => t.render(
                messages,
                self.tok.bos_token.as_deref(),
                self.tok.eos_token.as_deref(),
            ),
            _ => Ok(messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n\n")),
        }
    }

    /// Generates the answer to `messages`, reusing the cached prefix the new prompt shares
    /// with what the engine already holds.
    pub fn answer(
        &mut self,
        messages: &[Message],
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, EngineError> {
        let text = self.prompt_text(messages)?;
        let ids = self.tok.encode_prompt(&text)?;
        if ids.is_empty() {
            return Err(EngineError::Input("the prompt is empty".into()));
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
        Ok(g)
    }
}

/// The files `mlxk run` reads: the weights mlx-lm loads, the configs, the tokenizer files and
/// the chat template.
fn read_by_run(rel: &str) -> bool {
    is_mlx_lm_weights(rel)
        || matches!(
            rel,
            "config.json"
                | "generation_config.json"
                | "tokenizer.json"
                | "tokenizer_config.json"
                | "chat_template.jinja"
        )
}

/// The store's containment and file-type rules, as health and convert apply them: a cache
/// model's link that leaves the cache is never followed, a FIFO or device is never opened.
fn check_files(model: &ResolvedModel) -> Result<(), EngineError> {
    for f in model.files.iter().filter(|f| read_by_run(&f.rel_path)) {
        let reason = match &f.state {
            FileState::EscapesCache { target } => format!(
                "a link that leaves the cache ({}); not followed",
                target.display()
            ),
            FileState::NotRegular { what } => format!("is {what}, not a regular file"),
            _ => continue,
        };
        return Err(EngineError::Model {
            path: f.path.clone(),
            reason,
        });
    }
    Ok(())
}

/// MemAvailable of /proc/meminfo, in bytes (Linux; `None` elsewhere or when unreadable).
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
