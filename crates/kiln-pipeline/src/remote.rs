//! Steps that call other servers: a model on another KServe v2 server (REST or gRPC), an
//! OpenAI-compatible chat completions endpoint (`llm`) and an embeddings endpoint. Every call
//! goes through the step's [`Guard`] (timeout, retries, breaker, concurrency limit).

use std::time::Instant;

use super::prompt::PromptTemplate;
pub use crate::llm_answer::JsonField;
use crate::llm_answer::{answer_schema, llm_outputs, parse_fields};
use kiln_core::{DataType, Tensor, TensorData, TensorSpec};
use kiln_protocol::client::{ChatRequest, ClientError, KserveGrpcClient, KserveRestClient, OpenAiClient, texts};
use serde::Deserialize;

use super::resilience::{CallError, Guard};
use kiln_serving::EngineError;
use kiln_serving::span::{Span, SpanEvent};

/// How a `remote` step reaches its server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Rest,
    Grpc,
}

/// `remote = { ... }` in pipeline.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSpec {
    /// `http://host:port` or `https://host:port` (REST), `host:port` (gRPC, plain h2c).
    pub url: String,
    pub model: String,
    pub version: Option<String>,
    #[serde(default)]
    pub protocol: Transport,
}

/// `llm = { ... }` in pipeline.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSpec {
    /// Base URL up to `/v1` of an OpenAI-compatible server; none = `model` is an LLM of this
    /// repository, called in-process.
    pub url: Option<String>,
    pub model: String,
    /// The environment variable holding the API key (never the key itself).
    pub api_key_env: Option<String>,
    pub system: Option<String>,
    /// `{input}` is replaced by the row's value of that step input; `{{` and `}}` are braces.
    pub prompt: String,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    /// When set, the answer must be a JSON object with these fields.
    #[serde(default)]
    pub json_outputs: Vec<JsonField>,
    /// How a `url` step asks for JSON: `json_object` (the default; any OpenAI-compatible server)
    /// or `json_schema` (the fields' schema, enforced by servers that support it — OpenAI, kiln).
    /// A local step always holds the answer to the schema.
    pub response_format: Option<String>,
}

/// `embeddings = { ... }` in pipeline.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsSpec {
    pub url: String,
    pub model: String,
    pub api_key_env: Option<String>,
    /// The vector length, when known (checked on every answer).
    pub dim: Option<usize>,
}

fn one_per_row(spec: &TensorSpec) -> bool {
    matches!(spec.shape.as_slice(), [_] | [_, 1])
}

enum Kserve {
    Rest(KserveRestClient),
    Grpc(Box<KserveGrpcClient>),
}

enum Endpoint {
    Kserve { client: Kserve, spec: RemoteSpec, outputs: Vec<TensorSpec> },
    Llm { client: OpenAiClient, spec: LlmSpec, template: PromptTemplate, schema: Option<serde_json::Value> },
    Embeddings { client: OpenAiClient, spec: EmbeddingsSpec },
}

/// A step that calls another server.
pub struct RemoteStep {
    endpoint: Endpoint,
    pub guard: Guard,
}

impl std::fmt::Debug for RemoteStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteStep({})", self.describe())
    }
}

