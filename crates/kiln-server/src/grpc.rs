//! The KServe v2 gRPC service (`inference.GRPCInferenceService`) on tonic, sharing the
//! engine handle with REST.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use kiln_engine::{Engine, EngineError, InferRequest, Protocol, VersionState};

use crate::proto::infer_parameter::ParameterChoice as Choice;
use prost::bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::proto::grpc_inference_service_server::GrpcInferenceService;
use crate::proto::model_infer_response::InferOutputTensor;
use crate::proto::model_metadata_response::TensorMetadata;
use crate::proto::repository_index_response::ModelIndex;
use crate::proto::{
    InferBatchStatistics, InferStatistics, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse, ModelStatistics, ModelStatisticsRequest,
    ModelStatisticsResponse, ModelStreamInferResponse, RepositoryIndexRequest, RepositoryIndexResponse,
    RepositoryModelLoadRequest, RepositoryModelLoadResponse, RepositoryModelUnloadRequest,
    RepositoryModelUnloadResponse, ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest,
    ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse, StatisticDuration,
};
use crate::v2;

/// Requests of one ModelStreamInfer stream run concurrently up to this many; answers keep
/// the order of the requests.
const STREAM_CONCURRENCY: usize = 16;

/// The gRPC service.
#[derive(Clone)]
pub struct InferenceService {
    engine: Engine,
    ready: Arc<AtomicBool>,
    records: Option<kiln_records::Recorder>,
    limits: crate::limits::RequestLimits,
}

impl InferenceService {
    /// The gRPC face of the REST server's state (same engine, readiness, log and limits).
    pub fn new(state: &crate::rest::AppState) -> Self {
        InferenceService {
            engine: state.engine.clone(),
            ready: state.ready.clone(),
            records: state.records.clone(),
            limits: state.limits.clone(),
        }
    }
}

/// The one place engine errors become gRPC status codes.
pub fn status(e: &EngineError) -> Status {
    let message = e.to_string();
    match e {
        EngineError::ModelNotFound(_) | EngineError::VersionNotFound { .. } => Status::not_found(message),
        EngineError::Validation(_) | EngineError::InvalidRequest(_) => Status::invalid_argument(message),
        EngineError::NotReady(_) | EngineError::LoadFailed { .. } | EngineError::Unavailable(_) => {
            Status::unavailable(message)
        }
        EngineError::Overloaded(_) => Status::resource_exhausted(message),
        EngineError::ModelControl(_) => Status::failed_precondition(message),
        EngineError::Timeout(_) => Status::deadline_exceeded(message),
        EngineError::Repository(_) | EngineError::Backend(_) => Status::internal(message),
    }
}

fn invalid(e: v2::DecodeError) -> Status {
    Status::invalid_argument(e.0)
}

/// One request; with a prediction log, also kiln's id of the logged request.
async fn infer_one(
    service: &InferenceService,
    request: ModelInferRequest,
) -> Result<(ModelInferResponse, Option<String>), Status> {
    let ModelInferRequest { model_name, model_version, id, parameters, inputs, outputs, raw_input_contents } = request;
    let (engine, records) = (&service.engine, service.records.as_ref());
    let served = engine.model(&model_name, Some(&model_version)).map_err(|e| status(&e))?;
    let tensors = kiln_protocol::grpc::decode_inputs(inputs, &raw_input_contents).map_err(invalid)?;
    service.limits.check(&tensors).map_err(Status::invalid_argument)?;
    let requested = outputs.into_iter().map(|o| o.name).collect();
    let trace =
        matches!(parameters.get("kiln_trace").and_then(|p| p.parameter_choice.as_ref()), Some(Choice::BoolParam(true)));
    let timeout = match parameters.get("timeout").and_then(|p| p.parameter_choice.as_ref()) {
        None => None,
        Some(Choice::Int64Param(us)) if *us > 0 => Some(Duration::from_micros(*us as u64)),
        Some(Choice::Uint64Param(us)) if *us > 0 => Some(Duration::from_micros(*us)),
        Some(other) => {
            return Err(Status::invalid_argument(format!(
                "parameter 'timeout' must be a positive integer of microseconds, got {other:?}"
            )));
        }
    };
    let capture = crate::records::begin(records, &served, &tensors, Some(id.as_str()).filter(|k| !k.is_empty()));
    let result = served
        .infer(InferRequest { inputs: tensors, outputs: requested, timeout, protocol: Protocol::Grpc, trace })
        .await;
    let request_id = crate::records::finish(records, capture, &served, "grpc", &result)
        .await
        .map_err(|e| Status::unavailable(crate::records::not_logged(&e).message))?;
    let response = result.map_err(|e| status(&e))?;
    let mut raw_output_contents = Vec::with_capacity(response.outputs.len());
    let outputs = response
        .outputs
        .into_iter()
        .map(|t| {
            raw_output_contents.push(Bytes::from(v2::encode_binary(&t.data)));
            InferOutputTensor {
                datatype: t.datatype().as_str().to_string(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                name: t.name,
                parameters: HashMap::new(),
                contents: None,
            }
        })
        .collect();
    let mut parameters = parameters;
    for (key, value) in crate::trace_parameters(&response.trace) {
        let choice = match value {
            serde_json::Value::String(s) => Choice::StringParam(s),
            other => Choice::Uint64Param(other.as_u64().unwrap_or_default()),
        };
        parameters.insert(key, crate::proto::InferParameter { parameter_choice: Some(choice) });
    }
    let answer = ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version.to_string(),
        id,
        parameters,
        outputs,
        raw_output_contents,
    };
    Ok((answer, request_id))
}

