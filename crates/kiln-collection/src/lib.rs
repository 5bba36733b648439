//! Vector collections (`kind = "vector_index"`): points — an id, a vector, an optional JSON
//! payload — searched by nearest neighbour, in memory. An HNSW graph (`usearch`) or, with
//! `exact = true`, a scan of every vector.
//!
//! A [`Collection`] holds only memory: what is durable (the SQL store, replicas following
//! each other) is kiln-server's and kiln-records' work, which hand changes in through
//! [`Collection::upsert`] and [`Collection::delete`] in the order the store committed them.
//! kiln-engine serves a collection over KServe v2 like any model (its `collection::serve`).
//!
//! This crate owns the points, the index (HNSW or exact scan), the distance kernels, filters
//! and the `[index]` settings. It must not do I/O beyond reading a collection folder's points
//! file, know of models, requests, protocols or the store, or run anything async.

mod bm25;
mod config;
mod exact;
mod filter;
mod hybrid;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use serde_json::Value;

use exact::ExactVectors;

pub use filter::Filter;
pub use hybrid::Weights;

pub use config::{IndexConfig, Metric};

/// Turns texts into vectors (the collection's embedder, when a points file holds text).
pub type EmbedTexts<'a> = dyn Fn(Vec<String>) -> Result<Vec<Vec<f32>>, String> + 'a;

/// The points file a collection folder may ship: one JSON object a line.
pub const POINTS_FILE: &str = "points.jsonl";

/// A bad point, query or filter: the message names the point, field or value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectionError {
    #[error("{0}")]
    Invalid(String),
    #[error("collection '{0}' is loading its points; retry shortly")]
    Loading(String),
    #[error("index: {0}")]
    Index(String),
    /// No search context came free before the request's deadline.
    #[error("collection '{0}': no search slot came free before the request's deadline")]
    Timeout(String),
}

/// One point as a caller sends it (the vector already computed).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub id: String,
    pub vector: Vec<f32>,
    pub payload: Option<Value>,
}

/// A checked point in its stored form: id, vector (normalized for cosine), payload.
pub type PreparedPoint = (String, Vec<f32>, Option<Arc<Value>>);

/// A search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    pub payload: Option<Arc<Value>>,
    /// The payload as JSON text, written once when the point was stored: v2 answers and
    /// pipeline steps take it as it is.
    pub payload_text: Option<Arc<str>>,
}

/// What [`Collection::info`] reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    pub count: usize,
    pub ready: bool,
    pub memory_bytes: usize,
    /// The store sequence number of the last change applied (0: only the folder's points).
    pub applied_seq: u64,
}

impl Stored {
    fn hit(&self, score: f32) -> Hit {
        Hit { id: self.id.clone(), score, payload: self.payload.clone(), payload_text: self.payload_text.clone() }
    }
}

struct Stored {
    id: String,
    /// The store's sequence number of the change this point came from (0: the folder's file):
    /// a change that is not newer is skipped, so a replica re-reading its own write leaves
    /// the graph alone (a re-insert leaves a deleted node behind in HNSW).
    seq: u64,
    payload: Option<Arc<Value>>,
    payload_text: Option<Arc<str>>,
}

struct State {
    index: Option<usearch::Index>,
    /// The vectors when there is no graph (`exact = true`).
    exact: ExactVectors,
    keys: HashMap<String, u64>,
    points: HashMap<u64, Stored>,
    next_key: u64,
    applied_seq: u64,
    /// The BM25 index of `[index] text_field`, when set.
    keywords: Option<bm25::Bm25>,
}

/// usearch keeps one search context per thread it reserved and fails a search beyond them;
/// this many searches run at once, the others wait for a context (RAII, see `SearchSlot`).
fn search_threads() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get).clamp(2, 64)
}

/// Counts free search contexts.
struct SearchSlots {
    free: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

/// One search context, given back when dropped (also when the search fails or panics).
struct SearchSlot<'a>(&'a SearchSlots);

