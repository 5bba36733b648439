//! kiln-bench: a load generator for kiln and any KServe v2 server (`kiln bench`).
//!
//! It owns building one request per target (REST JSON, REST binary, gRPC, or in-process on
//! kiln's engine), driving it closed-loop (`concurrency` callers back to back) or open-loop
//! (`rate` requests per second on a fixed schedule, latency measured from the *intended* send
//! time so a slow server cannot hide its queueing), and the report: HdrHistogram percentiles,
//! throughput, errors, JSON, and an SVG of the latency distribution and throughput over time.
//!
//! It does not start servers; scripts in `bench/` do.

mod report;
mod target;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

pub use report::Report;
pub use target::{Protocol, Target, TargetSpec};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub target: TargetSpec,
    /// Closed loop: callers sending back to back.
    pub concurrency: usize,
    /// Open loop: requests per second on a fixed schedule (overrides closed loop).
    pub rate: Option<f64>,
    /// How long to measure (ignored when `requests` is set).
    pub duration: Duration,
    /// Stop after this many measured requests.
    pub requests: Option<u64>,
    /// Unmeasured load before measuring.
    pub warmup: Duration,
    /// Show a live progress bar on stderr.
    pub progress: bool,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
}

struct Shared {
    histogram: std::sync::Mutex<Histogram<u64>>,
    error_histogram: std::sync::Mutex<Histogram<u64>>,
    ok: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
    /// Error counts by kind (the status before the first ':').
    error_kinds: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Completions per whole second since measuring started.
    per_second: std::sync::Mutex<Vec<u64>>,
    measuring: AtomicBool,
    stop: AtomicBool,
    started: std::sync::Mutex<Option<Instant>>,
}

impl Shared {
    fn new() -> Self {
        Shared {
            // 1 µs .. 60 s, 3 significant digits.
            histogram: std::sync::Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            ),
            error_histogram: std::sync::Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            ),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: std::sync::Mutex::new(None),
            error_kinds: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            per_second: std::sync::Mutex::new(Vec::new()),
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            started: std::sync::Mutex::new(None),
        }
    }

    /// Counts one answer (no await inside: callers on the executor and on plain threads).
    fn record(&self, latency: Duration, result: Result<(), String>) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, 60_000_000);
                self.histogram.lock().unwrap_or_else(std::sync::PoisonError::into_inner).saturating_record(us);
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, 60_000_000);
                self.error_histogram.lock().unwrap_or_else(std::sync::PoisonError::into_inner).saturating_record(us);
                let kind = e.split(':').next().unwrap_or_default().trim().to_string();
                *self.error_kinds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(kind).or_default() +=
                    1;
                let mut first = self.first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                first.get_or_insert(e);
            }
        }
        let started = *self.started.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(start) = started {
            let second = start.elapsed().as_secs() as usize;
            let mut buckets = self.per_second.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if buckets.len() <= second {
                buckets.resize(second + 1, 0);
            }
            buckets[second] += 1;
        }
    }

    fn done(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.errors.load(Ordering::Relaxed)
    }
}

/// Runs a benchmark and returns its report.
pub async fn run(config: BenchConfig) -> Result<Report, BenchError> {
    let target = Arc::new(Target::connect(&config.target).await?);
    // One probe request: fail fast with the server's own message.
    target.call().await.map_err(|e| BenchError::Setup(format!("the first request failed: {e}")))?;
    let shared = Arc::new(Shared::new());

    let workers = match config.rate {
        Some(rate) => vec![tokio::spawn(open_loop(target.clone(), shared.clone(), rate))],
        // In-process callers are threads of their own, as a program embedding the engine has:
        // they run on an idle instance directly instead of hopping to its worker thread.
        None if target.is_in_process() => (0..config.concurrency.max(1))
            .map(|_| {
                let (target, shared) = (target.clone(), shared.clone());
                tokio::task::spawn_blocking(move || blocking_closed_loop(&target, &shared))
            })
            .collect(),
        None => {
            (0..config.concurrency.max(1)).map(|_| tokio::spawn(closed_loop(target.clone(), shared.clone()))).collect()
        }
    };

    tokio::time::sleep(config.warmup).await;
    let started = Instant::now();
    *shared.started.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(started);
    shared.measuring.store(true, Ordering::Relaxed);

    let bar = config.progress.then(|| {
        let bar = match config.requests {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new(config.duration.as_millis() as u64),
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let elapsed = started.elapsed();
        let done = shared.done();
        if let Some(bar) = &bar {
            bar.set_position(if config.requests.is_some() { done } else { elapsed.as_millis() as u64 });
            bar.set_message(format!(
                "{:.0} req/s, {} errors",
                done as f64 / elapsed.as_secs_f64().max(1e-9),
                shared.errors.load(Ordering::Relaxed)
            ));
        }
        let finished = match config.requests {
            Some(n) => done >= n,
            None => elapsed >= config.duration,
        };
        if finished {
            break;
        }
    }
    let elapsed = started.elapsed();
    shared.measuring.store(false, Ordering::Relaxed);
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    for w in workers {
        w.abort();
    }
    let histogram = shared.histogram.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let per_second = shared.per_second.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let first_error = shared.first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let mut report = Report::new(
        &config,
        target.describe(),
        elapsed,
        shared.ok.load(Ordering::Relaxed),
        shared.errors.load(Ordering::Relaxed),
        first_error,
        &histogram,
        per_second,
    );
    report.error_latency_us =
        report::Latency::of(&shared.error_histogram.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    report.error_kinds = shared.error_kinds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    Ok(report)
}

async fn closed_loop(target: Arc<Target>, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let result = target.call().await;
        shared.record(sent.elapsed(), result);
    }
}

fn blocking_closed_loop(target: &Target, shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let result = target.call_blocking();
        shared.record(sent.elapsed(), result);
    }
}

/// Sends on a fixed schedule whatever the answers do; latency counts from the intended
/// send time (no coordinated omission). The schedule runs on its own OS thread: tokio's
/// timers tick in whole milliseconds, which would add up to 1 ms of the generator's own
/// lateness to every measurement; a thread sleep is precise to tens of microseconds.
async fn open_loop(target: Arc<Target>, shared: Arc<Shared>, rate: f64) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let handle = tokio::runtime::Handle::current();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(100_000));
    let scheduler = std::thread::Builder::new().name("kiln-bench-schedule".into()).spawn(move || {
        let start = Instant::now();
        let mut n: u32 = 0;
        while !shared.stop.load(Ordering::Relaxed) {
            let intended = start + interval * n;
            n = n.saturating_add(1);
            if let Some(wait) = intended.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let target = target.clone();
            let shared = shared.clone();
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                shared.record(Duration::ZERO, Err("the load generator has 100,000 requests in flight".into()));
                continue;
            };
            handle.spawn(async move {
                let result = target.call().await;
                shared.record(intended.elapsed(), result);
                drop(permit);
            });
        }
    });
    if let Ok(scheduler) = scheduler {
        let _ = tokio::task::spawn_blocking(move || scheduler.join()).await;
    }
}
