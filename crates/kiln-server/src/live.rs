//! Live per-model figures for the dashboard: a sampler reads every served version's
//! [`kiln_serving::stats::ModelStats`] every interval and keeps, per model, a window of points
//! (requests/s, errors/s, p50/p99 latency, rows per execution). Fed by kiln's own counters —
//! the same ones behind the statistics extension — not by parsing the Prometheus text.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_engine::{Engine, VersionState};
use kiln_serving::stats::{LatencyBuckets, StatsSnapshot};
use serde::Serialize;

/// One interval of one model (all its versions together).
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// End of the interval, milliseconds since the Unix epoch.
    pub t_ms: i64,
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    /// Of successful requests in the interval; `None` when there were none.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Rows per model execution (how full the batches were); `None` without executions.
    pub batch_rows: Option<f64>,
    /// Requests answered since the model's versions were loaded.
    pub total_requests: u64,
}

struct Previous {
    /// Identity of the stats block, so a reloaded version starts a fresh baseline.
    stats: usize,
    snapshot: StatsSnapshot,
    buckets: Vec<u64>,
}

#[derive(Default)]
struct Inner {
    previous: HashMap<(String, u64), Previous>,
    series: BTreeMap<String, VecDeque<Point>>,
}

/// The sampled window, shared between the sampler task and the handlers.
#[derive(Clone)]
pub struct LiveStats {
    inner: Arc<Mutex<Inner>>,
    /// Time between samples.
    pub interval: Duration,
    /// Points kept per model.
    pub capacity: usize,
}

impl LiveStats {
    pub fn new(interval: Duration, window: Duration) -> Self {
        let capacity = (window.as_secs_f64() / interval.as_secs_f64()).ceil().max(1.0) as usize;
        LiveStats { inner: Arc::default(), interval, capacity }
    }

    /// Samples until the task is aborted.
    pub fn spawn(&self, engine: Engine) -> tokio::task::JoinHandle<()> {
        let live = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(live.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                live.sample(&engine, kiln_records::now_ms());
            }
        })
    }

    /// Takes one sample of every served version now.
    pub fn sample(&self, engine: &Engine, now_ms: i64) {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Inner { previous, series } = &mut *inner;
        let seconds = self.interval.as_secs_f64();
        let mut seen = Vec::new();
        let states = engine.model_states();
        for state in &states {
            let mut requests = 0u64;
            let mut errors = 0u64;
            let mut rows = 0u64;
            let mut executions = 0u64;
            let mut total = 0u64;
            let mut buckets = vec![0u64; kiln_serving::stats::LATENCY_BUCKETS];
            for (version, vs) in &state.versions {
                let VersionState::Ready(model) = vs else { continue };
                let key = (state.name.clone(), *version);
                let identity = Arc::as_ptr(&model.stats) as usize;
                let now = model.stats.snapshot();
                let now_buckets = model.stats.latency.snapshot();
                total += now.success.count + now.fail.count;
                if let Some(before) = previous.get(&key).filter(|p| p.stats == identity) {
                    requests += (now.success.count + now.fail.count)
                        .saturating_sub(before.snapshot.success.count + before.snapshot.fail.count);
                    errors += now.fail.count.saturating_sub(before.snapshot.fail.count);
                    rows += now.inference_count.saturating_sub(before.snapshot.inference_count);
                    executions += now.execution_count.saturating_sub(before.snapshot.execution_count);
                    for (sum, (n, b)) in buckets.iter_mut().zip(now_buckets.iter().zip(&before.buckets)) {
                        *sum += n.saturating_sub(*b);
                    }
                }
                previous.insert(key.clone(), Previous { stats: identity, snapshot: now, buckets: now_buckets });
                seen.push(key);
            }
            let points = series.entry(state.name.clone()).or_default();
            points.push_back(Point {
                t_ms: now_ms,
                requests_per_s: requests as f64 / seconds,
                errors_per_s: errors as f64 / seconds,
                p50_ms: LatencyBuckets::quantile_ms(&buckets, 0.5),
                p99_ms: LatencyBuckets::quantile_ms(&buckets, 0.99),
                batch_rows: (executions > 0).then(|| rows as f64 / executions as f64),
                total_requests: total,
            });
            while points.len() > self.capacity {
                points.pop_front();
            }
        }
        previous.retain(|key, _| seen.contains(key));
        series.retain(|name, _| states.iter().any(|s| &s.name == name));
    }

    /// The window of every model, oldest point first.
    pub fn window(&self) -> BTreeMap<String, Vec<Point>> {
        let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.series.iter().map(|(name, points)| (name.clone(), points.iter().cloned().collect())).collect()
    }
}
