//! The KServe v2 REST endpoints (axum).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kiln_engine::{Engine, EngineError, InferRequest, Protocol, ServedModel};
use serde_json::{Value, json};

use crate::v2;

/// Shared state of the REST handlers.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    /// What one request may hold (413 for the body, 400 for the tensors beyond).
    pub limits: crate::limits::RequestLimits,
    /// Cleared when shutdown starts, so load balancers stop sending traffic.
    pub ready: Arc<AtomicBool>,
    /// Prometheus text renderer; `None` when metrics are off.
    pub metrics: Option<crate::MetricsRender>,
    /// The prediction log; `None` when records are off.
    pub records: Option<kiln_records::Recorder>,
    /// The dashboard's live window; `None` when the dashboard is off.
    pub live: Option<crate::live::LiveStats>,
}

/// An error answer: `{"error": "..."}` with a status code.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::ModelNotFound(_) | EngineError::VersionNotFound { .. } => StatusCode::NOT_FOUND,
            EngineError::NotReady(_) | EngineError::LoadFailed { .. } | EngineError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            EngineError::Validation(_) | EngineError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            EngineError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            EngineError::ModelControl(_) => StatusCode::BAD_REQUEST,
            EngineError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            EngineError::Repository(_) | EngineError::Backend(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<v2::DecodeError> for ApiError {
    fn from(e: v2::DecodeError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, e.0)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), error = %self.message, "request failed");
        } else {
            tracing::debug!(status = self.status.as_u16(), error = %self.message, "request refused");
        }
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

/// The v2 REST routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready_version))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_version))
        .route("/v2/models/{model}/config", get(model_config))
        .route("/v2/models/{model}/versions/{version}/config", get(model_config_version))
        .route("/v2/models/{model}/stats", get(model_stats))
        .route("/v2/models/{model}/versions/{version}/stats", get(model_stats_version))
        .route("/v2/models/stats", get(all_stats))
        .route("/metrics", get(metrics))
        .route("/v1/embeddings", post(crate::openai::embeddings))
        .route("/v1/models", get(crate::openai::models))
        .route("/v2/repository/index", post(repository_index).get(repository_index))
        .route("/v2/repository/models/{model}/load", post(load))
        .route("/v2/repository/models/{model}/unload", post(unload))
        .route("/v1/predictions", get(crate::records::list))
        .route("/v1/predictions/{id}", get(crate::records::one))
        .route("/v1/feedback", post(crate::records::feedback))
        .route("/v1/models/{model}/quality", get(crate::records::quality))
        .route("/openapi.json", get(crate::openapi::document))
        .route("/", get(crate::dashboard::index))
        .route("/ui/app.js", get(crate::dashboard::script))
        .route("/ui/app.css", get(crate::dashboard::style))
        .route("/v1/dashboard/models", get(crate::dashboard::models))
        .route("/v1/dashboard/live", get(crate::dashboard::live))
        .fallback(not_found)
        // The infer handlers enforce `limits.max_body_bytes` themselves with a JSON error.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// The router of the separate metrics port: `GET /metrics` only.
pub fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(metrics)).fallback(not_found).with_state(state)
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let render =
        state.metrics.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "metrics are off (--metrics off)"))?;
    let text = tokio::task::spawn_blocking(move || render())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics rendering failed: {e}")))?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], text).into_response())
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {} {}; see the KServe v2 protocol (e.g. POST /v2/models/<model>/infer)",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn server_metadata() -> axum::Json<Value> {
    axum::Json(json!({
        "name": "kiln",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": crate::EXTENSIONS,
    }))
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    if state.ready.load(Ordering::Relaxed) {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "kiln is shutting down"))
    }
}

fn metadata(engine: &Engine, name: &str, version: Option<&str>) -> Result<Value, ApiError> {
    let model = engine.model(name, version)?;
    let served = engine.model_state(name)?.ready_versions();
    Ok(model_metadata_json(&model, &served))
}

/// The metadata document of a model version; outputs with class labels carry them.
pub fn model_metadata_json(model: &ServedModel, served_versions: &[u64]) -> Value {
    let tensor = |s: &kiln_core::TensorSpec| {
        let mut v = json!({ "name": s.name, "datatype": s.datatype.as_str(), "shape": s.shape });
        if let Some(labels) = model.labels.get(&s.name) {
            v["labels"] = json!(labels);
        }
        v
    };
    json!({
        "name": model.name,
        "versions": served_versions.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "platform": "onnxruntime_onnx",
        "inputs": model.signature.inputs.iter().map(tensor).collect::<Vec<_>>(),
        "outputs": model.signature.outputs.iter().map(tensor).collect::<Vec<_>>(),
        "max_batch_size": model.settings.max_batch_size,
        "instances": model.settings.instances,
    })
}

