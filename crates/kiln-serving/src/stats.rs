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

/// Request latencies in log-spaced buckets (four per doubling from 10 µs, so a percentile read
/// from them is within ~9 % of the true value), recorded with one atomic add. The dashboard
/// turns the difference of two snapshots into p50/p99 over the interval between them.
#[derive(Debug)]
pub struct LatencyBuckets {
    counts: Box<[AtomicU64]>,
}

/// Buckets: 10 µs · 2^(i/4) for i in 0..LATENCY_BUCKETS (the last one is open-ended, ~160 s).
pub const LATENCY_BUCKETS: usize = 96;

impl Default for LatencyBuckets {
    fn default() -> Self {
        LatencyBuckets { counts: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl LatencyBuckets {
    /// The bucket holding `elapsed`.
    pub fn index(elapsed: Duration) -> usize {
        let us = elapsed.as_secs_f64() * 1e6;
        if us <= 10.0 {
            return 0;
        }
        ((us / 10.0).log2() * 4.0).ceil().min((LATENCY_BUCKETS - 1) as f64) as usize
    }

    /// The upper bound of bucket `i`, in milliseconds.
    pub fn upper_ms(i: usize) -> f64 {
        0.01 * 2f64.powf(i as f64 / 4.0)
    }

    pub fn record(&self, elapsed: Duration) {
        self.counts[Self::index(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// The `q` quantile (0..=1) of bucket counts, as the bucket's upper bound in ms; `None` when
    /// the counts are all zero.
    pub fn quantile_ms(counts: &[u64], q: f64) -> Option<f64> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::upper_ms(i));
            }
        }
        Some(Self::upper_ms(counts.len() - 1))
    }
}

/// Statistics of one served model version.
#[derive(Debug, Default)]
pub struct ModelStats {
    /// Requests answered successfully, with their end-to-end time inside kiln.
    pub success: DurationCounter,
    /// Requests that failed (validation, overload, backend), with their time.
    pub fail: DurationCounter,
    /// End-to-end latency of the successful requests, for percentiles.
    pub latency: LatencyBuckets,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_give_percentiles_within_a_bucket() {
        let b = LatencyBuckets::default();
        for ms in 1..=100u64 {
            b.record(Duration::from_millis(ms));
        }
        let counts = b.snapshot();
        let p50 = LatencyBuckets::quantile_ms(&counts, 0.5).expect("data");
        let p99 = LatencyBuckets::quantile_ms(&counts, 0.99).expect("data");
        assert!((50.0..=50.0 * 1.19).contains(&p50), "{p50}");
        assert!((99.0..=99.0 * 1.19).contains(&p99), "{p99}");
        assert_eq!(LatencyBuckets::quantile_ms(&[0; LATENCY_BUCKETS], 0.5), None);
        assert_eq!(LatencyBuckets::index(Duration::from_secs(10_000)), LATENCY_BUCKETS - 1);
        assert_eq!(LatencyBuckets::index(Duration::ZERO), 0);
    }
}
