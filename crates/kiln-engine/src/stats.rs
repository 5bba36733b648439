//! Per model-version counters behind Triton's statistics extension (`GET .../stats`,
//! `ModelStatistics`): lock-free atomics updated on the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and the total time it took, in nanoseconds.
#[derive(Debug, Default)]
pub struct DurationCounter {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationCounter {
    pub fn record(&self, elapsed: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> DurationSnapshot {
        DurationSnapshot { count: self.count.load(Ordering::Relaxed), ns: self.ns.load(Ordering::Relaxed) }
    }
}

/// A point-in-time copy of a [`DurationCounter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DurationSnapshot {
    pub count: u64,
    pub ns: u64,
}

/// Statistics of one served model version.
#[derive(Debug, Default)]
pub struct ModelStats {
    /// Requests answered successfully, with their end-to-end time inside kiln.
    pub success: DurationCounter,
    /// Requests that failed (validation, overload, backend), with their time.
    pub fail: DurationCounter,
    /// Time requests waited for a free instance.
    pub queue: DurationCounter,
    /// Time the backend spent running the model.
    pub compute_infer: DurationCounter,
    /// Rows (first-dimension entries) inferred.
    inference_count: AtomicU64,
    /// Model executions (one per batch run on an instance).
    execution_count: AtomicU64,
    /// Milliseconds since the Unix epoch of the last inference.
    last_inference_ms: AtomicU64,
}

impl ModelStats {
    pub fn record_execution(&self, rows: u64) {
        self.inference_count.fetch_add(rows, Ordering::Relaxed);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_inference_ms.store(now, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            success: self.success.snapshot(),
            fail: self.fail.snapshot(),
            queue: self.queue.snapshot(),
            compute_infer: self.compute_infer.snapshot(),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of [`ModelStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub success: DurationSnapshot,
    pub fail: DurationSnapshot,
    pub queue: DurationSnapshot,
    pub compute_infer: DurationSnapshot,
    pub inference_count: u64,
    pub execution_count: u64,
    pub last_inference_ms: u64,
}
