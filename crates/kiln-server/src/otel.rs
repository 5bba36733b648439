//! OpenTelemetry traces: one server span per request (its parent the caller's W3C
//! `traceparent`, when it sent one), under it the spans the engine recorded (`kiln_serving::span`:
//! the model, queue wait and batch, pipeline steps with retries and fallbacks as events, remote
//! calls, collection searches, LLM generations), exported over OTLP (gRPC or HTTP/protobuf).
//!
//! Off unless an endpoint is given. Sampling is parent-based: a caller's sampled flag decides,
//! else a ratio of new traces (by trace id, as OpenTelemetry's `TraceIdRatioBased`). Export is
//! off the request path: finished requests hand their spans to a bounded queue and never wait;
//! a full queue drops them (`kiln_trace_spans_dropped_total`), a failed export loses its batch
//! (`kiln_trace_export_failures_total`) — a slow or dead collector never slows a request.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kiln_serving::span::{Span, SpanRecord, Value, new_span_id, parse_traceparent};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use tokio::sync::mpsc;

/// Finished requests waiting for export; beyond this, their spans are dropped.
const QUEUE_REQUESTS: usize = 4096;
/// Most spans in one export.
const BATCH_SPANS: usize = 512;
/// How long a batch waits to fill before it is sent anyway.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// One export's limit.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// OTLP's two transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl std::str::FromStr for OtlpProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" | "http" => Ok(OtlpProtocol::HttpProtobuf),
            other => Err(format!("OTLP protocol '{other}': use grpc or http/protobuf")),
        }
    }
}

/// Where and how much to trace.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// `http://host:4317` (gRPC) or `http://host:4318` (HTTP; `/v1/traces` is added when the
    /// URL has no path).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Share of new traces sampled (0–1); a caller's sampled flag overrides it.
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
}

struct Inner {
    queue: mpsc::Sender<Finished>,
    /// Asks the export task to send what it holds now (shutdown).
    flush: mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
    ratio: f64,
}

/// A finished request's spans as recorded: made into OTLP spans by the export task, off the
/// request's path.
struct Finished {
    root: Root,
    end: SystemTime,
    error: Option<String>,
    children: Vec<SpanRecord>,
}

/// The process's tracer; cheap to clone. [`Tracer::off`] records nothing.
#[derive(Clone, Default)]
pub struct Tracer {
    inner: Option<Arc<Inner>>,
}

/// What the transport read of a caller's trace: a parsed `traceparent` (a malformed one is
/// ignored: a new trace starts) and its `tracestate`.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    pub parent: Option<(u128, u64, bool)>,
    pub tracestate: Option<String>,
}

impl Incoming {
    /// From the `traceparent` and `tracestate` header values.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Incoming {
        let parent = traceparent.and_then(parse_traceparent);
        Incoming { parent, tracestate: parent.and(tracestate).map(str::to_string) }
    }

    /// From REST headers.
    pub fn from_http(headers: &axum::http::HeaderMap) -> Incoming {
        let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
        Incoming::from_headers(get("traceparent"), get("tracestate"))
    }

    /// From gRPC metadata.
    pub fn from_grpc(metadata: &tonic::metadata::MetadataMap) -> Incoming {
        let get = |name| metadata.get(name).and_then(|v| v.to_str().ok());
        Incoming::from_headers(get("traceparent"), get("tracestate"))
    }
}

/// A sampled request's own span, under way: the engine records its children into
/// [`Root::span`]; [`Root::finish`] sends them all.
pub struct Root {
    tracer: Arc<Inner>,
    span: Span,
    id: u64,
    parent: Option<u64>,
    tracestate: Option<String>,
    name: String,
    start: SystemTime,
    attributes: Vec<KeyValue>,
}

