//! What a caller asks of a served version and what it answers.

use std::time::Duration;

use kiln_core::Tensor;

use crate::metrics::Protocol;

/// What a caller asks of a model.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub inputs: Vec<Tensor>,
    /// Outputs wanted, in this order; empty = all, in model order.
    pub outputs: Vec<String>,
    /// Give up (and answer "deadline exceeded") after this long; `None` = the model's
    /// `request_timeout_ms`, if any.
    pub timeout: Option<Duration>,
    /// Which transport the request came by (for metrics).
    pub protocol: Protocol,
    /// Pipelines: report each step's timing in the response (`kiln_trace`).
    pub trace: bool,
    /// A sampled request's spans go here (OpenTelemetry, exported by the server).
    pub span: Option<crate::span::Span>,
}

/// What a model answers.
#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: u64,
    pub outputs: Vec<Tensor>,
    /// Pipelines asked for a trace: each step's start, duration and outcome.
    pub trace: Vec<StepTrace>,
}

/// How long one pipeline step took, for `kiln_trace`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTrace {
    pub step: String,
    /// From the pipeline's start.
    pub start: Duration,
    pub duration: Duration,
    /// `success`, `error` (its fallback answered), `fallback` (it answered for a failed step),
    /// `constant` (failed; constants answered) or `skipped` (its condition selected no row).
    pub outcome: &'static str,
}
