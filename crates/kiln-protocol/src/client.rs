//! Clients for the endpoints a pipeline's remote steps call: another KServe v2 server over
//! REST (binary tensors) or gRPC, and OpenAI-compatible chat completions and embeddings.
//!
//! Each call takes its own timeout and returns a [`ClientError`] that says whether trying
//! again can help ([`ClientError::retryable`]); retry policy belongs to the caller.

use std::time::Duration;

use kiln_core::{Tensor, TensorData};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

use crate::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use crate::proto::{ModelInferRequest, ModelInferResponse};
use crate::v2;

/// Why a remote call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No connection, or it broke before an answer came.
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server answered with an error status (HTTP code, or the gRPC code's HTTP meaning).
    #[error("status {code}: {message}")]
    Status { code: u16, message: String },
    /// The answer was not what the protocol says.
    #[error("malformed answer: {0}")]
    Malformed(String),
}

impl ClientError {
    /// Failures that another attempt may not meet: lost connections, timeouts, 408, 429 and
    /// 5xx other than 501. A 4xx is the request's fault and a malformed answer is the
    /// server's, neither of which a retry fixes.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Connection(_) | ClientError::Timeout(_) => true,
            ClientError::Status { code, .. } => matches!(code, 408 | 429) || (*code >= 500 && *code != 501),
            ClientError::Malformed(_) => false,
        }
    }
}

/// W3C Trace Context's header (and gRPC metadata key): the calling span, so that the server's
/// spans join the caller's trace.
pub const TRACEPARENT: &str = "traceparent";

/// An HTTP client builder that speaks https: rustls on the ring provider, verifying servers
/// against the system's certificate store (`SSL_CERT_FILE` / `SSL_CERT_DIR` override it).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        // Err only when another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

fn http_client() -> Result<reqwest::Client, String> {
    http_client_builder().build().map_err(|e| format!("cannot start an HTTP client: {e}"))
}

fn from_reqwest(e: &reqwest::Error, timeout: Duration) -> ClientError {
    if e.is_timeout() {
        ClientError::Timeout(timeout)
    } else if e.is_decode() {
        ClientError::Malformed(e.to_string())
    } else {
        // Walk the sources: reqwest's own message ("error sending request") hides the cause.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        ClientError::Connection(message)
    }
}

async fn checked(response: reqwest::Response, timeout: Duration) -> Result<reqwest::Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.map_err(|e| from_reqwest(&e, timeout))?;
    // KServe and OpenAI servers put the reason in {"error": ...}; keep it short either way.
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| match v.get("error") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("message").and_then(Value::as_str).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| body.chars().take(300).collect());
    Err(ClientError::Status { code: status.as_u16(), message })
}

/// A KServe v2 server over REST. Tensors travel in the binary extension both ways.
#[derive(Debug, Clone)]
pub struct KserveRestClient {
    http: reqwest::Client,
    base: String,
}

impl KserveRestClient {
    /// `base` is `http://host:port` or `https://host:port`.
    pub fn new(base: &str) -> Result<Self, String> {
        Ok(KserveRestClient { http: http_client()?, base: base.trim_end_matches('/').to_string() })
    }

    pub async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        inputs: &[Tensor],
        outputs: &[String],
        timeout: Duration,
        traceparent: Option<&str>,
    ) -> Result<Vec<Tensor>, ClientError> {
        let url = match version {
            Some(v) => format!("{}/v2/models/{model}/versions/{v}/infer", self.base),
            None => format!("{}/v2/models/{model}/infer", self.base),
        };
        let (header_len, body) = v2::encode_request(inputs, outputs);
        let mut request = self
            .http
            .post(url)
            .timeout(timeout)
            .header("content-type", "application/octet-stream")
            .header(v2::HEADER_LENGTH, header_len);
        if let Some(traceparent) = traceparent {
            request = request.header(TRACEPARENT, traceparent);
        }
        let response = request.body(body).send().await.map_err(|e| from_reqwest(&e, timeout))?;
        let response = checked(response, timeout).await?;
        let header_length = match response.headers().get(v2::HEADER_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                    .ok_or_else(|| ClientError::Malformed(format!("{} is not a number: {v:?}", v2::HEADER_LENGTH)))?,
            ),
        };
        let body = response.bytes().await.map_err(|e| from_reqwest(&e, timeout))?;
        v2::decode_response(&body, header_length).map_err(|e| ClientError::Malformed(e.0))
    }
}

