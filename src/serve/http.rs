//! The HTTP layer: routes, the API key, body limits, and turning a checked request into a job
//! for the model's scheduler and its events into an OpenAI answer — whole, or as server-sent
//! events. No generation logic lives here.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_stream::wrappers::ReceiverStream;

use super::api::{self, Answer, CompletionRequest, Endpoint, Prompt};
use super::epoch_secs;
use super::error::ApiError;
use super::models::{ModelHandle, Registry};
use crate::engine::reasoning::{Format, Part, ReasoningSplitter};
use crate::engine::scheduler::{Event, EventSink, Finish, FinishReason, Job, SubmitError};

/// What every handler shares.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub api_key: Option<String>,
    pub body_limit: usize,
    /// Numbers the ids of answers.
    pub requests: AtomicU64,
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.body_limit;
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(state.clone(), require_key))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_large_bodies,
        ))
        .with_state(state)
}

/// How much of a refused body is read and dropped, at most, before the 413 is sent.
const DRAIN_BYTES: usize = 64 << 20;
/// How long a refused body may take to arrive before the connection is closed regardless.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Answers a body over the limit with 413 only once the client has sent it (up to
/// `DRAIN_BYTES`). Why: a server that answers and closes while the client still writes leaves
/// unread bytes in the socket, the kernel resets the connection, and the client sees a broken
/// pipe instead of the 413 that says what is wrong (nginx's "lingering close", for the same
/// reason). Bodies within the limit are buffered here and passed on unchanged.
async fn refuse_large_bodies(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    use tokio_stream::StreamExt;
    let limit = state.body_limit;
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut kept: Vec<u8> = Vec::new();
    let mut total = 0usize;
    let mut failed = None;
    let read = async {
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    total += bytes.len();
                    if total <= limit {
                        kept.extend_from_slice(&bytes);
                    } else if total > limit + DRAIN_BYTES {
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
    };
    // A client that stops sending mid-body is not waited on forever.
    let timed_out = tokio::time::timeout(DRAIN_TIME, read).await.is_err();
    if total > limit {
        let mut resp = ApiError::too_large(limit).into_response();
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return resp;
    }
    if timed_out {
        return ApiError::invalid(format!(
            "the request body did not arrive within {} s",
            DRAIN_TIME.as_secs()
        ))
        .into_response();
    }
    if let Some(e) = failed {
        return ApiError::invalid(format!("cannot read the request body: {e}")).into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(kept)))
        .await
}

/// With --api-key, every request but `/health` (a liveness probe) needs `Bearer <key>`.
async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        if req.uri().path() != "/health" {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
                return ApiError::unauthorized().into_response();
            }
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first difference (the time says nothing of the key).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn unknown_route(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "status": "healthy",
        "service": "mlxk-server",
        "version": crate::VERSION,
        "models_loaded": state.registry.loaded(),
    }))
}

async fn models(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let registry = state.registry.clone();
    let data = tokio::task::spawn_blocking(move || registry.list())
        .await
        .map_err(|e| ApiError::internal(format!("listing the models failed: {e}")))?;
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn chat(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    complete(state, Endpoint::Chat, body).await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    complete(state, Endpoint::Completions, body).await
}

async fn complete(
    state: Arc<AppState>,
    endpoint: Endpoint,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(state.body_limit),
        _ => ApiError::invalid(format!("cannot read the request body: {e}")),
    })?;
    let req = api::parse(endpoint, &body)?;
    let model = state.registry.get(&req.model).await?;
    let (prompt, reasoning) = {
        let (model, req) = (model.clone(), req.clone());
        tokio::task::spawn_blocking(move || tokenize(&model, &req))
            .await
            .map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))??
    };
    let max_tokens = fit_context(&model, &req, prompt.len())?;
    let (tx, rx) = unbounded_channel();
    let mut sampler = req.sampler.clone();
    if !req.seeded {
        sampler.seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ state.requests.load(Ordering::Relaxed);
    }
    let submitted = model.scheduler.submit(Job {
        prompt,
        max_tokens,
        sampler,
        stop: req.stop.clone(),
        sink: Box::new(ChannelSink(tx)),
    });
    if let Err(e @ SubmitError::Stopped) = submitted {
        // Its batching thread is gone: the next request loads the model afresh.
        state.registry.forget(&model);
        return Err(e.into());
    }
    submitted?;
    let n = state.requests.fetch_add(1, Ordering::Relaxed);
    let created = epoch_secs(SystemTime::now());
    let answer = Answer {
        endpoint,
        id: format!("{}-{created:x}{n:06x}", endpoint.id_prefix()),
        created,
        model: req.model.clone(),
        reasoning,
    };
    if req.stream {
        Ok(stream(answer, rx, req.include_usage).into_response())
    } else {
        whole(answer, rx).await.map(|v| Json(v).into_response())
    }
}

/// The prompt's token ids: chat messages through the model's template, a completion prompt
/// as it is; and for a chat, how the answer marks its reasoning.
fn tokenize(
    model: &ModelHandle,
    req: &CompletionRequest,
) -> Result<(Vec<u32>, Option<Format>), ApiError> {
    let loaded = &model.loaded;
    let (text, reasoning) = match &req.prompt {
        Prompt::Chat(messages) => {
            let text = loaded
                .prompt_text(messages, true)
                .map_err(|e| ApiError::field("messages", e.to_string()))?;
            let reasoning = loaded.reasoning_format(&text);
            (text, reasoning)
        }
        Prompt::Text(t) => (t.clone(), None),
    };
    let ids = loaded
        .tok
        .encode_prompt(&text)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    if ids.is_empty() {
        let param = match req.prompt {
            Prompt::Chat(_) => "messages",
            Prompt::Text(_) => "prompt",
        };
        return Err(ApiError::field(param, "the prompt is empty"));
    }
    Ok((ids, reasoning))
}

