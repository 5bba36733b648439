//! OpenAI-compatible text generation for `kind = "llm"` models: `POST /v1/chat/completions`
//! (messages through the model's chat template) and `POST /v1/completions` (a raw prompt),
//! whole or streamed as server-sent events. A streamed response is a body that pulls the
//! model's `Generation`: when the client goes away hyper drops the body, the `Generation` goes
//! with it and the scheduler frees the sequence before its next step.

mod fields;
mod shadow;
mod stream;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use kiln_core::{Tensor, TensorData};
use kiln_llm::reasoning::{Split, ThinkSplit};
use kiln_llm::tools::{self, Tool, ToolCall, ToolSyntax};
use kiln_llm::{
    self, Completion, Constraint, FinishReason, Generation, LlmError, LlmModel, Message, TokenLogprob, Usage,
};
use kiln_serving::{EngineError, InferResponse, ModelHandle, Outcome, Protocol};
use serde_json::{Map, Value, json};

use crate::error::{ApiError, Kind, OpenAiError};
use crate::state::AppState;
use fields::{Fields, Options};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/apply-template", post(apply_template))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
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
    let llm = model.runs::<Arc<LlmModel>>().cloned().ok_or_else(|| {
        OpenAiError::invalid(format!("model '{name}' is not an LLM (kind = \"llm\"); it cannot generate text"), "model")
    })?;
    Ok((fields, model, llm))
}

async fn chat(State(state): State<AppState>, request: axum::extract::Request) -> Result<Response, OpenAiError> {
    let incoming = crate::otel::Incoming::from_http(request.headers());
    let (mut fields, model, llm) = begin(&state, request).await?;
    let messages = messages(&state, &mut fields)?;
    let kwargs = kiln_llm::request::template_kwargs(fields.take("chat_template_kwargs")).map_err(param_error)?;
    let mut options = fields::options(&mut fields, Api::Chat)?;
    fields.finish()?;
    fields::check_logit_bias(&options, llm.vocab_size())?;
    let offered: Vec<Tool> = if options.tools_offered() { options.tools.clone() } else { Vec::new() };
    // Rendering and tokenizing grow with the messages: on the blocking pool, never on the
    // executor that answers every other request (the cheap bounds in `chat_prompt` refuse what
    // cannot fit before any of it runs).
    let (renderer, conversation, variables) = (llm.clone(), messages.clone(), kwargs.clone());
    let prompt = tokio::task::spawn_blocking(move || renderer.chat_prompt_with(&conversation, &offered, &variables))
        .await
        .map_err(|e| OpenAiError::from(ApiError::new(Kind::Internal, format!("rendering the prompt failed: {e}"))))?
        .map_err(|e| llm_error(e, Api::Chat))?;
    options.params.constraint = constraint(&llm, &options).await?;
    let recorded = messages_text(&messages);
    let shadow = shadow::Shadow::of(&state, &model, &options.params, || shadow::Prompt::Chat { messages, kwargs });
    respond(state, model, &llm, prompt, &recorded, options, (Api::Chat, incoming, shadow)).await
}

