//! OpenAI-compatible text generation for `kind = "llm"` models: `POST /v1/chat/completions`
//! (messages through the model's chat template) and `POST /v1/completions` (a raw prompt),
//! whole or streamed as server-sent events. A streamed response is a body that pulls the
//! model's `Generation`: when the client goes away hyper drops the body, the `Generation` goes
//! with it and the scheduler frees the sequence before its next step.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use kiln_core::{Tensor, TensorData};
use kiln_engine::kiln_llm::{self, Completion, Event, GenerateParams, Generation, LlmError, Message, Usage};
use kiln_engine::{EngineError, InFlight, InferResponse, ModelHandle, Outcome, Protocol, ServedModel};
use serde_json::{Map, Value, json};

use crate::error::{ApiError, Kind, OpenAiError};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/chat/completions", post(chat)).route("/v1/completions", post(completions))
}

/// Which endpoint a request came by: it decides the JSON shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completion,
}

impl Api {
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Api::Chat, false) => "chat.completion",
            (Api::Chat, true) => "chat.completion.chunk",
            (Api::Completion, _) => "text_completion",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Api::Chat => "chatcmpl-",
            Api::Completion => "cmpl-",
        }
    }

    /// The field a prompt-length refusal is about.
    fn prompt_param(self) -> &'static str {
        match self {
            Api::Chat => "messages",
            Api::Completion => "prompt",
        }
    }
}

/// A request body's fields, taken one by one so that whatever is left is an unknown
/// parameter, refused by name.
struct Fields(Map<String, Value>);

impl Fields {
    fn parse(body: &[u8]) -> Result<Self, OpenAiError> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(Fields(map)),
            Ok(_) => Err(OpenAiError::invalid("the request body must be a JSON object", "body")),
            Err(e) => Err(OpenAiError::invalid(format!("malformed request: {e}"), "body")),
        }
    }

    /// A field, with JSON null treated as absent.
    fn take(&mut self, name: &str) -> Option<Value> {
        self.0.remove(name).filter(|v| !v.is_null())
    }

    fn number(&mut self, name: &'static str, range: std::ops::RangeInclusive<f64>) -> Result<Option<f64>, OpenAiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if range.contains(&x) => Ok(Some(x)),
                _ => Err(OpenAiError::invalid(
                    format!("'{name}' must be between {} and {}, got {n}", range.start(), range.end()),
                    name,
                )),
            },
            Some(other) => Err(OpenAiError::invalid(format!("'{name}' must be a number, got {other}"), name)),
        }
    }

    fn integer(&mut self, name: &'static str, min: i64) -> Result<Option<i64>, OpenAiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(x) if x >= min => Ok(Some(x)),
                _ => Err(OpenAiError::invalid(format!("'{name}' must be an integer of at least {min}, got {n}"), name)),
            },
            Some(other) => Err(OpenAiError::invalid(format!("'{name}' must be an integer, got {other}"), name)),
        }
    }

    fn boolean(&mut self, name: &'static str) -> Result<Option<bool>, OpenAiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(OpenAiError::invalid(format!("'{name}' must be true or false, got {other}"), name)),
        }
    }

    fn string(&mut self, name: &'static str) -> Result<Option<String>, OpenAiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(OpenAiError::invalid(format!("'{name}' must be a string, got {other}"), name)),
        }
    }

    /// A parameter kiln accepts only at its no-op value (`allowed`).
    fn only(&mut self, name: &'static str, allowed: &[Value], what: &str) -> Result<(), OpenAiError> {
        match self.take(name) {
            Some(v) if !allowed.contains(&v) => {
                Err(OpenAiError::invalid(format!("'{name}' = {v} is not supported: {what}"), name))
            }
            _ => Ok(()),
        }
    }

    /// Refuses whatever no `take` consumed.
    fn finish(self) -> Result<(), OpenAiError> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(key) => Err(OpenAiError {
                error: ApiError::bad_request(format!("unrecognized request argument: '{key}'")),
                param: None,
            }),
        }
    }
}

/// What both endpoints share: sampling, stop strings, streaming.
struct Options {
    params: GenerateParams,
    stream: bool,
    include_usage: bool,
}

