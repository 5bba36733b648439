//! The one request lifecycle behind every route that runs a model, whatever the transport:
//! limits → [`Call`] (prediction-log capture, and the in-flight guard) → engine → log finish.
//! REST (v2, `/v1/embeddings`, collection search) and gRPC decode their wire format into an
//! [`Inference`], call [`run`], and encode the [`Answer`]; OpenAI chat and completions drive an
//! LLM's generation themselves (it may stream) inside the same [`Call`]. No other module opens
//! a capture or an in-flight guard (`crates/kiln-cli/tests/tidy.rs` checks).

use std::time::Duration;

use kiln_core::Tensor;
use kiln_serving::{EngineError, InFlight, InferRequest, InferResponse, ModelHandle, Outcome, Protocol, ServedModel};

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
    /// The route (the request's span name) and the caller's trace.
    pub origin: Origin,
}

impl Inference {
    /// A REST request of kiln's own JSON routes (`/v1/embeddings`, `/v1/rerank`, collection
    /// search): these inputs, the wanted outputs (empty = all), no request parameters.
    pub fn rest(
        inputs: Vec<Tensor>,
        outputs: Vec<String>,
        route: &'static str,
        headers: &axum::http::HeaderMap,
    ) -> Self {
        Inference {
            inputs,
            outputs,
            timeout: None,
            trace: false,
            client_key: None,
            protocol: Protocol::Rest,
            classify: Vec::new(),
            origin: Origin { route, incoming: crate::otel::Incoming::from_http(headers) },
        }
    }
}

/// How a request came: its route, as the name of its server span (`POST /v2/models/{model}/infer`,
/// `inference.GRPCInferenceService/ModelInfer`), and the caller's W3C trace context.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub route: &'static str,
    pub incoming: crate::otel::Incoming,
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
    // A `[rollout]` shadow gets a copy of what this version runs (cloned only when it has one).
    let shadow = state
        .engine
        .shadow(model)
        .map(|(shadow, rollout)| (shadow, rollout, request.inputs.clone(), request.outputs.clone()));
    // ServedModel::infer counts the request itself (its own in-flight guard).
    let call = Call::open(
        state,
        model,
        &request.inputs,
        request.client_key.as_deref(),
        request.protocol,
        false,
        &request.origin,
    );
    let result = model
        .infer(InferRequest {
            inputs: request.inputs,
            outputs: request.outputs,
            timeout: request.timeout,
            protocol: request.protocol,
            trace: request.trace,
            span: call.span().cloned(),
        })
        .await;
    if let (Ok(answer), Some((shadow, rollout, inputs, outputs))) = (&result, shadow) {
        // The log keeps the shadow's answer beside the caller's when it keeps the request.
        let logged = state.records.clone().zip(call.request_id().map(str::to_string));
        send_to_shadow(answer, shadow, &rollout, (inputs, outputs), logged);
    }
    let classify = request.classify;
    let request_id = call.close(&result).await?;
    let mut response = result?;
    crate::classification::apply(&mut response.outputs, &classify, &model.labels)?;
    Ok(Answer { response, request_id })
}

/// Runs a copy of a request on its model's shadow version, off the caller's path: a task of its
/// own, at most `SHADOW_IN_FLIGHT` at once (beyond, the copy is dropped and counted), its answer
/// compared with what the caller got and counted on the rollout, and — when `logged` (the log
/// and the caller's request id) — logged beside the caller's prediction. Never delays, fails or
/// answers the caller.
fn send_to_shadow(
    answer: &InferResponse,
    shadow: ModelHandle,
    rollout: &std::sync::Arc<kiln_engine::rollout::Rollout>,
    (inputs, outputs): (Vec<Tensor>, Vec<String>),
    logged: Option<(kiln_records::Recorder, String)>,
) {
    let Some(slot) = rollout.try_send() else { return };
    let (rollout, primary) = (rollout.clone(), answer.outputs.clone());
    tokio::spawn(async move {
        let _slot = slot;
        let request =
            InferRequest { inputs, outputs, timeout: None, protocol: Protocol::InProcess, trace: false, span: None };
        let started = (std::time::Instant::now(), kiln_records::now_ms());
        let got = shadow.infer(request).await;
        rollout
            .count(got.as_ref().ok().map(|r| kiln_engine::rollout::agree(&primary, &r.outputs, rollout.tolerance())));
        if let Some((recorder, request_id)) = logged {
            crate::records::shadow(&recorder, request_id, &shadow, started, &got).await;
        }
    });
}

