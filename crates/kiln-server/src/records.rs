//! The prediction log on the request path: whether a model's `[records]` policy keeps a
//! request, what of it (tensors copied up to the cap — formatted later by the writer — and the
//! label column), and the time-ordered request id that ties feedback to a prediction.
//! The log's REST API is `rest::records_api`.

use std::time::Instant;

use kiln_core::{DataType, Tensor};
use kiln_records::{Captured, Labels, PendingRecord, Record, Recorder, RecordsError};
use kiln_serving::{EngineError, InferResponse, ServedModel};

/// The header (REST) and metadata key (gRPC) carrying kiln's id of a logged request.
pub const REQUEST_ID: &str = "kiln-request-id";

/// A request the log will keep: what was known before the model ran.
pub struct Capture {
    pub request_id: String,
    client_key: Option<String>,
    started: Instant,
    ts_ms: i64,
    inputs: Option<Captured>,
    rows: i64,
}

/// A new request id, 128 bits: milliseconds since the epoch, then 80 random bits. Time-ordered
/// ids append to the primary-key index instead of touching a random page per row; written as 32
/// hex digits it is also the W3C trace id of a trace kiln starts.
pub fn new_request_id() -> u128 {
    let ms = u128::try_from(kiln_records::now_ms().max(0)).unwrap_or_default() & ((1 << 48) - 1);
    (ms << 80) | (fastrand::u128(..) >> 48)
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
    request_id: u128,
) -> Option<Capture> {
    recorder?;
    let policy = &model.settings.records;
    if policy.rate <= 0.0 || (policy.rate < 1.0 && fastrand::f64() >= policy.rate) {
        return None;
    }
    let kept_any = policy.inputs.as_ref().is_none_or(|n| !n.is_empty());
    let ts_ms = kiln_records::now_ms();
    Some(Capture {
        request_id: format!("{request_id:032x}"),
        client_key: client_key.map(str::to_string),
        started: Instant::now(),
        ts_ms,
        inputs: kept_any.then(|| Captured::new(kept(inputs, policy.inputs.as_ref()), policy.max_bytes)),
        rows: inputs.first().and_then(|t| t.shape.first()).map_or(0, |&n| n as i64),
    })
}

/// The label column: the configured label output, else the first INT64/INT32/BYTES output
/// with one dimension.
fn labels(model: &ServedModel, outputs: &[Tensor]) -> Option<Labels> {
    let name = match &model.settings.records.label {
        Some(name) => name.as_str(),
        None => model
            .signature
            .outputs
            .iter()
            .find(|s| matches!(s.datatype, DataType::Int64 | DataType::Int32 | DataType::Bytes) && s.shape.len() == 1)
            .map(|s| s.name.as_str())?,
    };
    Labels::new(&outputs.iter().find(|t| t.name == name)?.data)
}

/// What the log keeps of an answer under `model`'s policy: the outcome, the error text, the
/// outputs (capped) and the label column.
fn answered(
    model: &ServedModel,
    result: &Result<InferResponse, EngineError>,
) -> (&'static str, Option<String>, Option<Captured>, Option<Labels>) {
    let policy = &model.settings.records;
    match result {
        Ok(r) => {
            let kept_any = policy.outputs.as_ref().is_none_or(|n| !n.is_empty());
            let outputs = kept_any.then(|| Captured::new(kept(&r.outputs, policy.outputs.as_ref()), policy.max_bytes));
            ("success", None, outputs, labels(model, &r.outputs))
        }
        Err(e) => ("error", Some(e.to_string()), None, None),
    }
}

/// Hands the record of a finished request that [`begin`] kept to the log, and returns its
/// request id for the answer. In durable mode this waits for the commit.
pub async fn finish(
    recorder: Option<&Recorder>,
    capture: Option<Capture>,
    model: &ServedModel,
    protocol: &str,
    result: &Result<InferResponse, EngineError>,
) -> Result<Option<String>, RecordsError> {
    let (Some(recorder), Some(capture)) = (recorder, capture) else { return Ok(None) };
    let (outcome, error, outputs, labels) = answered(model, result);
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
        inputs: None,
        outputs: None,
        labels: None,
        truncated: false,
        shadow_of: None,
    };
    let pending = PendingRecord { record, inputs: capture.inputs, outputs, labels };
    recorder.record(pending).await.map(|()| Some(request_id))
}

/// Logs a `[rollout]` shadow version's answer to the logged request `shadow_of`, apart from the
/// answers callers got (`shadow_predictions`): its outputs under the shadow's own policy, its
/// label column, latency and outcome — what the rollout view scores once feedback arrives for
/// that request. Off the caller's path (the shadow's task); a failure is counted by the log.
pub async fn shadow(
    recorder: &Recorder,
    shadow_of: String,
    model: &ServedModel,
    (started, ts_ms): (Instant, i64),
    result: &Result<InferResponse, EngineError>,
) {
    let (outcome, _, outputs, labels) = answered(model, result);
    let record = Record {
        id: format!("{:032x}", new_request_id()),
        client_key: None,
        model: model.name.clone(),
        version: model.version as i64,
        protocol: "shadow".to_string(),
        ts_ms,
        latency_us: started.elapsed().as_micros() as i64,
        outcome: outcome.to_string(),
        error: None,
        rows: 0,
        inputs: None,
        outputs: None,
        labels: None,
        truncated: false,
        shadow_of: Some(shadow_of),
    };
    let pending = PendingRecord { record, inputs: None, outputs, labels };
    if let Err(e) = recorder.record(pending).await {
        tracing::debug!(error = %e, "a shadow answer was not logged");
    }
}