fn options(fields: &mut Fields, api: Api) -> Result<Options, OpenAiError> {
    // OpenAI's newer name wins when a client sends both.
    let legacy = fields.integer("max_tokens", 1)?;
    let max_tokens = fields.integer("max_completion_tokens", 1)?.or(legacy);
    let temperature = fields.number("temperature", 0.0..=2.0)?;
    let top_p = fields.number("top_p", 0.0..=1.0)?;
    if top_p == Some(0.0) {
        return Err(OpenAiError::invalid("'top_p' must be greater than 0", "top_p"));
    }
    // OpenAI's seed is any 64-bit integer; llama.cpp's is 32 bits: fold, keeping both halves.
    let seed = match fields.take("seed") {
        None => None,
        Some(Value::Number(n)) if n.as_i64().is_some() => {
            let bits = n.as_i64().unwrap_or_default() as u64;
            Some((bits ^ (bits >> 32)) as u32)
        }
        Some(other) => return Err(OpenAiError::invalid(format!("'seed' must be an integer, got {other}"), "seed")),
    };
    let stop = match fields.take("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) if items.len() <= 4 => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(OpenAiError::invalid(format!("'stop' holds strings, got {other}"), "stop")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(OpenAiError::invalid("'stop' must be a string or a list of up to 4 strings", "stop")),
    };
    let stream = fields.boolean("stream")?.unwrap_or(false);
    let include_usage = match fields.take("stream_options") {
        None => false,
        Some(Value::Object(mut o)) => {
            let include = match o.remove("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => b,
                Some(other) => {
                    return Err(OpenAiError::invalid(
                        format!("'stream_options.include_usage' must be true or false, got {other}"),
                        "stream_options",
                    ));
                }
            };
            if let Some(key) = o.keys().next() {
                return Err(OpenAiError::invalid(format!("'stream_options.{key}' is not supported"), "stream_options"));
            }
            if !stream {
                return Err(OpenAiError::invalid("'stream_options' needs 'stream': true", "stream_options"));
            }
            include
        }
        Some(other) => {
            return Err(OpenAiError::invalid(
                format!("'stream_options' must be an object, got {other}"),
                "stream_options",
            ));
        }
    };
    fields.only("n", &[json!(1)], "kiln generates one choice per request; send several requests")?;
    fields.only("presence_penalty", &[json!(0), json!(0.0)], "kiln applies no penalties")?;
    fields.only("frequency_penalty", &[json!(0), json!(0.0)], "kiln applies no penalties")?;
    fields.only("logit_bias", &[json!({})], "kiln applies no logit bias")?;
    match api {
        Api::Chat => {
            fields.only("logprobs", &[json!(false)], "log probabilities are not returned")?;
            fields.only("response_format", &[json!({"type": "text"})], "only text output")?;
            for name in ["tools", "tool_choice", "functions", "function_call", "parallel_tool_calls"] {
                if fields.take(name).is_some() {
                    return Err(OpenAiError {
                        error: ApiError::bad_request(format!(
                            "'{name}' is not supported: kiln's LLMs do not call tools yet"
                        )),
                        param: None,
                    });
                }
            }
        }
        Api::Completion => {
            fields.only("logprobs", &[json!(0)], "log probabilities are not returned")?;
            fields.only("echo", &[json!(false)], "the prompt is not repeated")?;
            fields.only("best_of", &[json!(1)], "kiln generates one choice per request")?;
            fields.only("suffix", &[], "insertion is not supported")?;
        }
    }
    // Accepted and not used, as OpenAI's own server treats them for this purpose.
    let _ = fields.string("user")?;
    Ok(Options {
        params: GenerateParams {
            max_tokens: max_tokens.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            temperature: temperature.map(|t| t as f32),
            top_p: top_p.map(|p| p as f32),
            seed,
            stop,
        },
        stream,
        include_usage,
    })
}

/// `messages`: roles the template knows, text content (a string or text parts).
fn messages(value: Option<Value>) -> Result<Vec<Message>, OpenAiError> {
    let items = match value {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => return Err(OpenAiError::invalid("'messages' is empty", "messages")),
        None => return Err(OpenAiError::invalid("'messages' is required", "messages")),
        Some(other) => return Err(OpenAiError::invalid(format!("'messages' must be a list, got {other}"), "messages")),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let bad = |why: String| OpenAiError::invalid(format!("messages[{i}]: {why}"), "messages");
            let Value::Object(mut m) = item else { return Err(bad("must be an object".into())) };
            let role = match m.remove("role") {
                Some(Value::String(r)) => r,
                _ => return Err(bad("'role' is required (system, user or assistant)".into())),
            };
            // OpenAI's newer name for the system role.
            let role = if role == "developer" { "system".to_string() } else { role };
            if !kiln_llm::ROLES.contains(&role.as_str()) {
                return Err(bad(format!("role '{role}' is not supported (system, user or assistant)")));
            }
            let content = match m.remove("content") {
                Some(Value::String(s)) => s,
                Some(Value::Array(parts)) => parts
                    .into_iter()
                    .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(text)) => Ok(text.to_string()),
                        _ => Err(bad(format!("only text content parts are supported, got {p}"))),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(""),
                None | Some(Value::Null) => return Err(bad("'content' is required".into())),
                Some(other) => return Err(bad(format!("'content' must be a string, got {other}"))),
            };
            m.remove("name");
            if let Some(key) = m.keys().next() {
                return Err(bad(format!("'{key}' is not supported")));
            }
            Ok(Message { role, content })
        })
        .collect()
}