/// A KServe v2 server over gRPC (`inference.GRPCInferenceService`), raw tensor contents both
/// ways. The channel is made on first use (it needs the tokio runtime, which a pipeline being
/// validated at load time may not be inside) and shared by clones.
#[derive(Debug, Clone)]
pub struct KserveGrpcClient {
    endpoint: Endpoint,
    client: std::sync::Arc<std::sync::OnceLock<GrpcInferenceServiceClient<Channel>>>,
}

impl KserveGrpcClient {
    /// `target` is `host:port` or `http://host:port`.
    pub fn new(target: &str) -> Result<Self, String> {
        let uri = if target.contains("://") { target.to_string() } else { format!("http://{target}") };
        let endpoint = Endpoint::from_shared(uri.clone()).map_err(|e| format!("bad gRPC address '{uri}': {e}"))?;
        Ok(KserveGrpcClient { endpoint, client: std::sync::Arc::default() })
    }

    pub async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        inputs: &[Tensor],
        outputs: &[String],
        timeout: Duration,
        traceparent: Option<&str>,
    ) -> Result<Vec<Tensor>, ClientError> {
        let request = ModelInferRequest {
            model_name: model.to_string(),
            model_version: version.unwrap_or_default().to_string(),
            inputs: inputs
                .iter()
                .map(|t| InferInputTensor {
                    name: t.name.clone(),
                    datatype: t.datatype().as_str().to_string(),
                    shape: t.shape.iter().map(|&d| d as i64).collect(),
                    ..Default::default()
                })
                .collect(),
            outputs: outputs
                .iter()
                .map(|o| InferRequestedOutputTensor { name: o.clone(), ..Default::default() })
                .collect(),
            raw_input_contents: inputs.iter().map(|t| v2::encode_binary(&t.data).into()).collect(),
            ..Default::default()
        };
        let mut client =
            self.client.get_or_init(|| GrpcInferenceServiceClient::new(self.endpoint.connect_lazy())).clone();
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout);
        if let Some(value) = traceparent.and_then(|t| t.parse().ok()) {
            request.metadata_mut().insert(TRACEPARENT, value);
        }
        let answer = tokio::time::timeout(timeout, client.model_infer(request))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|s| from_status(&s, timeout))?;
        decode_grpc_response(answer.into_inner())
    }
}

fn from_status(s: &tonic::Status, timeout: Duration) -> ClientError {
    use tonic::Code;
    let code = match s.code() {
        Code::Unavailable if s.message().contains("connect") || s.message().contains("transport") => {
            return ClientError::Connection(s.message().to_string());
        }
        Code::DeadlineExceeded => return ClientError::Timeout(timeout),
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => 400,
        Code::NotFound => 404,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        _ => 500,
    };
    ClientError::Status { code, message: s.message().to_string() }
}

fn decode_grpc_response(response: ModelInferResponse) -> Result<Vec<Tensor>, ClientError> {
    let raw = response.raw_output_contents;
    if !raw.is_empty() && raw.len() != response.outputs.len() {
        return Err(ClientError::Malformed(format!(
            "{} raw_output_contents for {} outputs",
            raw.len(),
            response.outputs.len()
        )));
    }
    response
        .outputs
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            crate::grpc::decode_tensor(o.name, &o.datatype, &o.shape, raw.get(i).map(|b| &b[..]), o.contents)
                .map_err(|e| ClientError::Malformed(e.0.replacen("input '", "output '", 1)))
        })
        .collect()
}

/// An OpenAI-compatible endpoint (`/chat/completions`, `/embeddings`).
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    /// Up to and including `/v1`.
    base: String,
    api_key: Option<String>,
}