/// An LLM request's `[rollout]` shadow: the version, its model and the generation parameters.
pub struct LlmShadow {
    pub model: ModelHandle,
    pub llm: std::sync::Arc<kiln_llm::LlmModel>,
    pub rollout: std::sync::Arc<kiln_engine::rollout::Rollout>,
    pub params: kiln_llm::GenerateParams,
}

/// [`send_to_shadow`] for an LLM: once the caller has `answer`, the shadow renders its prompt
/// (`prompt`, with its own template) off the executor, generates, and its text is compared with
/// `answer` exactly. Counted in the shadow version's statistics like any request.
pub fn send_llm_to_shadow(
    shadow: LlmShadow,
    prompt: impl FnOnce(&kiln_llm::LlmModel) -> Result<Vec<kiln_llm::Token>, kiln_llm::LlmError> + Send + 'static,
    answer: String,
) {
    let Some(slot) = shadow.rollout.try_send() else { return };
    tokio::spawn(async move {
        let _slot = slot;
        let LlmShadow { model, llm, rollout, params } = shadow;
        let tracked = ServedModel::track(&model, Protocol::InProcess);
        let renderer = llm.clone();
        let text = match tokio::task::spawn_blocking(move || prompt(&renderer)).await {
            Ok(Ok(tokens)) => match llm.generate(tokens, &params) {
                Ok(generation) => generation.complete().await.ok().map(|c| c.text),
                Err(_) => None,
            },
            _ => None,
        };
        tracked.end(if text.is_some() { Outcome::Success } else { Outcome::Error });
        rollout.count(text.map(|t| t == answer));
    });
}

/// One model-running request's bookkeeping, from its start to its end: the prediction log's
/// capture of its inputs and, for a route that drives an executor itself (an LLM generation that
/// may stream), the in-flight guard — metrics and statistics, with a dropped `Call` counted as
/// cancelled.
pub struct Call {
    state: AppState,
    model: ModelHandle,
    protocol: Protocol,
    capture: Option<crate::records::Capture>,
    tracked: Option<InFlight<ModelHandle>>,
    traced: Traced,
    /// A caller's trace context this request does not sample, passed on to calls out of kiln.
    passthrough: Option<kiln_serving::Span>,
}

/// A sampled request's server span; dropped before [`Call::close`] (the client left), it is
/// sent as cancelled.
#[derive(Default)]
struct Traced(Option<crate::otel::Root>);

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(mut root) = self.0.take() {
            root.set("kiln.outcome", "cancelled");
            root.finish(Some("cancelled: the client went away".into()));
        }
    }
}