/// llama-server's `POST /apply-template`: the prompt text the model's chat template makes of
/// `messages` (and `tools`), without generating (a template is checked against its reference
/// this way).
async fn apply_template(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Json<Value>, OpenAiError> {
    let (mut fields, _, llm) = begin(&state, request).await?;
    let messages = messages(&state, &mut fields)?;
    let tools = kiln_llm::request::tool_list(fields.take("tools")).map_err(param_error)?;
    let kwargs = kiln_llm::request::template_kwargs(fields.take("chat_template_kwargs")).map_err(param_error)?;
    fields.finish()?;
    let prompt = tokio::task::spawn_blocking(move || llm.apply_template(&messages, &tools, &kwargs))
        .await
        .map_err(|e| OpenAiError::from(ApiError::new(Kind::Internal, format!("rendering the prompt failed: {e}"))))?
        .map_err(|e| llm_error(e, Api::Chat))?;
    Ok(Json(json!({ "prompt": prompt })))
}

/// llama-server's `POST /tokenize` (`content`, `add_special`, `parse_special`, `with_pieces`),
/// with `model` naming the LLM: `{"tokens": [...]}`, or `[{"id", "piece"}]` with pieces.
async fn tokenize(State(state): State<AppState>, request: axum::extract::Request) -> Result<Json<Value>, OpenAiError> {
    let (mut fields, _, llm) = begin(&state, request).await?;
    let content = fields.string("content")?.ok_or_else(|| OpenAiError::invalid("'content' is required", "content"))?;
    check_string(&state, "'content'", &content, "content")?;
    let add_special = fields.boolean("add_special")?.unwrap_or(false);
    let parse_special = fields.boolean("parse_special")?.unwrap_or(true);
    let with_pieces = fields.boolean("with_pieces")?.unwrap_or(false);
    fields.finish()?;
    let tokenizer = llm.clone();
    let tokens = tokio::task::spawn_blocking(move || tokenizer.tokenize(&content, add_special, parse_special))
        .await
        .map_err(|e| OpenAiError::from(ApiError::new(Kind::Internal, format!("tokenizing failed: {e}"))))?
        .map_err(|e| llm_error(e, Api::Completion))?;
    if !with_pieces {
        return Ok(Json(json!({ "tokens": tokens })));
    }
    let pieces: Vec<Value> =
        tokens.iter().map(|&t| json!({"id": t, "piece": llm.detokenize(&[t]).unwrap_or_default()})).collect();
    Ok(Json(json!({ "tokens": pieces })))
}

/// llama-server's `POST /detokenize` (`tokens`), with `model`: `{"content": "..."}`.
async fn detokenize(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Json<Value>, OpenAiError> {
    let (mut fields, _, llm) = begin(&state, request).await?;
    let tokens: Vec<i32> = match fields.take("tokens") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_i64().and_then(|t| i32::try_from(t).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| OpenAiError::invalid("'tokens' must be a list of token ids", "tokens"))?,
        Some(other) => return Err(OpenAiError::invalid(format!("'tokens' must be a list, got {other}"), "tokens")),
        None => return Err(OpenAiError::invalid("'tokens' is required", "tokens")),
    };
    fields.finish()?;
    if tokens.len() > llm.info().context_length * 4 {
        return Err(OpenAiError::invalid("'tokens' holds more ids than four contexts", "tokens"));
    }
    let content = llm.detokenize(&tokens).ok_or_else(|| {
        OpenAiError::invalid(
            format!("'tokens' holds an id outside the vocabulary of {} tokens", llm.vocab_size()),
            "tokens",
        )
    })?;
    Ok(Json(json!({ "content": content })))
}

async fn completions(State(state): State<AppState>, request: axum::extract::Request) -> Result<Response, OpenAiError> {
    let incoming = crate::otel::Incoming::from_http(request.headers());
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
    check_string(&state, "'prompt'", &prompt, "prompt")?;
    let mut options = fields::options(&mut fields, Api::Completion)?;
    fields.finish()?;
    fields::check_logit_bias(&options, llm.vocab_size())?;
    let tokenizer = llm.clone();
    let (tokens, prompt) = tokio::task::spawn_blocking(move || (tokenizer.text_prompt(&prompt), prompt))
        .await
        .map_err(|e| OpenAiError::from(ApiError::new(Kind::Internal, format!("tokenizing the prompt failed: {e}"))))?;
    let tokens = tokens.map_err(|e| llm_error(e, Api::Completion))?;
    options.params.constraint = constraint(&llm, &options).await?;
    let shadow = shadow::Shadow::of(&state, &model, &options.params, || shadow::Prompt::Text(prompt.clone()));
    respond(state, model, &llm, tokens, &prompt, options, (Api::Completion, incoming, shadow)).await
}

/// The grammar the answer must follow — the response format, or the tool-call grammar when
/// tools are offered — compiled off the executor.
async fn constraint(llm: &Arc<kiln_llm::LlmModel>, options: &Options) -> Result<Option<Constraint>, OpenAiError> {
    let (llm, format, tools) = (llm.clone(), options.format.clone(), options.tools.clone());
    let (choice, parallel) = (options.tool_choice.clone(), options.parallel_tool_calls);
    tokio::task::spawn_blocking(move || llm.compile_answer(format.as_ref(), &tools, &choice, parallel))
        .await
        .map_err(|e| OpenAiError::from(ApiError::new(Kind::Internal, format!("grammar compilation failed: {e}"))))?
        .map_err(param_error)
}

/// The request's `messages`, each content held to the same per-string limit as a v2 BYTES
/// element.
fn messages(state: &AppState, fields: &mut Fields) -> Result<Vec<Message>, OpenAiError> {
    let messages = kiln_llm::request::messages(fields.take("messages")).map_err(param_error)?;
    for (i, m) in messages.iter().enumerate() {
        check_string(state, &format!("messages[{i}]: 'content'"), &m.content, "messages")?;
    }
    Ok(messages)
}

/// Refuses a text over `--max-string-bytes`, as v2 refuses a BYTES element.
fn check_string(state: &AppState, what: &str, text: &str, param: &'static str) -> Result<(), OpenAiError> {
    let limit = state.limits.max_string_bytes;
    if text.len() > limit {
        return Err(OpenAiError::invalid(
            format!("{what} is {} bytes; the limit is {limit} (--max-string-bytes)", text.len()),
            param,
        ));
    }
    Ok(())
}

/// A refused request parameter, with OpenAI's `param`.
fn param_error(e: kiln_llm::request::ParamError) -> OpenAiError {
    OpenAiError::invalid(e.message, e.param)
}

/// The messages as the prediction log keeps them (JSON, one line).
fn messages_text(messages: &[Message]) -> String {
    serde_json::to_string(messages).unwrap_or_default()
}

fn llm_error(e: LlmError, api: Api) -> OpenAiError {
    let param = match &e {
        LlmError::PromptTooLong { .. }
        | LlmError::PromptTooLarge(_)
        | LlmError::EmptyPrompt
        | LlmError::Template(_) => Some(api.prompt_param()),
        _ => None,
    };
    OpenAiError { error: EngineError::from(e).into(), param }
}

fn outcome_of(e: &LlmError) -> Outcome {
    match e {
        LlmError::PromptTooLong { .. }
        | LlmError::PromptTooLarge(_)
        | LlmError::EmptyPrompt
        | LlmError::Template(_) => Outcome::Invalid,
        LlmError::Overloaded { .. } | LlmError::NoRoom(_) => Outcome::Overloaded,
        _ => Outcome::Error,
    }
}

/// One generation: the lifecycle's [`crate::infer::Call`] (metrics, statistics, the prediction
/// log's capture) and what its JSON says.
struct Call {
    api: Api,
    id: String,
    created: u64,
    call: crate::infer::Call,
    /// The prompt's length in characters (where the completions API's `text_offset` starts).
    text_offset: usize,
    /// The model's tool-call syntax.
    syntax: ToolSyntax,
    /// A reasoning model's chat (its template knows `<think>`): whether the prompt opened the
    /// thoughts. Its answers are split into `reasoning_content` and `content`.
    thinking: Option<bool>,
    /// A sampled request's generation span (`gen_ai.*`), ended by [`Call::finish`].
    generation: Option<kiln_serving::span::SpanGuard>,
    /// The `[rollout]` shadow that generates for the same request once it is answered.
    shadow: Option<shadow::Shadow>,
}

impl Call {
    fn envelope(&self, chunk: bool, choices: Value) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("object".into(), json!(self.api.object(chunk)));
        m.insert("created".into(), json!(self.created));
        m.insert("model".into(), json!(self.call.model().name));
        m.insert("choices".into(), choices);
        m
    }

    /// One finished choice, in the endpoint's shape.
    fn choice(&self, index: usize, c: &Completion, tools_offered: bool, with_logprobs: bool) -> Value {
        let logprobs = match (with_logprobs, self.api) {
            (false, _) => Value::Null,
            (true, Api::Chat) => chat_logprobs(&c.logprobs),
            (true, Api::Completion) => completion_logprobs(&c.logprobs, self.text_offset),
        };
        let split = match self.thinking {
            Some(thinking) => ThinkSplit::split(&c.text, thinking),
            None => Split { reasoning: String::new(), content: c.text.clone() },
        };
        let calls = if tools_offered { tools::parse(&split.content, self.syntax) } else { None };
        let mut choice = match (self.api, calls) {
            (Api::Chat, Some(calls)) => json!({"index": index,
                "message": {"role": "assistant", "content": null, "tool_calls": tool_calls_json(&calls, self.syntax)},
                "logprobs": logprobs, "finish_reason": calls_finish(c.reason)}),
            (Api::Chat, None) => json!({"index": index, "message": {"role": "assistant", "content": split.content},
                                "logprobs": logprobs, "finish_reason": c.reason.as_str()}),
            (Api::Completion, _) => json!({"index": index, "text": c.text, "logprobs": logprobs,
                                      "finish_reason": c.reason.as_str()}),
        };
        if !split.reasoning.is_empty() {
            choice["message"]["reasoning_content"] = json!(split.reasoning);
        }
        choice
    }

    /// Logs the finished request (when its policy keeps it) and counts it.
    async fn finish(mut self, result: Result<&Completion, &LlmError>) {
        if let (Some(shadow), Ok(c)) = (self.shadow.take(), result) {
            shadow.send(c.text.clone());
        }
        let outcome = match result {
            Ok(_) => Outcome::Success,
            Err(e) => outcome_of(e),
        };
        if let Some(mut g) = self.generation.take() {
            match result {
                Ok(c) => {
                    g.set("gen_ai.usage.input_tokens", c.usage.prompt_tokens as u64);
                    g.set("gen_ai.usage.output_tokens", c.usage.completion_tokens as u64);
                    g.set("gen_ai.response.finish_reasons", c.reason.as_str());
                    if let Some(first) = c.first_token {
                        let ttft = first.saturating_duration_since(g.started()).as_secs_f64();
                        g.set("gen_ai.server.time_to_first_token", ttft);
                    }
                }
                Err(e) => g.fail(e),
            }
        }
        let model = self.call.model().clone();
        let result: Result<InferResponse, EngineError> = match result {
            Ok(c) => Ok(InferResponse {
                model_name: model.name.clone(),
                model_version: model.version,
                outputs: record_outputs(c),
                trace: Vec::new(),
            }),
            Err(e) => Err(e.clone().into()),
        };
        if let Err(e) = self.call.close_as(&result, outcome).await {
            tracing::warn!(model = %model.name, "prediction log: {}", e.message);
        }
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
    (api, incoming, shadow): (Api, crate::otel::Incoming, Option<shadow::Shadow>),
) -> Result<Response, OpenAiError> {
    let prompt_tensor =
        Tensor::new("text_input", vec![1], TensorData::Bytes(vec![recorded_prompt.as_bytes().to_vec()]))
            .map_err(|e| ApiError::new(Kind::Internal, e.to_string()))?;
    let (route, operation) = match api {
        Api::Chat => ("POST /v1/chat/completions", "chat"),
        Api::Completion => ("POST /v1/completions", "text_completion"),
    };
    let origin = crate::infer::Origin { route, incoming };
    let lifecycle = crate::infer::Call::open(&state, &model, &[prompt_tensor], None, Protocol::Rest, true, &origin);
    // The generation's span, with OpenTelemetry's GenAI attributes.
    let generation = lifecycle.span().map(|span| {
        let mut g = span.child(format!("{operation} {}", model.name));
        g.set("gen_ai.operation.name", operation);
        g.set("gen_ai.request.model", model.name.as_str());
        if let Some(max) = options.params.max_tokens {
            g.set("gen_ai.request.max_tokens", u64::from(max));
        }
        if let Some(t) = options.params.temperature {
            g.set("gen_ai.request.temperature", f64::from(t));
        }
        if options.n > 1 {
            g.set("gen_ai.request.choice.count", options.n);
        }
        g
    });
    let slots = llm.info().max_sequences;
    if options.n > slots {
        let message = format!("'n' = {} is more than the model's {slots} sequence slots (max_sequences)", options.n);
        let _ = lifecycle.close_as(&Err(EngineError::InvalidRequest(message.clone())), Outcome::Invalid).await;
        return Err(OpenAiError::invalid(message, "n"));
    }
    // One generation per choice, each in its own slot; with a seed, choice i draws with seed + i
    // (choices differ when sampled, and repeat with the same seed).
    let mut generations = Vec::with_capacity(options.n);
    for i in 0..options.n {
        let mut params = options.params.clone();
        params.seed = params.seed.map(|seed| seed.wrapping_add(i as u32));
        match llm.generate(prompt.clone(), &params) {
            Ok(g) => generations.push(g),
            Err(e) => {
                let outcome = outcome_of(&e);
                let _ = lifecycle.close_as(&Err(e.clone().into()), outcome).await;
                return Err(llm_error(e, api));
            }
        }
    }
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let request_id = lifecycle.request_id().map(str::to_string);
    let call = Call {
        api,
        id: format!("{}{:024x}", api.id_prefix(), fastrand::u128(..) >> 32),
        created,
        call: lifecycle,
        text_offset: recorded_prompt.chars().count(),
        syntax: llm.tool_syntax(),
        thinking: (api == Api::Chat && llm.reasons()).then(|| llm.opens_thinking(&prompt)),
        generation,
        shadow,
    };
    let mut response = if options.stream {
        stream::response(call, generations, options.include_usage, options.tools_offered())
    } else {
        let results = futures_util::future::join_all(generations.into_iter().map(Generation::complete)).await;
        let mut completions = Vec::with_capacity(results.len());
        let mut failure = None;
        for result in results {
            match result {
                Ok(c) => completions.push(c),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        match failure {
            Some(e) => {
                call.finish(Err(&e)).await;
                return Err(llm_error(e, api));
            }
            None => {
                let choices: Vec<Value> = completions
                    .iter()
                    .enumerate()
                    .map(|(i, c)| call.choice(i, c, options.tools_offered(), options.params.logprobs.is_some()))
                    .collect();
                let usage = total_usage(completions.iter().map(|c| c.usage));
                let mut m = call.envelope(false, Value::Array(choices));
                m.insert("usage".into(), usage_json(usage));
                let first = completions.into_iter().next().map(|c| Completion { usage, ..c }).unwrap_or_default();
                call.finish(Ok(&first)).await;
                Json(Value::Object(m)).into_response()
            }
        }
    };
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert(crate::records::REQUEST_ID, id);
    }
    Ok(response)
}

/// The usage of a request's choices: the prompt once, the completions summed.
fn total_usage(usages: impl Iterator<Item = Usage>) -> Usage {
    usages.fold(Usage::default(), |total, u| Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: total.completion_tokens + u.completion_tokens,
    })
}

/// OpenAI's `logprobs` of a chat choice (or chunk): per token, its text, log-probability,
/// UTF-8 bytes and the alternatives asked for.
fn chat_logprobs(tokens: &[TokenLogprob]) -> Value {
    let entry = |token: &str, bytes: &[u8], logprob: f32| json!({"token": token, "logprob": logprob, "bytes": bytes});
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(&t.token, &t.bytes, t.logprob);
            let top: Vec<Value> = t.top.iter().map(|a| entry(&a.token, &a.bytes, a.logprob)).collect();
            e["top_logprobs"] = Value::Array(top);
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// The completions API's `logprobs`: parallel lists, `text_offset` in characters from the
/// prompt's start (as OpenAI counts); the chosen token is among each place's top entries.
fn completion_logprobs(tokens: &[TokenLogprob], mut offset: usize) -> Value {
    let mut offsets = Vec::with_capacity(tokens.len());
    for t in tokens {
        offsets.push(offset);
        offset += t.token.chars().count();
    }
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut m: Map<String, Value> = t.top.iter().map(|a| (a.token.clone(), json!(a.logprob))).collect();
            m.insert(t.token.clone(), json!(t.logprob));
            Value::Object(m)
        })
        .collect();
    json!({"tokens": tokens.iter().map(|t| &t.token).collect::<Vec<_>>(),
           "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
           "top_logprobs": top, "text_offset": offsets})
}

fn tool_calls_json(calls: &[ToolCall], syntax: ToolSyntax) -> Value {
    calls
        .iter()
        .map(|c| {
            json!({"id": syntax.call_id(), "type": "function", "function": {"name": c.name, "arguments": c.arguments}})
        })
        .collect()
}

/// An answer of calls ends with `tool_calls` (or `length`, cut short).
fn calls_finish(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "tool_calls",
        FinishReason::Length => "length",
    }
}
