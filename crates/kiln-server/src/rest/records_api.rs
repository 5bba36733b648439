//! The prediction log's REST API: `GET /v1/predictions` (filtered, keyset-paginated),
//! `GET /v1/predictions/{id}` (with its feedback), `POST /v1/feedback` (true labels, later)
//! `GET /v1/models/{model}/quality` (per-bucket accuracy and latency) and
//! `GET /v1/models/{model}/drift` (inputs and outputs against a reference, per feature).

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use kiln_records::{Feedback, PredictionFilter, Recorder};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ApiError, Kind};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/predictions", get(list))
        .route("/v1/predictions/{id}", get(one))
        .route("/v1/feedback", post(feedback))
        .route("/v1/models/{model}/quality", get(quality))
        .route("/v1/models/{model}/drift", get(drift))
}

fn recorder(state: &AppState) -> Result<&Recorder, ApiError> {
    state.records.as_ref().ok_or_else(|| ApiError::not_found("the prediction log is off (kiln serve --records off)"))
}

fn db_error(e: &kiln_records::store::DbError) -> ApiError {
    ApiError::new(Kind::Unavailable, format!("the prediction log's database failed: {e}"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    model: Option<String>,
    version: Option<i64>,
    outcome: Option<String>,
    key: Option<String>,
    /// Milliseconds since the Unix epoch.
    since: Option<i64>,
    until: Option<i64>,
    limit: Option<usize>,
    cursor: Option<String>,
    #[serde(default)]
    tensors: bool,
}

const MAX_PAGE: usize = 1000;

fn bad_query(e: &axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::bad_request(format!("bad query: {}", e.body_text()))
}

async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let recorder = recorder(&state)?;
    let Query(q) = query.map_err(|e| bad_query(&e))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!("limit must be 1 to {MAX_PAGE}, not {limit}")));
    }
    if let Some(o) = &q.outcome
        && o != "success"
        && o != "error"
    {
        return Err(ApiError::bad_request(format!("outcome is 'success' or 'error', not '{o}'")));
    }
    let before = match &q.cursor {
        None => None,
        Some(c) => Some(
            c.split_once('.')
                .and_then(|(ts, id)| Some((ts.parse::<i64>().ok()?, id.to_string())))
                .ok_or_else(|| ApiError::bad_request("cursor is not one that kiln returned"))?,
        ),
    };
    let filter = PredictionFilter {
        model: q.model,
        version: q.version,
        outcome: q.outcome,
        client_key: q.key,
        since_ms: q.since,
        until_ms: q.until,
        before,
        limit,
        with_tensors: q.tensors,
    };
    let rows = recorder.store().predictions(&filter).await.map_err(|e| db_error(&e))?;
    let next = (rows.len() == limit).then(|| rows.last().map(|r| format!("{}.{}", r.ts_ms, r.id))).flatten();
    Ok(axum::Json(json!({"predictions": rows, "next_cursor": next})))
}

async fn one(State(state): State<AppState>, Path(id): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let recorder = recorder(&state)?;
    let Some((row, feedback)) = recorder.store().prediction(&id).await.map_err(|e| db_error(&e))? else {
        return Err(ApiError::not_found(format!("no prediction '{id}' in the log")));
    };
    let mut value = serde_json::to_value(row).unwrap_or_default();
    value["feedback"] = Value::from(feedback);
    Ok(axum::Json(value))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    /// kiln's request id (the `kiln-request-id` header of the answer).
    id: Option<String>,
    /// Or the request's own v2 `id`.
    key: Option<String>,
    /// The true label of a one-row request…
    label: Option<Value>,
    /// …or one per row.
    labels: Option<Vec<Value>>,
}

fn label_text(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(i64::from(*b).to_string()),
        other => Err(format!("a label is a string, number or boolean, not {other}")),
    }
}

/// Largest feedback body accepted.
const MAX_FEEDBACK_BYTES: usize = 16 * 1024 * 1024;

