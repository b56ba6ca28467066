//! `mlxk run`: text generation on the CPU from MLX-format models (float or affine-quantized
//! weights, kept packed and memory-mapped).
//!
//! The seam for other engines is [`Engine`]: load a model, prefill a prompt, decode a token,
//! rewind. `generate` (sampling, stop tokens, streaming text, timings) and the CLI only talk to
//! that trait, so an mlx-rs engine for Apple GPUs can be added as a macOS-only cargo feature
//! beside [`model::CpuEngine`] without touching them.

pub mod args;
pub mod attention;
mod block;
#[cfg(target_arch = "x86_64")]
mod gemm;
pub mod kernels;
pub mod model;
mod moe;
mod pool;
pub mod reasoning;
pub mod sampler;
pub mod scheduler;
pub mod session;
pub mod template;
#[cfg(target_arch = "x86_64")]
mod tiles;
pub mod tokenizer;
pub mod weights;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sampler::{Sampler, SamplerOptions};
use tokenizer::{StreamDecoder, TextTokenizer};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("{0}")]
    Input(String),
    #[error("the weights need {need} bytes but only {available} bytes of memory are available")]
    InsufficientMemory { need: u64, available: u64 },
}

/// A loaded model that turns token ids into next-token logits.
pub trait Engine {
    /// Runs `tokens` after the current position; returns the logits after the last one.
    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], EngineError>;
    /// Runs one token; returns the logits after it.
    fn decode(&mut self, token: u32) -> Result<&[f32], EngineError>;
    /// Forgets everything after `position` (the cache keeps the tokens before it) and returns
    /// the position the engine is at: `position`, or earlier when it cannot keep that much
    /// (a sliding-window cache that has overwritten what it would need) — the caller runs
    /// the tokens from there.
    fn rewind(&mut self, position: usize) -> usize;
    /// Tokens processed so far.
    fn position(&self) -> usize;
    /// Room for this many positions (so decoding allocates nothing).
    fn reserve(&mut self, positions: usize);
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampler: SamplerOptions,
    /// Generation stops after any of these (not printed).
    pub stop: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    /// Tokens of the whole prompt.
    pub prompt_tokens: usize,
    /// Of those, tokens the engine already held (a chat's shared prefix), not run again.
    pub cached_tokens: usize,
    pub prompt_time: Duration,
    pub decode_time: Duration,
    /// `stop` (an eos token) or `length` (max tokens).
    pub finish_reason: &'static str,
}

impl Generation {
    /// Prompt tokens run per second.
    pub fn prompt_tps(&self) -> f64 {
        (self.prompt_tokens - self.cached_tokens) as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }

    /// Decode speed: tokens after the first (which came from the prefill) per second.
    pub fn decode_tps(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Generates from `prompt` (token ids) after the engine's current position, calling `on_text`
/// with each piece of finished text.
pub fn generate(
    engine: &mut dyn Engine,
    tok: &TextTokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, EngineError> {
    let mut sampler = Sampler::new(opts.sampler.clone());
    let mut history: Vec<u32> = prompt.to_vec();
    engine.reserve(engine.position() + prompt.len() + opts.max_tokens + 1);
    let started = Instant::now();
    let logits = engine.prefill(prompt)?;
    let mut next = sampler.sample(logits, &history);
    let prompt_time = started.elapsed();
    let decode_start = Instant::now();
    let mut out = Vec::with_capacity(opts.max_tokens);
    let mut text = String::new();
    let mut stream = StreamDecoder::default();
    let mut finish_reason = "length";
    while out.len() < opts.max_tokens {
        if opts.stop.contains(&next) {
            finish_reason = "stop";
            break;
        }
        out.push(next);
        history.push(next);
        let piece = stream.push(tok, next);
        if !piece.is_empty() {
            on_text(&piece);
            text.push_str(&piece);
        }
        if out.len() == opts.max_tokens {
            break;
        }
        let logits = engine.decode(next)?;
        next = sampler.sample(logits, &history);
    }
    let rest = stream.finish(tok);
    if !rest.is_empty() {
        on_text(&rest);
        text.push_str(&rest);
    }
    Ok(Generation {
        tokens: out,
        text,
        prompt_tokens: prompt.len(),
        cached_tokens: 0,
        prompt_time,
        decode_time: decode_start.elapsed(),
        finish_reason,
    })
}