async fn model_metadata(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    metadata(&state.engine, &model, None).map(axum::Json)
}

async fn model_metadata_version(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    metadata(&state.engine, &model, Some(&version)).map(axum::Json)
}

async fn model_ready(State(state): State<AppState>, Path(model): Path<String>) -> Result<StatusCode, ApiError> {
    state.engine.model(&model, None)?;
    Ok(StatusCode::OK)
}

async fn model_ready_version(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.engine.model(&model, Some(&version))?;
    Ok(StatusCode::OK)
}

async fn repository_index(State(state): State<AppState>) -> axum::Json<Value> {
    let rows: Vec<Value> = state
        .engine
        .index()
        .into_iter()
        .map(|row| {
            let mut v = json!({
                "name": row.name,
                "state": if row.ready { "READY" } else { "UNAVAILABLE" },
            });
            if let Some(version) = row.version {
                v["version"] = json!(version.to_string());
            }
            if let Some(reason) = row.reason {
                v["reason"] = json!(reason);
            }
            v
        })
        .collect();
    axum::Json(Value::Array(rows))
}

async fn infer(State(state): State<AppState>, Path(model): Path<String>, request: Request) -> Response {
    run_infer(state, model, None, request).await.unwrap_or_else(IntoResponse::into_response)
}

async fn infer_version(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    request: Request,
) -> Response {
    run_infer(state, model, Some(version), request).await.unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // to_bytes reports both "too large" and transport errors; tell them apart.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        let mut too_large = false;
        while let Some(err) = source {
            too_large |= err.is::<http_body_util::LengthLimitError>();
            source = err.source();
        }
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds the limit of {limit} bytes (--max-body-bytes)"),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"))
        }
    })
}

fn header_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let Some(value) = headers.get(v2::HEADER_LENGTH) else { return Ok(None) };
    value.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()).map(Some).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "Inference-Header-Content-Length must be a non-negative integer")
    })
}

async fn run_infer(
    state: AppState,
    model: String,
    version: Option<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let header_length = header_length(&parts.headers)?;
    // Resolve the model first: an unknown model is a 404 even for a malformed body.
    let served = state.engine.model(&model, version.as_deref())?;
    let body = read_body(body, state.limits.max_body_bytes).await?;
    let decoded = v2::decode_request(&body, header_length)?;
    drop(body);
    state.limits.check(&decoded.inputs).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    let requested: Vec<String> = decoded.outputs.iter().map(|o| o.name.clone()).collect();
    let timeout = v2::timeout_parameter(decoded.parameters.as_ref())?;
    let trace = decoded.parameters.as_ref().and_then(|p| p.get("kiln_trace")).and_then(Value::as_bool) == Some(true);
    let capture = crate::records::begin(state.records.as_ref(), &served, &decoded.inputs, decoded.id.as_deref());
    let result = served
        .infer(InferRequest { inputs: decoded.inputs, outputs: requested, timeout, protocol: Protocol::Rest, trace })
        .await;
    let request_id = crate::records::finish(state.records.as_ref(), capture, &served, "rest", &result)
        .await
        .map_err(|e| crate::records::not_logged(&e))?;
    let response = result?;
    let outputs: Vec<(kiln_core::Tensor, bool)> = response
        .outputs
        .into_iter()
        .map(|t| {
            let binary =
                decoded.outputs.iter().find(|o| o.name == t.name).map_or(decoded.binary_by_default, |o| o.binary);
            (t, binary)
        })
        .collect();
    let mut parameters = decoded.parameters;
    if !response.trace.is_empty() {
        let p = parameters.get_or_insert_with(Default::default);
        for (key, value) in crate::trace_parameters(&response.trace) {
            p.insert(key, value);
        }
    }
    let encoded = v2::encode_response(
        &response.model_name,
        response.model_version,
        decoded.id.as_deref(),
        parameters.as_ref(),
        &outputs,
    );
    let mut answer = if encoded.binary.is_empty() {
        ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], encoded.json).into_response()
    } else {
        let json_len = encoded.json.len();
        let mut body = encoded.json;
        body.extend_from_slice(&encoded.binary);
        (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
                (header::HeaderName::from_static(v2::HEADER_LENGTH), HeaderValue::from(json_len)),
            ],
            body,
        )
            .into_response()
    };
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        answer.headers_mut().insert(header::HeaderName::from_static(crate::records::REQUEST_ID), id);
    }
    Ok(answer)
}

