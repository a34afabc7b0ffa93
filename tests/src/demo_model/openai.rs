//! The OpenAI-compatible API: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/completions`
//! and `POST /v1/chat/completions`.
//!
//! The "generated" text names the model, its version and the instance, about eight tokens:
//! `model ranker version 2 on instance ranker-v2-a: hello` (cut to `max_tokens`). Without
//! `stream` the answer is one JSON body (`text_completion` / `chat.completion`); with
//! `stream: true` it is `text/event-stream`, one `data: {json}\n\n` event per token spaced by
//! the server's [`Pacing`] (`chat.completion.chunk` with the role first, then content
//! deltas, `finish_reason` on the last; `text_completion` chunks with `text`), then
//! `data: [DONE]\n\n`. `stream_options.include_usage` adds a last chunk with the usage.
//!
//! Errors take OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 404 for an
//! unknown model, 400 for a bad request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{self, Body, json_response};
use super::model::{Catalog, ModelSpec};
use crate::BoxError;

/// How a streamed completion spaces its events after the first.
#[derive(Debug, Clone)]
pub enum Pacing {
    /// Each next event this long after the previous one: a model generating tokens, for a
    /// person watching the stream (zero: all at once).
    Delay(Duration),
    /// Each next event once a step is released ([`Steps::release`], `POST /demo/step`): a
    /// test reads an event, releases the next and reads it, so a stream held back anywhere
    /// on the way never delivers its first event, with no clock involved.
    Stepped(Arc<Steps>),
}

/// The released steps of a stepped server (one stream at a time).
#[derive(Debug)]
pub struct Steps(tokio::sync::Semaphore);

impl Default for Steps {
    fn default() -> Self {
        Steps(tokio::sync::Semaphore::new(0))
    }
}

impl Steps {
    /// Lets the waiting (or the next) event of the stream go.
    pub fn release(&self) {
        self.0.add_permits(1);
    }

    /// A stream begins: steps released after the previous stream's last event are dropped.
    fn begin(&self) {
        self.0.forget_permits(self.0.available_permits());
    }

    /// Waits for a released step and takes it.
    async fn take(&self) {
        if let Ok(permit) = self.0.acquire().await {
            permit.forget();
        }
    }
}

/// Which completion endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `/v1/completions`.
    Text,
    /// `/v1/chat/completions`.
    Chat,
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: String,
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[allow(dead_code, reason = "required by the API, not used by the demo")]
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// One completion, ready to be sent whole or as a stream.
struct Completion {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    tokens: Vec<String>,
    finish_reason: &'static str,
    prompt_tokens: usize,
    include_usage: bool,
}

/// Answers a request whose path is `/v1` or under it.
pub async fn handle(catalog: &Catalog, pacing: &Pacing, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/v1/models") => json_response(
            StatusCode::OK,
            &json!({ "object": "list", "data": model_list(catalog) }),
        ),
        (Method::GET, p) if p.starts_with("/v1/models/") => {
            let id = &p["/v1/models/".len()..];
            match catalog.find(id, None) {
                Ok(spec) => json_response(StatusCode::OK, &model_object(catalog, spec)),
                Err(e) => error(StatusCode::NOT_FOUND, "model_not_found", e.0),
            }
        }
        (Method::POST, "/v1/completions") => complete(catalog, pacing, Kind::Text, req).await,
        (Method::POST, "/v1/chat/completions") => complete(catalog, pacing, Kind::Chat, req).await,
        (m, p) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such endpoint: {m} {p}"),
        ),
    }
}

/// OpenAI's error body.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Body> {
    let kind = if status == StatusCode::NOT_FOUND {
        "not_found_error"
    } else {
        "invalid_request_error"
    };
    json_response(
        status,
        &json!({ "error": { "message": message.into(), "type": kind, "param": null, "code": code } }),
    )
}

fn model_list(catalog: &Catalog) -> Vec<Value> {
    let mut seen = Vec::new();
    for spec in &catalog.models {
        if !seen.contains(&spec.name.as_str()) {
            seen.push(&spec.name);
        }
    }
    seen.into_iter()
        .filter_map(|name| catalog.find(name, None).ok())
        .map(|spec| model_object(catalog, spec))
        .collect()
}

fn model_object(catalog: &Catalog, spec: &ModelSpec) -> Value {
    json!({ "id": spec.name, "object": "model", "created": 0, "owned_by": catalog.instance, "version": spec.version })
}

