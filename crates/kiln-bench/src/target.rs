//! What a benchmark calls: one prebuilt request, sent the same way every time.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_core::{DataType, Tensor, TensorData, TensorSpec};
use kiln_protocol::proto::ModelInferRequest;
use kiln_protocol::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use kiln_protocol::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use kiln_protocol::v2;
use kiln_serving::{InferRequest, ModelHandle};
use serde_json::json;
use tonic::transport::Channel;

use crate::BenchError;

/// How requests travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// REST with JSON tensors.
    RestJson,
    /// REST with the binary tensor extension (what tritonclient sends).
    RestBinary,
    /// gRPC `ModelInfer` with `raw_input_contents`.
    Grpc,
    /// kiln's engine in this process: no network, no encoding (the ceiling).
    InProcess,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::RestJson => "rest-json",
            Protocol::RestBinary => "rest-binary",
            Protocol::Grpc => "grpc",
            Protocol::InProcess => "in-process",
        }
    }
}

/// Where and what to call.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub protocol: Protocol,
    /// host:port of the REST or gRPC endpoint (unused in-process).
    pub url: String,
    pub model: String,
    pub version: Option<String>,
    /// Rows per request for inputs with a dynamic first dimension (random inputs).
    pub batch: usize,
    /// A v2 JSON inference request to send instead of random inputs.
    pub input_file: Option<PathBuf>,
    /// In-process: an ONNX file or a repository model folder.
    pub model_path: Option<PathBuf>,
    /// gRPC connections to spread requests over.
    pub connections: usize,
}

/// A connected target with its request built.
pub enum Target {
    Rest {
        client: reqwest::Client,
        url: String,
        body: bytes::Bytes,
        header_length: Option<usize>,
        label: String,
    },
    Grpc {
        clients: Vec<GrpcInferenceServiceClient<Channel>>,
        next: AtomicUsize,
        request: ModelInferRequest,
        label: String,
    },
    InProcess {
        model: ModelHandle,
        request: InferRequest,
        label: String,
    },
}

fn setup(msg: impl Into<String>) -> BenchError {
    BenchError::Setup(msg.into())
}

/// A small deterministic generator for random inputs (xorshift64*).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Random inputs that fit a model's declared inputs, `batch` rows on dynamic first dims.
pub fn random_inputs(specs: &[TensorSpec], batch: usize) -> Result<Vec<Tensor>, BenchError> {
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    specs
        .iter()
        .map(|s| {
            let shape: Vec<usize> = s
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if d >= 0 {
                        d as usize
                    } else if i == 0 {
                        batch
                    } else {
                        1
                    }
                })
                .collect();
            let n: usize = shape.iter().product();
            let mut ints = |m: u64| (0..n).map(|_| noise.next() % m).collect::<Vec<u64>>();
            let data = match s.datatype {
                DataType::Bool => TensorData::Bool(ints(2).into_iter().map(|v| v == 1).collect()),
                DataType::Uint8 => TensorData::Uint8(ints(10).into_iter().map(|v| v as u8).collect()),
                DataType::Uint16 => TensorData::Uint16(ints(10).into_iter().map(|v| v as u16).collect()),
                DataType::Uint32 => TensorData::Uint32(ints(10).into_iter().map(|v| v as u32).collect()),
                DataType::Uint64 => TensorData::Uint64(ints(10)),
                DataType::Int8 => TensorData::Int8(ints(10).into_iter().map(|v| v as i8).collect()),
                DataType::Int16 => TensorData::Int16(ints(10).into_iter().map(|v| v as i16).collect()),
                DataType::Int32 => TensorData::Int32(ints(10).into_iter().map(|v| v as i32).collect()),
                DataType::Int64 => TensorData::Int64(ints(10).into_iter().map(|v| v as i64).collect()),
                DataType::Fp16 => TensorData::Fp16((0..n).map(|_| half::f16::from_f64(noise.unit())).collect()),
                DataType::Fp32 => TensorData::Fp32((0..n).map(|_| noise.unit() as f32).collect()),
                DataType::Fp64 => TensorData::Fp64((0..n).map(|_| noise.unit()).collect()),
                DataType::Bytes => TensorData::Bytes(vec![b"kiln".to_vec(); n]),
            };
            Tensor::new(s.name.clone(), shape, data).map_err(|e| setup(e.to_string()))
        })
        .collect()
}