/// Reads the body and resolves the model: an unknown model is 404, a model that is not an
/// LLM 400.
async fn begin(
    state: &AppState,
    request: axum::extract::Request,
) -> Result<(Fields, ModelHandle, std::sync::Arc<kiln_llm::LlmModel>), OpenAiError> {
    let (parts, body) = request.into_parts();
    let body = super::read_body(&parts.headers, body, state.limits.max_body_bytes, "--max-body-bytes").await?;
    let mut fields = Fields::parse(&body)?;
    let name = fields.string("model")?.ok_or_else(|| OpenAiError::invalid("'model' is required", "model"))?;
    let model = state.engine.model(&name, None)?;
    let llm = model.llm_model().cloned().ok_or_else(|| {
        OpenAiError::invalid(format!("model '{name}' is not an LLM (kind = \"llm\"); it cannot generate text"), "model")
    })?;
    Ok((fields, model, llm))
}

async fn chat(State(state): State<AppState>, request: axum::extract::Request) -> Result<Response, OpenAiError> {
    let (mut fields, model, llm) = begin(&state, request).await?;
    let messages = messages(fields.take("messages"))?;
    let options = options(&mut fields, Api::Chat)?;
    fields.finish()?;
    let prompt = llm.chat_prompt(&messages).map_err(|e| llm_error(e, Api::Chat))?;
    respond(state, model, &llm, prompt, &messages_text(&messages), options, Api::Chat).await
}

async fn completions(State(state): State<AppState>, request: axum::extract::Request) -> Result<Response, OpenAiError> {
    let (mut fields, model, llm) = begin(&state, request).await?;
    let prompt = match fields.take("prompt") {
        Some(Value::String(s)) => s,
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_string()
        }
        Some(Value::Array(_)) => {
            return Err(OpenAiError::invalid("one prompt per request: 'prompt' must be a string", "prompt"));
        }
        None => return Err(OpenAiError::invalid("'prompt' is required", "prompt")),
        Some(other) => return Err(OpenAiError::invalid(format!("'prompt' must be a string, got {other}"), "prompt")),
    };
    let options = options(&mut fields, Api::Completion)?;
    fields.finish()?;
    let tokens = llm.text_prompt(&prompt);
    respond(state, model, &llm, tokens, &prompt, options, Api::Completion).await
}

/// The messages as the prediction log keeps them (JSON, one line).
fn messages_text(messages: &[Message]) -> String {
    serde_json::to_string(messages).unwrap_or_default()
}

fn llm_error(e: LlmError, api: Api) -> OpenAiError {
    let param = match &e {
        LlmError::PromptTooLong { .. } | LlmError::EmptyPrompt | LlmError::Template(_) => Some(api.prompt_param()),
        _ => None,
    };
    OpenAiError { error: EngineError::from(e).into(), param }
}

fn outcome_of(e: &LlmError) -> Outcome {
    match e {
        LlmError::PromptTooLong { .. } | LlmError::EmptyPrompt | LlmError::Template(_) => Outcome::Invalid,
        LlmError::Overloaded { .. } => Outcome::Overloaded,
        _ => Outcome::Error,
    }
}

/// One generation's bookkeeping: metrics/statistics (the in-flight guard), the prediction
/// log's capture, and what its JSON says.
struct Call {
    api: Api,
    id: String,
    created: u64,
    model: ModelHandle,
    state: AppState,
    tracked: InFlight<ModelHandle>,
    capture: Option<crate::records::Capture>,
}

impl Call {
    fn envelope(&self, chunk: bool, choices: Value) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("object".into(), json!(self.api.object(chunk)));
        m.insert("created".into(), json!(self.created));
        m.insert("model".into(), json!(self.model.name));
        m.insert("choices".into(), choices);
        m
    }

    /// Logs the finished request (when its policy keeps it) and counts it.
    async fn finish(self, result: Result<&Completion, &LlmError>) {
        let outcome = match result {
            Ok(_) => Outcome::Success,
            Err(e) => outcome_of(e),
        };
        let result: Result<InferResponse, EngineError> = match result {
            Ok(c) => Ok(InferResponse {
                model_name: self.model.name.clone(),
                model_version: self.model.version,
                outputs: record_outputs(c),
                trace: Vec::new(),
            }),
            Err(e) => Err(e.clone().into()),
        };
        if let Err(e) =
            crate::records::finish(self.state.records.as_ref(), self.capture, &self.model, "rest", &result).await
        {
            tracing::warn!(model = %self.model.name, "prediction log: {e}");
        }
        self.tracked.end(outcome);
    }
}

