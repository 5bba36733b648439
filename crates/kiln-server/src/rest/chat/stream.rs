//! A streamed answer: server-sent events in OpenAI's chunk shapes, pulled from the model's
//! `Generation`s (one per choice, `n`) as the client reads. With tools offered, each choice's
//! text goes through a [`CallStream`] and calls go out as `tool_calls` deltas the `openai`
//! client assembles. Log-probabilities, when asked for, ride on the chunk of their text.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, SelectAll};
use kiln_llm::reasoning::{Split, ThinkSplit};
use kiln_llm::tools::{CallStream, Delta};
use kiln_llm::{Completion, Event, Generation, LlmError, TokenLogprob};
use serde_json::{Value, json};

use super::{Api, Call, calls_finish, chat_logprobs, completion_logprobs, total_usage, usage_json};

/// One choice's progress.
struct Choice {
    text: String,
    /// Set when tools are offered: the answer may be calls.
    calls: Option<CallStream>,
    /// Log-probabilities of text not sent yet.
    logprobs: Vec<TokenLogprob>,
    /// Characters sent so far (the completions API's `text_offset`).
    offset: usize,
    /// A reasoning model's splitter of thoughts and answer.
    think: Option<ThinkSplit>,
    done: Option<Completion>,
    /// When its first text came (the time to first token, on the generation's span).
    first_token: Option<std::time::Instant>,
}

