//! The KServe v2 REST endpoints: health, metadata, Triton's model config, inference (JSON and
//! the binary tensor extension), the repository API and the statistics extension.

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kiln_engine::Engine;
use kiln_serving::{Protocol, ServedModel};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::infer::{Inference, TraceValue};
use crate::state::{AppState, VersionStats};
use kiln_protocol::v2;

pub fn routes() -> Router<AppState> {
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
        .route("/v2/repository/index", post(repository_index).get(repository_index))
        .route("/v2/repository/models/{model}/load", post(load))
        .route("/v2/repository/models/{model}/unload", post(unload))
}

async fn server_metadata() -> axum::Json<Value> {
    axum::Json(json!({
        "name": "kiln",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": crate::state::EXTENSIONS,
    }))
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    if state.is_ready() {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::new(crate::error::Kind::Unavailable, "kiln is shutting down"))
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
    state.engine.ready_model(&model, None)?;
    Ok(StatusCode::OK)
}

async fn model_ready_version(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.engine.ready_model(&model, Some(&version))?;
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

async fn load(
    State(state): State<AppState>,
    Path(model): Path<String>,
    request: Request,
) -> Result<axum::Json<Value>, ApiError> {
    let (parts, body) = request.into_parts();
    let body = super::read_body(&parts.headers, body, state.limits.max_body_bytes, "--max-body-bytes").await?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let request: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("malformed load request JSON: {e}")))?;
        let parameters = match &request {
            Value::Object(fields) => {
                if let Some(other) = fields.keys().find(|k| *k != "parameters") {
                    return Err(ApiError::bad_request(format!("unknown field '{other}' in the load request")));
                }
                fields.get("parameters")
            }
            other => return Err(ApiError::bad_request(format!("the load request must be a JSON object, got {other}"))),
        };
        refuse_overrides(parameters.and_then(Value::as_object).map(|p| p.keys().map(String::as_str)))?;
    }
    state.load_model(model).await?;
    Ok(axum::Json(json!({})))
}

/// kiln loads what the repository folder holds: Triton's load-time overrides (`config`, and
/// `file:` contents) would serve something no file describes, so they are refused by name.
pub(crate) fn refuse_overrides<'a>(keys: Option<impl Iterator<Item = &'a str>>) -> Result<(), ApiError> {
    if let Some(key) = keys.and_then(|mut k| k.next()) {
        return Err(ApiError::bad_request(format!(
            "load parameter '{key}' is not supported: kiln loads the model as its repository folder describes it \
             (change config.toml or config.pbtxt there, then load)"
        )));
    }
    Ok(())
}

async fn unload(State(state): State<AppState>, Path(model): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    state.unload_model(model).await?;
    Ok(axum::Json(json!({})))
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

fn header_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let Some(value) = headers.get(v2::HEADER_LENGTH) else { return Ok(None) };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("Inference-Header-Content-Length must be a non-negative integer"))
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
    let body = super::read_body(&parts.headers, body, state.limits.max_body_bytes, "--max-body-bytes").await?;
    let decoded = v2::decode_request(&body, header_length)?;
    drop(body);
    let inference = Inference {
        inputs: decoded.inputs,
        outputs: decoded.outputs.iter().map(|o| o.name.clone()).collect(),
        timeout: v2::timeout_parameter(decoded.parameters.as_ref())?,
        trace: decoded.parameters.as_ref().and_then(|p| p.get("kiln_trace")).and_then(Value::as_bool) == Some(true),
        client_key: decoded.id.clone(),
        protocol: Protocol::Rest,
        classify: decoded
            .outputs
            .iter()
            .filter_map(|o| o.classification.map(|n| (o, n)))
            .map(|(o, n)| {
                Ok(crate::classification::Classify {
                    output: o.name.clone(),
                    count: crate::classification::count(&o.name, Some(n))?,
                })
            })
            .collect::<Result<_, ApiError>>()?,
        origin: crate::infer::Origin {
            route: if version.is_some() {
                "POST /v2/models/{model}/versions/{version}/infer"
            } else {
                "POST /v2/models/{model}/infer"
            },
            incoming: crate::otel::Incoming::from_http(&parts.headers),
        },
    };
    let answer = crate::infer::run(&state, &served, inference).await?;
    let response = answer.response;
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
        for (key, value) in crate::infer::trace_parameters(&response.trace) {
            let value = match value {
                TraceValue::Micros(us) => Value::from(us),
                TraceValue::Text(s) => Value::from(s),
            };
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
    let mut reply = if encoded.binary.is_empty() {
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
    if let Some(id) = answer.request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        reply.headers_mut().insert(header::HeaderName::from_static(crate::records::REQUEST_ID), id);
    }
    Ok(reply)
}

fn stats_json(rows: Vec<VersionStats>) -> Value {
    let duration = |d: kiln_serving::stats::DurationSnapshot| json!({ "count": d.count, "ns": d.ns });
    let zero = json!({"count": 0, "ns": 0});
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|s| {
            json!({
                "name": s.name,
                "version": s.version,
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": duration(s.success),
                    "fail": duration(s.fail),
                    "queue": duration(s.queue),
                    "compute_input": zero,
                    "compute_infer": duration(s.compute_infer),
                    "compute_output": zero,
                    "cache_hit": zero,
                    "cache_miss": zero,
                },
                "batch_stats": [],
            })
        })
        .collect();
    json!({ "model_stats": rows })
}

async fn model_stats(State(state): State<AppState>, Path(model): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(stats_json(state.statistics(Some(&model), None)?)))
}

async fn model_stats_version(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(stats_json(state.statistics(Some(&model), Some(&version))?)))
}

async fn all_stats(State(state): State<AppState>) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(stats_json(state.statistics(None, None)?)))
}

/// Triton's model configuration document (`GET .../config`, what tritonclient's
/// `get_model_config` reads), derived from what kiln serves.
fn model_config_json(model: &ServedModel) -> Value {
    let view = crate::model_config::view(model);
    let tensor = |t: &crate::model_config::ConfigTensor<'_>| {
        let mut v = json!({ "name": t.name, "data_type": t.data_type, "dims": t.dims });
        if let Some(labels) = t.labels {
            v["label_filename"] = json!("");
            v["labels"] = json!(labels);
        }
        v
    };
    let mut config = json!({
        "name": view.name,
        "platform": crate::model_config::PLATFORM,
        "backend": crate::model_config::BACKEND,
        "max_batch_size": view.max_batch_size,
        "input": view.inputs.iter().map(tensor).collect::<Vec<_>>(),
        "output": view.outputs.iter().map(tensor).collect::<Vec<_>>(),
        "instance_group": [{ "count": view.instances, "kind": "KIND_CPU" }],
    });
    if let Some(delay) = view.dynamic_batching_delay_us {
        config["dynamic_batching"] = json!({ "max_queue_delay_microseconds": delay });
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
