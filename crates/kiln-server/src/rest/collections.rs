//! Vector collections over REST: `GET /v1/collections[/{name}]` (count, dim, index state),
//! `PUT /v1/collections/{name}/points` (upsert, `vector` or `text`), `POST
//! /v1/collections/{name}/points/delete` and `POST /v1/collections/{name}/search`. A write is
//! checked whole, committed to the points store and then applied in memory: an acknowledged
//! upsert is durable, and a refused batch leaves nothing behind.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post, put};
use kiln_collection::{Collection, CollectionError, Filter, Point};
use kiln_core::{Tensor, TensorData};
use kiln_serving::{ModelHandle, Outcome, Protocol};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, Kind};
use crate::state::AppState;

/// Points one upsert may carry.
pub const MAX_POINTS: usize = 4096;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/collections", get(list))
        .route("/v1/collections/{name}", get(info))
        .route("/v1/collections/{name}/points", put(upsert))
        .route("/v1/collections/{name}/points/delete", post(delete))
        .route("/v1/collections/{name}/search", post(search))
}

fn collection_error(e: CollectionError) -> ApiError {
    match e {
        CollectionError::Invalid(m) => ApiError::bad_request(m),
        CollectionError::Loading(_) => ApiError::new(Kind::Unavailable, e.to_string()),
        CollectionError::Index(m) => ApiError::new(Kind::Internal, format!("index: {m}")),
        CollectionError::Timeout(_) => ApiError::new(Kind::Timeout, e.to_string()),
    }
}

fn find(state: &AppState, name: &str) -> Result<(ModelHandle, Arc<Collection>), ApiError> {
    let unknown = || ApiError::not_found(format!("unknown collection '{name}'"));
    if kiln_repository::layout::validate_model_name(name).is_err() {
        return Err(unknown());
    }
    if let Ok(model) = state.engine.model(name, None)
        && let Some(collection) = model.runs::<Arc<Collection>>().cloned()
    {
        return Ok((model, collection));
    }
    // Not serving: a collection that failed to load says why (503); anything else is no
    // collection at all (404), whatever state a model of that name is in.
    let folder = state.engine.repository().join(name);
    let is_collection = kiln_repository::layout::read_config(&folder).is_ok_and(|c| c.is_vector_index());
    match state.engine.model_state(name) {
        Ok(model) if is_collection => Err(ApiError::new(
            Kind::Unavailable,
            model.unavailable_reason().unwrap_or_else(|| format!("collection '{name}' is not ready")),
        )),
        Ok(_) => Err(ApiError::not_found(format!("'{name}' is a model, not a collection (kind = \"vector_index\")"))),
        Err(_) => Err(unknown()),
    }
}

/// A collection as `GET /v1/collections/{name}` (and the dashboard) shows it.
pub(super) fn describe(state: &AppState, c: &Collection) -> Value {
    let info = c.info();
    let config = &c.config;
    let index = if config.exact {
        json!({"kind": "exact"})
    } else {
        json!({"kind": "hnsw", "m": config.m(), "ef_construction": config.ef_construction(), "ef_search": config.ef_search()})
    };
    json!({
        "name": c.name, "dim": config.dim, "metric": config.metric.as_str(), "count": info.count,
        "state": if info.ready { "ready" } else { "loading" }, "index": index, "embedder": config.embedder,
        "max_k": config.max_k(), "memory_bytes": info.memory_bytes, "applied_seq": info.applied_seq,
        "durable": state.points.is_some(),
    })
}

async fn list(State(state): State<AppState>) -> axum::Json<Value> {
    let all: Vec<Value> = state.engine.collections().iter().map(|c| describe(&state, c)).collect();
    axum::Json(json!({"collections": all}))
}

async fn info(State(state): State<AppState>, Path(name): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let (_, collection) = find(&state, &name)?;
    Ok(axum::Json(describe(&state, &collection)))
}

