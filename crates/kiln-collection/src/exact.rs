//! The vectors of an `exact = true` collection in one contiguous block: a search scores them
//! in memory order (no pointer per point to follow), a delete moves the last vector into the
//! hole.

use std::collections::HashMap;

use crate::config::Metric;

pub(super) struct ExactVectors {
    dim: usize,
    /// The point key of each row of `data`.
    keys: Vec<u64>,
    data: Vec<f32>,
    /// Row of each key.
    rows: HashMap<u64, usize>,
}

impl ExactVectors {
    pub(super) fn new(dim: usize) -> Self {
        ExactVectors { dim, keys: Vec::new(), data: Vec::new(), rows: HashMap::new() }
    }

    /// Stores `vector` (of the collection's length, checked before) for `key`, replacing its
    /// old one.
    pub(super) fn put(&mut self, key: u64, vector: &[f32]) {
        debug_assert_eq!(vector.len(), self.dim);
        match self.rows.get(&key) {
            Some(&row) => self.data[row * self.dim..(row + 1) * self.dim].copy_from_slice(vector),
            None => {
                self.rows.insert(key, self.keys.len());
                self.keys.push(key);
                self.data.extend_from_slice(vector);
            }
        }
    }

    pub(super) fn remove(&mut self, key: u64) {
        let Some(row) = self.rows.remove(&key) else { return };
        let last = self.keys.len() - 1;
        if row != last {
            let moved = self.keys[last];
            self.keys[row] = moved;
            self.data.copy_within(last * self.dim..(last + 1) * self.dim, row * self.dim);
            self.rows.insert(moved, row);
        }
        self.keys.pop();
        self.data.truncate(last * self.dim);
    }

    /// The score of every point that passes.
    pub(super) fn scores(&self, query: &[f32], metric: Metric, passes: &dyn Fn(u64) -> bool) -> Vec<(u64, f32)> {
        self.keys
            .iter()
            .zip(self.data.chunks_exact(self.dim.max(1)))
            .filter(|(key, _)| passes(**key))
            .map(|(key, v)| (*key, metric.score(query, v)))
            .collect()
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.data.len() * 4 + self.keys.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_replace_and_remove_keep_rows_and_keys_together() {
        let mut v = ExactVectors::new(2);
        v.put(1, &[1.0, 0.0]);
        v.put(2, &[0.0, 1.0]);
        v.put(3, &[1.0, 1.0]);
        v.put(1, &[2.0, 0.0]);
        v.remove(1);
        v.remove(9);
        let mut got = v.scores(&[1.0, 2.0], Metric::Ip, &|_| true);
        got.sort_by_key(|(k, _)| *k);
        assert_eq!(got, vec![(2, 2.0), (3, 3.0)]);
        v.put(4, &[3.0, 0.0]);
        v.remove(3);
        let mut got = v.scores(&[1.0, 2.0], Metric::Ip, &|k| k != 2);
        got.sort_by_key(|(k, _)| *k);
        assert_eq!(got, vec![(4, 3.0)]);
        assert_eq!(v.memory_bytes(), 2 * (2 * 4 + 8));
    }
}