/// `${VAR}` and `${VAR:-default}` in endpoint fields, so one pipeline.toml serves every
/// deployment (the LLM's URL differs between a laptop and the cluster).
pub fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("'{text}' has an unclosed '${{'"))?;
        let (name, default) = match after[..end].split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (&after[..end], None),
        };
        match (std::env::var(name), default) {
            (Ok(v), _) if !v.is_empty() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            _ => return Err(format!("'{text}' uses ${{{name}}}, which is not set in kiln's environment")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn api_key(env: Option<&String>, step: &str) -> Result<Option<String>, String> {
    match env {
        None => Ok(None),
        Some(var) => std::env::var(var)
            .map(Some)
            .map_err(|_| format!("step '{step}': api_key_env names '{var}', which is not set in kiln's environment")),
    }
}

impl RemoteStep {
    pub fn kserve(mut spec: RemoteSpec, outputs: Vec<TensorSpec>, guard: Guard, step: &str) -> Result<Self, String> {
        let here = |e: String| format!("step '{step}': {e}");
        spec.url = expand_env(&spec.url).map_err(here)?;
        spec.model = expand_env(&spec.model).map_err(here)?;
        if outputs.is_empty() {
            return Err(format!(
                "step '{step}': a remote step declares its outputs: outputs = [{{ name = ..., datatype = ..., shape = [...] }}]"
            ));
        }
        let client = match spec.protocol {
            Transport::Rest => {
                if !(spec.url.starts_with("http://") || spec.url.starts_with("https://")) {
                    return Err(format!(
                        "step '{step}': a REST url starts with http:// or https:// (got '{}')",
                        spec.url
                    ));
                }
                Kserve::Rest(KserveRestClient::new(&spec.url).map_err(|e| format!("step '{step}': {e}"))?)
            }
            Transport::Grpc => {
                Kserve::Grpc(Box::new(KserveGrpcClient::new(&spec.url).map_err(|e| format!("step '{step}': {e}"))?))
            }
        };
        Ok(RemoteStep { endpoint: Endpoint::Kserve { client, spec, outputs }, guard })
    }

    pub fn llm(mut spec: LlmSpec, guard: Guard, step: &str) -> Result<Self, String> {
        let here = |e: String| format!("step '{step}': {e}");
        let url = expand_env(spec.url.as_deref().unwrap_or_default()).map_err(here)?;
        spec.model = expand_env(&spec.model).map_err(here)?;
        let template = PromptTemplate::new(&spec.prompt, step).map_err(|e| format!("step '{step}': {e}"))?;
        let client = OpenAiClient::new(&url, api_key(spec.api_key_env.as_ref(), step)?)
            .map_err(|e| format!("step '{step}': {e}"))?;
        let schema = match spec.response_format.as_deref() {
            None | Some("json_object") => None,
            Some("json_schema") if !spec.json_outputs.is_empty() => {
                Some(answer_schema(&spec.json_outputs).map_err(here)?)
            }
            Some("json_schema") => return Err(here("response_format = \"json_schema\" needs json_outputs".into())),
            Some(other) => return Err(here(format!("response_format is json_object or json_schema, not '{other}'"))),
        };
        spec.url = Some(url);
        Ok(RemoteStep { endpoint: Endpoint::Llm { client, spec, template, schema }, guard })
    }

    pub fn embeddings(mut spec: EmbeddingsSpec, guard: Guard, step: &str) -> Result<Self, String> {
        let here = |e: String| format!("step '{step}': {e}");
        spec.url = expand_env(&spec.url).map_err(here)?;
        spec.model = expand_env(&spec.model).map_err(here)?;
        let client = OpenAiClient::new(&spec.url, api_key(spec.api_key_env.as_ref(), step)?)
            .map_err(|e| format!("step '{step}': {e}"))?;
        Ok(RemoteStep { endpoint: Endpoint::Embeddings { client, spec }, guard })
    }

    pub fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Kserve { spec, .. } => format!("model '{}' at {}", spec.model, spec.url),
            Endpoint::Llm { spec, .. } => {
                format!("LLM '{}' at {}", spec.model, spec.url.as_deref().unwrap_or_default())
            }
            Endpoint::Embeddings { spec, .. } => format!("embeddings '{}' at {}", spec.model, spec.url),
        }
    }

    /// Whether the step's calls are slow by nature (LLMs), for defaults.
    pub fn is_llm(&self) -> bool {
        matches!(self.endpoint, Endpoint::Llm { .. })
    }

    /// Checks the step's inputs and says what it produces (load time).
    pub fn output_specs(&self, step: &str, inputs: &[(String, TensorSpec)]) -> Result<Vec<TensorSpec>, String> {
        let spec = |name: &str, datatype, shape| TensorSpec { name: name.to_string(), datatype, shape };
        match &self.endpoint {
            Endpoint::Kserve { outputs, .. } => Ok(outputs.clone()),
            Endpoint::Llm { spec: llm, template, .. } => llm_output_specs(llm, template, step, inputs),
            Endpoint::Embeddings { spec: e, .. } => match inputs {
                [(_, s)] if s.datatype == DataType::Bytes && one_per_row(s) => {
                    Ok(vec![spec("embedding", DataType::Fp32, vec![-1, e.dim.map_or(-1, |d| d as i64)])])
                }
                _ => Err(format!("step '{step}': an embeddings step takes one BYTES input of texts, [N] or [N, 1]")),
            },
        }
    }

    fn failed(&self, e: &CallError) -> EngineError {
        let message = format!("{}: {e}", self.describe());
        match e {
            CallError::DeadlineExceeded
            | CallError::Failed { error: kiln_protocol::client::ClientError::Timeout(_), .. } => {
                EngineError::Timeout(message)
            }
            // Every slot stayed busy: this server's own limit, so 429 like a full model queue.
            CallError::Saturated { .. } => EngineError::Overloaded(message),
            _ => EngineError::Unavailable(message),
        }
    }

    /// Calls the server for one request's rows.
    pub async fn call(
        &self,
        args: Vec<Tensor>,
        wanted: &[String],
        deadline: Option<Instant>,
        span: Option<&Span>,
    ) -> Result<Vec<Tensor>, EngineError> {
        // A sampled request: a client span for the call, whose id the server gets as the
        // parent of its own spans; retries are its events.
        let mut call_span = span.map(|s| {
            let mut c = s.child(format!("remote {}", self.describe()));
            c.client();
            c
        });
        let traceparent = call_span.as_ref().map(|c| c.span().traceparent());
        let traceparent = traceparent.as_deref();
        let retries = std::sync::Mutex::new(Vec::new());
        let retrying = |attempt: u32, error: &ClientError| {
            let event = SpanEvent {
                at: std::time::SystemTime::now(),
                name: "retry",
                attributes: vec![
                    ("kiln.attempt", u64::from(attempt).into()),
                    ("exception.message", error.to_string().into()),
                ],
            };
            retries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(event);
        };
        let result = self.call_spanned(args, wanted, deadline, traceparent, &retrying).await;
        if let Some(c) = call_span.as_mut() {
            for event in retries.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
                c.push_event(event);
            }
            if let Err(e) = &result {
                c.fail(e);
            }
        }
        result
    }

    async fn call_spanned(
        &self,
        args: Vec<Tensor>,
        wanted: &[String],
        deadline: Option<Instant>,
        traceparent: Option<&str>,
        retrying: &(dyn Fn(u32, &ClientError) + Sync),
    ) -> Result<Vec<Tensor>, EngineError> {
        match &self.endpoint {
            Endpoint::Kserve { client, spec, outputs } => {
                let version = spec.version.as_deref();
                let args = &args;
                let got = self
                    .guard
                    .call_noting(deadline, retrying, |timeout| async move {
                        let got = match client {
                            Kserve::Rest(c) => {
                                c.infer(&spec.model, version, args, wanted, timeout, traceparent).await?
                            }
                            Kserve::Grpc(c) => {
                                c.infer(&spec.model, version, args, wanted, timeout, traceparent).await?
                            }
                        };
                        check_outputs(&got, outputs, wanted)?;
                        Ok(got)
                    })
                    .await
                    .map_err(|e| self.failed(&e))?;
                Ok(got)
            }
            Endpoint::Llm { client, spec, template, schema } => {
                let prompts = template.rows(&args)?;
                let rows = prompts.len();
                let calls = prompts.into_iter().map(|prompt| {
                    let request = ChatRequest {
                        model: spec.model.clone(),
                        system: spec.system.clone(),
                        prompt,
                        temperature: spec.temperature,
                        max_tokens: spec.max_tokens,
                        json: !spec.json_outputs.is_empty(),
                        schema: schema.clone(),
                    };
                    async move {
                        self.guard
                            .call_noting(deadline, retrying, |timeout| {
                                let request = &request;
                                async move {
                                    let text = client.chat(request, timeout, traceparent).await?;
                                    let fields = parse_fields(&text, &spec.json_outputs)?;
                                    Ok((text, fields))
                                }
                            })
                            .await
                    }
                });
                let answers = futures_util::future::join_all(calls).await;
                debug_assert_eq!(answers.len(), rows);
                let answers = answers.into_iter().collect::<Result<Vec<_>, _>>().map_err(|e| self.failed(&e))?;
                llm_outputs(&spec.json_outputs, answers, &self.describe())
            }
            Endpoint::Embeddings { client, spec } => {
                let input = args.first().ok_or_else(|| EngineError::Backend("embeddings step without input".into()))?;
                let texts = texts(input).map_err(EngineError::InvalidRequest)?;
                let vectors = self
                    .guard
                    .call_noting(deadline, retrying, |timeout| {
                        client.embeddings(&spec.model, &texts, timeout, traceparent)
                    })
                    .await
                    .map_err(|e| self.failed(&e))?;
                let dim = spec.dim.or_else(|| vectors.first().map(Vec::len)).unwrap_or(0);
                if let Some((i, v)) = vectors.iter().enumerate().find(|(_, v)| v.len() != dim) {
                    return Err(EngineError::Unavailable(format!(
                        "{}: embedding {i} has {} values, expected {dim}",
                        self.describe(),
                        v.len()
                    )));
                }
                let rows = vectors.len();
                let data = TensorData::Fp32(vectors.into_iter().flatten().collect());
                Ok(vec![
                    Tensor::new("embedding", vec![rows, dim], data).map_err(|e| EngineError::Backend(e.to_string()))?,
                ])
            }
        }
    }
}