fn duration(d: kiln_engine::stats::DurationSnapshot) -> Option<StatisticDuration> {
    Some(StatisticDuration { count: d.count, ns: d.ns })
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.ready.load(Ordering::Relaxed) }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = self.engine.model(&r.name, Some(&r.version)).is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "kiln".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::EXTENSIONS.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let model = self.engine.model(&r.name, Some(&r.version)).map_err(|e| status(&e))?;
        let versions = self.engine.model_state(&r.name).map_err(|e| status(&e))?.ready_versions();
        let meta = |s: &kiln_core::TensorSpec| TensorMetadata {
            name: s.name.clone(),
            datatype: s.datatype.as_str().into(),
            shape: s.shape.clone(),
        };
        Ok(Response::new(ModelMetadataResponse {
            name: model.name.clone(),
            versions: versions.iter().map(ToString::to_string).collect(),
            platform: "onnxruntime_onnx".into(),
            inputs: model.signature.inputs.iter().map(meta).collect(),
            outputs: model.signature.outputs.iter().map(meta).collect(),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let (answer, request_id) = infer_one(self, request.into_inner()).await?;
        let mut response = Response::new(answer);
        if let Some(id) = request_id.and_then(|id| id.parse().ok()) {
            response.metadata_mut().insert(crate::records::REQUEST_ID, id);
        }
        Ok(response)
    }

    type ModelStreamInferStream = ResponseStream;

    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let service = self.clone();
        let stream = request
            .into_inner()
            .map(move |item| {
                let service = service.clone();
                async move {
                    // A failed request is reported in-band and the stream goes on; only a
                    // broken transport ends it.
                    let request = match item {
                        Ok(r) => r,
                        Err(status) => return Err(status),
                    };
                    Ok(match infer_one(&service, request).await {
                        Ok((response, _)) => {
                            ModelStreamInferResponse { error_message: String::new(), infer_response: Some(response) }
                        }
                        Err(status) => ModelStreamInferResponse {
                            error_message: status.message().to_string(),
                            infer_response: None,
                        },
                    })
                }
            })
            .buffered(STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let states = if r.name.is_empty() {
            self.engine.model_states()
        } else {
            vec![self.engine.model_state(&r.name).map_err(|e| status(&e))?]
        };
        let mut model_stats = Vec::new();
        for state in states {
            for (version, v) in &state.versions {
                let VersionState::Ready(model) = v else { continue };
                if !r.version.is_empty() && r.version != version.to_string() {
                    continue;
                }
                let s = model.stats.snapshot();
                model_stats.push(ModelStatistics {
                    name: state.name.clone(),
                    version: version.to_string(),
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
                });
            }
        }
        if !r.name.is_empty() && !r.version.is_empty() && model_stats.is_empty() {
            return Err(Status::not_found(format!("model '{}' has no served version {}", r.name, r.version)));
        }
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let only_ready = request.into_inner().ready;
        let models = self
            .engine
            .index()
            .into_iter()
            .filter(|row| !only_ready || row.ready)
            .map(|row| ModelIndex {
                name: row.name,
                version: row.version.map(|v| v.to_string()).unwrap_or_default(),
                state: if row.ready { "READY" } else { "UNAVAILABLE" }.into(),
                reason: row.reason.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        let name = request.into_inner().model_name;
        crate::load_model(&self.engine, name).await.map_err(|e| status(&e))?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let name = request.into_inner().model_name;
        crate::unload_model(&self.engine, name).await.map_err(|e| status(&e))?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}
