//! Spans a sampled request records on its way through the engine: the model it runs, the time
//! it waited in a queue and the batch it ran in, a pipeline's steps (with their retries and
//! fallbacks as events), the models and remote servers those steps call. They are plain records
//! here — ids, times, attributes — collected per request; the server turns them into
//! OpenTelemetry spans and exports them when the request ends (kiln-server's `otel`). A request
//! that is not sampled carries no [`Span`] and records nothing.
//!
//! Ids follow W3C Trace Context: a 128-bit trace id shared by every span of the request (and by
//! the caller's and the remote servers' spans), a 64-bit id per span.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

/// Something that happened at a point in a span (a retry, a fallback taking over).
#[derive(Debug, Clone)]
pub struct SpanEvent {
    pub at: SystemTime,
    pub name: &'static str,
    pub attributes: Vec<(&'static str, Value)>,
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub id: u64,
    pub parent: u64,
    pub name: String,
    /// `true` for a call out of kiln (a remote step): OpenTelemetry's client kind.
    pub client: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    pub events: Vec<SpanEvent>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

struct Shared {
    trace_id: u128,
    /// `false` for a request kiln does not sample: nothing is recorded, and calls out of kiln
    /// pass the caller's trace context on as it came (its parent span and sampled flag).
    recording: bool,
    /// The sampled flag calls out of kiln send.
    sampled: bool,
    /// The same moment on both clocks: spans measure with `Instant`, export `SystemTime`.
    anchor: (Instant, SystemTime),
    spans: Mutex<Vec<SpanRecord>>,
}

/// Where a request's work records its spans: the trace, and the span the next ones hang under.
/// Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Span {
    shared: Arc<Shared>,
    parent: u64,
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Span({:032x}/{:016x})", self.shared.trace_id, self.parent)
    }
}

/// A fresh span id: random, never zero (zero is W3C's "invalid").
pub fn new_span_id() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

impl Span {
    /// A trace whose spans hang under span `root` (the request's own, which its owner records).
    pub fn new(trace_id: u128, root: u64) -> Span {
        Span {
            shared: Arc::new(Shared {
                trace_id,
                recording: true,
                sampled: true,
                anchor: (Instant::now(), SystemTime::now()),
                spans: Mutex::new(Vec::new()),
            }),
            parent: root,
        }
    }

    /// A caller's trace context that kiln does not sample (W3C: an intermediary that does not
    /// participate passes `traceparent` on unchanged): records nothing; calls out of kiln send
    /// the caller's trace id, its span `parent` as theirs, and its `sampled` flag.
    pub fn passthrough(trace_id: u128, parent: u64, sampled: bool) -> Span {
        Span {
            shared: Arc::new(Shared {
                trace_id,
                recording: false,
                sampled,
                anchor: (Instant::now(), SystemTime::now()),
                spans: Mutex::new(Vec::new()),
            }),
            parent,
        }
    }

    /// Whether this span records (false for a passed-through context).
    pub fn is_recording(&self) -> bool {
        self.shared.recording
    }

    pub fn trace_id(&self) -> u128 {
        self.shared.trace_id
    }

    /// The id of the span new ones hang under.
    pub fn parent_id(&self) -> u64 {
        self.parent
    }

    /// The `traceparent` header a call made under this span sends.
    pub fn traceparent(&self) -> String {
        format!("00-{:032x}-{:016x}-{:02x}", self.shared.trace_id, self.parent, u8::from(self.shared.sampled))
    }

    /// `at` on the wall clock.
    pub fn wall(&self, at: Instant) -> SystemTime {
        let (instant, system) = self.shared.anchor;
        match at.checked_duration_since(instant) {
            Some(after) => system + after,
            None => system - instant.duration_since(at),
        }
    }

    /// Starts a child span now; it is recorded when the guard is dropped.
    pub fn child(&self, name: impl Into<String>) -> SpanGuard {
        self.child_at(name, Instant::now())
    }

    /// Starts a child span that began at `start`.
    pub fn child_at(&self, name: impl Into<String>, start: Instant) -> SpanGuard {
        if !self.shared.recording {
            // Nothing recorded; calls made under it still carry the caller's context.
            return SpanGuard { span: self.clone(), started: start, record: None };
        }
        let id = new_span_id();
        SpanGuard {
            span: Span { shared: self.shared.clone(), parent: id },
            started: start,
            record: Some(SpanRecord {
                id,
                parent: self.parent,
                name: name.into(),
                client: false,
                start: self.wall(start),
                end: self.wall(start),
                attributes: Vec::new(),
                events: Vec::new(),
                error: None,
            }),
        }
    }

