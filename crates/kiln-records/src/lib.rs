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

pub mod quality;
pub mod store;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use store::{Dialect, PredictionFilter, PredictionRow, Store};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Database(String),
    /// Durable mode: the row was not committed in time.
    #[error("the prediction log did not commit the record within {0:?}: {1}")]
    NotCommitted(Duration, String),
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
    /// JSON text, already capped.
    pub inputs: Option<String>,
    pub outputs: Option<String>,
    /// JSON array of the predicted label per row.
    pub labels: Option<String>,
    pub truncated: bool,
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

/// How the log writes.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// `sqlite:PATH` or `postgres://...`.
    pub url: String,
    pub mode: WriteMode,
    /// Rows waiting for the database at most (channel + backlog); beyond it rows are dropped
    /// and counted.
    pub capacity: usize,
    /// Rows per transaction at most.
    pub batch_rows: usize,
    /// How long the writer waits to fill a batch once it has a row.
    pub linger: Duration,
    /// Async mode: how long a request may wait for room in a full channel before its row is
    /// dropped (backpressure, bounded).
    pub enqueue_wait: Duration,
    /// Durable mode: how long a request waits for its commit before it fails.
    pub commit_wait: Duration,
}

impl RecorderConfig {
    pub fn new(url: &str, mode: WriteMode) -> Self {
        RecorderConfig {
            url: url.to_string(),
            mode,
            capacity: 100_000,
            batch_rows: 512,
            linger: Duration::from_millis(5),
            enqueue_wait: Duration::from_millis(5),
            commit_wait: Duration::from_secs(10),
        }
    }
}

type Ack = oneshot::Sender<Result<(), String>>;

enum Item {
    Row(Box<Record>, Option<Ack>),
    /// Answer once everything received before it is committed.
    Flush(oneshot::Sender<()>),
}

/// The handle the server records through (cheap to clone).
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Item>,
    store: Store,
    config: Arc<RecorderConfig>,
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    /// Connects, migrates and starts the writer task (on the current tokio runtime).
    pub async fn open(config: RecorderConfig) -> Result<Recorder, RecordsError> {
        let store = Store::connect(&config.url).await?;
        let (tx, rx) = mpsc::channel(config.capacity.clamp(1, 65_536));
        let config = Arc::new(config);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(writer(store.clone(), rx, config.clone(), dropped.clone()));
        tracing::info!(database = %store.display, mode = ?config.mode, "prediction log ready");
        Ok(Recorder { tx, store, config, dropped })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn mode(&self) -> WriteMode {
        self.config.mode
    }

    /// Rows dropped so far (async mode under sustained pressure, or a full backlog).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn drop_row(&self, why: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        counter!("kiln_records_dropped_total").increment(1);
        tracing::warn!(reason = why, "prediction record dropped");
    }

    /// Logs one prediction. Async: returns once the row is queued (or dropped and counted).
    /// Durable: returns once it is committed, or an error.
    pub async fn record(&self, record: Record) -> Result<(), RecordsError> {
        match self.config.mode {
            WriteMode::Async => {
                let item = Item::Row(Box::new(record), None);
                match self.tx.try_send(item) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(item)) => {
                        // Bounded backpressure: wait a little for room, then drop and count.
                        if tokio::time::timeout(self.config.enqueue_wait, self.tx.send(item)).await.is_err() {
                            self.drop_row("the writer stayed behind (channel full)");
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => self.drop_row("the writer has stopped"),
                }
                Ok(())
            }
            WriteMode::Durable => {
                let (ack, done) = oneshot::channel();
                let wait = self.config.commit_wait;
                let committed = tokio::time::timeout(wait, async {
                    self.tx
                        .send(Item::Row(Box::new(record), Some(ack)))
                        .await
                        .map_err(|_| "the writer has stopped".to_string())?;
                    done.await.map_err(|_| "the writer has stopped".to_string())?
                })
                .await;
                match committed {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(why)) => Err(RecordsError::NotCommitted(wait, why)),
                    Err(_) => Err(RecordsError::NotCommitted(wait, "the database did not answer in time".into())),
                }
            }
        }
    }

    /// Waits until every row handed over before this call is committed, up to `within`.
    /// Returns whether it got there (shutdown logs what is left otherwise).
    pub async fn flush(&self, within: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Item::Flush(tx)).await.is_err() {
            return false;
        }
        tokio::time::timeout(within, rx).await.is_ok_and(|r| r.is_ok())
    }

    pub async fn feedback(&self, feedback: &Feedback) -> Result<(), RecordsError> {
        self.store.add_feedback(feedback).await.map_err(|e| RecordsError::Database(format!("storing feedback: {e}")))
    }
}

/// The writer: batches rows into transactions; keeps them in a bounded backlog while the
/// database fails, retrying with backoff, and keeps accepting rows meanwhile.
async fn writer(store: Store, mut rx: mpsc::Receiver<Item>, config: Arc<RecorderConfig>, dropped: Arc<AtomicU64>) {
    let mut backlog: VecDeque<(Record, Option<Ack>)> = VecDeque::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut backoff = Duration::from_millis(50);
    let mut retry_at: Option<Instant> = None;
    let mut open = true;
    loop {
        // Take what arrived: wait for the first item when idle, then up to a batch within the
        // linger time. While the database is failing, wait for new rows or the next retry.
        let deadline = match (retry_at, backlog.is_empty()) {
            (Some(at), _) => Some(at),
            (None, false) => Some(Instant::now()),
            (None, true) => None,
        };
        let first = if !open {
            None
        } else {
            match deadline {
                None => rx.recv().await,
                Some(at) => tokio::time::timeout_at(at.into(), rx.recv()).await.unwrap_or(None),
            }
        };
        let mut take = |item: Item, backlog: &mut VecDeque<(Record, Option<Ack>)>| match item {
            Item::Row(record, ack) => {
                if backlog.len() >= config.capacity {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    counter!("kiln_records_dropped_total").increment(1);
                    if let Some(ack) = ack {
                        let _ = ack.send(Err("the prediction log's backlog is full".into()));
                    }
                } else {
                    backlog.push_back((*record, ack));
                }
            }
            Item::Flush(done) => flushes.push(done),
        };
        match first {
            Some(item) => {
                take(item, &mut backlog);
                let until = Instant::now() + config.linger;
                while backlog.len() < config.batch_rows {
                    match tokio::time::timeout_at(until.into(), rx.recv()).await {
                        Ok(Some(item)) => take(item, &mut backlog),
                        Ok(None) => {
                            open = false;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            None if open && rx.is_closed() => open = false,
            None => {}
        }
        gauge!("kiln_records_backlog").set(backlog.len() as f64);
        if retry_at.is_some_and(|at| Instant::now() < at) {
            continue;
        }
        // Write the backlog in batches until it is empty or the database fails.
        while !backlog.is_empty() {
            let n = backlog.len().min(config.batch_rows);
            let batch: Vec<Record> = backlog.iter().take(n).map(|(r, _)| r.clone()).collect();
            let started = Instant::now();
            match store.insert(&batch).await {
                Ok(()) => {
                    histogram!("kiln_records_batch_seconds").record(started.elapsed().as_secs_f64());
                    counter!("kiln_records_written_total").increment(n as u64);
                    for (_, ack) in backlog.drain(..n) {
                        if let Some(ack) = ack {
                            let _ = ack.send(Ok(()));
                        }
                    }
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
            if !open {
                return;
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
