//! The gRPC methods, each a thin adapter over [`AppState`] and the shared lifecycle.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::state::AppState;
use kiln_protocol::proto::grpc_inference_service_server::GrpcInferenceService;
use kiln_protocol::proto::model_metadata_response::TensorMetadata;
use kiln_protocol::proto::repository_index_response::ModelIndex;
use kiln_protocol::proto::{
    ModelConfigRequest, ModelConfigResponse, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse, ModelStatisticsRequest, ModelStatisticsResponse,
    ModelStreamInferResponse, RepositoryIndexRequest, RepositoryIndexResponse, RepositoryModelLoadRequest,
    RepositoryModelLoadResponse, RepositoryModelUnloadRequest, RepositoryModelUnloadResponse, ServerLiveRequest,
    ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
};

/// Requests of one ModelStreamInfer stream run concurrently up to this many; answers keep
/// the order of the requests.
const STREAM_CONCURRENCY: usize = 16;

/// The gRPC service: the REST server's state (same engine, readiness, log and limits).
#[derive(Clone)]
pub struct InferenceService {
    state: AppState,
}

impl InferenceService {
    pub fn new(state: &AppState) -> Self {
        InferenceService { state: state.clone() }
    }
}

fn status(e: impl Into<ApiError>) -> Status {
    Status::from(e.into())
}

/// One request; with a prediction log, also kiln's id of the logged request.
async fn infer_one(
    service: &InferenceService,
    request: ModelInferRequest,
    origin: crate::infer::Origin,
) -> Result<(ModelInferResponse, Option<String>), Status> {
    let state = &service.state;
    // Resolve the model first: an unknown model is NOT_FOUND even for a malformed request.
    let served = state.engine.model(&request.model_name, Some(&request.model_version)).map_err(status)?;
    let decoded = super::decode(request, origin).map_err(status)?;
    let answer = crate::infer::run(state, &served, decoded.inference).await.map_err(status)?;
    let request_id = answer.request_id.clone();
    Ok((super::encode(answer, decoded.id, decoded.parameters), request_id))
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.state.is_ready() }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = self.state.engine.ready_model(&r.name, Some(&r.version)).is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "kiln".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::state::EXTENSIONS.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let model = self.state.engine.model(&r.name, Some(&r.version)).map_err(status)?;
        let versions = self.state.engine.model_state(&r.name).map_err(status)?.ready_versions();
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

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        use kiln_protocol::proto::{
            DataType, ModelConfig, ModelDynamicBatching, ModelInput, ModelInstanceGroup, ModelOutput,
            model_instance_group::Kind,
        };
        let r = request.into_inner();
        let model = self.state.engine.model(&r.name, Some(&r.version)).map_err(status)?;
        let view = crate::model_config::view(&model);
        let data_type = |t: &crate::model_config::ConfigTensor<'_>| {
            DataType::from_str_name(&t.data_type).unwrap_or(DataType::TypeInvalid) as i32
        };
        let config = ModelConfig {
            name: view.name.to_string(),
            platform: crate::model_config::PLATFORM.into(),
            backend: crate::model_config::BACKEND.into(),
            max_batch_size: i32::try_from(view.max_batch_size).unwrap_or(i32::MAX),
            input: view
                .inputs
                .iter()
                .map(|t| ModelInput { name: t.name.to_string(), data_type: data_type(t), dims: t.dims.clone() })
                .collect(),
            output: view
                .outputs
                .iter()
                .map(|t| ModelOutput {
                    name: t.name.to_string(),
                    data_type: data_type(t),
                    dims: t.dims.clone(),
                    label_filename: String::new(),
                })
                .collect(),
            instance_group: vec![ModelInstanceGroup {
                name: String::new(),
                count: i32::try_from(view.instances).unwrap_or(i32::MAX),
                kind: Kind::Cpu as i32,
            }],
            dynamic_batching: view.dynamic_batching_delay_us.map(|delay| ModelDynamicBatching {
                preferred_batch_size: Vec::new(),
                max_queue_delay_microseconds: delay,
            }),
        };
        Ok(Response::new(ModelConfigResponse { config: Some(config) }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let origin = crate::infer::Origin {
            route: "inference.GRPCInferenceService/ModelInfer",
            incoming: crate::otel::Incoming::from_grpc(request.metadata()),
        };
        let (answer, request_id) = infer_one(self, request.into_inner(), origin).await?;
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
        // Every request of the stream joins the trace the stream was opened in.
        let incoming = crate::otel::Incoming::from_grpc(request.metadata());
        let stream = request
            .into_inner()
            .map(move |item| {
                let service = service.clone();
                let origin = crate::infer::Origin {
                    route: "inference.GRPCInferenceService/ModelStreamInfer",
                    incoming: incoming.clone(),
                };
                async move {
                    // A failed request is reported in-band and the stream goes on; only a
                    // broken transport ends it.
                    let request = match item {
                        Ok(r) => r,
                        Err(status) => return Err(status),
                    };
                    Ok(match infer_one(&service, request, origin).await {
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
        let name = Some(r.name.as_str()).filter(|n| !n.is_empty());
        let version = Some(r.version.as_str()).filter(|v| !v.is_empty());
        let rows = self.state.statistics(name, version).map_err(status)?;
        let model_stats = rows.into_iter().map(super::statistics).collect();
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let only_ready = request.into_inner().ready;
        let models = self
            .state
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
        let request = request.into_inner();
        crate::rest::v2::refuse_overrides(Some(request.parameters.keys().map(String::as_str))).map_err(status)?;
        self.state.load_model(request.model_name).await.map_err(status)?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        let name = request.into_inner().model_name;
        self.state.unload_model(name).await.map_err(status)?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}