async fn complete(
    catalog: &Catalog,
    pacing: &Pacing,
    kind: Kind,
    req: Request<Incoming>,
) -> Response<Body> {
    let bytes = match body::read_capped(req.into_body()).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return body::read_error_response(&e, |status, message| {
                error(status, "invalid_request", message)
            });
        }
    };
    let request: CompletionRequest = match serde_json::from_slice(&bytes) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("the request is not a valid completion request: {e}"),
            );
        }
    };
    let prompt_tokens = match (kind, &request.prompt, &request.messages) {
        (Kind::Text, Some(prompt), _) => word_count(prompt),
        (Kind::Chat, _, Some(messages)) if !messages.is_empty() => messages
            .iter()
            .map(|m| m.content.as_ref().map_or(0, word_count))
            .sum(),
        (Kind::Text, None, _) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing field `prompt`",
            );
        }
        (Kind::Chat, _, _) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "`messages` must hold at least one message",
            );
        }
    };
    let spec = match catalog.find(&request.model, None) {
        Ok(spec) => spec,
        Err(e) => return error(StatusCode::NOT_FOUND, "model_not_found", e.0),
    };
    let max_tokens = request.max_completion_tokens.or(request.max_tokens);
    let mut tokens = reply_tokens(spec, &catalog.instance);
    let mut finish_reason = "stop";
    if let Some(max) = max_tokens.and_then(|m| usize::try_from(m).ok())
        && max < tokens.len()
    {
        tokens.truncate(max);
        finish_reason = "length";
    }
    let completion = Completion {
        kind,
        id: next_id(kind),
        created: unix_now(),
        model: request.model,
        tokens,
        finish_reason,
        prompt_tokens,
        include_usage: request.stream_options.is_some_and(|o| o.include_usage),
    };
    if request.stream == Some(true) {
        stream(completion.events(), pacing.clone())
    } else {
        json_response(StatusCode::OK, &completion.whole())
    }
}

