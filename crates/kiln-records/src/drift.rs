//! Drift: how far a model's recent inputs and outputs have moved from a reference sample —
//! computed from nothing but the prediction log (and, as the reference, the sample `kiln.export`
//! stored beside the model, or an earlier window of the log).
//!
//! Every tensor of at most two dimensions and [`MAX_COLUMNS`] columns gives one feature per
//! column (`inputs.x[3]`, `outputs.probabilities[1]`; `inputs.age` for a one-column tensor).
//! Numbers are compared with the population stability index over the reference's deciles and
//! the two-sample Kolmogorov–Smirnov test; strings, booleans and integer outputs (labels) with
//! PSI over their categories and the chi-squared test of homogeneity. Formulas: docs/drift.md.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;
use statrs::distribution::{ChiSquared, ContinuousCDF};

/// Widest tensor whose columns become features.
pub const MAX_COLUMNS: usize = 64;
/// PSI bins for numbers: the reference's deciles.
const BINS: usize = 10;
/// A bin's or category's share never counts as less than this (PSI's logarithm of 0).
const EPSILON: f64 = 1e-4;
/// Fewest values on each side for a feature to be compared.
pub const MIN_VALUES: usize = 20;

#[derive(Debug, Clone)]
enum Column {
    Numbers(Vec<f64>),
    Labels(Vec<String>),
}

/// The features of many rows, column by column.
#[derive(Debug, Default)]
pub struct Sample {
    /// Requests (log rows, or sample documents) whose inputs were added.
    pub requests: usize,
    features: BTreeMap<String, Column>,
    /// Features (or whole tensors) that cannot be compared, and why.
    pub skipped: BTreeMap<String, String>,
}

fn is_integer_type(datatype: &str) -> bool {
    let d = datatype.to_ascii_lowercase();
    d.starts_with("int") || d.starts_with("uint")
}

impl Sample {
    /// Adds one document of tensors, `{name: {shape, data, datatype | dtype}}` (a log row's
    /// inputs or outputs, or `parity.json`'s), under `side` (`inputs` or `outputs`).
    pub fn add(&mut self, side: &str, document: &Value) {
        let Some(tensors) = document.as_object() else { return };
        for (name, tensor) in tensors {
            let key = format!("{side}.{name}");
            let shape: Option<Vec<usize>> = tensor
                .get("shape")
                .and_then(Value::as_array)
                .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect());
            let Some(shape) = shape.filter(|s| !s.is_empty()) else {
                self.skipped.insert(key, "no shape with a batch dimension".into());
                continue;
            };
            if shape.len() > 2 {
                self.skipped.insert(key, format!("{} dimensions; drift covers tensors of 1 or 2", shape.len()));
                continue;
            }
            let columns = shape.get(1).copied().unwrap_or(1);
            if columns > MAX_COLUMNS {
                self.skipped.insert(key, format!("{columns} columns; drift covers tensors of up to {MAX_COLUMNS}"));
                continue;
            }
            let Some(data) = tensor.get("data").and_then(Value::as_array) else {
                self.skipped.insert(key, "the log kept only its shape (larger than the capture cap)".into());
                continue;
            };
            let datatype = tensor.get("datatype").or_else(|| tensor.get("dtype")).and_then(Value::as_str).unwrap_or("");
            // Integer outputs are class labels; labelled sample outputs say so.
            let labels = (side == "outputs" && is_integer_type(datatype))
                || tensor.get("kind").and_then(Value::as_str) == Some("labels");
            for j in 0..columns {
                let feature = if shape.len() == 1 || columns == 1 { key.clone() } else { format!("{key}[{j}]") };
                for value in data.iter().skip(j).step_by(columns.max(1)) {
                    self.push(&feature, value, labels);
                }
            }
        }
        if side == "inputs" {
            self.requests += 1;
        }
    }

    fn column(&mut self, feature: &str, numbers: bool) -> &mut Column {
        self.features
            .entry(feature.to_string())
            .or_insert_with(|| if numbers { Column::Numbers(Vec::new()) } else { Column::Labels(Vec::new()) })
    }

    fn push(&mut self, feature: &str, value: &Value, labels: bool) {
        let label = match value {
            Value::Number(n) if !labels => {
                if let (Some(x), Column::Numbers(v)) = (n.as_f64(), self.column(feature, true)) {
                    v.push(x);
                }
                return;
            }
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            // NaN (null) and anything else: missing.
            _ => return,
        };
        if let Column::Labels(v) = self.column(feature, false) {
            v.push(label);
        }
    }
}

/// One feature compared.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FeatureDrift {
    pub feature: String,
    /// `numeric` or `categorical`.
    pub kind: &'static str,
    pub reference_n: usize,
    pub recent_n: usize,
    pub psi: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ks_statistic: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ks_pvalue: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chi2_statistic: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chi2_dof: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chi2_pvalue: Option<f64>,
    /// PSI above the threshold.
    pub drifted: bool,
}

/// A feature not compared, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NotCompared {
    pub feature: String,
    pub why: String,
}

