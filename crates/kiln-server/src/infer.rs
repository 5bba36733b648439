//! The one request lifecycle behind every inference route, whatever the transport: limits →
//! prediction-log capture → engine → log finish. REST (v2 and OpenAI) and gRPC decode their
//! wire format into an [`Inference`], call [`run`], and encode the [`Answer`].

use std::time::Duration;

use kiln_core::Tensor;
use kiln_engine::{InferRequest, InferResponse, ModelHandle, Protocol};

use crate::error::ApiError;
use crate::state::AppState;

/// A decoded request for one model version.
pub struct Inference {
    pub inputs: Vec<Tensor>,
    /// Outputs wanted, in order; empty = all.
    pub outputs: Vec<String>,
    /// The request's own deadline (`timeout` parameter), if any.
    pub timeout: Option<Duration>,
    /// Pipelines: report each step's timing (`kiln_trace` parameter).
    pub trace: bool,
    /// The request's own id (v2 `id`), which feedback may use to find it.
    pub client_key: Option<String>,
    pub protocol: Protocol,
    /// Outputs to answer as their top classes (the classification extension).
    pub classify: Vec<crate::classification::Classify>,
}

/// The engine's answer and, when the log kept the request, kiln's id for it.
pub struct Answer {
    pub response: InferResponse,
    pub request_id: Option<String>,
}

fn protocol_label(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Rest => "rest",
        Protocol::Grpc => "grpc",
        Protocol::InProcess => "in-process",
    }
}

/// Runs one request on `model` (resolved by the caller first, so an unknown model is a 404
/// even when the body is malformed).
pub async fn run(state: &AppState, model: &ModelHandle, request: Inference) -> Result<Answer, ApiError> {
    state.limits.check(&request.inputs).map_err(ApiError::bad_request)?;
    for classify in &request.classify {
        if !model.signature.outputs.iter().any(|o| o.name == classify.output) {
            return Err(ApiError::bad_request(format!(
                "output '{}' (classification) is not an output of model '{}'",
                classify.output, model.name
            )));
        }
    }
    let records = state.records.as_ref();
    let capture = crate::records::begin(records, model, &request.inputs, request.client_key.as_deref());
    let result = model
        .infer(InferRequest {
            inputs: request.inputs,
            outputs: request.outputs,
            timeout: request.timeout,
            protocol: request.protocol,
            trace: request.trace,
        })
        .await;
    let classify = request.classify;
    let request_id = crate::records::finish(records, capture, model, protocol_label(request.protocol), &result).await?;
    let mut response = result?;
    crate::classification::apply(&mut response.outputs, &classify, &model.labels)?;
    Ok(Answer { response, request_id })
}

/// A pipeline's `kiln_trace` as response parameters: per step, `kiln_trace.<step>.start_us`,
/// `.duration_us` (numbers) and `.outcome` (a string) — parameters hold scalars only.
pub fn trace_parameters(trace: &[kiln_engine::pipeline::StepTrace]) -> Vec<(String, TraceValue)> {
    let mut out = Vec::with_capacity(trace.len() * 3);
    for t in trace {
        out.push((format!("kiln_trace.{}.start_us", t.step), TraceValue::Micros(t.start.as_micros() as u64)));
        out.push((format!("kiln_trace.{}.duration_us", t.step), TraceValue::Micros(t.duration.as_micros() as u64)));
        out.push((format!("kiln_trace.{}.outcome", t.step), TraceValue::Text(t.outcome)));
    }
    out
}

/// One trace parameter's value.
pub enum TraceValue {
    Micros(u64),
    Text(&'static str),
}