fn rest_json_body(inputs: &[Tensor]) -> Vec<u8> {
    let inputs: Vec<_> = inputs
        .iter()
        .map(|t| json!({"name": t.name, "shape": t.shape, "datatype": t.datatype().as_str(), "data": v2::JsonData(&t.data)}))
        .collect();
    serde_json::to_vec(&json!({ "inputs": inputs })).unwrap_or_default()
}

fn rest_binary_body(inputs: &[Tensor], outputs: &[String]) -> (Vec<u8>, usize) {
    let mut binary = Vec::new();
    let headers: Vec<_> = inputs
        .iter()
        .map(|t| {
            let bytes = v2::encode_binary(&t.data);
            let size = bytes.len();
            binary.extend_from_slice(&bytes);
            json!({"name": t.name, "shape": t.shape, "datatype": t.datatype().as_str(), "parameters": {"binary_data_size": size}})
        })
        .collect();
    let outputs: Vec<_> = outputs.iter().map(|o| json!({"name": o, "parameters": {"binary_data": true}})).collect();
    let mut body = serde_json::to_vec(&json!({ "inputs": headers, "outputs": outputs })).unwrap_or_default();
    let header_length = body.len();
    body.extend_from_slice(&binary);
    (body, header_length)
}

async fn rest_signature(
    client: &reqwest::Client,
    spec: &TargetSpec,
) -> Result<(Vec<TensorSpec>, Vec<String>), BenchError> {
    let path = match &spec.version {
        Some(v) => format!("http://{}/v2/models/{}/versions/{v}", spec.url, spec.model),
        None => format!("http://{}/v2/models/{}", spec.url, spec.model),
    };
    let response = client.get(&path).send().await.map_err(|e| setup(format!("GET {path}: {e}")))?;
    let status = response.status();
    let meta: serde_json::Value = response.json().await.map_err(|e| setup(format!("GET {path}: {e}")))?;
    if !status.is_success() {
        return Err(setup(format!("GET {path}: {status}: {meta}")));
    }
    let inputs = serde_json::from_value(meta["inputs"].clone()).map_err(|e| setup(format!("model metadata: {e}")))?;
    let outputs: Vec<TensorSpec> =
        serde_json::from_value(meta["outputs"].clone()).map_err(|e| setup(format!("model metadata: {e}")))?;
    Ok((inputs, outputs.into_iter().map(|o| o.name).collect()))
}

fn file_inputs(path: &PathBuf) -> Result<Vec<Tensor>, BenchError> {
    let body = std::fs::read(path).map_err(|e| setup(format!("cannot read {}: {e}", path.display())))?;
    Ok(v2::decode_request(&body, None).map_err(|e| setup(format!("{}: {e}", path.display())))?.inputs)
}