/// What an LLM step (local or remote) produces: `text`, then each JSON field; its inputs hold
/// one value per row and its prompt names only them.
pub(super) fn llm_output_specs(
    llm: &LlmSpec,
    template: &PromptTemplate,
    step: &str,
    inputs: &[(String, TensorSpec)],
) -> Result<Vec<TensorSpec>, String> {
    let spec = |name: &str, datatype, shape| TensorSpec { name: name.to_string(), datatype, shape };
    for (name, s) in inputs {
        if !one_per_row(s) {
            return Err(format!(
                "step '{step}': LLM input '{name}' must hold one value per row ([N] or [N, 1]), not {:?}",
                s.shape
            ));
        }
    }
    if let Some(v) = template.reads().into_iter().find(|v| !inputs.iter().any(|(n, _)| n == v)) {
        return Err(format!(
            "step '{step}': the prompt uses '{v}', but the step's inputs are {:?}",
            inputs.iter().map(|(n, _)| n).collect::<Vec<_>>()
        ));
    }
    let mut out = vec![spec("text", DataType::Bytes, vec![-1])];
    for field in &llm.json_outputs {
        if field.name == "text" {
            return Err(format!("step '{step}': 'text' is the LLM's answer; name the JSON field otherwise"));
        }
        out.push(spec(&field.name, field.datatype, vec![-1]));
    }
    Ok(out)
}