impl SearchSlots {
    /// Waits for a free context, until `deadline` at most (`None`: as long as it takes).
    fn take(&self, deadline: Option<std::time::Instant>) -> Option<SearchSlot<'_>> {
        let mut free = self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *free == 0 {
            free = match deadline {
                None => self.freed.wait(free).unwrap_or_else(std::sync::PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.freed.wait_timeout(free, left).unwrap_or_else(std::sync::PoisonError::into_inner).0
                }
            };
        }
        *free -= 1;
        Some(SearchSlot(self))
    }
}

impl Drop for SearchSlot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        self.0.freed.notify_one();
    }
}

/// One collection's points in memory.
pub struct Collection {
    pub name: String,
    pub config: IndexConfig,
    state: RwLock<State>,
    slots: SearchSlots,
    /// False until the durable points are in (the server loads them after the engine starts);
    /// searches are refused meanwhile rather than answered from a partial collection.
    ready: AtomicBool,
}

/// Ids: what a caller may name a point. Bounded, printable, no control characters.
pub fn check_id(id: &str) -> Result<(), CollectionError> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        let shown: String = id.chars().take(40).flat_map(char::escape_default).collect();
        return Err(CollectionError::Invalid(format!(
            "point id '{shown}' must be 1 to 256 bytes without control characters"
        )));
    }
    Ok(())
}

impl Collection {
    /// An empty collection (ready at once when `ready`).
    pub fn new(name: &str, config: IndexConfig, ready: bool) -> Result<Collection, CollectionError> {
        let index = if config.exact {
            None
        } else {
            let options = usearch::IndexOptions {
                dimensions: config.dim,
                metric: match config.metric {
                    Metric::Cosine | Metric::Ip => usearch::MetricKind::IP,
                    Metric::L2 => usearch::MetricKind::L2sq,
                },
                quantization: usearch::ScalarKind::F32,
                connectivity: config.m(),
                expansion_add: config.ef_construction(),
                expansion_search: config.ef_search(),
                multi: false,
            };
            let index = usearch::Index::new(&options).map_err(|e| CollectionError::Index(e.to_string()))?;
            index
                .reserve_capacity_and_threads(1024, search_threads())
                .map_err(|e| CollectionError::Index(e.to_string()))?;
            Some(index)
        };
        let exact = ExactVectors::new(config.dim);
        let keywords = config.text_field.as_ref().map(|_| bm25::Bm25::default());
        Ok(Collection {
            name: name.to_string(),
            config,
            state: RwLock::new(State {
                index,
                exact,
                keys: HashMap::new(),
                points: HashMap::new(),
                next_key: 0,
                applied_seq: 0,
                keywords,
            }),
            ready: AtomicBool::new(ready),
            slots: SearchSlots { free: std::sync::Mutex::new(search_threads()), freed: std::sync::Condvar::new() },
        })
    }

    /// Marks the collection as holding all its points.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks one vector (length, finite values) and brings it into the stored form
    /// (normalized for cosine). `what` names it in errors.
    pub fn prepare_vector(&self, what: &str, mut vector: Vec<f32>) -> Result<Vec<f32>, CollectionError> {
        if vector.len() != self.config.dim {
            return Err(CollectionError::Invalid(format!(
                "{what}: vector has {} values; collection '{}' has dim {}",
                vector.len(),
                self.name,
                self.config.dim
            )));
        }
        if let Some(i) = vector.iter().position(|v| !v.is_finite()) {
            return Err(CollectionError::Invalid(format!(
                "{what}: vector[{i}] is {} (values must be finite)",
                vector[i]
            )));
        }
        if self.config.metric == Metric::Cosine {
            let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm == 0.0 {
                return Err(CollectionError::Invalid(format!(
                    "{what}: a zero vector has no direction (metric cosine)"
                )));
            }
            vector.iter_mut().for_each(|v| *v /= norm);
        }
        Ok(vector)
    }

    /// Checks every point before any is applied (all or nothing), then inserts or replaces
    /// them. `seq` is the store's sequence number of this change (0 for the folder's points);
    /// `advance` moves the collection's applied mark to it (only the follower does: it has
    /// applied every change up to there).
    pub fn upsert(&self, points: Vec<Point>, seq: u64, advance: bool) -> Result<usize, CollectionError> {
        let prepared = self.prepare(points)?;
        self.apply_prepared(prepared, seq, advance)
    }