/// What the prediction log keeps of a completion.
fn record_outputs(c: &Completion) -> Vec<Tensor> {
    let one = |name: &str, data: TensorData| Tensor::new(name, vec![1], data).ok();
    [
        one("text_output", TensorData::Bytes(vec![c.text.clone().into_bytes()])),
        one("finish_reason", TensorData::Bytes(vec![c.reason.as_str().as_bytes().to_vec()])),
        one("prompt_tokens", TensorData::Int64(vec![c.usage.prompt_tokens as i64])),
        one("completion_tokens", TensorData::Int64(vec![c.usage.completion_tokens as i64])),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn usage_json(u: Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
           "total_tokens": u.prompt_tokens + u.completion_tokens})
}

async fn respond(
    state: AppState,
    model: ModelHandle,
    llm: &kiln_llm::LlmModel,
    prompt: Vec<kiln_llm::Token>,
    recorded_prompt: &str,
    options: Options,
    api: Api,
) -> Result<Response, OpenAiError> {
    let tracked = ServedModel::track(&model, Protocol::Rest);
    let prompt_tensor =
        Tensor::new("text_input", vec![1], TensorData::Bytes(vec![recorded_prompt.as_bytes().to_vec()]))
            .map_err(|e| ApiError::new(Kind::Internal, e))?;
    let capture = crate::records::begin(state.records.as_ref(), &model, &[prompt_tensor], None);
    let generation = match llm.generate(prompt, &options.params) {
        Ok(g) => g,
        Err(e) => {
            tracked.end(outcome_of(&e));
            return Err(llm_error(e, api));
        }
    };
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let request_id = capture.as_ref().map(|c| c.request_id.clone());
    let call = Call {
        api,
        id: format!("{}{:024x}", api.id_prefix(), fastrand::u128(..) >> 32),
        created,
        model,
        state,
        tracked,
        capture,
    };
    let mut response = if options.stream {
        stream_response(call, generation, options.include_usage)
    } else {
        let result = generation.complete().await;
        let body = match &result {
            Ok(c) => {
                let choice = match api {
                    Api::Chat => json!({"index": 0, "message": {"role": "assistant", "content": c.text},
                                        "logprobs": null, "finish_reason": c.reason.as_str()}),
                    Api::Completion => json!({"index": 0, "text": c.text, "logprobs": null,
                                              "finish_reason": c.reason.as_str()}),
                };
                let mut m = call.envelope(false, json!([choice]));
                m.insert("usage".into(), usage_json(c.usage));
                Some(Value::Object(m))
            }
            Err(_) => None,
        };
        call.finish(result.as_ref()).await;
        match (body, result) {
            (Some(body), _) => Json(body).into_response(),
            (None, Err(e)) => return Err(llm_error(e, api)),
            (None, Ok(_)) => return Err(ApiError::new(Kind::Internal, "no completion").into()),
        }
    };
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert(crate::records::REQUEST_ID, id);
    }
    Ok(response)
}

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
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

impl Stream {
    fn chunk(&self, delta: Option<String>, finish: Option<&str>) -> Value {
        let Some(call) = &self.call else { return Value::Null };
        let choice = match call.api {
            Api::Chat => {
                let delta = match (&self.phase, delta) {
                    (Phase::Start, text) => json!({"role": "assistant", "content": text.unwrap_or_default()}),
                    (_, Some(text)) => json!({"content": text}),
                    (_, None) => json!({}),
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Api::Completion => {
                json!({"index": 0, "text": delta.unwrap_or_default(), "logprobs": null, "finish_reason": finish})
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
                Some(sse(&self.chunk(Some(piece), None)))
            }
            Some(Event::Done { reason, usage }) => {
                let mut out = sse(&self.chunk(None, Some(reason.as_str()))).to_vec();
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

fn stream_response(call: Call, generation: Generation, include_usage: bool) -> Response {
    let stream = Stream { call: Some(call), generation, include_usage, phase: Phase::Start, text: String::new() };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        s.next().await.map(|bytes| (Ok::<_, Infallible>(bytes), s))
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