/// Every feature both samples have, compared; and what could not be, with the reason.
pub fn compare(reference: &Sample, recent: &Sample, threshold: f64) -> (Vec<FeatureDrift>, Vec<NotCompared>) {
    let mut compared = Vec::new();
    let mut not = Vec::new();
    let skip = |not: &mut Vec<NotCompared>, feature: &str, why: String| {
        not.push(NotCompared { feature: feature.to_string(), why });
    };
    let names: BTreeSet<&String> = reference.features.keys().chain(recent.features.keys()).collect();
    for name in names {
        match (reference.features.get(name), recent.features.get(name)) {
            (Some(Column::Numbers(a)), Some(Column::Numbers(b))) if a.len() >= MIN_VALUES && b.len() >= MIN_VALUES => {
                let (d, p) = ks(a, b);
                let psi = psi_numbers(a, b);
                compared.push(FeatureDrift {
                    feature: name.clone(),
                    kind: "numeric",
                    reference_n: a.len(),
                    recent_n: b.len(),
                    psi,
                    ks_statistic: Some(d),
                    ks_pvalue: Some(p),
                    chi2_statistic: None,
                    chi2_dof: None,
                    chi2_pvalue: None,
                    drifted: psi > threshold,
                });
            }
            (Some(Column::Labels(a)), Some(Column::Labels(b))) if free_text(a) || free_text(b) => {
                skip(&mut not, name, "free text (mostly distinct values), not categories".into());
            }
            (Some(Column::Labels(a)), Some(Column::Labels(b))) if a.len() >= MIN_VALUES && b.len() >= MIN_VALUES => {
                let (stat, dof, p) = chi2(a, b);
                let psi = psi_labels(a, b);
                compared.push(FeatureDrift {
                    feature: name.clone(),
                    kind: "categorical",
                    reference_n: a.len(),
                    recent_n: b.len(),
                    psi,
                    ks_statistic: None,
                    ks_pvalue: None,
                    chi2_statistic: Some(stat),
                    chi2_dof: Some(dof),
                    chi2_pvalue: Some(p),
                    drifted: psi > threshold,
                });
            }
            (Some(a), Some(b)) if std::mem::discriminant(a) != std::mem::discriminant(b) => {
                skip(&mut not, name, "numbers on one side, labels on the other".into());
            }
            (Some(a), Some(b)) => skip(
                &mut not,
                name,
                format!("too few values ({} reference, {} recent; {MIN_VALUES} each at least)", len(a), len(b)),
            ),
            (None, _) => skip(&mut not, name, "not in the reference".into()),
            (_, None) => skip(&mut not, name, "not in the recent window".into()),
        }
    }
    for (feature, why) in reference.skipped.iter().chain(&recent.skipped) {
        if !not.iter().any(|n| &n.feature == feature) {
            skip(&mut not, feature, why.clone());
        }
    }
    (compared, not)
}

/// Strings that are mostly distinct (more than 50 different, and more than half the values)
/// are text, not categories: counting them would say nothing.
fn free_text(values: &[String]) -> bool {
    let distinct = values.iter().collect::<BTreeSet<_>>().len();
    distinct > 50 && distinct * 2 > values.len()
}

fn len(c: &Column) -> usize {
    match c {
        Column::Numbers(v) => v.len(),
        Column::Labels(v) => v.len(),
    }
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// The `p` quantile of sorted values, interpolated linearly (numpy's default).
fn quantile(sorted: &[f64], p: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * p;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// PSI = Σ (recentᵢ − referenceᵢ) · ln(recentᵢ / referenceᵢ) over the shares of each bin; bins
/// split at the reference's deciles (repeated edges merged), a value equal to an edge in the
/// lower bin, a share of 0 counted as [`EPSILON`].
pub fn psi_numbers(reference: &[f64], recent: &[f64]) -> f64 {
    let r = sorted(reference);
    let mut edges: Vec<f64> = (1..BINS).map(|i| quantile(&r, i as f64 / BINS as f64)).collect();
    edges.dedup();
    let shares = |values: &[f64]| {
        let mut counts = vec![0usize; edges.len() + 1];
        for v in values {
            counts[edges.partition_point(|e| e < v)] += 1;
        }
        counts.into_iter().map(|c| (c as f64 / values.len() as f64).max(EPSILON)).collect::<Vec<_>>()
    };
    psi(&shares(reference), &shares(recent))
}

/// PSI over categories (those of either side).
pub fn psi_labels(reference: &[String], recent: &[String]) -> f64 {
    let (_, a, b) = counts(reference, recent);
    let share = |c: &[usize], n: usize| c.iter().map(|&k| (k as f64 / n as f64).max(EPSILON)).collect::<Vec<_>>();
    psi(&share(&a, reference.len()), &share(&b, recent.len()))
}

fn psi(reference: &[f64], recent: &[f64]) -> f64 {
    reference.iter().zip(recent).map(|(a, b)| (b - a) * (b / a).ln()).sum()
}

fn counts<'a>(reference: &'a [String], recent: &'a [String]) -> (Vec<&'a String>, Vec<usize>, Vec<usize>) {
    let categories: Vec<&String> = reference.iter().chain(recent).collect::<BTreeSet<_>>().into_iter().collect();
    let count = |values: &[String]| {
        let mut c = vec![0usize; categories.len()];
        for v in values {
            if let Ok(i) = categories.binary_search(&v) {
                c[i] += 1;
            }
        }
        c
    };
    let (a, b) = (count(reference), count(recent));
    (categories, a, b)
}

/// The two-sample Kolmogorov–Smirnov statistic D = sup |F_ref(x) − F_recent(x)| and its
/// asymptotic p-value Q_KS(√(n·m/(n+m)) · D) (the Kolmogorov distribution's survival function).
pub fn ks(reference: &[f64], recent: &[f64]) -> (f64, f64) {
    let (a, b) = (sorted(reference), sorted(recent));
    let (n, m) = (a.len(), b.len());
    let (mut i, mut j, mut d) = (0usize, 0usize, 0f64);
    while i < n && j < m {
        let x = a[i].min(b[j]);
        while i < n && a[i] <= x {
            i += 1;
        }
        while j < m && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n as f64 - j as f64 / m as f64).abs());
    }
    let en = (n * m) as f64 / (n + m) as f64;
    (d, kolmogorov_sf(en.sqrt() * d))
}