impl Target {
    /// Connects and builds the request.
    pub async fn connect(spec: &TargetSpec) -> Result<Target, BenchError> {
        let label = format!("{} {}", spec.protocol.label(), spec.model);
        match spec.protocol {
            Protocol::RestJson | Protocol::RestBinary => {
                let client = kiln_protocol::client::http_client_builder()
                    .pool_max_idle_per_host(usize::MAX)
                    .tcp_nodelay(true)
                    .build()
                    .map_err(|e| setup(e.to_string()))?;
                let (specs, outputs) = rest_signature(&client, spec).await?;
                let inputs = match &spec.input_file {
                    Some(path) => file_inputs(path)?,
                    None => random_inputs(&specs, spec.batch)?,
                };
                let (body, header_length) = if spec.protocol == Protocol::RestJson {
                    (rest_json_body(&inputs), None)
                } else {
                    let (body, n) = rest_binary_body(&inputs, &outputs);
                    (body, Some(n))
                };
                let url = match &spec.version {
                    Some(v) => format!("http://{}/v2/models/{}/versions/{v}/infer", spec.url, spec.model),
                    None => format!("http://{}/v2/models/{}/infer", spec.url, spec.model),
                };
                Ok(Target::Rest { client, url, body: body.into(), header_length, label })
            }
            Protocol::Grpc => {
                let endpoint = format!("http://{}", spec.url);
                let mut clients = Vec::new();
                for _ in 0..spec.connections.max(1) {
                    let channel = Channel::from_shared(endpoint.clone())
                        .map_err(|e| setup(e.to_string()))?
                        .tcp_nodelay(true)
                        .connect()
                        .await
                        .map_err(|e| setup(format!("cannot connect to {endpoint}: {e}")))?;
                    clients.push(GrpcInferenceServiceClient::new(channel).max_decoding_message_size(usize::MAX));
                }
                let meta = clients[0]
                    .clone()
                    .model_metadata(kiln_protocol::proto::ModelMetadataRequest {
                        name: spec.model.clone(),
                        version: spec.version.clone().unwrap_or_default(),
                    })
                    .await
                    .map_err(|e| setup(format!("ModelMetadata: {}", e.message())))?
                    .into_inner();
                let specs = meta
                    .inputs
                    .iter()
                    .map(|t| {
                        Ok(TensorSpec {
                            name: t.name.clone(),
                            datatype: t.datatype.parse().map_err(|e| setup(format!("{e}")))?,
                            shape: t.shape.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, BenchError>>()?;
                let inputs = match &spec.input_file {
                    Some(path) => file_inputs(path)?,
                    None => random_inputs(&specs, spec.batch)?,
                };
                let request = ModelInferRequest {
                    model_name: spec.model.clone(),
                    model_version: spec.version.clone().unwrap_or_default(),
                    raw_input_contents: inputs.iter().map(|t| v2::encode_binary(&t.data).into()).collect(),
                    inputs: inputs
                        .iter()
                        .map(|t| InferInputTensor {
                            name: t.name.clone(),
                            datatype: t.datatype().as_str().into(),
                            shape: t.shape.iter().map(|&d| d as i64).collect(),
                            ..Default::default()
                        })
                        .collect(),
                    outputs: meta
                        .outputs
                        .iter()
                        .map(|o| InferRequestedOutputTensor { name: o.name.clone(), ..Default::default() })
                        .collect(),
                    ..Default::default()
                };
                Ok(Target::Grpc { clients, next: AtomicUsize::new(0), request, label })
            }
            Protocol::InProcess => {
                let path = spec.model_path.as_ref().ok_or_else(|| {
                    setup("in-process needs --model-path (an ONNX file or a repository model folder)")
                })?;
                let model = Arc::new(kiln_engine::repository::load_path(path).map_err(|e| setup(e.to_string()))?);
                let inputs = match &spec.input_file {
                    Some(path) => file_inputs(path)?,
                    None => random_inputs(&model.signature.inputs, spec.batch)?,
                };
                let request = InferRequest { inputs, ..InferRequest::default() };
                Ok(Target::InProcess { model, request, label })
            }
        }
    }

    /// One request.
    pub async fn call(&self) -> Result<(), String> {
        match self {
            Target::Rest { client, url, body, header_length, .. } => {
                let mut request = client.post(url).body(body.clone());
                if let Some(n) = header_length {
                    request = request.header(v2::HEADER_LENGTH, n.to_string());
                }
                let response = request.send().await.map_err(|e| e.to_string())?;
                let status = response.status();
                let bytes = response.bytes().await.map_err(|e| e.to_string())?;
                if status.is_success() { Ok(()) } else { Err(format!("{status}: {}", String::from_utf8_lossy(&bytes))) }
            }
            Target::Grpc { clients, next, request, .. } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % clients.len();
                clients[i]
                    .clone()
                    .model_infer(request.clone())
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            }
            Target::InProcess { model, request, .. } => {
                model.infer(request.clone()).await.map(|_| ()).map_err(|e| e.to_string())
            }
        }
    }

    /// Whether requests go to an engine in this process (no network).
    pub fn is_in_process(&self) -> bool {
        matches!(self, Target::InProcess { .. })
    }

    /// One request from a thread that may block: in-process targets run it on an idle
    /// instance right here ([`kiln_serving::ServedModel::infer_blocking`]); network targets
    /// are not for this.
    pub fn call_blocking(&self) -> Result<(), String> {
        match self {
            Target::InProcess { model, request, .. } => {
                model.infer_blocking(request.clone()).map(|_| ()).map_err(|e| e.to_string())
            }
            Target::Rest { .. } | Target::Grpc { .. } => Err("a network target is called with call()".into()),
        }
    }

    /// A one-line description for reports.
    pub fn describe(&self) -> String {
        match self {
            Target::Rest { label, .. } | Target::Grpc { label, .. } | Target::InProcess { label, .. } => label.clone(),
        }
    }
}