impl Call {
    /// Opens a call; `inputs` are what the log keeps of the request. `track`: count it here
    /// (not through `ServedModel::infer`, which counts its own).
    pub fn open(
        state: &AppState,
        model: &ModelHandle,
        inputs: &[Tensor],
        client_key: Option<&str>,
        protocol: Protocol,
        track: bool,
        origin: &Origin,
    ) -> Call {
        let request_id = crate::records::new_request_id();
        let capture = crate::records::begin(state.records.as_ref(), model, inputs, client_key, request_id);
        let trace_id = crate::otel::Tracer::trace_id(&origin.incoming, request_id);
        let traced = state.tracer.begin(&origin.incoming, trace_id, origin.route.to_string()).map(|mut root| {
            root.set("kiln.model", model.name.as_str());
            root.set("kiln.model.version", model.version);
            root.set("kiln.protocol", protocol_label(protocol));
            if let Some(capture) = &capture {
                root.set("kiln.request_id", capture.request_id.as_str());
            }
            root
        });
        // Not sampled here, but the caller sent a trace context: calls out of kiln pass it on.
        let passthrough = match (&traced, origin.incoming.parent) {
            (None, Some((trace, parent, sampled))) => Some(kiln_serving::Span::passthrough(trace, parent, sampled)),
            _ => None,
        };
        Call {
            state: state.clone(),
            model: model.clone(),
            protocol,
            capture,
            tracked: track.then(|| ServedModel::track(model, protocol)),
            traced: Traced(traced),
            passthrough,
        }
    }

    /// Where the engine records this request's spans: the sampled request's, or the caller's
    /// context passed through (records nothing).
    pub fn span(&self) -> Option<&kiln_serving::Span> {
        self.traced.0.as_ref().map(crate::otel::Root::span).or(self.passthrough.as_ref())
    }

    /// Sets an attribute of the request's span (when sampled).
    pub fn annotate(&mut self, key: &'static str, value: impl Into<kiln_serving::span::Value>) {
        if let Some(root) = self.traced.0.as_mut() {
            root.set(key, value);
        }
    }

    /// Opens a write on a collection (an upsert or a delete through REST): counted like any
    /// request (in flight, statistics, `kiln_requests_total`), never a prediction to log.
    pub fn write(state: &AppState, model: &ModelHandle, protocol: Protocol) -> Call {
        Call {
            state: state.clone(),
            model: model.clone(),
            protocol,
            capture: None,
            tracked: Some(ServedModel::track(model, protocol)),
            traced: Traced::default(),
            passthrough: None,
        }
    }

    /// The deadline of a request opened now, from the model's `request_timeout_ms`.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.model.settings.request_timeout.map(|t| std::time::Instant::now() + t)
    }

    /// Ends a write with its outcome (a dropped `Call` counts as cancelled).
    pub fn end(mut self, outcome: Outcome) {
        if let Some(tracked) = self.tracked.take() {
            tracked.end(outcome);
        }
    }

    pub fn model(&self) -> &ModelHandle {
        &self.model
    }

    /// kiln's id for the request, when the log keeps it.
    pub fn request_id(&self) -> Option<&str> {
        self.capture.as_ref().map(|c| c.request_id.as_str())
    }

    /// Closes the call: logs the result (when its policy keeps it) and counts it; returns kiln's
    /// id for the logged request.
    pub async fn close(self, result: &Result<InferResponse, EngineError>) -> Result<Option<String>, ApiError> {
        let outcome = Outcome::of(result);
        self.close_as(result, outcome).await
    }

    /// [`Call::close`] with the outcome said by the caller (a refusal before generation is
    /// `Invalid` or `Overloaded`, not an error).
    pub async fn close_as(
        mut self,
        result: &Result<InferResponse, EngineError>,
        outcome: Outcome,
    ) -> Result<Option<String>, ApiError> {
        if let Some(mut root) = self.traced.0.take() {
            root.set("kiln.outcome", outcome.as_str());
            root.finish(result.as_ref().err().map(ToString::to_string));
        }
        let logged = crate::records::finish(
            self.state.records.as_ref(),
            self.capture.take(),
            &self.model,
            protocol_label(self.protocol),
            result,
        )
        .await;
        if let Some(tracked) = self.tracked.take() {
            tracked.end(outcome);
        }
        Ok(logged?)
    }
}

/// A pipeline's `kiln_trace` as response parameters: per step, `kiln_trace.<step>.start_us`,
/// `.duration_us` (numbers) and `.outcome` (a string) — parameters hold scalars only.
pub fn trace_parameters(trace: &[kiln_serving::StepTrace]) -> Vec<(String, TraceValue)> {
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
