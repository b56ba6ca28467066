//! The OpenAI request bodies the server takes, checked field by field so that a bad request
//! hears which field is wrong and why, and the answers it gives (whole, or as stream chunks).

use serde_json::{json, Map, Value};

use super::error::ApiError;
use crate::engine::reasoning::{self, Format, Part};
use crate::engine::sampler::SamplerOptions;
use crate::engine::scheduler::{Finish, FinishReason};
use crate::engine::template::Message;

/// Most stop strings a request may give.
pub const MAX_STOPS: usize = 16;
/// The largest `max_tokens` taken (far above any context the engine runs).
pub const MAX_TOKENS_LIMIT: u64 = 1 << 20;

/// Chat messages (rendered with the model's template) or a raw prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Chat(Vec<Message>),
    Text(String),
}

/// A checked `/v1/chat/completions` or `/v1/completions` request.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    pub max_tokens: Option<usize>,
    pub sampler: SamplerOptions,
    /// Whether the request gave a seed (else the server draws one).
    pub seeded: bool,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    pub fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    pub fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
        }
    }
}

/// Parses and checks a request body.
pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    };
    let f = Fields(&obj);
    let model = f
        .string("model")?
        .ok_or_else(|| ApiError::field("model", "`model` is required"))?;
    if model.is_empty() {
        return Err(ApiError::field("model", "`model` is empty"));
    }
    let prompt = match endpoint {
        Endpoint::Chat => Prompt::Chat(messages(&obj)?),
        Endpoint::Completions => Prompt::Text(text_prompt(&obj)?),
    };
    if let Some(n) = f.integer("n", 1, u64::MAX)? {
        if n != 1 {
            return Err(ApiError::field(
                "n",
                format!("n = {n}: this server generates one choice per request (n = 1)"),
            ));
        }
    }
    if let Some(b) = f.integer("best_of", 1, u64::MAX)? {
        if b != 1 {
            return Err(ApiError::field(
                "best_of",
                "best_of must be 1 on this server",
            ));
        }
    }
    for key in ["logprobs", "echo"] {
        if f.boolean(key)? == Some(true) {
            return Err(ApiError::field(key, format!("`{key}` is not supported")));
        }
    }
    if obj.get("logprobs").is_some_and(Value::is_number) {
        return Err(ApiError::field("logprobs", "`logprobs` is not supported"));
    }
    if obj
        .get("tools")
        .is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty()))
    {
        return Err(ApiError::field(
            "tools",
            "tool calling is not supported by this server",
        ));
    }
    if let Some(rf) = obj.get("response_format").filter(|v| !v.is_null()) {
        if rf.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::field(
                "response_format",
                "only {\"type\": \"text\"} is supported as response_format",
            ));
        }
    }
    let max_tokens = match f.integer("max_completion_tokens", 1, MAX_TOKENS_LIMIT)? {
        Some(n) => Some(n),
        None => f.integer("max_tokens", 1, MAX_TOKENS_LIMIT)?,
    };
    let defaults = SamplerOptions::openai();
    let seed = f.seed()?;
    let sampler = SamplerOptions {
        temperature: f
            .number("temperature", 0.0, 2.0)?
            .unwrap_or(defaults.temperature),
        top_p: match f.number("top_p", 0.0, 1.0)? {
            Some(p) if p <= 0.0 => {
                return Err(ApiError::field("top_p", "top_p must be greater than 0"));
            }
            Some(p) => p,
            None => defaults.top_p,
        },
        frequency_penalty: f.number("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        presence_penalty: f.number("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        repetition_penalty: match f.number("repetition_penalty", 0.0, 10.0)? {
            Some(p) if p <= 0.0 => {
                return Err(ApiError::field(
                    "repetition_penalty",
                    "repetition_penalty must be greater than 0 (1 is off)",
                ));
            }
            Some(p) => p,
            None => 1.0,
        },
        seed: seed.unwrap_or(0),
        ..defaults
    };
    let stream = f.boolean("stream")?.unwrap_or(false);
    let include_usage = match obj.get("stream_options").filter(|v| !v.is_null()) {
        None => false,
        Some(Value::Object(o)) => Fields(o).boolean("include_usage")?.unwrap_or(false),
        Some(_) => {
            return Err(ApiError::field(
                "stream_options",
                "stream_options must be an object",
            ))
        }
    };
    Ok(CompletionRequest {
        model,
        prompt,
        max_tokens: max_tokens.map(|n| n as usize),
        sampler,
        seeded: seed.is_some(),
        stop: stops(&obj)?,
        stream,
        include_usage,
    })
}