    /// Checks a batch whole — ids, repeats, vectors (normalized for cosine) — into the form
    /// [`Collection::apply_prepared`] takes; the server stores this form before applying it.
    pub fn prepare(&self, points: Vec<Point>) -> Result<Vec<PreparedPoint>, CollectionError> {
        let mut prepared = Vec::with_capacity(points.len());
        let mut seen = std::collections::HashSet::new();
        for (i, point) in points.into_iter().enumerate() {
            check_id(&point.id).map_err(|e| CollectionError::Invalid(format!("points[{i}]: {e}")))?;
            if !seen.insert(point.id.clone()) {
                return Err(CollectionError::Invalid(format!("points[{i}]: id '{}' appears twice", point.id)));
            }
            let vector = self.prepare_vector(&format!("points[{i}] ('{}')", point.id), point.vector)?;
            prepared.push((point.id, vector, point.payload.map(Arc::new)));
        }
        Ok(prepared)
    }

    /// Inserts points already checked by [`Collection::prepare_vector`] (the store's rows);
    /// a point already held from this change or a newer one is skipped.
    pub fn apply_prepared(
        &self,
        points: Vec<PreparedPoint>,
        seq: u64,
        advance: bool,
    ) -> Result<usize, CollectionError> {
        let mut state = self.write();
        let state = &mut *state;
        let n = points.len();
        if let Some(index) = &state.index {
            let needed = index.size() + n;
            if needed > index.capacity() {
                index
                    .reserve_capacity_and_threads(needed.next_power_of_two(), search_threads())
                    .map_err(|e| CollectionError::Index(e.to_string()))?;
            }
        }
        let mut applied = 0;
        // Graph inserts wait until the maps are updated, then run on several threads at once.
        let mut graph_adds: Vec<(u64, Vec<f32>)> = Vec::new();
        let mut add_slot: HashMap<u64, usize> = HashMap::new();
        for (id, vector, payload) in points {
            let held = state.keys.get(&id).copied();
            if seq > 0
                && let Some(key) = held
                && state.points.get(&key).is_some_and(|p| p.seq >= seq)
            {
                continue;
            }
            applied += 1;
            let key = match held {
                Some(key) => {
                    if let Some(index) = &state.index {
                        index.remove(key).map_err(|e| CollectionError::Index(e.to_string()))?;
                    }
                    key
                }
                None => {
                    let key = state.next_key;
                    state.next_key += 1;
                    state.keys.insert(id.clone(), key);
                    key
                }
            };
            match (&state.index, add_slot.get(&key)) {
                // The same point twice in one change: its last vector wins.
                (Some(_), Some(&slot)) => graph_adds[slot].1 = vector,
                (Some(_), None) => {
                    add_slot.insert(key, graph_adds.len());
                    graph_adds.push((key, vector));
                }
                (None, _) => state.exact.put(key, &vector),
            }
            if let (Some(keywords), Some(field)) = (&mut state.keywords, &self.config.text_field) {
                match payload.as_deref().and_then(|p| p.get(field)).and_then(Value::as_str) {
                    Some(text) => keywords.put(key, text),
                    None => keywords.remove(key),
                }
            }
            let payload_text = payload.as_ref().map(|p| Arc::from(p.to_string()));
            state.points.insert(key, Stored { id, seq, payload, payload_text });
        }
        if let Some(index) = &state.index {
            add_to_graph(index, &graph_adds)?;
        }
        if advance {
            state.applied_seq = state.applied_seq.max(seq);
        }
        Ok(applied)
    }

