//! kiln-records: the prediction log. Every prediction (and later its true label) goes to SQL —
//! SQLite embedded by default, PostgreSQL when several replicas share one store — off the hot
//! path: the request handler hands a [`Record`] to a bounded channel and a writer task inserts
//! them in batches, one transaction per batch.
//!
//! Two modes: `async` (the answer does not wait; when the channel stays full past a short
//! bound the row is dropped and counted — never silently) and `durable` (the answer waits until
//! the row is committed). When the database is unreachable or locked, rows wait in a bounded
//! backlog and are retried with backoff; the `kiln_records_backlog` gauge shows it, and on
//! recovery nothing buffered is lost. [`Recorder::flush`] drains everything at shutdown.
//!
//! It knows nothing of HTTP or of the engine: it stores and queries rows.

pub mod capture;
pub mod drift;
pub mod points;
pub mod quality;
mod retention;
pub mod store;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use capture::{Captured, Labels};
pub use store::{Dialect, PredictionFilter, PredictionRow, Store};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Database(String),
    /// Durable mode: the row was not committed in time.
    #[error("the prediction log did not commit the record within {0:?}: {1}")]
    NotCommitted(Duration, Uncommitted),
}

/// Why a durable row was not committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Uncommitted {
    #[error("the prediction log's backlog is full")]
    BacklogFull,
    #[error("the writer has stopped")]
    WriterStopped,
    #[error("the database did not answer in time")]
    NoAnswer,
}

/// One prediction, as the server saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub client_key: Option<String>,
    pub model: String,
    pub version: i64,
    pub protocol: String,
    pub ts_ms: i64,
    pub latency_us: i64,
    /// `success` or `error`.
    pub outcome: String,
    pub error: Option<String>,
    pub rows: i64,
    /// The tensors as a compact binary blob ([`capture`]), already capped.
    pub inputs: Option<Vec<u8>>,
    pub outputs: Option<Vec<u8>>,
    /// JSON array of the predicted label per row.
    pub labels: Option<String>,
    pub truncated: bool,
    /// A `[rollout]` shadow version's answer to the logged request with this id: stored apart
    /// (`shadow_predictions`: no inputs, client key, error text or row count of its own).
    pub shadow_of: Option<String>,
}

/// A record as a request leaves it: its tensors encoded (capped), its labels still raw, turned
/// into JSON text by the writer ([`PendingRecord::finish`]), off the request path.
#[derive(Debug, Clone)]
pub struct PendingRecord {
    /// Every field but `inputs`, `outputs` and `labels` (and `truncated` when those cut).
    pub record: Record,
    pub inputs: Option<Captured>,
    pub outputs: Option<Captured>,
    pub labels: Option<Labels>,
}

impl PendingRecord {
    /// The row as stored.
    pub fn finish(self) -> Record {
        let mut record = self.record;
        if let Some(inputs) = self.inputs {
            let (blob, cut) = inputs.into_parts();
            record.inputs = Some(blob);
            record.truncated |= cut;
        }
        if let Some(outputs) = self.outputs {
            let (blob, cut) = outputs.into_parts();
            record.outputs = Some(blob);
            record.truncated |= cut;
        }
        if let Some(labels) = self.labels {
            record.labels = labels.render();
        }
        record
    }
}

impl PendingRecord {
    /// The memory this row holds while it waits (an estimate: the struct, its text and blobs).
    pub fn heap_bytes(&self) -> usize {
        let r = &self.record;
        let text = |t: &Option<String>| t.as_ref().map_or(0, String::len);
        let blob = |c: &Option<Captured>| c.as_ref().map_or(0, Captured::len);
        std::mem::size_of::<PendingRecord>()
            + 64
            + r.id.len()
            + r.model.len()
            + r.protocol.len()
            + r.outcome.len()
            + text(&r.client_key)
            + text(&r.error)
            + text(&r.labels)
            + r.inputs.as_ref().map_or(0, Vec::len)
            + r.outputs.as_ref().map_or(0, Vec::len)
            + blob(&self.inputs)
            + blob(&self.outputs)
            + self.labels.as_ref().map_or(0, Labels::len)
    }
}