async fn load(State(state): State<AppState>, Path(model): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    crate::load_model(&state.engine, model).await?;
    Ok(axum::Json(json!({})))
}

async fn unload(State(state): State<AppState>, Path(model): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    crate::unload_model(&state.engine, model).await?;
    Ok(axum::Json(json!({})))
}

fn stats_json(engine: &Engine, name: Option<&str>, version: Option<&str>) -> Result<Value, ApiError> {
    let states = match name {
        Some(name) => vec![engine.model_state(name)?],
        None => engine.model_states(),
    };
    let duration = |d: kiln_engine::stats::DurationSnapshot| json!({ "count": d.count, "ns": d.ns });
    let mut rows = Vec::new();
    for state in states {
        for (v, s) in &state.versions {
            let kiln_engine::VersionState::Ready(model) = s else { continue };
            if version.is_some_and(|want| want != v.to_string()) {
                continue;
            }
            let st = model.stats.snapshot();
            rows.push(json!({
                "name": state.name,
                "version": v.to_string(),
                "last_inference": st.last_inference_ms,
                "inference_count": st.inference_count,
                "execution_count": st.execution_count,
                "inference_stats": {
                    "success": duration(st.success),
                    "fail": duration(st.fail),
                    "queue": duration(st.queue),
                    "compute_input": {"count": 0, "ns": 0},
                    "compute_infer": duration(st.compute_infer),
                    "compute_output": {"count": 0, "ns": 0},
                    "cache_hit": {"count": 0, "ns": 0},
                    "cache_miss": {"count": 0, "ns": 0},
                },
                "batch_stats": [],
            }));
        }
    }
    if let (Some(name), Some(version)) = (name, version)
        && rows.is_empty()
    {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("model '{name}' has no served version {version}")));
    }
    Ok(json!({ "model_stats": rows }))
}

async fn model_stats(State(state): State<AppState>, Path(model): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    stats_json(&state.engine, Some(&model), None).map(axum::Json)
}

async fn model_stats_version(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    stats_json(&state.engine, Some(&model), Some(&version)).map(axum::Json)
}

async fn all_stats(State(state): State<AppState>) -> Result<axum::Json<Value>, ApiError> {
    stats_json(&state.engine, None, None).map(axum::Json)
}

/// Triton's model configuration document (`GET .../config`, what tritonclient's
/// `get_model_config` reads), derived from what kiln serves.
fn model_config_json(model: &ServedModel) -> Value {
    let batched = model.settings.max_batch_size > 0;
    let tensor = |s: &kiln_core::TensorSpec| {
        // Triton leaves the batch dimension out of `dims` when the model batches.
        let dims: Vec<i64> = if batched { s.shape.iter().skip(1).copied().collect() } else { s.shape.clone() };
        let mut v = json!({ "name": s.name, "data_type": format!("TYPE_{}", match s.datatype.as_str() {
            "BYTES" => "STRING",
            other => other,
        }), "dims": dims });
        if let Some(labels) = model.labels.get(&s.name) {
            v["label_filename"] = json!("");
            v["labels"] = json!(labels);
        }
        v
    };
    let mut config = json!({
        "name": model.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": model.settings.max_batch_size,
        "input": model.signature.inputs.iter().map(tensor).collect::<Vec<_>>(),
        "output": model.signature.outputs.iter().map(tensor).collect::<Vec<_>>(),
        "instance_group": [{ "count": model.settings.instances, "kind": "KIND_CPU" }],
    });
    if model.settings.dynamic_batching {
        config["dynamic_batching"] = json!({
            "max_queue_delay_microseconds": model.settings.max_queue_delay.as_micros() as u64,
        });
    }
    config
}

async fn model_config(State(state): State<AppState>, Path(model): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let served = state.engine.model(&model, None)?;
    Ok(axum::Json(model_config_json(&served)))
}

async fn model_config_version(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let served = state.engine.model(&model, Some(&version))?;
    Ok(axum::Json(model_config_json(&served)))
}