    /// Removes points by id; ids not there, or held from a newer change, are skipped.
    /// Returns how many were removed.
    pub fn delete(&self, ids: &[String], seq: u64, advance: bool) -> Result<usize, CollectionError> {
        let mut state = self.write();
        let mut removed = 0;
        for id in ids {
            let Some(&key) = state.keys.get(id) else { continue };
            if seq > 0 && state.points.get(&key).is_some_and(|p| p.seq > seq) {
                continue;
            }
            if state.keys.remove(id).is_some() {
                if let Some(index) = &state.index {
                    index.remove(key).map_err(|e| CollectionError::Index(e.to_string()))?;
                }
                state.points.remove(&key);
                state.exact.remove(key);
                if let Some(keywords) = &mut state.keywords {
                    keywords.remove(key);
                }
                removed += 1;
            }
        }
        if advance {
            state.applied_seq = state.applied_seq.max(seq);
        }
        Ok(removed)
    }

    /// Whether a point with this id is held.
    pub fn contains(&self, id: &str) -> bool {
        self.read().keys.contains_key(id)
    }

    pub fn info(&self) -> Info {
        let state = self.read();
        let vectors = state.exact.memory_bytes();
        Info {
            count: state.points.len(),
            ready: self.is_ready(),
            memory_bytes: state.index.as_ref().map_or(0, usearch::Index::memory_usage) + vectors,
            applied_seq: state.applied_seq,
        }
    }

    /// Checks k against the collection's bounds.
    pub fn check_k(&self, k: usize) -> Result<(), CollectionError> {
        if k == 0 || k > self.config.max_k() {
            return Err(CollectionError::Invalid(format!(
                "k = {k}: collection '{}' answers 1 to {} neighbours (max_k)",
                self.name,
                self.config.max_k()
            )));
        }
        Ok(())
    }

    /// The k nearest points to one prepared query that pass the filter, closest first. A graph
    /// search waits for a search context until `deadline` at most.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&Filter>,
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<Hit>, CollectionError> {
        if !self.is_ready() {
            return Err(CollectionError::Loading(self.name.clone()));
        }
        self.check_k(k)?;
        let state = self.read();
        let passes = |key: u64| match filter {
            None => true,
            Some(f) => state.points.get(&key).is_some_and(|p| f.matches(p.payload.as_deref())),
        };
        let hits: Vec<(u64, f32)> = match &state.index {
            Some(index) => {
                let _context = self.slots.take(deadline).ok_or_else(|| CollectionError::Timeout(self.name.clone()))?;
                let found = match filter {
                    Some(_) => index.filtered_search(query, k, passes),
                    None => index.search(query, k),
                }
                .map_err(|e| CollectionError::Index(e.to_string()))?;
                let mut hits: Vec<(u64, f32)> =
                    found.keys.iter().copied().zip(found.distances.iter().copied()).collect();
                if filter.is_some() && hits.len() < k {
                    // A selective filter can leave the graph walk short of k: score every
                    // point that passes instead.
                    hits = passing_exact(index, &state, query, k, &passes)?;
                }
                hits
            }
            None => {
                let metric = self.config.metric;
                let mut scored = state.exact.scores(query, metric, &passes);
                top_k(&mut scored, k, metric.higher_is_closer());
                return Ok(scored
                    .into_iter()
                    .filter_map(|(key, score)| state.points.get(&key).map(|p| p.hit(score)))
                    .collect());
            }
        };
        let metric = self.config.metric;
        Ok(hits
            .into_iter()
            .filter_map(|(key, distance)| {
                state.points.get(&key).map(|p| {
                    // usearch's IP distance is 1 - dot; L2sq is the squared distance.
                    p.hit(if metric.higher_is_closer() { 1.0 - distance } else { distance })
                })
            })
            .collect())
    }

