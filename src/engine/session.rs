//! A chat session over a loaded model: the model, its tokenizer and template, the stop ids,
//! and the tokens the engine already holds, so that a new turn runs only what it does not
//! share with the conversation so far.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::args::ModelArgs;
use super::model::{CpuEngine, CpuModel};
use super::reasoning::Format;
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

/// A model ready to generate: the weights (shared by every sequence on it), the tokenizer,
/// the chat template and the ids that end a generation. `mlxk run` holds one in its
/// [`ChatSession`]; the server shares one between all the requests for that model.
pub struct LoadedModel {
    pub model: Arc<CpuModel>,
    pub tok: TextTokenizer,
    pub template: Option<ChatTemplate>,
    /// The model's eos ids (config.json, generation_config.json, tokenizer_config.json).
    pub eos: Vec<u32>,
    /// Bytes of the weight files mapped.
    pub weight_file_bytes: u64,
    /// How long loading took.
    pub load_time: Duration,
}

impl LoadedModel {
    /// Loads `model`: refuses what cannot run (a file it reads that is a link leaving the
    /// cache or not a regular file, an unsupported config, weights larger than the memory
    /// available) before mapping anything.
    pub fn load(model: &ResolvedModel) -> Result<LoadedModel, EngineError> {
        let (dir, args) = LoadedModel::check(model)?;
        let need = weight_files_size(dir);
        if let Some(available) = available_memory().filter(|&a| need > a) {
            return Err(EngineError::InsufficientMemory { need, available });
        }
        let started = Instant::now();
        let weights = CpuModel::load_with(dir, args)?;
        let tok = TextTokenizer::load(dir)?;
        let template = ChatTemplate::load(dir, &tok.config)?;
        let mut eos = Vec::new();
        for id in weights
            .args()
            .eos
            .iter()
            .copied()
            .chain(tok.eos_token.as_deref().and_then(|t| tok.token_id(t)))
        {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        Ok(LoadedModel {
            model: Arc::new(weights),
            tok,
            template,
            eos,
            weight_file_bytes: need,
            load_time: started.elapsed(),
        })
    }

    /// What [`LoadedModel::load`] refuses up front, without mapping a byte: the files it
    /// would read and the config. Returns the directory and the checked config.
    pub fn check(model: &ResolvedModel) -> Result<(&Path, ModelArgs), EngineError> {
        check_files(model)?;
        let dir = model.dir();
        Ok((dir, ModelArgs::load(dir)?))
    }

    /// How the answer to a prompt marks its reasoning (see [`super::reasoning::format_of`]).
    pub fn reasoning_format(&self, prompt: &str) -> Option<Format> {
        super::reasoning::format_of(self.tok.harmony, self.tok.token_id("</think>"), prompt)
    }

    /// The prompt text of `messages`: the chat template's rendering (unless `use_template` is
    /// false or the model has none), else the contents joined by blank lines.
    pub fn prompt_text(
        &self,
        messages: &[Message],
        use_template: bool,
    ) -> Result<String, EngineError> {
        match (&self.template, use_template) {
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
}

/// A model loaded for a conversation: one sequence on it, and the tokens that sequence holds.
pub struct ChatSession {
    loaded: LoadedModel,
    engine: CpuEngine,
    opts: GenerateOptions,
    use_template: bool,
    /// Tokens the engine holds (prompts and answers so far), for reusing the KV cache.
    context: Vec<u32>,
    /// How long loading took.
    pub load_time: Duration,
}

impl ChatSession {
    /// Loads `model` (see [`LoadedModel::load`]).
    pub fn load(
        model: &ResolvedModel,
        mut opts: SessionOptions,
    ) -> Result<ChatSession, EngineError> {
        let loaded = LoadedModel::load(model)?;
        for &id in &loaded.eos {
            if !opts.generate.stop.contains(&id) {
                opts.generate.stop.push(id);
            }
        }
        Ok(ChatSession {
            engine: CpuEngine::on(loaded.model.clone()),
            load_time: loaded.load_time,
            loaded,
            opts: opts.generate,
            use_template: opts.use_template,
            context: Vec::new(),
        })
    }

    pub fn engine(&self) -> &CpuEngine {
        &self.engine
    }

    /// The prompt text of `messages` as this session renders it.
    pub fn prompt_text(&self, messages: &[Message]) -> Result<String, EngineError> {
        self.loaded.prompt_text(messages, self.use_template)
    }

    /// How the answer to a prompt ([`ChatSession::prompt_text`]) marks its reasoning, if it
    /// may hold any.
    pub fn reasoning_format(&self, prompt: &str) -> Option<Format> {
        self.loaded.reasoning_format(prompt)
    }

    /// Generates the answer to a prompt ([`ChatSession::prompt_text`] of the conversation),
    /// reusing the cached prefix it shares with what the engine already holds.
    pub fn answer(
        &mut self,
        prompt: &str,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, EngineError> {
        let ids = self.loaded.tok.encode_prompt(prompt)?;
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
        let common = self.engine.rewind(common);
        let mut g = generate(
            &mut self.engine,
            &self.loaded.tok,
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
