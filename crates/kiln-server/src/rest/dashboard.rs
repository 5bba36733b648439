//! The built-in web dashboard: `GET /` serves a single page (HTML, JS and CSS compiled into
//! the binary; nothing is fetched from anywhere else), which reads two JSON endpoints —
//! `/v1/dashboard/models` (every model and pipeline, versions, load errors, signatures, step
//! graphs) and `/v1/dashboard/live` (the [`crate::live`] window) — and otherwise calls the same
//! public APIs any client does (v2 infer, the prediction log). The page itself holds no data,
//! so it is served without a token; everything it shows comes through endpoints that honour
//! `--auth-token-file`.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kiln_engine::VersionState;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../../dashboard/index.html");
const APP_JS: &str = include_str!("../../dashboard/app.js");
const APP_CSS: &str = include_str!("../../dashboard/app.css");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/ui/app.js", get(script))
        .route("/ui/app.css", get(style))
        .route("/v1/dashboard/models", get(models))
        .route("/v1/dashboard/live", get(live))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Only this server's own scripts, styles and API; no inline script, no framing.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
                ),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        body,
    )
        .into_response()
}

fn enabled(state: &AppState) -> Result<&crate::live::LiveStats, ApiError> {
    state.live.as_ref().ok_or_else(|| ApiError::not_found("the dashboard is off (kiln serve --dashboard off)"))
}

async fn index(State(state): State<AppState>) -> Result<Response, ApiError> {
    enabled(&state)?;
    Ok(asset("text/html; charset=utf-8", INDEX_HTML))
}

async fn script(State(state): State<AppState>) -> Result<Response, ApiError> {
    enabled(&state)?;
    Ok(asset("text/javascript; charset=utf-8", APP_JS))
}

async fn style(State(state): State<AppState>) -> Result<Response, ApiError> {
    enabled(&state)?;
    Ok(asset("text/css; charset=utf-8", APP_CSS))
}

/// Every model and pipeline: versions and their states, load errors, the served version's
/// signature (with class labels), scheduling settings, and a pipeline's step graph.
async fn models(State(state): State<AppState>) -> Result<axum::Json<Value>, ApiError> {
    enabled(&state)?;
    let mut models = Vec::new();
    for model_state in state.engine.model_states() {
        let versions: Vec<Value> = model_state
            .versions
            .iter()
            .map(|(v, s)| match s {
                VersionState::Ready(_) => json!({ "version": v.to_string(), "state": "READY" }),
                VersionState::Failed(reason) => {
                    json!({ "version": v.to_string(), "state": "UNAVAILABLE", "reason": reason })
                }
            })
            .collect();
        let served = model_state.ready_versions();
        let mut entry = json!({
            "name": model_state.name,
            "state": if served.is_empty() { "UNAVAILABLE" } else { "READY" },
            "versions": versions,
            "kind": "model",
            "rollout": model_state.rollout.is_some(),
        });
        if let Some(reason) = model_state.unavailable_reason() {
            entry["reason"] = json!(reason);
        }
        if let Ok(model) = state.engine.model(&model_state.name, None) {
            entry["metadata"] = super::v2::model_metadata_json(&model, &served);
            entry["settings"] = json!({
                "max_batch_size": model.settings.max_batch_size,
                "max_queue_size": model.settings.max_queue_size,
                "instances": model.settings.instances,
                "dynamic_batching": model.settings.dynamic_batching,
            });
            if let Some(llm) = model.runs::<std::sync::Arc<kiln_llm::LlmModel>>() {
                let info = llm.info();
                entry["kind"] = json!("llm");
                entry["llm"] = json!({
                    "architecture": info.architecture,
                    "parameters": info.parameters,
                    "file_bytes": info.file_bytes,
                    "context_length": info.context_length,
                    "max_sequences": info.max_sequences,
                    "active_sequences": llm.active_sequences(),
                    "queue_depth": llm.queue_depth(),
                    "chat": info.has_chat_template,
                    "chat_template": info.chat_template,
                });
            }
            if let Some(collection) = model.runs::<std::sync::Arc<kiln_collection::Collection>>() {
                // A vector collection, not a model: its size, metric and index.
                entry["kind"] = json!("collection");
                entry["collection"] = super::collections::describe(&state, collection);
            }
            if let Some(pipeline) = model.runs::<std::sync::Arc<kiln_pipeline::Pipeline>>() {
                entry["kind"] = json!("pipeline");
                entry["steps"] = json!(pipeline.steps_view());
                entry["pipeline_outputs"] = json!(
                    pipeline
                        .outputs_view()
                        .into_iter()
                        .map(|(name, from)| json!({ "name": name, "from": from }))
                        .collect::<Vec<_>>()
                );
            }
        }
        models.push(entry);
    }
    Ok(axum::Json(json!({
        "server": { "name": "kiln", "version": env!("CARGO_PKG_VERSION") },
        "records": state.records.is_some(),
        "models": models,
    })))
}

/// The live window: per model, one point per sampling interval.
async fn live(State(state): State<AppState>) -> Result<axum::Json<Value>, ApiError> {
    let live = enabled(&state)?;
    Ok(axum::Json(json!({
        "interval_s": live.interval.as_secs_f64(),
        "window_s": live.interval.as_secs_f64() * live.capacity as f64,
        "models": live.window(),
    })))
}
