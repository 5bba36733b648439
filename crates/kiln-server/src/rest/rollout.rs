//! `GET /v1/models/{model}/rollout`: a model's `[rollout]` side by side — each version's role,
//! requests, errors and latency, its accuracy from the prediction log once feedback arrived, and
//! how often the shadow's answers agreed with the caller's.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use kiln_engine::VersionState;
use kiln_serving::stats::LatencyBuckets;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/models/{model}/rollout", get(rollout))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutQuery {
    /// The log window each version's accuracy is computed over: this many seconds up to now
    /// (default 3600).
    window: Option<i64>,
}

/// Per version, from the prediction log over the last `window` seconds: the rows that got
/// feedback and how many were right (`None` when records are off) — a shadow's from its logged
/// answers to the same requests.
async fn logged_quality(
    state: &AppState,
    model: &str,
    window: i64,
) -> Result<Option<std::collections::BTreeMap<i64, Value>>, ApiError> {
    let Some(recorder) = &state.records else { return Ok(None) };
    let until = kiln_records::now_ms();
    let since = until - window.saturating_mul(1000);
    let failed =
        |e| ApiError::new(crate::error::Kind::Unavailable, format!("the prediction log's database failed: {e}"));
    // The answers callers got, and a shadow's answers to the same requests (logged apart).
    let mut scored = recorder.store().scored(model, since, until).await.map_err(failed)?;
    scored.extend(recorder.store().shadow_scored(model, since, until).await.map_err(failed)?);
    let mut by_version: std::collections::BTreeMap<i64, Vec<&kiln_records::store::Scored>> = Default::default();
    for s in &scored {
        by_version.entry(s.version).or_default().push(s);
    }
    Ok(Some(
        by_version
            .into_iter()
            .map(|(version, items)| {
                let q = kiln_records::quality::bucket(since, &items);
                (
                    version,
                    json!({"logged_requests": q.requests, "labeled_rows": q.labeled_rows, "accuracy": q.accuracy}),
                )
            })
            .collect(),
    ))
}

async fn rollout(
    State(state): State<AppState>,
    Path(model): Path<String>,
    Query(q): Query<RolloutQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let models = state.engine.model_state(&model)?;
    let Some(rollout) = &models.rollout else {
        return Err(ApiError::not_found(format!("model '{model}' has no [rollout] in its config.toml")));
    };
    let window = q.window.unwrap_or(3600);
    if window <= 0 {
        return Err(ApiError::bad_request(format!("window must be a positive number of seconds, not {window}")));
    }
    let quality = logged_quality(&state, &model, window).await?;
    let logged = |version: u64| match &quality {
        None => Value::Null,
        Some(q) => q
            .get(&(version as i64))
            .cloned()
            .unwrap_or_else(|| json!({"logged_requests": 0, "labeled_rows": 0, "accuracy": null})),
    };
    let versions: Vec<Value> = models
        .versions
        .iter()
        .map(|(&version, s)| {
            let role = rollout.role(version);
            let quality = logged(version);
            match s {
                VersionState::Ready(m) => {
                    let stats = m.stats.snapshot();
                    let latency = m.stats.latency.snapshot();
                    let mean =
                        (stats.success.count > 0).then(|| stats.success.ns as f64 / stats.success.count as f64 / 1e6);
                    json!({"version": version, "role": role, "ready": true,
                           "requests": stats.success.count + stats.fail.count, "errors": stats.fail.count,
                           "latency_ms": {"mean": mean, "p50": LatencyBuckets::quantile_ms(&latency, 0.5),
                                          "p99": LatencyBuckets::quantile_ms(&latency, 0.99)},
                           "quality": quality})
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
        "quality_window_s": window,
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