async fn body_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = super::read_body(headers, body, state.limits.max_body_bytes, "--max-body-bytes").await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertBody {
    points: Vec<UpsertPoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertPoint {
    id: String,
    vector: Option<Vec<f32>>,
    text: Option<String>,
    payload: Option<Value>,
}

/// Texts → vectors through the collection's embedder, by the write's deadline.
async fn embed(
    state: &AppState,
    collection: &Collection,
    texts: Vec<String>,
    deadline: Option<std::time::Instant>,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let resolver = state.engine.resolver();
    let texts = texts.into_iter().map(String::into_bytes).collect();
    kiln_engine::collection::serve::embed(collection, resolver.as_ref(), texts, Protocol::Rest, deadline, None)
        .await
        .map_err(ApiError::from)
}

/// An upsert or a delete runs inside a write [`Call`](crate::infer::Call): counted in flight, in
/// the collection's statistics and `kiln_requests_total`, its embedding bounded by the
/// collection's `request_timeout_ms`. The store commit is never cut short: a write the store
/// acknowledged is applied.
async fn upsert(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<Value>, ApiError> {
    let (model, collection) = find(&state, &name)?;
    let call = crate::infer::Call::write(&state, &model, Protocol::Rest);
    let result = upsert_points(&state, &call, collection, headers, body).await;
    call.end(outcome_of(&result));
    result
}

/// How a write ended, for its statistics and metrics.
fn outcome_of<T>(result: &Result<T, ApiError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(e) => e.outcome(),
    }
}

async fn upsert_points(
    state: &AppState,
    call: &crate::infer::Call,
    collection: Arc<Collection>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<Value>, ApiError> {
    let request: UpsertBody = body_json(state, &headers, body).await?;
    let n = request.points.len();
    if n == 0 || n > MAX_POINTS {
        return Err(ApiError::bad_request(format!("an upsert takes 1 to {MAX_POINTS} points, not {n}")));
    }
    let mut points = Vec::with_capacity(n);
    let mut texts = Vec::new();
    for (i, p) in request.points.into_iter().enumerate() {
        let vector = match (p.vector, p.text) {
            (Some(v), None) => v,
            (None, Some(t)) => {
                if t.len() > state.limits.max_string_bytes {
                    return Err(ApiError::bad_request(format!(
                        "points[{i}] ('{}'): text is {} bytes; the limit is {} (--max-string-bytes)",
                        p.id,
                        t.len(),
                        state.limits.max_string_bytes
                    )));
                }
                texts.push((i, t));
                Vec::new()
            }
            _ => return Err(ApiError::bad_request(format!("points[{i}]: give either \"vector\" or \"text\""))),
        };
        if p.payload.as_ref().is_some_and(|v| !v.is_object()) {
            return Err(ApiError::bad_request(format!("points[{i}]: payload must be a JSON object")));
        }
        // Payloads live in memory with every point: each is capped.
        let bytes = p.payload.as_ref().map_or(0, |v| v.to_string().len());
        if bytes > state.limits.max_payload_bytes {
            return Err(ApiError::new(
                Kind::TooLarge,
                format!(
                    "points[{i}] ('{}'): payload is {bytes} bytes of JSON; the limit is {} (--max-payload-bytes)",
                    p.id, state.limits.max_payload_bytes
                ),
            ));
        }
        points.push(Point { id: p.id, vector, payload: p.payload });
    }
    if !texts.is_empty() {
        let (slots, texts): (Vec<usize>, Vec<String>) = texts.into_iter().unzip();
        for (slot, vector) in slots.into_iter().zip(embed(state, &collection, texts, call.deadline()).await?) {
            points[slot].vector = vector;
        }
    }
    // Check everything first (nothing is written for a bad batch), in the stored form.
    let points = collection.prepare(points).map_err(collection_error)?;
    let seq = match &state.points {
        Some(store) => {
            let stored: Vec<kiln_records::points::StoredPoint> = points
                .iter()
                .map(|(id, vector, payload)| kiln_records::points::StoredPoint {
                    id: id.clone(),
                    vector: vector.clone(),
                    payload: payload.as_ref().map(ToString::to_string),
                })
                .collect();
            Some(store.upsert(&collection.name, &stored).await.map_err(|e| store_error(&e))?)
        }
        None => None,
    };
    // Applied under its own sequence number without moving the applied mark: the follower
    // does that, so a change another replica committed just before this one is never skipped.
    let applied = tokio::task::spawn_blocking(move || collection.apply_prepared(points, seq.unwrap_or(0), false))
        .await
        .map_err(|_| ApiError::new(Kind::Internal, "the upsert panicked"))?
        .map_err(collection_error)?;
    Ok(axum::Json(json!({"upserted": applied, "seq": seq, "durable": seq.is_some()})))
}

fn store_error(e: &kiln_records::store::DbError) -> ApiError {
    ApiError::new(Kind::Unavailable, format!("the points store failed; nothing was written: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    ids: Vec<String>,
}

async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<Value>, ApiError> {
    let (model, collection) = find(&state, &name)?;
    let call = crate::infer::Call::write(&state, &model, Protocol::Rest);
    let result = delete_points(&state, collection, headers, body).await;
    call.end(outcome_of(&result));
    result
}

async fn delete_points(
    state: &AppState,
    collection: Arc<Collection>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<Value>, ApiError> {
    let request: DeleteBody = body_json(state, &headers, body).await?;
    if request.ids.is_empty() || request.ids.len() > MAX_POINTS {
        return Err(ApiError::bad_request(format!("a delete takes 1 to {MAX_POINTS} ids, not {}", request.ids.len())));
    }
    let seq = match &state.points {
        Some(store) => Some(store.delete(&collection.name, &request.ids).await.map_err(|e| store_error(&e))?),
        None => None,
    };
    let removed = collection.delete(&request.ids, seq.unwrap_or(0), false).map_err(collection_error)?;
    Ok(axum::Json(json!({"deleted": removed, "seq": seq, "durable": seq.is_some()})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    vector: Option<Vec<f32>>,
    text: Option<String>,
    k: Option<usize>,
    filter: Option<Value>,
    /// A hybrid search's weights: `{"text": 1.0, "vector": 1.0}` (each defaults to 1).
    weights: Option<SearchWeights>,
    #[serde(default = "yes")]
    with_payload: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchWeights {
    #[serde(default = "one")]
    text: f32,
    #[serde(default = "one")]
    vector: f32,
}

fn one() -> f32 {
    1.0
}

fn yes() -> bool {
    true
}

/// A search runs as a v2 request on the collection through the one lifecycle (`infer::run`):
/// the request limits, its deadline (`request_timeout_ms`), statistics, metrics and the
/// prediction log apply as to any model. What REST adds is checked first, with its own names.
async fn search(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<Value>, ApiError> {
    let (model, collection) = find(&state, &name)?;
    let request: SearchBody = body_json(&state, &headers, body).await?;
    let k = request.k.unwrap_or_else(|| collection.config.default_k());
    collection.check_k(k).map_err(collection_error)?;
    if let Some(filter) = &request.filter {
        Filter::parse(filter).map_err(collection_error)?;
    }
    let weights = request.weights.map(|w| kiln_collection::Weights { text: w.text, vector: w.vector });
    if let Some(w) = &weights {
        w.check().map_err(collection_error)?;
    }
    let mut inputs = Vec::new();
    match (request.vector, request.text) {
        (None, None) => return Err(ApiError::bad_request("give \"vector\", \"text\" or both")),
        (Some(_), Some(_)) if !collection.has_keywords() => {
            return Err(ApiError::bad_request(format!(
                "give either \"vector\" or \"text\": collection '{name}' has no keyword index ([index] text_field) \
                 to search text beside a vector"
            )));
        }
        (vector, text) => {
            if let Some(v) = vector {
                let v = collection.prepare_vector("vector", v).map_err(collection_error)?;
                inputs.push(Tensor::new("query", vec![1, v.len()], TensorData::Fp32(v)));
            }
            if let Some(t) = text {
                inputs.push(Tensor::new("text", vec![1], TensorData::Bytes(vec![t.into_bytes()])));
            }
        }
    }
    let mut inputs =
        inputs.into_iter().collect::<Result<Vec<_>, _>>().map_err(|e| ApiError::bad_request(e.to_string()))?;
    inputs.push(
        Tensor::new("k", vec![1], TensorData::Int64(vec![k as i64]))
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
    );
    if let Some(w) = weights {
        inputs.push(
            Tensor::new("weights", vec![2], TensorData::Fp32(vec![w.text, w.vector]))
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        );
    }
    if let Some(filter) = &request.filter {
        inputs.push(
            Tensor::new("filter", vec![1], TensorData::Bytes(vec![filter.to_string().into_bytes()]))
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        );
    }
    let mut outputs = vec!["ids".to_string(), "scores".to_string()];
    if request.with_payload {
        outputs.push("payloads".to_string());
    }
    let inference = crate::infer::Inference::rest(inputs, outputs, "POST /v1/collections/{name}/search", &headers);
    let answer = crate::infer::run(&state, &model, inference).await?;
    let mut tensors = answer.response.outputs.into_iter();
    let (Some(ids), Some(scores)) = (tensors.next(), tensors.next()) else {
        return Err(ApiError::new(Kind::Internal, "the search answered no ids and scores"));
    };
    let payloads = tensors.next();
    let (TensorData::Bytes(ids), TensorData::Fp32(scores)) = (ids.data, scores.data) else {
        return Err(ApiError::new(Kind::Internal, "the search answered ids and scores of other types"));
    };
    let payloads = match payloads.map(|t| t.data) {
        Some(TensorData::Bytes(p)) => Some(p),
        _ => None,
    };
    // A v2 answer pads a row short of k with id ""; REST lists only what was found.
    let results: Vec<Value> = ids
        .into_iter()
        .zip(scores)
        .enumerate()
        .filter(|(_, (id, _))| !id.is_empty())
        .map(|(i, (id, score))| {
            let mut hit = json!({"id": String::from_utf8_lossy(&id), "score": score});
            if let Some(payloads) = &payloads {
                hit["payload"] = payloads.get(i).and_then(|p| serde_json::from_slice(p).ok()).unwrap_or(Value::Null);
            }
            hit
        })
        .collect();
    Ok(axum::Json(json!({"results": results, "metric": collection.config.metric.as_str()})))
}
