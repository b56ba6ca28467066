//! The model's tokenizer (`tokenizer.json` through the `tokenizers` crate), its special tokens
//! from tokenizer_config.json, and a streaming decoder that never emits half a character.

use crate::store::files::read_small;
use std::path::Path;

use serde_json::Value;

use super::EngineError;

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// tokenizer_config.json, for the chat template.
    pub config: Value,
    /// A harmony vocabulary (gpt-oss): its output is decoded with the special tokens that
    /// frame its messages kept, so that reasoning can be told from the answer.
    pub harmony: bool,
}

/// `"<s>"` or `{"content": "<s>", ...}`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The largest tokenizer.json loaded (the biggest real ones are ~30 MB).
const TOKENIZER_MAX: u64 = 256 << 20;
/// The largest tokenizer_config.json read.
const CONFIG_MAX: u64 = 16 << 20;

impl TextTokenizer {
    pub fn load(dir: &Path) -> Result<TextTokenizer, EngineError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(EngineError::Model {
                path,
                reason: "missing: `mlxk run` reads the tokenizer from tokenizer.json".into(),
            });
        }
        // Read as a regular file of bounded size first: a FIFO or a device must not hang or
        // flood the load.
        let bytes = read_small(&path, TOKENIZER_MAX, &mut 0).map_err(|e| EngineError::Model {
            path: path.clone(),
            reason: format!("cannot read: {e}"),
        })?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| EngineError::Model {
            path: path.clone(),
            reason: format!("cannot load the tokenizer: {e}"),
        })?;
        let config: Value = read_small(&dir.join("tokenizer_config.json"), CONFIG_MAX, &mut 0)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let harmony = super::reasoning::is_harmony_vocabulary(&|t| inner.token_to_id(t));
        Ok(TextTokenizer {
            harmony,
            bos_token: token_text(config.get("bos_token")),
            eos_token: token_text(config.get("eos_token")),
            inner,
            config,
        })
    }

    /// Token ids of `text`; `special` adds the tokenizer's own special tokens (BOS).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, EngineError> {
        self.inner
            .encode(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| EngineError::Input(format!("cannot tokenize the prompt: {e}")))
    }

    /// The text of generated `ids`: special tokens left out, except in a harmony vocabulary,
    /// where they are the message structure.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, !self.harmony).unwrap_or_default()
    }

    /// The id of a token string, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// How mlx-lm encodes a prompt string: special tokens unless it already starts with BOS.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>, EngineError> {
        let has_bos = self
            .bos_token
            .as_deref()
            .is_some_and(|b| !b.is_empty() && prompt.starts_with(b));
        self.encode(prompt, !has_bos)
    }
}

/// Turns generated tokens into text as they come, holding back an incomplete UTF-8 sequence
/// (the tokenizer decodes it as U+FFFD until its last byte arrives).
#[derive(Default)]
pub struct StreamDecoder {
    tokens: Vec<u32>,
    emitted: usize,
}

/// The most U+FFFD an incomplete UTF-8 sequence at the end of decoded text shows as: one for
/// a byte-level decoder (one per maximal invalid run), up to three for SentencePiece's byte
/// fallback (one per byte of at most three bytes of a four-byte character). Replacement
/// characters before those can no longer change: they are invalid bytes, sent as they are.
const PENDING_REPLACEMENTS: usize = 3;

impl StreamDecoder {
    /// The text that `token` completes (possibly empty).
    pub fn push(&mut self, tok: &TextTokenizer, token: u32) -> String {
        self.tokens.push(token);
        let text = tok.decode(&self.tokens);
        let held = text
            .chars()
            .rev()
            .take(PENDING_REPLACEMENTS)
            .take_while(|&c| c == '\u{FFFD}')
            .count();
        let upto = text.len() - held * '\u{FFFD}'.len_utf8();
        if upto <= self.emitted || !text.is_char_boundary(self.emitted) {
            return String::new();
        }
        let new = text[self.emitted..upto].to_string();
        self.emitted = upto;
        // A finished line cannot change any more: start over to keep decoding O(line).
        if held == 0 && new.ends_with('\n') {
            self.tokens.clear();
            self.emitted = 0;
        }
        new
    }

    /// Whatever is still held back (at the end of generation).
    pub fn finish(&mut self, tok: &TextTokenizer) -> String {
        let text = tok.decode(&self.tokens);
        let rest = if text.len() > self.emitted && text.is_char_boundary(self.emitted) {
            text[self.emitted..].to_string()
        } else {
            String::new()
        };
        self.tokens.clear();
        self.emitted = 0;
        rest
    }
}