    /// Reads a collection folder's points file, when there is one: `{"id", "vector" |
    /// "text", "payload"}` a line. Text needs `embed`, which turns texts into vectors.
    pub fn load_points_file(&self, folder: &Path, embed: Option<&EmbedTexts<'_>>) -> Result<usize, String> {
        let path = folder.join(POINTS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let mut points = Vec::new();
        let mut texts: Vec<(usize, String)> = Vec::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let at = |e: String| format!("{} line {}: {e}", path.display(), n + 1);
            let row: FilePoint = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
            let vector = match (row.vector, row.text) {
                (Some(v), None) => v,
                (None, Some(t)) => {
                    texts.push((points.len(), t));
                    Vec::new()
                }
                _ => return Err(at("give a point either \"vector\" or \"text\"".into())),
            };
            points.push(Point { id: row.id, vector, payload: row.payload });
        }
        if !texts.is_empty() {
            let embed = embed
                .ok_or_else(|| format!("{} has points given as text, but [index] names no embedder", path.display()))?;
            let (slots, texts): (Vec<usize>, Vec<String>) = texts.into_iter().unzip();
            let vectors = embed(texts).map_err(|e| format!("{}: embedding its texts: {e}", path.display()))?;
            for (slot, vector) in slots.into_iter().zip(vectors) {
                points[slot].vector = vector;
            }
        }
        self.upsert(points, 0, false).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePoint {
    id: String,
    vector: Option<Vec<f32>>,
    text: Option<String>,
    payload: Option<Value>,
}

/// Inserts into the HNSW graph from as many threads as usearch has contexts reserved (the
/// caller holds the write lock: no search holds one). Each insert is a graph walk of
/// ef_construction candidates, the cost of a bulk load. A small graph grows one insert at a
/// time: concurrent inserts into a graph of a few thousand nodes cost recall (recall@10 fell to
/// 0.944 in one of five loads of the tests' 2,000 clustered points, under their 0.95 floor).
fn add_to_graph(index: &usearch::Index, adds: &[(u64, Vec<f32>)]) -> Result<(), CollectionError> {
    const PER_THREAD_AT_LEAST: usize = 64;
    const SEQUENTIAL_UNTIL: usize = 10_000;
    let add_part = |part: &[(u64, Vec<f32>)]| {
        part.iter().try_for_each(|(key, vector)| index.add(*key, vector).map_err(|e| e.to_string()))
    };
    let first = SEQUENTIAL_UNTIL.saturating_sub(index.size()).min(adds.len());
    add_part(&adds[..first]).map_err(CollectionError::Index)?;
    let adds = &adds[first..];
    let threads = search_threads().min(adds.len() / PER_THREAD_AT_LEAST).max(1);
    let outcome = if threads == 1 {
        add_part(adds)
    } else {
        std::thread::scope(|scope| {
            let running: Vec<_> =
                adds.chunks(adds.len().div_ceil(threads)).map(|part| scope.spawn(move || add_part(part))).collect();
            // The scope joins every thread before it returns, also after a first error.
            running
                .into_iter()
                .try_for_each(|t| t.join().unwrap_or_else(|_| Err("a graph insert thread panicked".into())))
        })
    };
    outcome.map_err(CollectionError::Index)
}

/// Keeps the k best of `scored` (all of them, sorted, when fewer), closest first.
fn top_k(scored: &mut Vec<(u64, f32)>, k: usize, higher_is_closer: bool) {
    let order = |a: &(u64, f32), b: &(u64, f32)| {
        let by_score = if higher_is_closer { b.1.total_cmp(&a.1) } else { a.1.total_cmp(&b.1) };
        by_score.then(a.0.cmp(&b.0))
    };
    if scored.len() > k {
        scored.select_nth_unstable_by(k - 1, order);
        scored.truncate(k);
    }
    scored.sort_by(order);
}

/// Distances (usearch's: 1 - dot, or squared L2) from the query to every point that passes,
/// read back from the HNSW index; the k closest.
fn passing_exact(
    index: &usearch::Index,
    state: &State,
    query: &[f32],
    k: usize,
    passes: &dyn Fn(u64) -> bool,
) -> Result<Vec<(u64, f32)>, CollectionError> {
    let mut vector = vec![0f32; index.dimensions()];
    let l2 = index.metric_kind() == usearch::MetricKind::L2sq;
    let mut scored = Vec::new();
    for &key in state.points.keys().filter(|key| passes(**key)) {
        if index.get(key, &mut vector).map_err(|e| CollectionError::Index(e.to_string()))? == 0 {
            continue;
        }
        let distance = if l2 { Metric::L2.score(query, &vector) } else { 1.0 - Metric::Ip.score(query, &vector) };
        scored.push((key, distance));
    }
    top_k(&mut scored, k, false);
    Ok(scored)
}

#[cfg(test)]
mod tests;
