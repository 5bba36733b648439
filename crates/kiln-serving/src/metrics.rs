//! Prometheus-style metrics through the `metrics` facade (the binary installs the exporter).
//! Handles are registered once per model version, so the request path only bumps atomics.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::error::EngineError;

/// The transport a request came by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    Rest,
    Grpc,
    /// CLI, Python bridge, benchmarks: no network hop.
    #[default]
    InProcess,
}

impl Protocol {
    const ALL: [Protocol; 3] = [Protocol::Rest, Protocol::Grpc, Protocol::InProcess];

    fn label(self) -> &'static str {
        match self {
            Protocol::Rest => "rest",
            Protocol::Grpc => "grpc",
            Protocol::InProcess => "in_process",
        }
    }
}

/// How a request ended, for the requests counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The request did not fit the model (400 / INVALID_ARGUMENT).
    Invalid,
    /// Refused because the queue was full (429 / RESOURCE_EXHAUSTED).
    Overloaded,
    /// Gave up at the request timeout (504 / DEADLINE_EXCEEDED).
    Timeout,
    /// Anything else (backend failure, model going away).
    Error,
    /// The caller went away (client disconnect, a pipeline's timeout or failing sibling step)
    /// before the answer: the request's future was dropped.
    Cancelled,
}

impl Outcome {
    const ALL: [Outcome; 6] =
        [Outcome::Success, Outcome::Invalid, Outcome::Overloaded, Outcome::Timeout, Outcome::Error, Outcome::Cancelled];

    /// Its label: `success`, `invalid`, `overloaded`, `timeout`, `error` or `cancelled`.
    pub fn as_str(self) -> &'static str {
        self.label()
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Invalid => "invalid",
            Outcome::Overloaded => "overloaded",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
        }
    }

    pub fn of<T>(result: &Result<T, EngineError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(EngineError::Validation(_) | EngineError::InvalidRequest(_)) => Outcome::Invalid,
            Err(EngineError::Overloaded(_)) => Outcome::Overloaded,
            Err(EngineError::Timeout(_)) => Outcome::Timeout,
            Err(_) => Outcome::Error,
        }
    }
}

/// A phase of a request's trip through a model's queue and instances
/// (`kiln_request_phase_seconds{phase}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Queued until an instance took it (per request).
    Queue,
    /// Concatenating a batch's inputs (per merged batch).
    Merge,
    /// The backend's run, merge included (per batch).
    Compute,
    /// Cutting a merged batch's outputs per request (per merged batch).
    Split,
    /// From the worker sending the answer to the caller resuming (per queued request).
    Reply,
}

impl Phase {
    const ALL: [Phase; 5] = [Phase::Queue, Phase::Merge, Phase::Compute, Phase::Split, Phase::Reply];

    fn label(self) -> &'static str {
        match self {
            Phase::Queue => "queue",
            Phase::Merge => "merge",
            Phase::Compute => "compute",
            Phase::Split => "split",
            Phase::Reply => "reply",
        }
    }
}

/// The pre-registered metric handles of one model version.
pub struct ModelMetrics {
    requests: Vec<Counter>,
    latency: Vec<Histogram>,
    phases: Vec<Histogram>,
    batch_size: Histogram,
    queue_depth: Gauge,
    in_flight: Gauge,
    batch_window: Gauge,
}

impl ModelMetrics {
    pub fn new(model: &str, version: u64) -> Self {
        let model = model.to_string();
        let version = version.to_string();
        let mut requests = Vec::new();
        for protocol in Protocol::ALL {
            for outcome in Outcome::ALL {
                requests.push(counter!(
                    "kiln_requests_total",
                    "model" => model.clone(), "version" => version.clone(),
                    "protocol" => protocol.label(), "outcome" => outcome.label()
                ));
            }
        }
        let latency = Protocol::ALL
            .iter()
            .map(|p| {
                histogram!("kiln_request_duration_seconds", "model" => model.clone(), "version" => version.clone(), "protocol" => p.label())
            })
            .collect();
        ModelMetrics {
            requests,
            latency,
            phases: Phase::ALL
                .iter()
                .map(|p| {
                    histogram!("kiln_request_phase_seconds", "model" => model.clone(), "version" => version.clone(), "phase" => p.label())
                })
                .collect(),
            batch_size: histogram!("kiln_batch_size", "model" => model.clone(), "version" => version.clone()),
            queue_depth: gauge!("kiln_queue_depth", "model" => model.clone(), "version" => version.clone()),
            in_flight: gauge!("kiln_requests_in_flight", "model" => model.clone(), "version" => version.clone()),
            batch_window: gauge!("kiln_batch_window_seconds", "model" => model, "version" => version),
        }
    }

    pub fn request(&self, protocol: Protocol, outcome: Outcome, elapsed: Duration) {
        let p = Protocol::ALL.iter().position(|&x| x == protocol).unwrap_or(0);
        let o = Outcome::ALL.iter().position(|&x| x == outcome).unwrap_or(0);
        self.requests[p * Outcome::ALL.len() + o].increment(1);
        if outcome == Outcome::Success {
            self.latency[p].record(elapsed.as_secs_f64());
        }
    }

    pub fn phase(&self, phase: Phase, d: Duration) {
        let i = Phase::ALL.iter().position(|&x| x == phase).unwrap_or(0);
        self.phases[i].record(d.as_secs_f64());
    }

    pub fn batch_size(&self, rows: usize) {
        self.batch_size.record(rows as f64);
    }

    pub fn queue_depth(&self, depth: usize) {
        self.queue_depth.set(depth as f64);
    }

    pub fn in_flight(&self, delta: f64) {
        self.in_flight.increment(delta);
    }

    pub fn batch_window(&self, window: Duration) {
        self.batch_window.set(window.as_secs_f64());
    }
}

/// How a pipeline step ended, for `kiln_pipeline_steps_total`.
const STEP_OUTCOMES: [&str; 5] = ["success", "error", "fallback", "constant", "skipped"];

/// The pre-registered handles of one pipeline step: the request path bumps atomics only.
pub struct StepMetrics {
    outcomes: Vec<Counter>,
    duration: Histogram,
}

impl StepMetrics {
    pub fn new(pipeline: &str, step: &str) -> Self {
        let outcomes = STEP_OUTCOMES
            .iter()
            .map(|&outcome| {
                counter!("kiln_pipeline_steps_total",
                    "pipeline" => pipeline.to_string(), "step" => step.to_string(), "outcome" => outcome)
            })
            .collect();
        let duration = histogram!("kiln_pipeline_step_duration_seconds",
            "pipeline" => pipeline.to_string(), "step" => step.to_string());
        StepMetrics { outcomes, duration }
    }

    /// One run of the step finished: `outcome` is one of success, error, fallback, constant,
    /// skipped.
    pub fn finished(&self, outcome: &str, elapsed: Duration) {
        let i = STEP_OUTCOMES.iter().position(|&o| o == outcome).unwrap_or(1);
        self.outcomes[i].increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

impl std::fmt::Debug for StepMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepMetrics")
    }
}

/// A remote step is trying again.
pub fn pipeline_retry(pipeline: &str, step: &str) {
    counter!("kiln_pipeline_step_retries_total", "pipeline" => pipeline.to_string(), "step" => step.to_string())
        .increment(1);
}

/// A remote step's circuit breaker opened (1) or closed (0).
pub fn breaker_state(pipeline: &str, step: &str, open: bool) {
    gauge!("kiln_pipeline_step_breaker_open", "pipeline" => pipeline.to_string(), "step" => step.to_string())
        .set(if open { 1.0 } else { 0.0 });
}
