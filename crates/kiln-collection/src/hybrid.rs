//! Keyword and hybrid search: BM25 over `[index] text_field` alone, or fused with the vector
//! search by reciprocal rank fusion. Each side ranks up to `depth` candidates that pass the
//! filter (k x 4, at least 40, at most max_k); a point's fused score is
//! `w_text / (60 + rank_text) + w_vector / (60 + rank_vector)` (ranks from 1; a side that
//! did not list the point adds nothing). Ties go to the earlier-inserted point.

use std::collections::HashMap;

use crate::{Collection, CollectionError, Filter, Hit};

/// RRF's rank constant (Cormack, Clarke & Büttcher 2009).
const RRF_K: f32 = 60.0;

/// How much each side counts in a fused search (both 1 by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub text: f32,
    pub vector: f32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights { text: 1.0, vector: 1.0 }
    }
}

impl Weights {
    pub fn check(&self) -> Result<(), CollectionError> {
        for (side, w) in [("text", self.text), ("vector", self.vector)] {
            if !w.is_finite() || w < 0.0 {
                return Err(CollectionError::Invalid(format!("weights.{side} = {w}: weights must be finite and >= 0")));
            }
        }
        if self.text == 0.0 && self.vector == 0.0 {
            return Err(CollectionError::Invalid("weights: at least one of text and vector must be above 0".into()));
        }
        Ok(())
    }
}

impl Collection {
    /// Whether the collection keeps a keyword index (`[index] text_field`).
    pub fn has_keywords(&self) -> bool {
        self.config.text_field.is_some()
    }

    /// The k best points for keywords (`text`), a prepared vector, or both fused. A side whose
    /// weight is 0 is not searched.
    pub fn search_hybrid(
        &self,
        vector: Option<&[f32]>,
        text: Option<&str>,
        weights: Weights,
        k: usize,
        filter: Option<&Filter>,
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<Hit>, CollectionError> {
        weights.check()?;
        let text = text.filter(|_| weights.text > 0.0);
        let vector = vector.filter(|_| weights.vector > 0.0);
        let Some(text) = text else {
            let vector = vector.ok_or_else(|| CollectionError::Invalid("a search needs a vector or text".into()))?;
            return self.search(vector, k, filter, deadline);
        };
        if !self.has_keywords() {
            return Err(CollectionError::Invalid(format!(
                "collection '{}' has no keyword index: set [index] text_field to search it by text",
                self.name
            )));
        }
        if !self.is_ready() {
            return Err(CollectionError::Loading(self.name.clone()));
        }
        self.check_k(k)?;
        let depth = (k * 4).max(40).min(self.config.max_k()).max(k);
        let keyword_hits = self.keyword_hits(text, depth, filter);
        let Some(vector) = vector else {
            let mut hits = keyword_hits;
            hits.truncate(k);
            return Ok(hits);
        };
        let vector_hits = self.search(vector, depth, filter, deadline)?;
        // Fuse by id; the order of first appearance breaks ties (keyword list, then vector).
        let mut fused: HashMap<String, (f32, usize, Hit)> = HashMap::new();
        let mut order = 0;
        for (list, weight) in [(keyword_hits, weights.text), (vector_hits, weights.vector)] {
            for (rank, hit) in list.into_iter().enumerate() {
                let part = weight / (RRF_K + rank as f32 + 1.0);
                fused.entry(hit.id.clone()).and_modify(|entry| entry.0 += part).or_insert_with(|| {
                    order += 1;
                    (part, order, hit)
                });
            }
        }
        let mut ranked: Vec<(f32, usize, Hit)> = fused.into_values().collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        Ok(ranked
            .into_iter()
            .take(k)
            .map(|(score, _, mut hit)| {
                hit.score = score;
                hit
            })
            .collect())
    }

    fn keyword_hits(&self, text: &str, depth: usize, filter: Option<&Filter>) -> Vec<Hit> {
        let state = self.read();
        let Some(keywords) = &state.keywords else { return Vec::new() };
        let passes = |key: u64| match filter {
            None => true,
            Some(f) => state.points.get(&key).is_some_and(|p| f.matches(p.payload.as_deref())),
        };
        keywords
            .search(text, depth, &passes)
            .into_iter()
            .filter_map(|(key, score)| state.points.get(&key).map(|p| p.hit(score)))
            .collect()
    }
}
