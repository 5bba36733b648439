//! A BM25 keyword index over one payload text field (`[index] text_field`), kept alongside
//! the vectors and changed with them.
//!
//! Terms: the text lowercased and cut at every character that is not alphanumeric (Unicode),
//! no stemming and no stop words. Score of a point for a query (Robertson/Spärck Jones BM25,
//! k1 = 1.2, b = 0.75, the idf form that never goes negative):
//! `sum over query terms t of idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))`,
//! `idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))`.

use std::collections::HashMap;

const K1: f32 = 1.2;
const B: f32 = 0.75;

/// The terms of a text.
pub fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).map(str::to_lowercase).collect()
}

#[derive(Default)]
pub struct Bm25 {
    /// term -> (point key -> occurrences)
    postings: HashMap<String, HashMap<u64, u32>>,
    /// point key -> (its terms, for removal; its length in terms)
    docs: HashMap<u64, (Vec<String>, u32)>,
    total_terms: u64,
}

impl Bm25 {
    /// Indexes (or re-indexes) one point's text.
    pub fn put(&mut self, key: u64, text: &str) {
        self.remove(key);
        let terms = terms(text);
        let length = terms.len() as u32;
        let mut counts: HashMap<String, u32> = HashMap::new();
        for term in terms {
            *counts.entry(term).or_default() += 1;
        }
        let distinct: Vec<String> = counts.keys().cloned().collect();
        for (term, count) in counts {
            self.postings.entry(term).or_default().insert(key, count);
        }
        self.total_terms += u64::from(length);
        self.docs.insert(key, (distinct, length));
    }

    pub fn remove(&mut self, key: u64) {
        let Some((terms, length)) = self.docs.remove(&key) else { return };
        self.total_terms -= u64::from(length);
        for term in terms {
            if let Some(list) = self.postings.get_mut(&term) {
                list.remove(&key);
                if list.is_empty() {
                    self.postings.remove(&term);
                }
            }
        }
    }

    /// The `k` best-scoring points that pass, best first (points sharing no term are not listed).
    pub fn search(&self, query: &str, k: usize, passes: &dyn Fn(u64) -> bool) -> Vec<(u64, f32)> {
        let n = self.docs.len() as f32;
        if n == 0.0 {
            return Vec::new();
        }
        let average = (self.total_terms as f32 / n).max(1.0);
        let mut query_terms = terms(query);
        query_terms.sort();
        query_terms.dedup();
        let mut scores: HashMap<u64, f32> = HashMap::new();
        for term in &query_terms {
            let Some(list) = self.postings.get(term) else { continue };
            let df = list.len() as f32;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for (&key, &tf) in list {
                let length = self.docs.get(&key).map_or(0, |d| d.1) as f32;
                let tf = tf as f32;
                let part = idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * length / average));
                *scores.entry(key).or_default() += part;
            }
        }
        let mut ranked: Vec<(u64, f32)> = scores.into_iter().filter(|(key, _)| passes(*key)).collect();
        // Best first; ties by key (insertion order) so answers repeat.
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(k);
        ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_the_formula() {
        let mut index = Bm25::default();
        index.put(0, "the lost card");
        index.put(1, "Card, card: a CARD!");
        index.put(2, "transfer times");
        let hits = index.search("card", 10, &|_| true);
        // df = 2 of N = 3; avg length = (3 + 4 + 2) / 3.
        let idf = (1.0f32 + (3.0 - 2.0 + 0.5) / (2.0 + 0.5)).ln();
        let avg = 9.0f32 / 3.0;
        let score = |tf: f32, len: f32| idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len / avg));
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].0, 1);
        assert!((hits[0].1 - score(3.0, 4.0)).abs() < 1e-5);
        assert!((hits[1].1 - score(1.0, 3.0)).abs() < 1e-5);
        index.remove(1);
        index.put(2, "card");
        let hits = index.search("CARD", 10, &|key| key != 0);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![2]);
        assert_eq!(terms("Héllo, wörld—naïve"), vec!["héllo", "wörld", "naïve"]);
    }
}
