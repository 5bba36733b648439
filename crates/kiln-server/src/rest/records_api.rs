//! The prediction log's REST API: `GET /v1/predictions` (filtered, keyset-paginated),
//! `GET /v1/predictions/{id}` (with its feedback), `POST /v1/feedback` (true labels, later)
//! and `GET /v1/models/{model}/quality` (per-bucket accuracy and latency).

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