/// Typed access to the fields of a request, each refusal naming its field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<String>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(ApiError::field(
                key,
                format!("`{key}` must be a string, not {}", type_name(other)),
            )),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(ApiError::field(
                key,
                format!("`{key}` must be true or false, not {}", type_name(other)),
            )),
        }
    }

    fn number(&self, key: &str, min: f64, max: f64) -> Result<Option<f32>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if !(min..=max).contains(&x) {
                    return Err(ApiError::field(
                        key,
                        format!("`{key}` is {n}; it must be between {min} and {max}"),
                    ));
                }
                Ok(Some(x as f32))
            }
            Some(other) => Err(ApiError::field(
                key,
                format!("`{key}` must be a number, not {}", type_name(other)),
            )),
        }
    }

    fn integer(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
                _ => Err(ApiError::field(
                    key,
                    format!("`{key}` is {n}; it must be a whole number from {min} to {max}"),
                )),
            },
            Some(other) => Err(ApiError::field(
                key,
                format!("`{key}` must be a whole number, not {}", type_name(other)),
            )),
        }
    }

    /// Any 64-bit integer (OpenAI's seeds may be negative).
    fn seed(&self) -> Result<Option<u64>, ApiError> {
        match self.get("seed") {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| n.as_i64().map(|i| i as u64))
                .map(Some)
                .ok_or_else(|| {
                    ApiError::field("seed", format!("`seed` is {n}; it must be an integer"))
                }),
            Some(other) => Err(ApiError::field(
                "seed",
                format!("`seed` must be an integer, not {}", type_name(other)),
            )),
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn messages(obj: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
    let list = match obj.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::field("messages", "`messages` is required"));
        }
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::field("messages", "`messages` is empty"));
        }
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(ApiError::field(
                "messages",
                format!("`messages` must be an array, not {}", type_name(other)),
            ))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("messages[{i}]");
            let Value::Object(m) = m else {
                return Err(ApiError::field(
                    &param,
                    format!("{param} must be an object with `role` and `content`"),
                ));
            };
            let role = match m.get("role").and_then(Value::as_str) {
                Some(r @ ("system" | "user" | "assistant")) => r,
                // OpenAI's newer name for the system role.
                Some("developer") => "system",
                Some(other) => {
                    return Err(ApiError::field(
                        &format!("{param}.role"),
                        format!(
                            "{param}.role is `{other}`; this server takes system, developer, \
                             user and assistant messages"
                        ),
                    ))
                }
                None => {
                    return Err(ApiError::field(
                        &format!("{param}.role"),
                        format!("{param} has no `role` string"),
                    ))
                }
            };
            let content = content_text(m.get("content"), &format!("{param}.content"))?;
            Ok(Message::new(role, &content))
        })
        .collect()
}

/// A message's content: a string, or an array of text parts.
fn content_text(v: Option<&Value>, param: &str) -> Result<String, ApiError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (Some(kind), _) if kind != "text" => {
                        return Err(ApiError::field(
                            &format!("{param}[{j}]"),
                            format!("{param}[{j}] is a `{kind}` part; this server takes text only"),
                        ))
                    }
                    _ => {
                        return Err(ApiError::field(
                            &format!("{param}[{j}]"),
                            format!("{param}[{j}] must be {{\"type\": \"text\", \"text\": ...}}"),
                        ))
                    }
                }
            }
            Ok(text)
        }
        None | Some(Value::Null) => Err(ApiError::field(param, format!("{param} is required"))),
        Some(other) => Err(ApiError::field(
            param,
            format!(
                "{param} must be a string or an array of text parts, not {}",
                type_name(other)
            ),
        )),
    }
}