/// One chat completion request.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub model: String,
    pub system: Option<String>,
    pub prompt: String,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    /// Ask for a JSON object (`response_format`); the caller parses the text.
    pub json: bool,
    /// Ask for JSON valid against this schema (`response_format: json_schema`, strict).
    pub schema: Option<Value>,
}

impl OpenAiClient {
    /// `base` ends in `/v1` (e.g. `http://127.0.0.1:8080/v1`), as OpenAI's clients expect.
    pub fn new(base: &str, api_key: Option<String>) -> Result<Self, String> {
        Ok(OpenAiClient { http: http_client()?, base: base.trim_end_matches('/').to_string(), api_key })
    }

    async fn post(
        &self,
        path: &str,
        body: &Value,
        timeout: Duration,
        traceparent: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut request = self.http.post(format!("{}{path}", self.base)).timeout(timeout).json(body);
        if let Some(traceparent) = traceparent {
            request = request.header(TRACEPARENT, traceparent);
        }
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| from_reqwest(&e, timeout))?;
        let response = checked(response, timeout).await?;
        let text = response.text().await.map_err(|e| from_reqwest(&e, timeout))?;
        serde_json::from_str(&text).map_err(|e| ClientError::Malformed(format!("the answer is not JSON: {e}")))
    }

    /// The assistant's text for one prompt.
    pub async fn chat(
        &self,
        request: &ChatRequest,
        timeout: Duration,
        traceparent: Option<&str>,
    ) -> Result<String, ClientError> {
        let mut messages = Vec::new();
        if let Some(system) = &request.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": request.prompt}));
        let mut body = json!({"model": request.model, "messages": messages});
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = request.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if let Some(schema) = &request.schema {
            body["response_format"] =
                json!({"type": "json_schema", "json_schema": {"name": "fields", "schema": schema, "strict": true}});
        } else if request.json {
            body["response_format"] = json!({"type": "json_object"});
        }
        let answer = self.post("/chat/completions", &body, timeout, traceparent).await?;
        answer
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ClientError::Malformed("no choices[0].message.content in the answer".into()))
    }

    /// One embedding per text, in the order of the texts.
    pub async fn embeddings(
        &self,
        model: &str,
        texts: &[String],
        timeout: Duration,
        traceparent: Option<&str>,
    ) -> Result<Vec<Vec<f32>>, ClientError> {
        let answer = self.post("/embeddings", &json!({"model": model, "input": texts}), timeout, traceparent).await?;
        let data = answer
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| ClientError::Malformed("no 'data' array in the answer".into()))?;
        if data.len() != texts.len() {
            return Err(ClientError::Malformed(format!("{} embeddings for {} texts", data.len(), texts.len())));
        }
        let mut out = vec![Vec::new(); texts.len()];
        for (i, item) in data.iter().enumerate() {
            let index = item.get("index").and_then(Value::as_u64).map_or(i, |x| x as usize);
            let vector = item
                .get("embedding")
                .and_then(Value::as_array)
                .and_then(|v| v.iter().map(|x| x.as_f64().map(|f| f as f32)).collect::<Option<Vec<f32>>>())
                .ok_or_else(|| ClientError::Malformed(format!("data[{i}].embedding is not an array of numbers")))?;
            let slot = out
                .get_mut(index)
                .ok_or_else(|| ClientError::Malformed(format!("data[{i}].index {index} is out of range")))?;
            *slot = vector;
        }
        Ok(out)
    }
}

/// Texts of a BYTES tensor (one per element), for prompts and embeddings.
pub fn texts(tensor: &Tensor) -> Result<Vec<String>, String> {
    match &tensor.data {
        TensorData::Bytes(items) => items
            .iter()
            .enumerate()
            .map(|(i, b)| {
                String::from_utf8(b.clone()).map_err(|_| format!("'{}' element {i} is not UTF-8 text", tensor.name))
            })
            .collect(),
        other => Err(format!("'{}' must be BYTES text, not {}", tensor.name, other.datatype())),
    }
}
