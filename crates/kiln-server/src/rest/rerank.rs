//! Reranking with a cross-encoder (`kind = "rerank"`, a Hugging Face sequence-classification
//! folder): `POST /v1/rerank` answers the shape Cohere's and Jina's clients read
//! (`results: [{index, relevance_score, document}]`), `POST /rerank` the one
//! text-embeddings-inference's clients read (`[{index, score, text}]`). Both take `query`,
//! `documents` (or TEI's `texts`; strings or `{"text": ...}` objects), `top_n`,
//! `return_documents` (TEI: `return_text`) and `raw_scores` (default: the logit through a
//! sigmoid, as sentence-transformers' CrossEncoder and TEI score).
//!
//! Each document is one row of one request through the shared lifecycle, so the reranker
//! batches, logs, limits and times out like every model.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use kiln_core::{DataType, Tensor, TensorData};
use kiln_serving::ServedModel;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, Kind, OpenAiError};
use crate::infer::Inference;
use crate::state::AppState;

/// Documents per rerank request: each is a full encoder pass over (query, document), so a
/// request's cost is documents x tokens; past this it is refused (413) before any work.
pub const MAX_DOCUMENTS: usize = 1024;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/rerank", post(rerank_v1)).route("/rerank", post(rerank_tei))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RerankRequest {
    #[serde(default)]
    model: Option<String>,
    query: Value,
    #[serde(default)]
    documents: Option<Vec<Value>>,
    #[serde(default)]
    texts: Option<Vec<Value>>,
    #[serde(default)]
    top_n: Option<usize>,
    #[serde(default)]
    return_documents: Option<bool>,
    #[serde(default)]
    return_text: Option<bool>,
    #[serde(default)]
    raw_scores: bool,
    /// Accepted for TEI's clients: kiln always truncates each pair to the model's length.
    #[serde(default)]
    #[allow(dead_code)]
    truncate: Option<bool>,
}

/// Whether a served model is a reranker (query + document BYTES in, score FP32 out).
pub(crate) fn is_reranker(model: &ServedModel) -> bool {
    let names: Vec<(&str, DataType)> = model.signature.inputs.iter().map(|s| (s.name.as_str(), s.datatype)).collect();
    names == [(kiln_text::QUERY_INPUT, DataType::Bytes), (kiln_text::DOCUMENT_INPUT, DataType::Bytes)]
        && model.signature.outputs.iter().any(|o| o.name == kiln_text::SCORE_OUTPUT)
}

struct Ranked {
    model: String,
    /// (document index, score), best first, cut to top_n.
    order: Vec<(usize, f32)>,
    documents: Vec<String>,
    tokens: i64,
    return_documents: bool,
}

