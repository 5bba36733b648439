//! The prediction log on the request path and its REST API: which requests a model's
//! `[records]` policy keeps, what of them (capped JSON tensors, the predicted labels), the
//! request id that ties feedback to a prediction, and `GET /v1/predictions`,
//! `GET /v1/predictions/{id}`, `POST /v1/feedback`, `GET /v1/models/{model}/quality`.

use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use kiln_core::{DataType, Tensor, TensorData};
use kiln_engine::{EngineError, InferResponse, ServedModel};
use kiln_records::{Feedback, PredictionFilter, Record, Recorder, RecordsError, WriteMode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::rest::{ApiError, AppState};
use crate::v2::JsonData;

/// The header (REST) and metadata key (gRPC) carrying kiln's id of a logged request.
pub const REQUEST_ID: &str = "kiln-request-id";

/// A request the log will keep: what was known before the model ran.
pub struct Capture {
    pub request_id: String,
    client_key: Option<String>,
    started: Instant,
    ts_ms: i64,
    inputs: Option<String>,
    truncated: bool,
    rows: i64,
}

/// 32 hex digits: milliseconds since the epoch, then 80 random bits. Time-ordered ids append
/// to the primary-key index instead of touching a random page per row.
fn new_request_id(ts_ms: i64) -> String {
    format!("{:012x}{:020x}", ts_ms.max(0), fastrand::u128(..) >> 48)
}

#[derive(serde::Serialize)]
struct TensorJson<'a> {
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

/// `{name: {datatype, shape, data}}` of the kept tensors, written straight from the typed
/// elements; past `max_bytes` only the shapes.
fn tensors_json(tensors: &[&Tensor], max_bytes: usize) -> (String, bool) {
    let write = |with_data: bool| {
        let map: Vec<(&str, TensorJson<'_>)> = tensors
            .iter()
            .map(|t| {
                let json = TensorJson {
                    datatype: t.datatype().as_str(),
                    shape: &t.shape,
                    data: with_data.then_some(JsonData(&t.data)),
                };
                (t.name.as_str(), json)
            })
            .collect();
        // Serializing these types cannot fail: keys are strings.
        serde_json::to_string(&OrderedMap(&map)).unwrap_or_default()
    };
    let text = write(true);
    if text.len() <= max_bytes { (text, false) } else { (write(false), true) }
}

/// A list of pairs serialized as a JSON object, in order.
struct OrderedMap<'a, V>(&'a [(&'a str, V)]);

impl<V: serde::Serialize> serde::Serialize for OrderedMap<'_, V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (*k, v)))
    }
}

fn kept<'a>(tensors: &'a [Tensor], names: Option<&'a Vec<String>>) -> impl Iterator<Item = &'a Tensor> + Clone {
    tensors.iter().filter(move |t| names.is_none_or(|n| n.contains(&t.name)))
}

/// Decides whether this request is logged (the model's rate) and captures its inputs.
pub fn begin(
    recorder: Option<&Recorder>,
    model: &ServedModel,
    inputs: &[Tensor],
    client_key: Option<&str>,
) -> Option<Capture> {
    recorder?;
    let policy = &model.settings.records;
    if policy.rate <= 0.0 || (policy.rate < 1.0 && fastrand::f64() >= policy.rate) {
        return None;
    }
    let (text, truncated) = tensors_json(&kept(inputs, policy.inputs.as_ref()).collect::<Vec<_>>(), policy.max_bytes);
    let kept_any = policy.inputs.as_ref().is_none_or(|n| !n.is_empty());
    let ts_ms = kiln_records::now_ms();
    Some(Capture {
        request_id: new_request_id(ts_ms),
        client_key: client_key.map(str::to_string),
        started: Instant::now(),
        ts_ms,
        inputs: kept_any.then_some(text),
        truncated,
        rows: inputs.first().and_then(|t| t.shape.first()).map_or(0, |&n| n as i64),
    })
}

/// The predicted label per row: the configured label output, else the first INT64/INT32/BYTES
/// output with one dimension.
fn labels(model: &ServedModel, outputs: &[Tensor]) -> Option<String> {
    let name = model.settings.records.label.clone().or_else(|| {
        model
            .signature
            .outputs
            .iter()
            .find(|s| matches!(s.datatype, DataType::Int64 | DataType::Int32 | DataType::Bytes) && s.shape.len() == 1)
            .map(|s| s.name.clone())
    })?;
    let t = outputs.iter().find(|t| t.name == name)?;
    let values: Vec<String> = match &t.data {
        TensorData::Int64(v) => v.iter().map(ToString::to_string).collect(),
        TensorData::Int32(v) => v.iter().map(ToString::to_string).collect(),
        TensorData::Bytes(v) => v.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect(),
        _ => return None,
    };
    serde_json::to_string(&values).ok()
}

/// Writes the record of a finished request that [`begin`] kept, and returns its request id for
/// the answer. In durable mode this waits for the commit.
pub async fn finish(
    recorder: Option<&Recorder>,
    capture: Option<Capture>,
    model: &ServedModel,
    protocol: &str,
    result: &Result<InferResponse, EngineError>,
) -> Result<Option<String>, RecordsError> {
    let (Some(recorder), Some(capture)) = (recorder, capture) else { return Ok(None) };
    let policy = &model.settings.records;
    let (outcome, error, outputs, labels, truncated) = match result {
        Ok(r) => {
            let (text, cut) =
                tensors_json(&kept(&r.outputs, policy.outputs.as_ref()).collect::<Vec<_>>(), policy.max_bytes);
            let kept_any = policy.outputs.as_ref().is_none_or(|n| !n.is_empty());
            ("success", None, kept_any.then_some(text), labels(model, &r.outputs), cut)
        }
        Err(e) => ("error", Some(e.to_string()), None, None, false),
    };
    let request_id = capture.request_id.clone();
    let record = Record {
        id: capture.request_id,
        client_key: capture.client_key,
        model: model.name.clone(),
        version: model.version as i64,
        protocol: protocol.to_string(),
        ts_ms: capture.ts_ms,
        latency_us: capture.started.elapsed().as_micros() as i64,
        outcome: outcome.to_string(),
        error,
        rows: capture.rows,
        inputs: capture.inputs,
        outputs,
        labels,
        truncated: truncated || capture.truncated,
    };
    recorder.record(record).await.map(|()| Some(request_id))
}

/// A durable-mode commit failure as the API's error.
pub fn not_logged(e: &RecordsError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the prediction was computed but not logged: {e}"))
}

fn recorder(state: &AppState) -> Result<&Recorder, ApiError> {
    state
        .records
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "the prediction log is off (kiln serve --records off)"))
}

