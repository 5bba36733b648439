//! Live model quality from the log: volume, error rate and latency percentiles per time
//! bucket, and — where feedback arrived — accuracy, per-class precision and recall, and the
//! confusion counts, comparing each row's predicted label with its true one.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::store::Scored;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub p50: i64,
    pub p95: i64,
    pub p99: i64,
    pub max: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassScore {
    /// Of the rows predicted as this class, the share that truly are (None: none predicted).
    pub precision: Option<f64>,
    /// Of the rows that truly are this class, the share predicted so (None: none are).
    pub recall: Option<f64>,
    /// Rows that truly are this class.
    pub support: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Confusion {
    #[serde(rename = "true")]
    pub truth: String,
    pub predicted: String,
    pub count: u64,
}

/// Quality over one span of time.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bucket {
    pub start_ms: i64,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// Of successful requests, in microseconds (nearest rank).
    pub latency_us: Option<Latency>,
    /// Rows with feedback whose label count matched the prediction's.
    pub labeled_rows: u64,
    pub accuracy: Option<f64>,
    pub classes: BTreeMap<String, ClassScore>,
    pub confusion: Vec<Confusion>,
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> i64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Scores one span.
pub fn bucket(start_ms: i64, items: &[&Scored]) -> Bucket {
    let requests = items.len() as u64;
    let errors = items.iter().filter(|s| !s.ok).count() as u64;
    let mut latencies: Vec<i64> = items.iter().filter(|s| s.ok).map(|s| s.latency_us).collect();
    latencies.sort_unstable();
    let latency_us = (!latencies.is_empty()).then(|| Latency {
        p50: percentile(&latencies, 50.0),
        p95: percentile(&latencies, 95.0),
        p99: percentile(&latencies, 99.0),
        max: *latencies.last().unwrap_or(&0),
    });
    let mut pairs: BTreeMap<(String, String), u64> = BTreeMap::new();
    for s in items {
        if let (Some(p), Some(t)) = (&s.predicted, &s.truth)
            && p.len() == t.len()
        {
            for (p, t) in p.iter().zip(t) {
                *pairs.entry((t.clone(), p.clone())).or_default() += 1;
            }
        }
    }
    let labeled_rows: u64 = pairs.values().sum();
    let correct: u64 = pairs.iter().filter(|((t, p), _)| t == p).map(|(_, n)| n).sum();
    let mut classes = BTreeMap::new();
    let names: std::collections::BTreeSet<&String> = pairs.keys().flat_map(|(t, p)| [t, p]).collect();
    for class in names {
        let tp = pairs.get(&(class.clone(), class.clone())).copied().unwrap_or(0);
        let predicted: u64 = pairs.iter().filter(|((_, p), _)| p == class).map(|(_, n)| n).sum();
        let actual: u64 = pairs.iter().filter(|((t, _), _)| t == class).map(|(_, n)| n).sum();
        classes.insert(
            class.clone(),
            ClassScore {
                precision: (predicted > 0).then(|| tp as f64 / predicted as f64),
                recall: (actual > 0).then(|| tp as f64 / actual as f64),
                support: actual,
            },
        );
    }
    Bucket {
        start_ms,
        requests,
        errors,
        error_rate: if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
        latency_us,
        labeled_rows,
        accuracy: (labeled_rows > 0).then(|| correct as f64 / labeled_rows as f64),
        classes,
        confusion: pairs.into_iter().map(|((truth, predicted), count)| Confusion { truth, predicted, count }).collect(),
    }
}

/// Buckets of `bucket_ms` from `since_ms`, only those with requests, plus the whole span.
pub fn report(scored: &[Scored], since_ms: i64, bucket_ms: i64) -> (Vec<Bucket>, Bucket) {
    let mut spans: BTreeMap<i64, Vec<&Scored>> = BTreeMap::new();
    for s in scored {
        let start = since_ms + (s.ts_ms - since_ms).div_euclid(bucket_ms.max(1)) * bucket_ms.max(1);
        spans.entry(start).or_default().push(s);
    }
    let buckets = spans.iter().map(|(start, items)| bucket(*start, items)).collect();
    let all: Vec<&Scored> = scored.iter().collect();
    (buckets, bucket(since_ms, &all))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ts: i64, ok: bool, lat: i64, p: &[&str], t: Option<&[&str]>) -> Scored {
        Scored {
            ts_ms: ts,
            version: 1,
            latency_us: lat,
            ok,
            predicted: Some(p.iter().map(|x| (*x).to_string()).collect()),
            truth: t.map(|t| t.iter().map(|x| (*x).to_string()).collect()),
        }
    }

    #[test]
    fn numbers_by_hand() {
        let items = vec![
            s(0, true, 100, &["1", "0"], Some(&["1", "1"])),
            s(10, true, 300, &["0"], Some(&["0"])),
            s(20, false, 900, &["1"], None),
            s(1_000, true, 200, &["1"], Some(&["0"])),
        ];
        let (buckets, total) = report(&items, 0, 1_000);
        assert_eq!(buckets.len(), 2);
        assert_eq!((buckets[0].requests, buckets[0].errors), (3, 1));
        assert_eq!(total.labeled_rows, 4);
        // Pairs (true, predicted): (1,1) (1,0) (0,0) (0,1): accuracy 2/4.
        assert_eq!(total.accuracy, Some(0.5));
        assert_eq!(total.classes["1"].precision, Some(0.5));
        assert_eq!(total.classes["1"].recall, Some(0.5));
        assert_eq!(total.latency_us.as_ref().map(|l| (l.p50, l.max)), Some((200, 300)));
        assert!((total.error_rate - 0.25).abs() < 1e-12);
    }
}