/// P(K > z) for the Kolmogorov distribution: 2 Σ (−1)^(k−1) e^(−2k²z²) for z ≥ 1, else
/// 1 − (√(2π)/z) Σ e^(−(2k−1)²π²/(8z²)) (both converge within a few terms there).
fn kolmogorov_sf(z: f64) -> f64 {
    if z <= 0.0 {
        return 1.0;
    }
    let p = if z < 1.0 {
        let pi2 = std::f64::consts::PI.powi(2);
        let cdf: f64 = (1..=20).map(|k| (-((2 * k - 1) as f64).powi(2) * pi2 / (8.0 * z * z)).exp()).sum::<f64>()
            * (2.0 * std::f64::consts::PI).sqrt()
            / z;
        1.0 - cdf
    } else {
        2.0 * (1..=100)
            .map(|k| (if k % 2 == 1 { 1.0 } else { -1.0 }) * (-2.0 * (k * k) as f64 * z * z).exp())
            .sum::<f64>()
    };
    p.clamp(0.0, 1.0)
}

/// The chi-squared test of homogeneity on the 2 × K table of category counts (no continuity
/// correction): statistic, degrees of freedom (K − 1) and p-value.
pub fn chi2(reference: &[String], recent: &[String]) -> (f64, usize, f64) {
    let (_, a, b) = counts(reference, recent);
    let (na, nb) = (reference.len() as f64, recent.len() as f64);
    let total = na + nb;
    let mut stat = 0.0;
    for (&x, &y) in a.iter().zip(&b) {
        let column = (x + y) as f64;
        for (observed, row) in [(x as f64, na), (y as f64, nb)] {
            let expected = row * column / total;
            if expected > 0.0 {
                stat += (observed - expected).powi(2) / expected;
            }
        }
    }
    let dof = a.len().saturating_sub(1);
    if dof == 0 {
        return (0.0, 0, 1.0);
    }
    let p = ChiSquared::new(dof as f64).map(|d| d.sf(stat)).unwrap_or(f64::NAN);
    (stat, dof, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_become_features_and_what_cannot_says_why() {
        let mut s = Sample::default();
        s.add(
            "inputs",
            &serde_json::json!({
                "x": {"datatype": "FP32", "shape": [2, 2], "data": [1.0, 10.0, 2.0, 20.0]},
                "city": {"datatype": "BYTES", "shape": [2, 1], "data": ["a", "b"]},
                "img": {"datatype": "FP32", "shape": [1, 2, 2], "data": [0, 0, 0, 0]},
                "big": {"datatype": "FP32", "shape": [1, 100]},
            }),
        );
        s.add("outputs", &serde_json::json!({"label": {"datatype": "INT64", "shape": [2], "data": [0, 1]}}));
        assert!(matches!(&s.features["inputs.x[1]"], Column::Numbers(v) if v == &[10.0, 20.0]));
        assert!(matches!(&s.features["inputs.city"], Column::Labels(v) if v == &["a", "b"]));
        assert!(matches!(&s.features["outputs.label"], Column::Labels(v) if v == &["0", "1"]));
        assert!(s.skipped["inputs.img"].contains("3 dimensions"));
        assert!(s.skipped["inputs.big"].contains("100 columns"));
        assert_eq!(s.requests, 1);
    }

    #[test]
    fn identical_samples_do_not_drift_and_a_shift_does() {
        let a: Vec<f64> = (0..1000).map(|i| f64::from(i % 100)).collect();
        assert!(psi_numbers(&a, &a).abs() < 1e-12);
        assert_eq!(ks(&a, &a).0, 0.0);
        let shifted: Vec<f64> = a.iter().map(|x| x + 30.0).collect();
        assert!(psi_numbers(&a, &shifted) > 0.2);
        assert!(ks(&a, &shifted).1 < 1e-6);
    }
}
