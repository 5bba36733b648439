//! A collection's `[index]` table (config.toml) and the distance it is searched by.

use serde::Deserialize;

/// How closeness is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity (vectors are normalized when stored); score = similarity, higher is closer.
    Cosine,
    /// Inner product; score = the dot product, higher is closer.
    Ip,
    /// Squared Euclidean distance; score = the distance, lower is closer.
    L2,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Ip => "ip",
            Metric::L2 => "l2",
        }
    }

    /// Whether a higher score is closer.
    pub fn higher_is_closer(self) -> bool {
        !matches!(self, Metric::L2)
    }

    pub(crate) fn score(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::Cosine | Metric::Ip => lanes_sum(a, b, |x, y| x * y),
            Metric::L2 => lanes_sum(a, b, |x, y| (x - y) * (x - y)),
        }
    }
}

/// The sum of `term` over the pairs, in 8 running sums: the compiler turns the fixed-width
/// inner loop into SIMD, which one running sum (an ordered float reduction) forbids.
#[inline]
fn lanes_sum(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            lanes[i] += term(x[i], y[i]);
        }
    }
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| term(*x, *y)).sum();
    lanes.iter().sum::<f32>() + tail
}

/// `[index]` of a collection's config.toml.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// Vector length.
    pub dim: usize,
    pub metric: Metric,
    /// A `text_embedding` model of the repository: documents and queries may then be text.
    pub embedder: Option<String>,
    /// Brute force over every vector: exact answers, cost linear in the points.
    #[serde(default)]
    pub exact: bool,
    /// HNSW links per node (default 16).
    pub m: Option<usize>,
    /// Candidates kept while inserting (default 128).
    pub ef_construction: Option<usize>,
    /// Candidates kept while searching (default 64; raised to k when k is larger).
    pub ef_search: Option<usize>,
    /// The largest k a search may ask for (default 1000).
    pub max_k: Option<usize>,
    /// The k of a v2 request that sends no `k` input (default 10).
    pub k: Option<usize>,
    /// A payload field (a string) indexed for BM25 keyword search; searches with text then
    /// fuse keyword and vector ranks (reciprocal rank fusion).
    pub text_field: Option<String>,
}

/// Vector lengths kiln accepts: enough for any embedding model, small enough that a typo
/// (dim = 3840000) fails at load instead of at the first allocation.
const MAX_DIM: usize = 65_536;

impl IndexConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.dim == 0 || self.dim > MAX_DIM {
            return Err(format!("[index] dim must be between 1 and {MAX_DIM}, not {}", self.dim));
        }
        for (key, value) in [("m", self.m), ("ef_construction", self.ef_construction), ("ef_search", self.ef_search)] {
            if value.is_some_and(|v| !(2..=4096).contains(&v)) {
                return Err(format!("[index] {key} must be between 2 and 4096"));
            }
        }
        if self.max_k.is_some_and(|k| k == 0 || k > 100_000) {
            return Err("[index] max_k must be between 1 and 100000".into());
        }
        if self.k.is_some_and(|k| k == 0 || k > self.max_k()) {
            return Err(format!("[index] k must be between 1 and max_k ({})", self.max_k()));
        }
        if self.text_field.as_deref().is_some_and(|f| f.is_empty() || f.len() > 256) {
            return Err("[index] text_field must name a payload field (1 to 256 bytes)".into());
        }
        if self.exact && (self.m.is_some() || self.ef_construction.is_some() || self.ef_search.is_some()) {
            return Err(
                "[index] exact = true searches every vector: m, ef_construction and ef_search do not apply".into()
            );
        }
        Ok(())
    }

    pub fn m(&self) -> usize {
        self.m.unwrap_or(16)
    }
    pub fn ef_construction(&self) -> usize {
        self.ef_construction.unwrap_or(128)
    }
    pub fn ef_search(&self) -> usize {
        self.ef_search.unwrap_or(64)
    }
    pub fn max_k(&self) -> usize {
        self.max_k.unwrap_or(1000)
    }
    pub fn default_k(&self) -> usize {
        self.k.unwrap_or(10).min(self.max_k())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_in_lanes_equal_the_plain_sums() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.25 - 2.0).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.5 - i as f32 * 0.125).collect();
        let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let l2: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((Metric::Ip.score(&a, &b) - dot).abs() < 1e-4);
        assert!((Metric::L2.score(&a, &b) - l2).abs() < 1e-4);
        assert_eq!(Metric::Cosine.score(&a[..3], &b[..3]), a[0] * b[0] + a[1] * b[1] + a[2] * b[2]);
    }
}
