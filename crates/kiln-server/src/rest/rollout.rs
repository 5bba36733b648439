//! `GET /v1/models/{model}/rollout`: a model's `[rollout]` side by side — each version's role,
//! requests, errors and latency, and how often the shadow's answers agreed with the caller's.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use kiln_engine::VersionState;
use kiln_serving::stats::LatencyBuckets;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/models/{model}/rollout", get(rollout))
}

async fn rollout(State(state): State<AppState>, Path(model): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let models = state.engine.model_state(&model)?;
    let Some(rollout) = &models.rollout else {
        return Err(ApiError::not_found(format!("model '{model}' has no [rollout] in its config.toml")));
    };
    let versions: Vec<Value> = models
        .versions
        .iter()
        .map(|(&version, s)| {
            let role = rollout.role(version);
            match s {
                VersionState::Ready(m) => {
                    let stats = m.stats.snapshot();
                    let latency = m.stats.latency.snapshot();
                    let mean =
                        (stats.success.count > 0).then(|| stats.success.ns as f64 / stats.success.count as f64 / 1e6);
                    json!({"version": version, "role": role, "ready": true,
                           "requests": stats.success.count + stats.fail.count, "errors": stats.fail.count,
                           "latency_ms": {"mean": mean, "p50": LatencyBuckets::quantile_ms(&latency, 0.5),
                                          "p99": LatencyBuckets::quantile_ms(&latency, 0.99)}})
                }
                VersionState::Failed(reason) => {
                    json!({"version": version, "role": role, "ready": false, "error": reason})
                }
            }
        })
        .collect();
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let (agreed, disagreed) = (n(&rollout.agreed), n(&rollout.disagreed));
    let compared = agreed + disagreed;
    Ok(axum::Json(json!({
        "model": model,
        "canary": rollout.config.canary.map(|c| json!({"version": c.version, "percent": c.percent})),
        "shadow": rollout.config.shadow,
        "versions": versions,
        "shadow_comparison": rollout.config.shadow.map(|_| json!({
            "sent": n(&rollout.sent), "agreed": agreed, "disagreed": disagreed,
            "failed": n(&rollout.failed), "dropped": n(&rollout.dropped),
            "agreement": (compared > 0).then(|| agreed as f64 / compared as f64),
            "tolerance": rollout.tolerance(),
        })),
    })))
}
