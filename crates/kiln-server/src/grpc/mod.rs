//! The KServe v2 gRPC face (`inference.GRPCInferenceService` on tonic): `service` implements
//! the methods over the same [`AppState`](crate::state::AppState) and lifecycle as REST; this
//! module turns protocol messages into kiln's types and back. Errors become `tonic::Status`
//! only through `crate::error`.

mod service;

use std::collections::HashMap;

use kiln_serving::Protocol;
use prost::bytes::Bytes;

use crate::error::ApiError;
use crate::infer::{Answer, Inference, TraceValue};
use crate::state::VersionStats;
use kiln_protocol::proto::infer_parameter::ParameterChoice as Choice;
use kiln_protocol::proto::model_infer_response::InferOutputTensor;
use kiln_protocol::proto::{
    InferBatchStatistics, InferParameter, InferStatistics, ModelInferRequest, ModelInferResponse, ModelStatistics,
    StatisticDuration,
};

pub use service::InferenceService;

/// What `infer` needs from a `ModelInferRequest`, and what the answer echoes back.
struct Decoded {
    inference: Inference,
    id: String,
    parameters: HashMap<String, InferParameter>,
}

fn decode(request: ModelInferRequest, origin: crate::infer::Origin) -> Result<Decoded, ApiError> {
    let ModelInferRequest { id, parameters, inputs, outputs, raw_input_contents, .. } = request;
    let mut classify = Vec::new();
    for o in &outputs {
        if let Some(p) = o.parameters.get("classification") {
            let n = match p.parameter_choice {
                Some(Choice::Int64Param(n)) => Some(i128::from(n)),
                Some(Choice::Uint64Param(n)) => Some(i128::from(n)),
                _ => None,
            };
            let count = crate::classification::count(&o.name, n)?;
            classify.push(crate::classification::Classify { output: o.name.clone(), count });
        }
    }
    let inference = Inference {
        classify,
        inputs: kiln_protocol::grpc::decode_inputs(inputs, &raw_input_contents)?,
        outputs: outputs.into_iter().map(|o| o.name).collect(),
        timeout: kiln_protocol::grpc::timeout_parameter(&parameters)?,
        trace: kiln_protocol::grpc::trace_parameter(&parameters),
        client_key: Some(id.clone()).filter(|k| !k.is_empty()),
        protocol: Protocol::Grpc,
        origin,
    };
    Ok(Decoded { inference, id, parameters })
}

/// The answer as a `ModelInferResponse`: every output in `raw_output_contents` (what
/// tritonclient's `as_numpy` reads), the request's parameters echoed plus any trace.
fn encode(answer: Answer, id: String, mut parameters: HashMap<String, InferParameter>) -> ModelInferResponse {
    let response = answer.response;
    let mut raw_output_contents = Vec::with_capacity(response.outputs.len());
    let outputs = response
        .outputs
        .into_iter()
        .map(|t| {
            raw_output_contents.push(Bytes::from(kiln_protocol::v2::encode_binary(&t.data)));
            InferOutputTensor {
                datatype: t.datatype().as_str().to_string(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                name: t.name,
                parameters: HashMap::new(),
                contents: None,
            }
        })
        .collect();
    for (key, value) in crate::infer::trace_parameters(&response.trace) {
        let choice = match value {
            TraceValue::Text(s) => Choice::StringParam(s.to_string()),
            TraceValue::Micros(us) => Choice::Uint64Param(us),
        };
        parameters.insert(key, InferParameter { parameter_choice: Some(choice) });
    }
    ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version.to_string(),
        id,
        parameters,
        outputs,
        raw_output_contents,
    }
}

/// Bearer-token middleware for the gRPC port: refusals are UNAUTHENTICATED /
/// PERMISSION_DENIED statuses, before any method runs.
pub async fn auth_layer(
    axum::extract::State(tokens): axum::extract::State<std::sync::Arc<crate::auth::TokenFile>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let access = crate::auth::grpc_access(request.uri().path());
    match tokens.check(request.headers().get(axum::http::header::AUTHORIZATION), access) {
        Ok(()) => next.run(request).await,
        Err(refusal) => tonic::Status::from(ApiError::from(refusal)).into_http::<axum::body::Body>().into_response(),
    }
}

fn duration(d: kiln_serving::stats::DurationSnapshot) -> Option<StatisticDuration> {
    Some(StatisticDuration { count: d.count, ns: d.ns })
}

fn statistics(s: VersionStats) -> ModelStatistics {
    ModelStatistics {
        name: s.name,
        version: s.version,
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(InferStatistics {
            success: duration(s.success),
            fail: duration(s.fail),
            queue: duration(s.queue),
            compute_input: duration(Default::default()),
            compute_infer: duration(s.compute_infer),
            compute_output: duration(Default::default()),
            cache_hit: duration(Default::default()),
            cache_miss: duration(Default::default()),
        }),
        batch_stats: Vec::<InferBatchStatistics>::new(),
    }
}