impl Tracer {
    pub fn off() -> Tracer {
        Tracer::default()
    }

    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Starts the exporter (on the current tokio runtime).
    pub fn start(config: &OtlpConfig) -> Result<Tracer, String> {
        let mut exporter = match config.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build(),
            OtlpProtocol::HttpProtobuf => {
                let client = kiln_protocol::client::http_client_builder()
                    .build()
                    .map_err(|e| format!("OTLP HTTP client: {e}"))?;
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_http_client(client)
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(http_traces_url(&config.endpoint)?)
                    .with_timeout(EXPORT_TIMEOUT)
                    .build()
            }
        }
        .map_err(|e| format!("OTLP exporter for {}: {e}", config.endpoint))?;
        exporter.set_resource(&Resource::builder().with_service_name(config.service_name.clone()).build());
        let (queue, finished) = mpsc::channel(QUEUE_REQUESTS);
        let (flush, flushes) = mpsc::channel(4);
        let scope = InstrumentationScope::builder("kiln").with_version(env!("CARGO_PKG_VERSION")).build();
        tokio::spawn(export(exporter, Pending { finished, flushes }, scope));
        Ok(Tracer { inner: Some(Arc::new(Inner { queue, flush, ratio: config.sample_ratio.clamp(0.0, 1.0) })) })
    }

    /// Sends the spans of every request finished so far, waiting up to `within` (shutdown: the
    /// export task would otherwise hold the last half second of spans when the process exits).
    /// Returns whether they went out (or there was nothing to send).
    pub async fn flush(&self, within: Duration) -> bool {
        let Some(inner) = &self.inner else { return true };
        let (done, sent) = tokio::sync::oneshot::channel();
        if inner.flush.send(done).await.is_err() {
            return false;
        }
        tokio::time::timeout(within, sent).await.is_ok_and(|r| r.is_ok())
    }

    /// The trace id a request runs under: the caller's, else `fresh` (kiln's request id).
    pub fn trace_id(incoming: &Incoming, fresh: u128) -> u128 {
        incoming.parent.map_or(fresh, |(trace, _, _)| trace)
    }

    /// Starts a request's span when it is sampled: the caller's flag, else the ratio.
    pub fn begin(&self, incoming: &Incoming, trace_id: u128, name: String) -> Option<Root> {
        let inner = self.inner.as_ref()?;
        let sampled = match incoming.parent {
            Some((_, _, sampled)) => sampled,
            // The low 64 bits are random in kiln's ids as in W3C's.
            None => (((trace_id as u64) >> 11) as f64 / ((1u64 << 53) as f64)) < inner.ratio,
        };
        if !sampled {
            return None;
        }
        let id = new_span_id();
        Some(Root {
            tracer: inner.clone(),
            span: Span::new(trace_id, id),
            id,
            parent: incoming.parent.map(|(_, parent, _)| parent),
            tracestate: incoming.tracestate.clone(),
            name,
            start: SystemTime::now(),
            attributes: Vec::new(),
        })
    }
}

/// `endpoint` with OTLP/HTTP's traces path when it has none.
fn http_traces_url(endpoint: &str) -> Result<String, String> {
    let uri: axum::http::Uri = endpoint.parse().map_err(|e| format!("OTLP endpoint '{endpoint}': {e}"))?;
    Ok(match uri.path() {
        "" | "/" => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
        _ => endpoint.to_string(),
    })
}

impl Root {
    /// Where the engine records this request's spans.
    pub fn span(&self) -> &Span {
        &self.span
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.attributes.push(KeyValue::new(key, to_otel(value.into())));
    }

    /// Ends the request's span (`error`: why it failed) and hands it and every span recorded
    /// under it to the exporter; never waits.
    pub fn finish(self, error: Option<String>) {
        let children = self.span.take();
        let spans = 1 + children.len() as u64;
        let queue = self.tracer.queue.clone();
        if queue.try_send(Finished { root: self, end: SystemTime::now(), error, children }).is_err() {
            metrics::counter!("kiln_trace_spans_dropped_total").increment(spans);
        }
    }
}

impl Finished {
    /// The request's OTLP spans.
    fn spans(self, scope: &InstrumentationScope, out: &mut Vec<SpanData>) {
        let root = self.root;
        let trace_id = TraceId::from(root.span.trace_id());
        let state = root.tracestate.as_deref().and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
        let context = |id: u64| SpanContext::new(trace_id, SpanId::from(id), TraceFlags::SAMPLED, false, state.clone());
        out.push(SpanData {
            span_context: context(root.id),
            parent_span_id: root.parent.map_or(SpanId::INVALID, SpanId::from),
            parent_span_is_remote: root.parent.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(root.name),
            start_time: root.start,
            end_time: self.end,
            attributes: root.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: status(self.error),
            instrumentation_scope: scope.clone(),
        });
        out.extend(self.children.into_iter().map(|r| child(r, &context, scope)));
    }
}