fn text_prompt(obj: &Map<String, Value>) -> Result<String, ApiError> {
    match obj.get("prompt") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(a[0].as_str().unwrap_or_default().to_string())
        }
        Some(Value::Array(_)) => Err(ApiError::field(
            "prompt",
            "`prompt` must be one string (a list of prompts or of token ids is not supported)",
        )),
        None | Some(Value::Null) => Err(ApiError::field("prompt", "`prompt` is required")),
        Some(other) => Err(ApiError::field(
            "prompt",
            format!("`prompt` must be a string, not {}", type_name(other)),
        )),
    }
}

fn stops(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let list: Vec<String> = match obj.get("stop") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::field("stop", "`stop` must be a string or a list of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::field(
                "stop",
                format!(
                    "`stop` must be a string or a list of strings, not {}",
                    type_name(other)
                ),
            ))
        }
    };
    if list.len() > MAX_STOPS {
        return Err(ApiError::field(
            "stop",
            format!("{} stop strings; at most {MAX_STOPS} are taken", list.len()),
        ));
    }
    if list.iter().any(String::is_empty) {
        return Err(ApiError::field("stop", "a stop string is empty"));
    }
    Ok(list)
}

/// What every answer of one request shares.
#[derive(Debug, Clone)]
pub struct Answer {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
    /// How the model marks reasoning in a chat answer (`None` for completions, whose text is
    /// given as generated): the reasoning goes to `reasoning_content`, as DeepSeek's API,
    /// vLLM and llama.cpp's server give it, and `content` is the answer alone.
    pub reasoning: Option<Format>,
}

impl Answer {
    /// The whole answer (stream: false).
    pub fn complete(&self, text: &str, finish: &Finish) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let (reasoning, content) = match self.reasoning {
                    Some(format) => reasoning::split(text, format),
                    None => (None, text.to_string()),
                };
                let mut message = json!({"role": "assistant", "content": content});
                if let Some(r) = reasoning {
                    message["reasoning_content"] = json!(r);
                }
                json!({
                    "index": 0,
                    "message": message,
                    "logprobs": null,
                    "finish_reason": finish.reason.as_str(),
                })
            }
            Endpoint::Completions => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish.reason.as_str(),
            }),
        };
        json!({
            "id": self.id,
            "object": self.endpoint.object(false),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(finish),
        })
    }

    /// A stream chunk: the first (`role` only, chat), one with a piece of the answer (or of
    /// the reasoning, chat), or the last (with the finish reason and an empty delta).
    pub fn chunk(
        &self,
        piece: Option<(Part, &str)>,
        first: bool,
        finish: Option<FinishReason>,
        include_usage: bool,
    ) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                match piece {
                    Some((Part::Answer, t)) => {
                        delta.insert("content".into(), json!(t));
                    }
                    Some((Part::Reasoning, t)) => {
                        delta.insert("reasoning_content".into(), json!(t));
                    }
                    None => {}
                }
                json!({"index": 0, "delta": delta, "logprobs": null,
                       "finish_reason": finish.map(FinishReason::as_str)})
            }
            Endpoint::Completions => json!({
                "index": 0, "text": piece.map_or("", |(_, t)| t), "logprobs": null,
                "finish_reason": finish.map(FinishReason::as_str),
            }),
        };
        let mut v = json!({
            "id": self.id,
            "object": self.endpoint.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if include_usage {
            // OpenAI: with include_usage every chunk carries `usage`, null until the last.
            v["usage"] = Value::Null;
        }
        v
    }

    /// The chunk after the last choice chunk when stream_options.include_usage is set.
    pub fn usage_chunk(&self, finish: &Finish) -> Value {
        json!({
            "id": self.id,
            "object": self.endpoint.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(finish),
        })
    }
}