/// The request's max_tokens within the model's context (default: the rest of it); a request
/// that cannot fit is refused with the numbers.
fn fit_context(
    model: &ModelHandle,
    req: &CompletionRequest,
    prompt: usize,
) -> Result<usize, ApiError> {
    /// Without a context length in config.json: the default length of an answer.
    const DEFAULT_MAX_TOKENS: usize = 2048;
    let context = model.loaded.model.args().context;
    match (context, req.max_tokens) {
        (Some(ctx), _) if prompt >= ctx => Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::field(
                match req.prompt {
                    Prompt::Chat(_) => "messages",
                    Prompt::Text(_) => "prompt",
                },
                format!(
                    "this model's context is {ctx} tokens and the prompt alone has {prompt}; \
                     shorten it"
                ),
            )
        }),
        (Some(ctx), asked) => {
            let want = asked.unwrap_or(ctx - prompt);
            if prompt + want > ctx {
                return Err(ApiError {
                    code: Some("context_length_exceeded"),
                    ..ApiError::field(
                        "max_tokens",
                        format!(
                            "this model's context is {ctx} tokens; the prompt has {prompt} and \
                             max_tokens asks for {want} more ({} in all)",
                            prompt + want
                        ),
                    )
                });
            }
            Ok(want)
        }
        (None, asked) => Ok(asked.unwrap_or(DEFAULT_MAX_TOKENS)),
    }
}

/// Events of a job into the handler's channel; the channel closes when the client hangs up.
struct ChannelSink(UnboundedSender<Event>);

impl EventSink for ChannelSink {
    fn send(&mut self, event: Event) -> bool {
        self.0.send(event).is_ok()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

fn shutting_down() -> ApiError {
    ApiError::unavailable(
        "shutting_down",
        "the server is shutting down; the request was cancelled",
    )
}

/// Waits for the whole answer.
async fn whole(answer: Answer, mut rx: UnboundedReceiver<Event>) -> Result<Value, ApiError> {
    let mut text = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Done(f) if f.reason == FinishReason::Cancelled => return Err(shutting_down()),
            Event::Done(f) => return Ok(answer.complete(&text, &f)),
            Event::Failed(m) => return Err(ApiError::internal(m)),
        }
    }
    Err(ApiError::internal("the model's worker stopped"))
}

/// The answer as server-sent events: a first chunk (chat: the role), one per piece of text,
/// the last with the finish reason, usage if asked, then `[DONE]`. A task forwards the
/// events; when the client hangs up the SSE stream is dropped, the task's next send fails, and
/// dropping its receiver tells the scheduler to free the slot.
fn stream(
    answer: Answer,
    mut rx: UnboundedReceiver<Event>,
    include_usage: bool,
) -> impl IntoResponse {
    let (out, sse_rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let send = |v: &Value| {
            let out = out.clone();
            let event = SseEvent::default().data(v.to_string());
            async move { out.send(Ok(event)).await.is_ok() }
        };
        if answer.endpoint == Endpoint::Chat
            && !send(&answer.chunk(None, true, None, include_usage)).await
        {
            return;
        }
        // A chat answer's reasoning is split from its content as it streams.
        let mut splitter = answer.reasoning.map(ReasoningSplitter::new);
        let mut pieces: Vec<(Part, String)> = Vec::new();
        let mut finish: Option<Finish> = None;
        loop {
            let event = tokio::select! {
                event = rx.recv() => event,
                // Hung up while nothing was sent (a long prefill): free the slot now.
                _ = out.closed() => return,
            };
            let Some(event) = event else { break };
            match event {
                Event::Text(t) => {
                    match splitter.as_mut() {
                        Some(sp) => sp.push(&t, &mut |part, s| pieces.push((part, s.into()))),
                        None => pieces.push((Part::Answer, t)),
                    }
                    for (part, t) in pieces.drain(..) {
                        let chunk = answer.chunk(Some((part, &t)), false, None, include_usage);
                        if !send(&chunk).await {
                            return;
                        }
                    }
                }
                Event::Done(f) if f.reason == FinishReason::Cancelled => {
                    let _ = send(&shutting_down().body()).await;
                    break;
                }
                Event::Done(f) => {
                    finish = Some(f);
                    break;
                }
                Event::Failed(m) => {
                    let _ = send(&ApiError::internal(m).body()).await;
                    break;
                }
            }
        }
        if let Some(f) = finish {
            if let Some(sp) = splitter.as_mut() {
                sp.finish(&mut |part, s| pieces.push((part, s.into())));
            }
            for (part, t) in pieces.drain(..) {
                if !send(&answer.chunk(Some((part, &t)), false, None, include_usage)).await {
                    return;
                }
            }
            if !send(&answer.chunk(None, false, Some(f.reason), include_usage)).await {
                return;
            }
            if include_usage && !send(&answer.usage_chunk(&f)).await {
                return;
            }
        }
        let _ = out.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(sse_rx)).keep_alive(KeepAlive::default())
}