/// The tokens of the demo's answer: `model NAME version V on instance I: hello`, each word
/// after the first with its leading space.
fn reply_tokens(spec: &ModelSpec, instance: &str) -> Vec<String> {
    let text = format!(
        "model {} version {} on instance {instance}: hello",
        spec.name, spec.version
    );
    text.split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

/// The words of a prompt or message content: a string, an array of strings (prompts) or of
/// content parts with `text` (chat).
fn word_count(value: &Value) -> usize {
    match value {
        Value::String(s) => s.split_whitespace().count(),
        Value::Array(items) => items.iter().map(word_count).sum(),
        Value::Object(part) => part.get("text").map_or(0, word_count),
        _ => 0,
    }
}

fn next_id(kind: Kind) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    match kind {
        Kind::Text => format!("cmpl-demo-{n}"),
        Kind::Chat => format!("chatcmpl-demo-{n}"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// === impl Completion ===

impl Completion {
    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.tokens.len(),
            "total_tokens": self.prompt_tokens + self.tokens.len(),
        })
    }

    /// The non-streamed answer.
    fn whole(&self) -> Value {
        let text = self.tokens.concat();
        let choice = match self.kind {
            Kind::Text => json!({
                "index": 0, "text": text, "logprobs": null, "finish_reason": self.finish_reason,
            }),
            Kind::Chat => json!({
                "index": 0, "message": { "role": "assistant", "content": text },
                "logprobs": null, "finish_reason": self.finish_reason,
            }),
        };
        json!({
            "id": self.id,
            "object": match self.kind { Kind::Text => "text_completion", Kind::Chat => "chat.completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(),
        })
    }

    /// The streamed answer: one JSON chunk per event, without the closing `[DONE]`.
    fn events(&self) -> Vec<Value> {
        let kind = self.kind;
        let object = match kind {
            Kind::Text => "text_completion",
            Kind::Chat => "chat.completion.chunk",
        };
        let chunk = |choice: Value| {
            let mut c = json!({
                "id": self.id, "object": object, "created": self.created, "model": self.model,
                "choices": [choice],
            });
            if self.include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let mut events = Vec::new();
        if kind == Kind::Chat {
            events.push(chunk(json!({
                "index": 0, "delta": { "role": "assistant", "content": "" },
                "logprobs": null, "finish_reason": null,
            })));
        }
        let last = self.tokens.len().saturating_sub(1);
        for (i, token) in self.tokens.iter().enumerate() {
            let finish = if kind == Kind::Text && i == last {
                json!(self.finish_reason)
            } else {
                Value::Null
            };
            events.push(chunk(match kind {
                Kind::Text => json!({ "index": 0, "text": token, "logprobs": null, "finish_reason": finish }),
                Kind::Chat => json!({
                    "index": 0, "delta": { "content": token }, "logprobs": null, "finish_reason": null,
                }),
            }));
        }
        if kind == Kind::Chat || self.tokens.is_empty() {
            let finish = match kind {
                Kind::Chat => {
                    json!({ "index": 0, "delta": {}, "logprobs": null, "finish_reason": self.finish_reason })
                }
                Kind::Text => {
                    json!({ "index": 0, "text": "", "logprobs": null, "finish_reason": self.finish_reason })
                }
            };
            events.push(chunk(finish));
        }
        if self.include_usage {
            let mut usage = chunk(Value::Null);
            usage["choices"] = json!([]);
            usage["usage"] = self.usage();
            events.push(usage);
        }
        events
    }
}

/// A `text/event-stream` response sending `events` as `data:` lines, the first at once and
/// each next one as `pacing` lets it, then `data: [DONE]`.
fn stream(events: Vec<Value>, pacing: Pacing) -> Response<Body> {
    if let Pacing::Stepped(steps) = &pacing {
        steps.begin();
    }
    let mut frames: Vec<Bytes> = events
        .iter()
        .map(|e| Bytes::from(format!("data: {e}\n\n")))
        .collect();
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let count = frames.len();
    // The demo's generation pace (`--token-delay-ms`, for people watching the quickstart):
    // a clock ticking once per delay from the first event on, not a wait for anything.
    let clock = match &pacing {
        Pacing::Delay(delay) if !delay.is_zero() => {
            let mut clock = tokio::time::interval_at(tokio::time::Instant::now() + *delay, *delay);
            clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            Some(clock)
        }
        _ => None,
    };
    let state = (frames.into_iter(), 0usize, clock);
    let paced = futures_util::stream::unfold(state, move |(mut frames, i, mut clock)| {
        let pacing = pacing.clone();
        async move {
            let frame = frames.next()?;
            // [DONE] follows the last chunk at once; every other event waits its turn.
            if i > 0 && i + 1 < count {
                if let Some(clock) = &mut clock {
                    clock.tick().await;
                } else if let Pacing::Stepped(steps) = &pacing {
                    steps.take().await;
                }
            }
            Some((
                Ok::<_, BoxError>(Frame::data(frame)),
                (frames, i + 1, clock),
            ))
        }
    });
    let mut resp = Response::new(StreamBody::new(paced).boxed_unsync());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(kind: Kind, tokens: &[&str]) -> Completion {
        Completion {
            kind,
            id: "x".into(),
            created: 1,
            model: "ranker".into(),
            tokens: tokens.iter().map(|&t| t.to_owned()).collect(),
            finish_reason: "stop",
            prompt_tokens: 2,
            include_usage: false,
        }
    }

    #[test]
    fn the_reply_names_model_version_and_instance() {
        let spec: ModelSpec = "ranker:2".parse().unwrap();
        let tokens = reply_tokens(&spec, "ranker-v2-a");
        assert_eq!(
            tokens.concat(),
            "model ranker version 2 on instance ranker-v2-a: hello"
        );
        assert_eq!(tokens.len(), 8);
        assert_eq!(tokens[1], " ranker");
    }

    #[test]
    fn a_chat_stream_sends_the_role_first_and_the_finish_reason_last() {
        let events = completion(Kind::Chat, &["a", " b"]).events();
        assert_eq!(events.len(), 4);
        assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(events[1]["choices"][0]["delta"]["content"], "a");
        assert_eq!(events[2]["choices"][0]["delta"]["content"], " b");
        assert_eq!(events[3]["choices"][0]["finish_reason"], "stop");
        assert!(
            events
                .iter()
                .all(|e| e["object"] == "chat.completion.chunk")
        );
    }

    #[test]
    fn a_text_stream_ends_with_the_finish_reason_on_its_last_token() {
        let events = completion(Kind::Text, &["a", " b"]).events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["choices"][0]["text"], "a");
        assert_eq!(events[0]["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(events[1]["choices"][0]["finish_reason"], "stop");
        assert!(events.iter().all(|e| e["object"] == "text_completion"));
    }

    #[test]
    fn usage_comes_last_when_asked_for() {
        let mut c = completion(Kind::Chat, &["a"]);
        c.include_usage = true;
        let events = c.events();
        let last = events.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 3);
        assert_eq!(events[0]["usage"], Value::Null);
    }

    #[test]
    fn prompt_words_are_counted_in_strings_arrays_and_parts() {
        assert_eq!(word_count(&json!("a b  c")), 3);
        assert_eq!(word_count(&json!(["a b", "c"])), 3);
        assert_eq!(word_count(&json!([{ "type": "text", "text": "a b" }])), 2);
    }
}