struct Stream {
    call: Option<Call>,
    events: SelectAll<BoxStream<'static, (usize, Event)>>,
    choices: Vec<Choice>,
    include_usage: bool,
    with_logprobs: bool,
    started: bool,
    finished: bool,
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

impl Stream {
    /// A chunk of choice `index` with a chat `delta` (the completions API sends its text).
    fn chunk(&self, index: usize, delta: &Value, finish: Option<&str>, logprobs: &[TokenLogprob]) -> Value {
        let Some(call) = &self.call else { return Value::Null };
        let choice = match call.api {
            Api::Chat => {
                let logprobs = if self.with_logprobs { chat_logprobs(logprobs) } else { Value::Null };
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
            Api::Completion => {
                let offset = self.choices[index].offset;
                let logprobs = if self.with_logprobs { completion_logprobs(logprobs, offset) } else { Value::Null };
                let text = delta.get("content").and_then(Value::as_str).unwrap_or_default();
                json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish})
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
        if self.finished {
            return None;
        }
        let chat = self.call.as_ref().is_some_and(|c| c.api == Api::Chat);
        if !self.started {
            self.started = true;
            if chat {
                // Each choice opens with the role.
                let mut out = Vec::new();
                for i in 0..self.choices.len() {
                    out.extend_from_slice(&sse(&self.chunk(
                        i,
                        &json!({"role": "assistant", "content": ""}),
                        None,
                        &[],
                    )));
                }
                return Some(Bytes::from(out));
            }
        }
        let mut next = self.events.next().await;
        // Log-probabilities are sent with the text they belong to.
        while let Some((i, Event::Logprobs(tokens))) = next {
            self.choices[i].logprobs.extend(tokens);
            next = self.events.next().await;
        }
        match next {
            Some((_, Event::Logprobs(_))) => None,
            Some((i, Event::Text(piece))) => Some(self.text(i, &piece)),
            Some((i, Event::Done { reason, usage })) => {
                // What a reasoning model's splitter held back (a partial tag) goes out first.
                let mut out = Vec::new();
                if let Some(rest) = self.choices[i].think.as_mut().map(ThinkSplit::finish) {
                    out.extend_from_slice(&self.split_text(i, &rest));
                }
                let choice = &mut self.choices[i];
                let finish = match &choice.calls {
                    Some(calls) if calls.is_calls() == Some(true) => calls_finish(reason),
                    _ => reason.as_str(),
                };
                let logprobs = std::mem::take(&mut choice.logprobs);
                let text = std::mem::take(&mut choice.text);
                choice.done =
                    Some(Completion { text, reason, usage, logprobs: Vec::new(), first_token: choice.first_token });
                out.extend_from_slice(&sse(&self.chunk(i, &json!({}), Some(finish), &logprobs)));
                if self.choices.iter().all(|c| c.done.is_some()) {
                    out.extend_from_slice(&self.end().await);
                }
                Some(Bytes::from(out))
            }
            Some((_, Event::Failed(e))) => Some(self.fail(e).await),
            None => Some(self.fail(LlmError::ShuttingDown).await),
        }
    }

    /// A text piece of choice `i`: a reasoning model's thoughts as `reasoning_content` deltas,
    /// the rest as content or tool-call deltas.
    fn text(&mut self, i: usize, piece: &str) -> Bytes {
        self.choices[i].first_token.get_or_insert_with(std::time::Instant::now);
        self.choices[i].text.push_str(piece);
        match self.choices[i].think.as_mut().map(|t| t.push(piece)) {
            Some(split) => self.split_text(i, &split),
            None => self.answer(i, piece),
        }
    }

    fn split_text(&mut self, i: usize, split: &Split) -> Bytes {
        let mut out = Vec::new();
        if !split.reasoning.is_empty() {
            let logprobs =
                if split.content.is_empty() { std::mem::take(&mut self.choices[i].logprobs) } else { Vec::new() };
            out.extend_from_slice(&sse(&self.chunk(
                i,
                &json!({"reasoning_content": split.reasoning}),
                None,
                &logprobs,
            )));
        }
        if !split.content.is_empty() {
            out.extend_from_slice(&self.answer(i, &split.content));
        }
        if out.is_empty() {
            out.extend_from_slice(b": \n\n");
        }
        Bytes::from(out)
    }

    /// Answer text of choice `i`, as content or tool-call deltas.
    fn answer(&mut self, i: usize, piece: &str) -> Bytes {
        let logprobs = std::mem::take(&mut self.choices[i].logprobs);
        let Some(calls) = self.choices[i].calls.as_mut() else {
            let chunk = sse(&self.chunk(i, &json!({"content": piece}), None, &logprobs));
            self.choices[i].offset += piece.chars().count();
            return chunk;
        };
        let syntax = self.call.as_ref().map(|c| c.syntax).unwrap_or_default();
        let deltas: Vec<Value> = calls
            .push(piece)
            .into_iter()
            .map(|delta| match delta {
                Delta::Content(text) => json!({"content": text}),
                Delta::CallStart { index, name } => json!({"tool_calls": [{"index": index, "id": syntax.call_id(),
                    "type": "function", "function": {"name": name, "arguments": ""}}]}),
                Delta::Arguments { index, text } => {
                    json!({"tool_calls": [{"index": index, "function": {"arguments": text}}]})
                }
            })
            .collect();
        let mut out = Vec::new();
        let last = deltas.len().saturating_sub(1);
        for (k, delta) in deltas.iter().enumerate() {
            let logprobs: &[TokenLogprob] = if k == last { &logprobs } else { &[] };
            out.extend_from_slice(&sse(&self.chunk(i, delta, None, logprobs)));
        }
        if deltas.is_empty() {
            // Nothing to say yet (a call's name is still coming): keep the log-probabilities for
            // the next chunk; an SSE comment keeps the body moving without an event.
            self.choices[i].logprobs = logprobs;
            out.extend_from_slice(b": \n\n");
        }
        self.choices[i].offset += piece.chars().count();
        Bytes::from(out)
    }

    /// Every choice is done: the usage chunk when asked, `[DONE]`, and the request's record.
    async fn end(&mut self) -> Vec<u8> {
        self.finished = true;
        let mut completions: Vec<Completion> = self.choices.iter_mut().filter_map(|c| c.done.take()).collect();
        let usage = total_usage(completions.iter().map(|c| c.usage));
        let mut out = Vec::new();
        if self.include_usage
            && let Some(call) = &self.call
        {
            let mut m = call.envelope(true, json!([]));
            m.insert("usage".into(), usage_json(usage));
            out.extend_from_slice(&sse(&Value::Object(m)));
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        let first = if completions.is_empty() { Completion::default() } else { completions.swap_remove(0) };
        if let Some(call) = self.call.take() {
            call.finish(Ok(&Completion { usage, ..first })).await;
        }
        out
    }

    /// An error after the 200 went out: one `data:` event with OpenAI's error shape, then the end.
    async fn fail(&mut self, e: LlmError) -> Bytes {
        self.finished = true;
        let message = e.to_string();
        if let Some(call) = self.call.take() {
            call.finish(Err(&e)).await;
        }
        sse(&json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}}))
    }
}

/// The events of choice `index` until its end.
fn events(index: usize, generation: Generation) -> BoxStream<'static, (usize, Event)> {
    futures_util::stream::unfold(Some(generation), move |generation| async move {
        let mut generation = generation?;
        let event = generation.next().await?;
        let ended = matches!(event, Event::Done { .. } | Event::Failed(_));
        Some(((index, event), (!ended).then_some(generation)))
    })
    .boxed()
}

pub(super) fn response(call: Call, generations: Vec<Generation>, include_usage: bool, tools_offered: bool) -> Response {
    let choices = (0..generations.len())
        .map(|_| Choice {
            text: String::new(),
            calls: tools_offered.then(|| CallStream::new(call.syntax)),
            logprobs: Vec::new(),
            offset: call.text_offset,
            think: call.thinking.map(ThinkSplit::new),
            done: None,
            first_token: None,
        })
        .collect();
    let with_logprobs = generations.first().is_some_and(Generation::reports_logprobs);
    let events = futures_util::stream::select_all(generations.into_iter().enumerate().map(|(i, g)| events(i, g)));
    let stream =
        Stream { call: Some(call), events, choices, include_usage, with_logprobs, started: false, finished: false };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        s.next().await.map(|bytes| (Ok::<_, Infallible>(bytes), s))
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
