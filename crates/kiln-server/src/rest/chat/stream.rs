//! A streamed answer: server-sent events in OpenAI's chunk shapes, pulled from the model's
//! `Generation` as the client reads. With tools offered, the text is followed by a
//! [`CallStream`] and calls go out as `tool_calls` deltas the `openai` client assembles.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use kiln_llm::tools::{CallStream, Delta};
use kiln_llm::{Completion, Event, Generation, LlmError};
use serde_json::{Value, json};

use super::{Api, Call, call_id, calls_finish, usage_json};

/// Where a stream is.
enum Phase {
    /// Nothing sent yet: the first chunk carries the role.
    Start,
    Generating,
    Done,
}

struct Stream {
    call: Option<Call>,
    generation: Generation,
    include_usage: bool,
    phase: Phase,
    text: String,
    /// Set when tools are offered: the answer may be calls.
    calls: Option<CallStream>,
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

impl Stream {
    fn chunk(&self, delta: Option<String>, finish: Option<&str>) -> Value {
        let delta = match (&self.phase, delta) {
            (Phase::Start, text) => json!({"role": "assistant", "content": text.unwrap_or_default()}),
            (_, Some(text)) => json!({"content": text}),
            (_, None) => json!({}),
        };
        let text = delta_text(&delta);
        self.chat_chunk(&delta, finish, text)
    }

    /// A chunk with a chat `delta` (`text` is the completions API's form of the same piece).
    fn chat_chunk(&self, delta: &Value, finish: Option<&str>, text: Option<String>) -> Value {
        let Some(call) = &self.call else { return Value::Null };
        let choice = match call.api {
            Api::Chat => json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}),
            Api::Completion => {
                json!({"index": 0, "text": text.unwrap_or_default(), "logprobs": null, "finish_reason": finish})
            }
        };
        let mut m = call.envelope(true, json!([choice]));
        if self.include_usage {
            m.insert("usage".into(), Value::Null);
        }
        Value::Object(m)
    }

    /// The next bytes of the body; `None` ends it.
    async fn next(&mut self) -> Option<Bytes> {
        if matches!(self.phase, Phase::Done) {
            return None;
        }
        if matches!(self.phase, Phase::Start) && self.call.as_ref().is_some_and(|c| c.api == Api::Chat) {
            let first = sse(&self.chunk(None, None));
            self.phase = Phase::Generating;
            return Some(first);
        }
        self.phase = Phase::Generating;
        match self.generation.next().await {
            Some(Event::Text(piece)) => {
                self.text.push_str(&piece);
                let Some(calls) = self.calls.as_mut() else { return Some(sse(&self.chunk(Some(piece), None))) };
                let deltas = calls.push(&piece);
                let mut out = Vec::new();
                for delta in deltas {
                    let delta = match delta {
                        Delta::Content(text) => json!({"content": text}),
                        Delta::CallStart { index, name } => json!({"tool_calls": [{"index": index, "id": call_id(),
                            "type": "function", "function": {"name": name, "arguments": ""}}]}),
                        Delta::Arguments { index, text } => {
                            json!({"tool_calls": [{"index": index, "function": {"arguments": text}}]})
                        }
                    };
                    out.extend_from_slice(&sse(&self.chat_chunk(&delta, None, None)));
                }
                // Nothing to say yet (a call's name is still coming): an SSE comment keeps the
                // body moving without an event.
                if out.is_empty() {
                    out.extend_from_slice(b": \n\n");
                }
                Some(Bytes::from(out))
            }
            Some(Event::Done { reason, usage }) => {
                let finish = match &self.calls {
                    Some(calls) if calls.is_calls() == Some(true) => calls_finish(reason),
                    _ => reason.as_str(),
                };
                let mut out = sse(&self.chunk(None, Some(finish))).to_vec();
                if self.include_usage
                    && let Some(call) = &self.call
                {
                    let mut m = call.envelope(true, json!([]));
                    m.insert("usage".into(), usage_json(usage));
                    out.extend_from_slice(&sse(&Value::Object(m)));
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.phase = Phase::Done;
                let completion = Completion { text: std::mem::take(&mut self.text), reason, usage };
                if let Some(call) = self.call.take() {
                    call.finish(Ok(&completion)).await;
                }
                Some(Bytes::from(out))
            }
            Some(Event::Failed(e)) => Some(self.fail(e).await),
            None => Some(self.fail(LlmError::ShuttingDown).await),
        }
    }

    /// An error after the 200 went out: one `data:` event with OpenAI's error shape, then the end.
    async fn fail(&mut self, e: LlmError) -> Bytes {
        self.phase = Phase::Done;
        let message = e.to_string();
        if let Some(call) = self.call.take() {
            call.finish(Err(&e)).await;
        }
        sse(&json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}}))
    }
}

/// A chat delta's text, for the completions API's chunk.
fn delta_text(delta: &Value) -> Option<String> {
    delta.get("content").and_then(Value::as_str).map(str::to_string)
}

pub(super) fn response(call: Call, generation: Generation, include_usage: bool, calls: Option<CallStream>) -> Response {
    let stream =
        Stream { call: Some(call), generation, include_usage, phase: Phase::Start, text: String::new(), calls };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        s.next().await.map(|bytes| (Ok::<_, Infallible>(bytes), s))
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