    /// Records a finished child span that ran from `start` to `end`.
    pub fn record(
        &self,
        name: impl Into<String>,
        start: Instant,
        end: Instant,
        attributes: Vec<(&'static str, Value)>,
    ) {
        let mut guard = self.child_at(name, start);
        if let Some(r) = guard.record.as_mut() {
            r.attributes = attributes;
        }
        guard.end_at(end);
    }

    /// Every span recorded so far, taken out.
    pub fn take(&self) -> Vec<SpanRecord> {
        std::mem::take(&mut *self.shared.spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// A span under way: children hang under it ([`SpanGuard::span`]); dropped, it is recorded
/// (a future dropped mid-way records its span with the time it got to — cancellation included).
pub struct SpanGuard {
    span: Span,
    started: Instant,
    record: Option<SpanRecord>,
}

impl SpanGuard {
    /// Where this span's children record.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// When it started.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(r) = self.record.as_mut() {
            r.attributes.push((key, value.into()));
        }
    }

    /// Marks it as a call out of kiln (OpenTelemetry's client kind).
    pub fn client(&mut self) {
        if let Some(r) = self.record.as_mut() {
            r.client = true;
        }
    }

    pub fn event(&mut self, name: &'static str, attributes: Vec<(&'static str, Value)>) {
        let at = SystemTime::now();
        if let Some(r) = self.record.as_mut() {
            r.events.push(SpanEvent { at, name, attributes });
        }
    }

    pub fn push_event(&mut self, event: SpanEvent) {
        if let Some(r) = self.record.as_mut() {
            r.events.push(event);
        }
    }

    pub fn fail(&mut self, error: impl std::fmt::Display) {
        if let Some(r) = self.record.as_mut() {
            r.error = Some(error.to_string());
        }
    }

    /// Ends it at `end` (rather than when dropped).
    pub fn end_at(mut self, end: Instant) {
        if let Some(mut r) = self.record.take() {
            r.end = self.span.wall(end);
            self.push(r);
        }
    }

    fn push(&self, record: SpanRecord) {
        self.span.shared.spans.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(record);
    }
}

impl Drop for SpanGuard {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.end = SystemTime::now();
            self.push(r);
        }
    }
}

/// A W3C `traceparent` header's trace id, parent span id and sampled flag; `None` for anything
/// malformed (version 00 layout; a future version's extra fields are ignored, as the spec says;
/// all-zero ids and version ff are invalid).
pub fn parse_traceparent(value: &str) -> Option<(u128, u64, bool)> {
    let value = value.trim();
    let mut parts = value.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok()?;
    let parent = u64::from_str_radix(parent, 16).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace != 0 && parent != 0).then_some((trace, parent, flags & 1 == 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passed_through_context_records_nothing_and_sends_the_callers_parent_and_flag() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let (trace, parent, sampled) = parse_traceparent(header).expect("valid");
        let span = Span::passthrough(trace, parent, sampled);
        assert!(!span.is_recording());
        let mut step = span.child("step");
        step.set("k", 1usize);
        assert_eq!(step.span().traceparent(), header);
        drop(step);
        span.record("queue", Instant::now(), Instant::now(), Vec::new());
        assert!(span.take().is_empty());
    }

    #[test]
    fn traceparent_round_trips_and_rejects_malformed_headers() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (trace, parent, sampled) = parse_traceparent(header).expect("valid");
        assert_eq!(trace, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent, 0x00f067aa0ba902b7);
        assert!(sampled);
        assert_eq!(Span::new(trace, parent).traceparent(), header);
        assert_eq!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").map(|t| t.2),
            Some(false)
        );
        for bad in [
            "",
            "garbage",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // A later version may add fields.
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
    }

    #[test]
    fn children_hang_under_their_parent_and_dropped_guards_record() {
        let root = Span::new(7, 1);
        let mut step = root.child("step");
        step.set("kiln.step", "a");
        let started = Instant::now();
        step.span().record("queue", started, Instant::now(), vec![("rows", 2usize.into())]);
        let step_id = step.span().parent_id();
        drop(step);
        let spans = root.take();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].name, "queue");
        assert_eq!(spans[0].parent, step_id);
        assert_eq!(spans[1].name, "step");
        assert_eq!(spans[1].parent, 1);
        assert!(spans[1].end >= spans[1].start);
        assert!(root.take().is_empty());
    }
}