impl From<Record> for PendingRecord {
    fn from(record: Record) -> Self {
        PendingRecord { record, inputs: None, outputs: None, labels: None }
    }
}

impl Record {
    /// Roughly what the row takes in the database, indexes included.
    pub fn approx_bytes(&self) -> u64 {
        let text = |t: &Option<String>| t.as_ref().map_or(0, String::len);
        let blob = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, Vec::len);
        (60 + self.id.len() * 2
            + self.model.len() * 2
            + text(&self.client_key) * 2
            + text(&self.error)
            + blob(&self.inputs)
            + blob(&self.outputs)
            + text(&self.labels)) as u64
    }
}

/// The true labels of a prediction, sent later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub id: String,
    pub prediction_id: Option<String>,
    pub client_key: Option<String>,
    pub ts_ms: i64,
    pub labels: Vec<String>,
}

/// When an answer waits for its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    #[default]
    Async,
    Durable,
}

/// How much the log keeps: rows older than `max_age` and, past `max_bytes`, the oldest rows
/// are deleted by the writer, a few thousand at a time between inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
}

impl Default for Retention {
    /// 7 days, 2 GiB.
    fn default() -> Self {
        Retention { max_age: Some(Duration::from_secs(7 * 24 * 3600)), max_bytes: Some(2 << 30) }
    }
}

/// How the log writes.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// `sqlite:PATH` or `postgres://...`.
    pub url: String,
    pub mode: WriteMode,
    /// Rows waiting for the database at most (handed over and not yet written); beyond it
    /// rows are dropped and counted.
    pub capacity: usize,
    /// The memory those waiting rows may take at most (their tensors, text and bookkeeping):
    /// what bounds the process's memory when the database falls behind.
    pub max_pending_bytes: usize,
    /// Rows per transaction at most.
    pub batch_rows: usize,
    /// Async mode: how long the writer lets rows gather once the first arrives.
    pub linger: Duration,
    /// Async mode: how long a request waits for room in a full backlog before its row is
    /// dropped and counted (backpressure, bounded).
    pub enqueue_wait: Duration,
    /// Durable mode: how long a request waits for its commit before it fails.
    pub commit_wait: Duration,
    pub retention: Retention,
}

impl RecorderConfig {
    pub fn new(url: &str, mode: WriteMode) -> Self {
        RecorderConfig {
            url: url.to_string(),
            mode,
            capacity: 100_000,
            max_pending_bytes: 32 << 20,
            batch_rows: 4096,
            linger: Duration::from_millis(50),
            enqueue_wait: Duration::from_millis(5),
            commit_wait: Duration::from_secs(10),
            retention: Retention::default(),
        }
    }
}

type Ack = oneshot::Sender<Result<(), Uncommitted>>;

enum Item {
    /// A row, its ack (durable), and the bytes it holds in the handoff's bound (set by `push`).
    Row(Box<PendingRecord>, Option<Ack>, usize),
    /// Answer once everything received before it is committed.
    Flush(oneshot::Sender<()>),
}

/// Where requests leave rows for the writer. A plain locked queue rather than a channel: the
/// writer is woken only when the queue goes from empty to non-empty (once per batch, not once
/// per row — a wake-up per request cost more than the insert itself), then takes everything.
struct Handoff {
    queue: std::sync::Mutex<Queue>,
    wake: tokio::sync::Notify,
    capacity: usize,
    max_bytes: usize,
}

/// Items handed over, and what every row not yet written takes — those in `items` and those
/// in the writer's backlog — released by the writer once they are written or dropped.
#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    rows: usize,
    bytes: usize,
}

impl Handoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Leaves an item; `Err` gives it back when the rows waiting are at their row or byte bound.
    fn push(&self, mut item: Item) -> Result<(), Item> {
        let mut queue = self.lock();
        if let Item::Row(record, _, held) = &mut item {
            let bytes = record.heap_bytes();
            *held = bytes;
            if queue.rows >= self.capacity || queue.bytes + bytes > self.max_bytes {
                return Err(item);
            }
            queue.rows += 1;
            queue.bytes += bytes;
        }
        let was_empty = queue.items.is_empty();
        queue.items.push_back(item);
        drop(queue);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    fn take_all(&self) -> VecDeque<Item> {
        std::mem::take(&mut self.lock().items)
    }

    fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    /// Rows written or dropped: their room is free again.
    fn release(&self, rows: usize, bytes: usize) {
        let mut queue = self.lock();
        queue.rows = queue.rows.saturating_sub(rows);
        queue.bytes = queue.bytes.saturating_sub(bytes);
    }
}