async fn rank(state: &AppState, request: axum::extract::Request, route: &'static str) -> Result<Ranked, OpenAiError> {
    let (parts, body) = request.into_parts();
    let body = super::read_body(&parts.headers, body, state.limits.max_body_bytes, "--max-body-bytes").await?;
    let request: RerankRequest =
        serde_json::from_slice(&body).map_err(|e| OpenAiError::invalid(format!("malformed request: {e}"), "body"))?;
    let query = match request.query {
        Value::String(s) if !s.is_empty() => s,
        Value::String(_) => return Err(OpenAiError::invalid("'query' is an empty string", "query")),
        _ => return Err(OpenAiError::invalid("'query' must be a string", "query")),
    };
    let (field, items) = match (request.documents, request.texts) {
        (Some(d), None) => ("documents", d),
        (None, Some(t)) => ("texts", t),
        (Some(_), Some(_)) => return Err(OpenAiError::invalid("give 'documents' or 'texts', not both", "documents")),
        (None, None) => return Err(OpenAiError::invalid("'documents' (or 'texts') is required", "documents")),
    };
    if items.is_empty() {
        return Err(OpenAiError::invalid(
            format!("'{field}' is an empty list"),
            if field == "texts" { "texts" } else { "documents" },
        ));
    }
    let param = if field == "texts" { "texts" } else { "documents" };
    if items.len() > MAX_DOCUMENTS {
        return Err(OpenAiError {
            error: ApiError::new(
                Kind::TooLarge,
                format!(
                    "'{field}' has {} documents; a rerank request takes at most {MAX_DOCUMENTS} (each is one encoder \
                     pass over query + document: split the list)",
                    items.len()
                ),
            ),
            param: Some(param),
        });
    }
    let documents: Vec<String> = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s),
            Value::Object(mut o) => match o.remove("text") {
                Some(Value::String(s)) => Ok(s),
                _ => Err(OpenAiError::invalid(format!("'{field}'[{i}] is an object without a string 'text'"), param)),
            },
            _ => Err(OpenAiError::invalid(format!("'{field}'[{i}] must be a string or {{\"text\": ...}}"), param)),
        })
        .collect::<Result<_, _>>()?;
    if let Some(i) = documents.iter().position(String::is_empty) {
        return Err(OpenAiError::invalid(format!("'{field}'[{i}] is an empty string"), param));
    }
    if request.top_n == Some(0) {
        return Err(OpenAiError::invalid("'top_n' must be at least 1", "top_n"));
    }
    let name = match request.model {
        Some(name) => name,
        None => only_reranker(state).ok_or_else(|| {
            OpenAiError::invalid("'model' is required (this server does not have exactly one reranker)", "model")
        })?,
    };
    let model = state.engine.model(&name, None)?;
    if !is_reranker(&model) {
        return Err(OpenAiError::invalid(format!("model '{name}' is not a reranker (kind = \"rerank\")"), "model"));
    }
    let n = documents.len();
    let queries = Tensor::new(kiln_text::QUERY_INPUT, vec![1], TensorData::Bytes(vec![query.into_bytes()]))
        .map_err(|e| OpenAiError::invalid(e.to_string(), "query"))?;
    let docs = Tensor::new(
        kiln_text::DOCUMENT_INPUT,
        vec![1, n],
        TensorData::Bytes(documents.iter().map(|d| d.as_bytes().to_vec()).collect()),
    )
    .map_err(|e| OpenAiError::invalid(e.to_string(), param))?;
    let inference = Inference::rest(vec![queries, docs], Vec::new(), route, &parts.headers);
    // The lifecycle applies the v2 limits (--max-string-bytes per text); one query row.
    let response = crate::infer::run(state, &model, inference)
        .await
        .map_err(|error| {
            let param = (error.kind == Kind::BadRequest).then_some(param);
            OpenAiError { error, param }
        })?
        .response;
    let mut scores: &[f32] = &[];
    let mut tokens = 0;
    for out in &response.outputs {
        match (&out.name[..], &out.data) {
            (kiln_text::SCORE_OUTPUT, TensorData::Fp32(v)) => scores = v,
            (kiln_text::TOKEN_COUNT_OUTPUT, TensorData::Int64(v)) => tokens = v.iter().sum(),
            _ => {}
        }
    }
    if scores.len() != n {
        return Err(ApiError::new(Kind::Internal, "the reranker returned no scores").into());
    }
    let mut order: Vec<(usize, f32)> = scores
        .iter()
        .enumerate()
        .map(|(i, &logit)| (i, if request.raw_scores { logit } else { 1.0 / (1.0 + (-logit).exp()) }))
        .collect();
    // Best first; equal scores keep the documents' order.
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    order.truncate(request.top_n.unwrap_or(n));
    Ok(Ranked {
        model: name,
        order,
        documents,
        tokens,
        return_documents: request.return_documents.or(request.return_text).unwrap_or(false),
    })
}

/// The one reranker being served, for requests that name none (TEI's clients send no model).
fn only_reranker(state: &AppState) -> Option<String> {
    let rerankers: Vec<String> = state
        .engine
        .model_states()
        .iter()
        .filter(|s| state.engine.model(&s.name, None).is_ok_and(|m| is_reranker(&m)))
        .map(|s| s.name.clone())
        .collect();
    (rerankers.len() == 1).then(|| rerankers[0].clone())
}

async fn rerank_v1(State(state): State<AppState>, request: axum::extract::Request) -> Result<Json<Value>, OpenAiError> {
    let ranked = rank(&state, request, "POST /v1/rerank").await?;
    let results: Vec<Value> = ranked
        .order
        .iter()
        .map(|&(i, score)| {
            let mut entry = json!({"index": i, "relevance_score": score});
            if ranked.return_documents {
                entry["document"] = json!({"text": ranked.documents[i]});
            }
            entry
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "model": ranked.model,
        "results": results,
        "usage": {"prompt_tokens": ranked.tokens, "total_tokens": ranked.tokens},
    })))
}

async fn rerank_tei(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Json<Value>, OpenAiError> {
    let ranked = rank(&state, request, "POST /rerank").await?;
    Ok(Json(Value::Array(
        ranked
            .order
            .iter()
            .map(|&(i, score)| {
                let mut entry = json!({"index": i, "score": score});
                if ranked.return_documents {
                    entry["text"] = json!(ranked.documents[i]);
                }
                entry
            })
            .collect(),
    )))
}
