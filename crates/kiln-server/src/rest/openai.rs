//! OpenAI-compatible endpoints for text embedding models: `POST /v1/embeddings` and
//! `GET /v1/models` (embedding models and LLMs; generation is `rest::chat`), so OpenAI clients
//! (and pipeline `embeddings` steps) can point at kiln.
//! Errors use OpenAI's shape ([`OpenAiError`]).

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use kiln_core::{DataType, Tensor, TensorData};
use kiln_serving::ServedModel;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, Kind, OpenAiError};
use crate::infer::Inference;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/embeddings", post(embeddings)).route("/v1/models", get(models))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    input: Value,
    model: String,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

/// Whether a served model is a text embedding model (text BYTES in, embedding FP32 out).
fn embedding_dim(model: &ServedModel) -> Option<usize> {
    let input = model.signature.inputs.first()?;
    let output = model.signature.outputs.iter().find(|o| o.name == kiln_text::EMBEDDING_OUTPUT)?;
    (model.signature.inputs.len() == 1 && input.datatype == DataType::Bytes && input.name == kiln_text::TEXT_INPUT)
        .then(|| output.shape.last().copied().and_then(|d| usize::try_from(d).ok()))
        .flatten()
}

async fn embeddings(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Json<Value>, OpenAiError> {
    let (parts, body) = request.into_parts();
    let body = super::read_body(&parts.headers, body, state.limits.max_body_bytes, "--max-body-bytes").await?;
    let request: EmbeddingsRequest =
        serde_json::from_slice(&body).map_err(|e| OpenAiError::invalid(format!("malformed request: {e}"), "body"))?;
    let texts: Vec<String> = match request.input {
        Value::String(s) => vec![s],
        Value::Array(items) if items.is_empty() => {
            return Err(OpenAiError::invalid("'input' is an empty list", "input"));
        }
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                _ => Err(OpenAiError::invalid(
                    format!("'input'[{i}] is not a string (kiln embeds text; token-id input is not supported)"),
                    "input",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(OpenAiError::invalid("'input' must be a string or a list of strings", "input")),
    };
    if let Some(i) = texts.iter().position(String::is_empty) {
        return Err(OpenAiError::invalid(format!("'input'[{i}] is an empty string"), "input"));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(OpenAiError::invalid(
                format!("encoding_format '{other}' is not supported (float or base64)"),
                "encoding_format",
            ));
        }
    };
    let model = state.engine.model(&request.model, None)?;
    let dim = embedding_dim(&model).ok_or_else(|| {
        OpenAiError::invalid(format!("model '{}' is not a text embedding model", request.model), "model")
    })?;
    if let Some(d) = request.dimensions
        && d != dim as u64
    {
        return Err(OpenAiError::invalid(
            format!("model '{}' makes {dim}-dimensional embeddings; 'dimensions' {d} is not supported", request.model),
            "dimensions",
        ));
    }
    let n = texts.len();
    let input = Tensor::new(
        kiln_text::TEXT_INPUT,
        vec![n],
        TensorData::Bytes(texts.into_iter().map(String::into_bytes).collect()),
    )
    .map_err(|e| OpenAiError::invalid(e.to_string(), "input"))?;
    let inference = Inference::rest(vec![input], Vec::new(), "POST /v1/embeddings", &parts.headers);
    // The lifecycle applies the v2 limits (rows = texts, --max-string-bytes per text); a
    // request it refuses is about its one input, so the error names that field.
    let response = crate::infer::run(&state, &model, inference)
        .await
        .map_err(|error| {
            let param = (error.kind == Kind::BadRequest).then_some("input");
            OpenAiError { error, param }
        })?
        .response;
    let mut embeddings: &[f32] = &[];
    let mut tokens: i64 = 0;
    for out in &response.outputs {
        match (&out.name[..], &out.data) {
            (kiln_text::EMBEDDING_OUTPUT, TensorData::Fp32(v)) => embeddings = v,
            (kiln_text::TOKEN_COUNT_OUTPUT, TensorData::Int64(v)) => tokens = v.iter().sum(),
            _ => {}
        }
    }
    if embeddings.len() != n * dim {
        return Err(ApiError::new(Kind::Internal, "the model returned no embeddings").into());
    }
    let data: Vec<Value> = embeddings
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, row)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = row.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(row)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

async fn models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .engine
        .model_states()
        .iter()
        .filter_map(|s| state.engine.model(&s.name, None).ok())
        .filter_map(|m| {
            let mut entry = json!({"id": m.name, "object": "model", "created": 0, "owned_by": "kiln"});
            if let Some(llm) = m.runs::<std::sync::Arc<kiln_llm::LlmModel>>() {
                entry["kind"] = json!("llm");
                entry["context_length"] = json!(llm.info().context_length);
                entry["chat_template"] = json!(llm.info().chat_template);
                entry["batched_steps"] = json!(llm.info().batched_steps);
                entry["prefix_cache"] = json!(llm.info().prefix_cache);
                entry["tool_syntax"] = json!(llm.tool_syntax().name());
                entry["reasoning"] = json!(llm.reasons());
                // Under --llm-memory-budget: whether its weights are loaded now, and what it counts.
                entry["loaded"] = json!(llm.is_loaded());
                if let Some(bytes) = llm.budgeted_bytes() {
                    entry["budgeted_bytes"] = json!(bytes);
                }
            } else if embedding_dim(&m).is_some() {
                entry["kind"] = json!("text_embedding");
            } else if super::rerank::is_reranker(&m) {
                entry["kind"] = json!("rerank");
            } else {
                return None;
            }
            Some(entry)
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}