/// The handle the server records through (one atomic increment to clone: the server's state,
/// which holds it, is cloned per request). The writer stops when the last handle is gone and
/// everything is written.
#[derive(Clone)]
pub struct Recorder(Arc<Shared>);

struct Shared {
    handoff: Arc<Handoff>,
    store: Store,
    config: Arc<RecorderConfig>,
    dropped: Arc<AtomicU64>,
    /// The writer watches this to know when every handle is gone.
    _alive: Arc<()>,
}

impl Recorder {
    /// Connects, migrates and starts the writer task (on the current tokio runtime).
    pub async fn open(config: RecorderConfig) -> Result<Recorder, RecordsError> {
        let store = Store::connect(&config.url).await?;
        let handoff = Arc::new(Handoff {
            queue: std::sync::Mutex::default(),
            wake: tokio::sync::Notify::new(),
            capacity: config.capacity.max(1),
            max_bytes: config.max_pending_bytes.max(1),
        });
        let config = Arc::new(config);
        let dropped = Arc::new(AtomicU64::new(0));
        let alive = Arc::new(());
        tokio::spawn(writer(store.clone(), handoff.clone(), config.clone(), Arc::downgrade(&alive)));
        tracing::info!(database = %store.display, mode = ?config.mode, "prediction log ready");
        Ok(Recorder(Arc::new(Shared { handoff, store, config, dropped, _alive: alive })))
    }

    pub fn store(&self) -> &Store {
        &self.0.store
    }

    pub fn mode(&self) -> WriteMode {
        self.0.config.mode
    }

    /// Rows dropped so far (a full backlog under sustained overload or a long outage).
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }

    fn drop_row(&self, why: &str) {
        self.0.dropped.fetch_add(1, Ordering::Relaxed);
        counter!("kiln_records_dropped_total").increment(1);
        tracing::warn!(reason = why, "prediction record dropped");
    }

    /// Logs one prediction. Async: returns once the row is queued (or dropped and counted).
    /// Durable: returns once it is committed, or an error.
    pub async fn record(&self, record: impl Into<PendingRecord>) -> Result<(), RecordsError> {
        let record = record.into();
        match self.0.config.mode {
            WriteMode::Async => {
                if let Err(item) = self.0.handoff.push(Item::Row(Box::new(record), None, 0)) {
                    // Bounded backpressure: wait a little for room, then drop and count.
                    tokio::time::sleep(self.0.config.enqueue_wait).await;
                    if self.0.handoff.push(item).is_err() {
                        self.drop_row("the prediction log's backlog is full");
                    }
                }
                Ok(())
            }
            WriteMode::Durable => {
                let (ack, done) = oneshot::channel();
                let wait = self.0.config.commit_wait;
                if self.0.handoff.push(Item::Row(Box::new(record), Some(ack), 0)).is_err() {
                    return Err(RecordsError::NotCommitted(wait, Uncommitted::BacklogFull));
                }
                match tokio::time::timeout(wait, done).await {
                    Ok(Ok(Ok(()))) => Ok(()),
                    Ok(Ok(Err(why))) => Err(RecordsError::NotCommitted(wait, why)),
                    Ok(Err(_)) => Err(RecordsError::NotCommitted(wait, Uncommitted::WriterStopped)),
                    Err(_) => Err(RecordsError::NotCommitted(wait, Uncommitted::NoAnswer)),
                }
            }
        }
    }

    /// Waits until every row handed over before this call is committed, up to `within`.
    /// Returns whether it got there (shutdown logs what is left otherwise).
    pub async fn flush(&self, within: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.0.handoff.push(Item::Flush(tx)).is_err() {
            return false;
        }
        tokio::time::timeout(within, rx).await.is_ok_and(|r| r.is_ok())
    }

    pub async fn feedback(&self, feedback: &Feedback) -> Result<(), RecordsError> {
        self.0.store.add_feedback(feedback).await.map_err(|e| RecordsError::Database(format!("storing feedback: {e}")))
    }
}