fn usage(f: &Finish) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<CompletionRequest, ApiError> {
        parse(Endpoint::Chat, body.to_string().as_bytes())
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let ok = chat(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "stop": "x", "max_tokens": 5, "seed": -3, "temperature": 0,
            "stream_options": {"include_usage": true}, "stream": true}),
        )
        .unwrap();
        assert_eq!(ok.prompt, Prompt::Chat(vec![Message::new("user", "hi")]));
        assert_eq!(
            (ok.stop, ok.max_tokens, ok.seeded),
            (vec!["x".to_string()], Some(5), true)
        );
        assert!(ok.stream && ok.include_usage);
        assert_eq!(ok.sampler.temperature, 0.0);
        assert_eq!(
            ok.sampler.repetition_penalty, 1.0,
            "no penalty unless asked"
        );
        // Text parts are joined; max_completion_tokens wins over max_tokens.
        let parts = chat(
            json!({"model": "m", "max_tokens": 9, "max_completion_tokens": 3,
            "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},
            {"type": "text", "text": "b"}]}]}),
        )
        .unwrap();
        assert_eq!(
            parts.prompt,
            Prompt::Chat(vec![Message::new("system", "ab")])
        );
        assert_eq!(parts.max_tokens, Some(3));

        let refused = |body: Value, param: &str, says: &str| {
            let e = chat(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.param.as_deref(), Some(param), "{}", e.message);
            assert!(e.message.contains(says), "{}", e.message);
        };
        let m = json!([{"role": "user", "content": "hi"}]);
        refused(json!({"messages": m}), "model", "required");
        refused(json!({"model": "m"}), "messages", "required");
        refused(json!({"model": "m", "messages": []}), "messages", "empty");
        refused(
            json!({"model": "m", "messages": m, "n": 2}),
            "n",
            "one choice",
        );
        refused(
            json!({"model": "m", "messages": m, "max_tokens": -1}),
            "max_tokens",
            "whole number",
        );
        refused(
            json!({"model": "m", "messages": m, "max_tokens": 0}),
            "max_tokens",
            "from 1",
        );
        refused(
            json!({"model": "m", "messages": m, "temperature": 9}),
            "temperature",
            "between 0 and 2",
        );
        refused(
            json!({"model": "m", "messages": m, "top_p": 0}),
            "top_p",
            "greater than 0",
        );
        refused(
            json!({"model": "m", "messages": m, "stop": [1]}),
            "stop",
            "list of strings",
        );
        refused(
            json!({"model": "m", "messages": m, "stop": [""]}),
            "stop",
            "empty",
        );
        refused(
            json!({"model": "m", "messages": m, "stream": "yes"}),
            "stream",
            "true or false",
        );
        refused(
            json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].role",
            "`tool`",
        );
        refused(
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "messages[0].content[0]",
            "text only",
        );
        refused(
            json!({"model": "m", "messages": m, "tools": [{"type": "function"}]}),
            "tools",
            "not supported",
        );
        let e = parse(Endpoint::Chat, b"{not json").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = parse(
            Endpoint::Completions,
            br#"{"model": "m", "prompt": [1, 2]}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"));
    }

    #[test]
    fn answers_carry_openais_fields() {
        let a = Answer {
            endpoint: Endpoint::Chat,
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m".into(),
            reasoning: None,
        };
        let f = Finish {
            reason: FinishReason::Length,
            prompt_tokens: 3,
            completion_tokens: 2,
        };
        let v = a.complete("hi", &f);
        assert_eq!(v["choices"][0]["message"]["content"], "hi");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 5);
        let first = a.chunk(None, true, None, true);
        assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant"}));
        assert!(first["usage"].is_null() && first.get("usage").is_some());
        assert_eq!(a.usage_chunk(&f)["choices"], json!([]));
        assert!(v["choices"][0]["message"]
            .get("reasoning_content")
            .is_none());
        // A reasoning model's thinking is apart from the content, whole or streamed.
        let thinker = Answer {
            reasoning: Some(Format::Think { inside: false }),
            ..a
        };
        let v = thinker.complete("<think>\nhmm\n</think>\n\nhi", &f);
        assert_eq!(
            v["choices"][0]["message"],
            json!({"role": "assistant", "content": "hi", "reasoning_content": "hmm"})
        );
        let c = thinker.chunk(Some((Part::Reasoning, "hm")), false, None, false);
        assert_eq!(c["choices"][0]["delta"], json!({"reasoning_content": "hm"}));
    }
}
