//! An LLM's metrics through the `metrics` facade, registered once per model version; the
//! gauges move only through guards ([`Waiting`], [`Active`]), so they come back down however a
//! request ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::FinishReason;

/// How a sequence ended (`kiln_llm_sequences_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceOutcome {
    Finished(FinishReason),
    /// The client left (its `Generation` was dropped).
    Cancelled,
    Failed,
}

/// The handles of one model version.
pub struct LlmMetrics {
    pub(crate) time_to_first_token: Histogram,
    pub(crate) inter_token: Histogram,
    pub(crate) prompt_tokens: Counter,
    pub(crate) cached_prompt_tokens: Counter,
    /// Prompts that started from another slot's cells (a shared system prompt, copied).
    pub(crate) copied_prefixes: Counter,
    pub(crate) generated_tokens: Counter,
    pub(crate) step_sequences: Histogram,
    /// How long compiling a request's grammar took (one sample per constrained request).
    pub(crate) grammar_compile: Histogram,
    active_gauge: Gauge,
    queue_gauge: Gauge,
    stop: Counter,
    length: Counter,
    cancelled: Counter,
    failed: Counter,
    waiting: AtomicUsize,
    active: AtomicUsize,
}

impl LlmMetrics {
    pub fn new(model: &str, version: u64) -> Self {
        let labels = [("model", model.to_string()), ("version", version.to_string())];
        let outcome = |o: &'static str| {
            let mut l = labels.to_vec();
            l.push(("outcome", o.to_string()));
            counter!("kiln_llm_sequences_total", &l)
        };
        LlmMetrics {
            time_to_first_token: histogram!("kiln_llm_time_to_first_token_seconds", &labels),
            inter_token: histogram!("kiln_llm_inter_token_seconds", &labels),
            prompt_tokens: counter!("kiln_llm_prompt_tokens_total", &labels),
            cached_prompt_tokens: counter!("kiln_llm_prompt_tokens_cached_total", &labels),
            copied_prefixes: counter!("kiln_llm_prefix_copies_total", &labels),
            generated_tokens: counter!("kiln_llm_generated_tokens_total", &labels),
            step_sequences: histogram!("kiln_llm_step_sequences", &labels),
            grammar_compile: histogram!("kiln_llm_grammar_compile_seconds", &labels),
            active_gauge: gauge!("kiln_llm_active_sequences", &labels),
            queue_gauge: gauge!("kiln_llm_queue_depth", &labels),
            stop: outcome("stop"),
            length: outcome("length"),
            cancelled: outcome("cancelled"),
            failed: outcome("failed"),
            waiting: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
        }
    }

    pub(crate) fn ended(&self, outcome: SequenceOutcome) {
        match outcome {
            SequenceOutcome::Finished(FinishReason::Stop) => self.stop.increment(1),
            SequenceOutcome::Finished(FinishReason::Length) => self.length.increment(1),
            SequenceOutcome::Cancelled => self.cancelled.increment(1),
            SequenceOutcome::Failed => self.failed.increment(1),
        }
    }

    pub(crate) fn first_token(&self, after: Duration) {
        self.time_to_first_token.record(after.as_secs_f64());
    }

    /// A request entering the queue; the guard leaves it.
    pub(crate) fn wait(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.queue_gauge.increment(1.0);
        Waiting(self.clone())
    }

    /// A sequence taking a slot; the guard frees it.
    pub(crate) fn activate(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.active_gauge.increment(1.0);
        Active(Some(self.clone()))
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

/// Held by a queued request.
pub struct Waiting(Arc<LlmMetrics>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        self.0.queue_gauge.decrement(1.0);
    }
}

/// Held by a running sequence; it stops counting when the sequence ends (or is dropped).
pub struct Active(Option<Arc<LlmMetrics>>);

impl Active {
    /// The sequence is done: no longer active, though its slot is freed at the step's end (a
    /// client that has its answer finds the model idle).
    pub(crate) fn end(&mut self) {
        if let Some(metrics) = self.0.take() {
            metrics.active.fetch_sub(1, Ordering::Relaxed);
            metrics.active_gauge.decrement(1.0);
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.end();
    }
}