/// The writer: batches rows into transactions; keeps them in a bounded backlog while the
/// database fails, retrying with backoff, and keeps accepting rows meanwhile.
async fn writer(store: Store, handoff: Arc<Handoff>, config: Arc<RecorderConfig>, alive: std::sync::Weak<()>) {
    // Each row with its ack and the bytes it holds in the handoff's bound.
    let mut backlog: VecDeque<(Arc<Record>, Option<Ack>, usize)> = VecDeque::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut backoff = Duration::from_millis(50);
    let mut retry_at: Option<Instant> = None;
    let mut retention = retention::Retainer::new(config.retention);
    // Async rows linger so one transaction takes many: from the first row's arrival, and under
    // steady load from the previous take, so a busy writer does not fall into small batches
    // written back to back (each commit rewrites its B-trees' last pages; 2,000-row batches
    // cost ~30 % less CPU a row than the ~500-row ones the writer took at 40k rows/s without
    // this). Durable callers wait for their commit, so they are written at once (a batch forms
    // while the previous commit runs).
    let lingers = config.mode == WriteMode::Async && !config.linger.is_zero();
    let mut last_take: Option<Instant> = None;
    loop {
        if handoff.is_empty() {
            if backlog.is_empty() && flushes.is_empty() && alive.strong_count() == 0 {
                return;
            }
            // Sleep until rows arrive, the next retry is due, or (every second) to notice
            // that every handle is gone.
            let until = retry_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            let _ = tokio::time::timeout_at(until.into(), handoff.wake.notified()).await;
            if lingers && retry_at.is_none() {
                tokio::time::sleep(config.linger).await;
            }
        } else if lingers
            && retry_at.is_none()
            && let Some(at) = last_take
            && at.elapsed() < config.linger
        {
            tokio::time::sleep_until((at + config.linger).into()).await;
        }
        last_take = Some(Instant::now());
        for item in handoff.take_all() {
            match item {
                // The handoff bounds rows and bytes waiting, backlog included.
                Item::Row(record, ack, bytes) => {
                    backlog.push_back((Arc::new(record.finish()), ack, bytes));
                }
                Item::Flush(done) => flushes.push(done),
            }
        }
        gauge!("kiln_records_backlog").set(backlog.len() as f64);
        if retry_at.is_some_and(|at| Instant::now() < at) {
            continue;
        }
        // Write the backlog in batches until it is empty or the database fails.
        while !backlog.is_empty() {
            let n = backlog.len().min(config.batch_rows);
            let batch: Vec<Arc<Record>> = backlog.iter().take(n).map(|(r, _, _)| r.clone()).collect();
            // Room first: a batch never takes the log past its size cap.
            retention.enforce(&store, batch.iter().map(|r| r.approx_bytes()).sum()).await;
            let started = Instant::now();
            match store.insert(batch).await {
                Ok(()) => {
                    histogram!("kiln_records_batch_seconds").record(started.elapsed().as_secs_f64());
                    counter!("kiln_records_written_total").increment(n as u64);
                    let mut bytes = 0;
                    for (_, ack, held) in backlog.drain(..n) {
                        bytes += held;
                        if let Some(ack) = ack {
                            let _ = ack.send(Ok(()));
                        }
                    }
                    handoff.release(n, bytes);
                    if retry_at.take().is_some() {
                        tracing::info!(database = %store.display, "prediction log recovered");
                    }
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    counter!("kiln_records_write_errors_total").increment(1);
                    tracing::warn!(database = %store.display, error = %e, backlog = backlog.len(), retry_in = ?backoff,
                        "prediction log write failed; keeping the rows and retrying");
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    break;
                }
            }
        }
        gauge!("kiln_records_backlog").set(backlog.len() as f64);
        if backlog.is_empty() {
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
        if retry_at.is_none() {
            retention.enforce(&store, 0).await;
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