/// A remote model's answer must carry what the pipeline declared for it.
fn check_outputs(
    got: &[Tensor],
    declared: &[TensorSpec],
    wanted: &[String],
) -> Result<(), kiln_protocol::client::ClientError> {
    use kiln_protocol::client::ClientError::Malformed;
    for name in wanted {
        let Some(t) = got.iter().find(|t| &t.name == name) else {
            return Err(Malformed(format!("the answer has no output '{name}'")));
        };
        if let Some(d) = declared.iter().find(|d| &d.name == name) {
            let fits = d.shape.len() == t.shape.len()
                && d.shape.iter().zip(&t.shape).all(|(w, g)| *w < 0 || *w as usize == *g);
            if d.datatype != t.datatype() || !fits {
                return Err(Malformed(format!(
                    "output '{name}' is {} {:?}, but the pipeline declares {} {:?}",
                    t.datatype(),
                    t.shape,
                    d.datatype,
                    d.shape
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm_answer::json_column;

    #[test]
    fn environment_in_endpoints() {
        assert_eq!(
            expand_env("http://${KILN_TEST_SURELY_UNSET:-127.0.0.1:8080}/v1").expect("ok"),
            "http://127.0.0.1:8080/v1"
        );
        assert_eq!(expand_env("plain").expect("ok"), "plain");
        assert!(expand_env("${KILN_TEST_SURELY_UNSET}").unwrap_err().contains("not set"));
        assert!(expand_env("${OOPS").unwrap_err().contains("unclosed"));
    }

    fn field(name: &str, datatype: DataType) -> JsonField {
        JsonField { name: name.into(), datatype, choices: None, max_length: None, minimum: None, maximum: None }
    }

    #[test]
    fn json_outputs_become_a_strict_schema() {
        let category = JsonField { choices: Some(vec!["a".into(), "b".into()]), ..field("category", DataType::Bytes) };
        let amount = JsonField { minimum: Some(0.0), maximum: Some(10.0), ..field("amount", DataType::Int64) };
        let schema = answer_schema(&[category, amount, field("ok", DataType::Bool)]).expect("a schema");
        assert_eq!(
            schema,
            serde_json::json!({"type": "object", "properties": {
                "category": {"type": "string", "enum": ["a", "b"]},
                "amount": {"type": "integer", "minimum": 0.0, "maximum": 10.0},
                "ok": {"type": "boolean"}},
              "required": ["category", "amount", "ok"], "additionalProperties": false})
        );
        let wrong = JsonField { max_length: Some(3), ..field("n", DataType::Fp32) };
        assert!(answer_schema(&[wrong]).unwrap_err().contains("'max_length' is for BYTES"));
        let wrong = JsonField { choices: Some(vec![]), ..field("s", DataType::Bytes) };
        assert!(answer_schema(&[wrong]).unwrap_err().contains("'enum'"));
        assert!(answer_schema(&[field("t", DataType::Uint8)]).unwrap_err().contains("not UINT8"));
    }

    #[test]
    fn json_fields() {
        let fields = vec![field("label", DataType::Bytes), field("p", DataType::Fp32)];
        let v = parse_fields(r#" {"label": "urgent", "p": 0.5} "#, &fields).expect("parses");
        assert_eq!(json_column(&fields[1], &[v[1].clone()]).expect("col"), TensorData::Fp32(vec![0.5]));
        assert!(parse_fields("not json", &fields).unwrap_err().to_string().contains("not JSON"));
        assert!(parse_fields(r#"{"label": "x"}"#, &fields).unwrap_err().to_string().contains("no field 'p'"));
        assert!(
            parse_fields(r#"{"label": "x", "p": "high"}"#, &fields).unwrap_err().to_string().contains("not a FP32")
        );
    }
}