fn child(r: SpanRecord, context: &impl Fn(u64) -> SpanContext, scope: &InstrumentationScope) -> SpanData {
    let mut events = SpanEvents::default();
    events.events = r
        .events
        .into_iter()
        .map(|e| {
            opentelemetry::trace::Event::new(
                e.name,
                e.at,
                e.attributes.into_iter().map(|(k, v)| KeyValue::new(k, to_otel(v))).collect(),
                0,
            )
        })
        .collect();
    SpanData {
        span_context: context(r.id),
        parent_span_id: SpanId::from(r.parent),
        parent_span_is_remote: false,
        span_kind: if r.client { SpanKind::Client } else { SpanKind::Internal },
        name: Cow::Owned(r.name),
        start_time: r.start,
        end_time: r.end,
        attributes: r.attributes.into_iter().map(|(k, v)| KeyValue::new(k, to_otel(v))).collect(),
        dropped_attributes_count: 0,
        events,
        links: SpanLinks::default(),
        status: status(r.error),
        instrumentation_scope: scope.clone(),
    }
}

fn status(error: Option<String>) -> Status {
    match error {
        Some(description) => Status::Error { description: Cow::Owned(description) },
        None => Status::Unset,
    }
}

fn to_otel(v: Value) -> opentelemetry::Value {
    match v {
        Value::Int(i) => i.into(),
        Value::Float(f) => f.into(),
        Value::Text(s) => s.into(),
        Value::Bool(b) => b.into(),
    }
}

/// The export loop: batches of about [`BATCH_SPANS`], sent at most [`BATCH_DELAY`] after their
/// first request; ends when every tracer is gone (shutdown), after sending what it holds.
/// What the export task receives: finished requests, and flush requests.
struct Pending {
    finished: mpsc::Receiver<Finished>,
    flushes: mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
}

async fn export(exporter: opentelemetry_otlp::SpanExporter, mut from: Pending, scope: InstrumentationScope) {
    let mut failures_logged = 0u32;
    loop {
        let mut batch = Vec::with_capacity(BATCH_SPANS);
        let mut flushed = Vec::new();
        tokio::select! {
            first = from.finished.recv() => match first {
                Some(first) => first.spans(&scope, &mut batch),
                None => return,
            },
            Some(done) = from.flushes.recv() => flushed.push(done),
        }
        let until = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH_SPANS && flushed.is_empty() {
            tokio::select! {
                next = tokio::time::timeout_at(until, from.finished.recv()) => match next {
                    Ok(Some(request)) => request.spans(&scope, &mut batch),
                    Ok(None) | Err(_) => break,
                },
                Some(done) = from.flushes.recv() => flushed.push(done),
            }
        }
        // A flush sends everything finished before it: what is queued joins this batch.
        if !flushed.is_empty() {
            while let Ok(request) = from.finished.try_recv() {
                request.spans(&scope, &mut batch);
            }
        }
        if batch.is_empty() {
            acknowledge(flushed);
            continue;
        }
        let n = batch.len() as u64;
        match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(batch)).await {
            Ok(Ok(())) => metrics::counter!("kiln_trace_spans_exported_total").increment(n),
            outcome => {
                metrics::counter!("kiln_trace_export_failures_total").increment(1);
                metrics::counter!("kiln_trace_spans_dropped_total").increment(n);
                // Say it, but not once a batch while the collector stays down.
                if failures_logged < 3 || failures_logged.is_power_of_two() {
                    let why = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    tracing::warn!(spans = n, error = %why, "OTLP export failed; the spans are dropped");
                }
                failures_logged = failures_logged.saturating_add(1);
            }
        }
        acknowledge(flushed);
    }
}

/// Tells each flush caller its spans went out (or failed and were counted).
fn acknowledge(flushed: Vec<tokio::sync::oneshot::Sender<()>>) {
    for done in flushed {
        let _ = done.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_endpoint_gets_the_traces_path_when_it_has_none() {
        assert_eq!(http_traces_url("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(http_traces_url("http://127.0.0.1:4318/").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(http_traces_url("http://h:1/custom/path").unwrap(), "http://h:1/custom/path");
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace_and_drops_tracestate() {
        let i = Incoming::from_headers(Some("00-zz-11-01"), Some("k=v"));
        assert!(i.parent.is_none() && i.tracestate.is_none());
        assert_eq!(Tracer::trace_id(&i, 42), 42);
        let i = Incoming::from_headers(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), Some("k=v"));
        assert_eq!(Tracer::trace_id(&i, 42), 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(i.tracestate.as_deref(), Some("k=v"));
    }
}