fn db_error(e: &kiln_records::store::DbError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the prediction log's database failed: {e}"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
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
    ApiError::new(StatusCode::BAD_REQUEST, format!("bad query: {}", e.body_text()))
}

pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let recorder = recorder(&state)?;
    let Query(q) = query.map_err(|e| bad_query(&e))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("limit must be 1 to {MAX_PAGE}, not {limit}")));
    }
    if let Some(o) = &q.outcome
        && o != "success"
        && o != "error"
    {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("outcome is 'success' or 'error', not '{o}'")));
    }
    let before = match &q.cursor {
        None => None,
        Some(c) => Some(
            c.split_once('.')
                .and_then(|(ts, id)| Some((ts.parse::<i64>().ok()?, id.to_string())))
                .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "cursor is not one that kiln returned"))?,
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

pub async fn one(State(state): State<AppState>, Path(id): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let recorder = recorder(&state)?;
    let Some((row, feedback)) = recorder.store().prediction(&id).await.map_err(|e| db_error(&e))? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no prediction '{id}' in the log")));
    };
    let mut value = serde_json::to_value(row).unwrap_or_default();
    value["feedback"] = Value::from(feedback);
    Ok(axum::Json(value))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
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

pub async fn feedback(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let recorder = recorder(&state)?;
    if body.len() > MAX_FEEDBACK_BYTES {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("feedback over {MAX_FEEDBACK_BYTES} bytes")));
    }
    // Like the v2 endpoints, no Content-Type is needed.
    let body: FeedbackBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad feedback JSON: {e}")))?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
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
    let matched =
        recorder.store().prediction_exists(body.id.as_deref(), body.key.as_deref()).await.map_err(|e| db_error(&e))?;
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
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok((StatusCode::CREATED, axum::Json(json!({"id": id, "matched": matched}))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityQuery {
    since: Option<i64>,
    until: Option<i64>,
    /// Seconds per bucket.
    bucket: Option<i64>,
}

pub async fn quality(
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
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("since ({since}) must be before until ({until})")));
    }
    if bucket <= 0 || (until - since) / (bucket.saturating_mul(1000)).max(1) > 10_000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bucket must be a positive number of seconds giving at most 10000 buckets",
        ));
    }
    let scored = recorder.store().scored(&model, since, until).await.map_err(|e| db_error(&e))?;
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

/// Whether this server's log waits for commits.
pub fn durable(recorder: Option<&Recorder>) -> bool {
    recorder.is_some_and(|r| r.mode() == WriteMode::Durable)
}