async fn feedback(
    State(state): State<AppState>,
    request: Request,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let recorder = recorder(&state)?;
    let (parts, body) = request.into_parts();
    let limit = MAX_FEEDBACK_BYTES.min(state.limits.max_body_bytes);
    let body = super::read_body(&parts.headers, body, limit, "feedback's own limit, or --max-body-bytes").await?;
    // Like the v2 endpoints, no Content-Type is needed.
    let body: FeedbackBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("bad feedback JSON: {e}")))?;
    let bad = |m: String| ApiError::bad_request(m);
    if body.id.is_none() == body.key.is_none() {
        return Err(bad(
            "feedback names its prediction by exactly one of 'id' (kiln-request-id) or 'key' (the request's own id)"
                .into(),
        ));
    }
    let labels = match (body.label, body.labels) {
        (Some(l), None) => vec![label_text(&l).map_err(bad)?],
        (None, Some(ls)) if !ls.is_empty() && ls.len() <= 1_000_000 => {
            ls.iter().map(label_text).collect::<Result<_, _>>().map_err(bad)?
        }
        _ => return Err(bad("feedback carries exactly one of 'label' or a non-empty 'labels' array".into())),
    };
    let rows =
        recorder.store().prediction_rows(body.id.as_deref(), body.key.as_deref()).await.map_err(|e| db_error(&e))?;
    // Labels are per row: a count that fits no logged prediction would replace good labels
    // with nothing that can be scored. Refused, and the earlier feedback stays.
    if !rows.is_empty() && !rows.contains(&(labels.len() as i64)) {
        let which = match (&body.id, &body.key) {
            (Some(id), _) => format!("prediction '{id}'"),
            (None, Some(key)) => format!("the predictions with key '{key}'"),
            (None, None) => "the prediction".into(),
        };
        let counts: Vec<String> = rows.iter().map(i64::to_string).collect();
        return Err(bad(format!(
            "feedback has {} label(s); {which} has {} row(s): send one label per row",
            labels.len(),
            counts.join(" or ")
        )));
    }
    let matched = !rows.is_empty();
    let id = format!("{:032x}", fastrand::u128(..));
    recorder
        .feedback(&Feedback {
            id: id.clone(),
            prediction_id: body.id,
            client_key: body.key,
            ts_ms: kiln_records::now_ms(),
            labels,
        })
        .await
        .map_err(|e| ApiError::new(Kind::Unavailable, e.to_string()))?;
    Ok((StatusCode::CREATED, axum::Json(json!({"id": id, "matched": matched}))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QualityQuery {
    since: Option<i64>,
    until: Option<i64>,
    /// Seconds per bucket.
    bucket: Option<i64>,
}

async fn quality(
    State(state): State<AppState>,
    Path(model): Path<String>,
    query: Result<Query<QualityQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let recorder = recorder(&state)?;
    let Query(q) = query.map_err(|e| bad_query(&e))?;
    let until = q.until.unwrap_or_else(|| kiln_records::now_ms() + 1);
    let since = q.since.unwrap_or(until - 24 * 3600 * 1000);
    let bucket = q.bucket.unwrap_or(3600);
    if since >= until {
        return Err(ApiError::bad_request(format!("since ({since}) must be before until ({until})")));
    }
    if bucket <= 0 || (until - since) / (bucket.saturating_mul(1000)).max(1) > 10_000 {
        return Err(ApiError::bad_request("bucket must be a positive number of seconds giving at most 10000 buckets"));
    }
    let scored = recorder.store().scored(&model, since, until).await.map_err(|e| db_error(&e))?;
    // A name the repository does not hold and the log never saw is a typo, not a quiet model.
    if scored.is_empty() && matches!(state.engine.model(&model, None), Err(kiln_serving::EngineError::ModelNotFound(_)))
    {
        return Err(ApiError::not_found(format!(
            "unknown model '{model}': not in the repository and no predictions logged in this window"
        )));
    }
    let (buckets, total) = kiln_records::quality::report(&scored, since, bucket * 1000);
    Ok(axum::Json(json!({
        "model": model,
        "since_ms": since,
        "until_ms": until,
        "bucket_seconds": bucket,
        "total": total,
        "buckets": buckets,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DriftQuery {
    /// Default: the version served now.
    version: Option<i64>,
    /// The recent window: this many seconds before `until` (default 3600).
    window: Option<i64>,
    /// Milliseconds since the Unix epoch (default: now).
    until: Option<i64>,
    /// `sample` (the export's `parity.json`) or `window` (default: the sample when the version
    /// has one, else the window just before the recent one, as long).
    reference: Option<String>,
    reference_since: Option<i64>,
    reference_until: Option<i64>,
    /// PSI above which a feature has drifted (default 0.2).
    threshold: Option<f64>,
    /// Most log rows read per window, newest first (default 5000).
    limit: Option<usize>,
}

const MAX_DRIFT_ROWS: usize = 50_000;

/// A window of the log as a drift sample: its successful requests' inputs and outputs.
async fn log_sample(
    recorder: &Recorder,
    model: &str,
    version: i64,
    (since, until): (i64, i64),
    limit: usize,
) -> Result<kiln_records::drift::Sample, ApiError> {
    let filter = PredictionFilter {
        model: Some(model.to_string()),
        version: Some(version),
        outcome: Some("success".into()),
        since_ms: Some(since),
        until_ms: Some(until),
        limit,
        with_tensors: true,
        ..PredictionFilter::default()
    };
    let rows = recorder.store().predictions(&filter).await.map_err(|e| db_error(&e))?;
    let mut sample = kiln_records::drift::Sample::default();
    for row in &rows {
        if let Some(inputs) = &row.inputs {
            sample.add("inputs", inputs);
        }
        if let Some(outputs) = &row.outputs {
            sample.add("outputs", outputs);
        }
    }
    Ok(sample)
}

async fn drift(
    State(state): State<AppState>,
    Path(model): Path<String>,
    query: Result<Query<DriftQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let recorder = recorder(&state)?;
    let Query(q) = query.map_err(|e| bad_query(&e))?;
    let version = match q.version {
        Some(v) => v,
        None => i64::try_from(state.engine.model(&model, None)?.version).unwrap_or(i64::MAX),
    };
    let window = q.window.unwrap_or(3600);
    if window <= 0 {
        return Err(ApiError::bad_request(format!("window must be a positive number of seconds, not {window}")));
    }
    let threshold = q.threshold.unwrap_or(0.2);
    if !threshold.is_finite() || threshold <= 0.0 {
        return Err(ApiError::bad_request(format!("threshold must be a positive number, not {threshold}")));
    }
    let limit = q.limit.unwrap_or(5000);
    if limit == 0 || limit > MAX_DRIFT_ROWS {
        return Err(ApiError::bad_request(format!("limit must be 1 to {MAX_DRIFT_ROWS}, not {limit}")));
    }
    let until = q.until.unwrap_or_else(|| kiln_records::now_ms() + 1);
    let since = until - window.saturating_mul(1000);
    let recent = log_sample(recorder, &model, version, (since, until), limit).await?;
    let parity = state.engine.repository().join(&model).join(version.to_string()).join("parity.json");
    let use_sample = match q.reference.as_deref() {
        None => tokio::fs::try_exists(&parity).await.unwrap_or(false),
        Some("sample") => true,
        Some("window") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!("reference is 'sample' or 'window', not '{other}'")));
        }
    };
    let (reference, described) = if use_sample {
        let text = tokio::fs::read(&parity).await.map_err(|e| {
            ApiError::not_found(format!(
                "model '{model}' version {version} has no export sample ({}: {e}); use reference=window",
                parity.display()
            ))
        })?;
        let document: Value = serde_json::from_slice(&text)
            .map_err(|e| ApiError::new(Kind::Internal, format!("{} is not JSON: {e}", parity.display())))?;
        let mut sample = kiln_records::drift::Sample::default();
        sample.add("inputs", &document["inputs"]);
        sample.add("outputs", &document["expected"]);
        (sample, json!({"source": "sample", "path": parity.display().to_string()}))
    } else {
        let r_until = q.reference_until.unwrap_or(since);
        let r_since = q.reference_since.unwrap_or(r_until - window.saturating_mul(1000));
        if r_since >= r_until {
            return Err(ApiError::bad_request(format!(
                "reference_since ({r_since}) must be before reference_until ({r_until})"
            )));
        }
        let sample = log_sample(recorder, &model, version, (r_since, r_until), limit).await?;
        (sample, json!({"source": "window", "since_ms": r_since, "until_ms": r_until}))
    };
    let (features, not_compared) = kiln_records::drift::compare(&reference, &recent, threshold);
    let version_label = version.to_string();
    for f in &features {
        metrics::gauge!("kiln_drift_psi", "model" => model.clone(), "version" => version_label.clone(),
            "feature" => f.feature.clone())
        .set(f.psi);
    }
    let drifted: Vec<&str> = features.iter().filter(|f| f.drifted).map(|f| f.feature.as_str()).collect();
    let verdict = match (features.is_empty(), drifted.is_empty()) {
        (true, _) => "insufficient_data",
        (false, true) => "ok",
        (false, false) => "drifted",
    };
    if !features.is_empty() {
        metrics::gauge!("kiln_drift_drifted", "model" => model.clone(), "version" => version_label)
            .set(if drifted.is_empty() { 0.0 } else { 1.0 });
    }
    let mut reference_json = described;
    reference_json["requests"] = json!(reference.requests);
    Ok(axum::Json(json!({
        "model": model,
        "version": version,
        "threshold": threshold,
        "state": verdict,
        "drifted": drifted,
        "recent": {"since_ms": since, "until_ms": until, "requests": recent.requests},
        "reference": reference_json,
        "features": features,
        "not_compared": not_compared,
    })))
}
