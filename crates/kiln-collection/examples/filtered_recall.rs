//! Recall@10 of filtered HNSW search against exact search, for filters passing 50 %, 5 % and
//! 0.5 % of the points (clustered 64-d vectors, default HNSW settings, cosine).
//!   cargo run --release -p kiln-collection --example filtered_recall -- [POINTS] [QUERIES]

use kiln_collection::{Collection, Filter, IndexConfig, Metric, Point};
use serde_json::json;

/// A small deterministic generator (xorshift), so runs repeat.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn config(exact: bool) -> IndexConfig {
    IndexConfig {
        dim: 64,
        metric: Metric::Cosine,
        embedder: None,
        exact,
        m: None,
        ef_construction: None,
        ef_search: None,
        max_k: None,
        k: None,
        text_field: None,
    }
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let n = args.first().copied().unwrap_or(50_000);
    let queries = args.get(1).copied().unwrap_or(200);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let centers: Vec<Vec<f32>> = (0..64).map(|_| (0..64).map(|_| rng.next()).collect()).collect();
    let points: Vec<Point> = (0..n)
        .map(|i| {
            let c = &centers[i % centers.len()];
            let vector = c.iter().map(|x| x + rng.next() * 0.3).collect();
            // bucket i % 200: < 100 passes 50 %, < 10 passes 5 %, == 0 passes 0.5 %.
            Point { id: format!("p{i}"), vector, payload: Some(json!({"bucket": (i * 7919) % 200})) }
        })
        .collect();
    let hnsw = Collection::new("hnsw", config(false), true).expect("hnsw");
    let exact = Collection::new("exact", config(true), true).expect("exact");
    let start = std::time::Instant::now();
    hnsw.upsert(points.clone(), 0, false).expect("insert");
    println!("{n} points, HNSW built in {:.1} s", start.elapsed().as_secs_f64());
    exact.upsert(points, 0, false).expect("insert");
    for (label, filter) in [
        ("50 %", json!({"bucket": {"in": (0..100).collect::<Vec<_>>()}})),
        ("5 %", json!({"bucket": {"in": (0..10).collect::<Vec<_>>()}})),
        ("0.5 %", json!({"bucket": 0})),
    ] {
        let filter = Filter::parse(&filter).expect("filter");
        let (mut found, mut wanted, mut short) = (0usize, 0usize, 0usize);
        let mut took = std::time::Duration::ZERO;
        for _ in 0..queries {
            let q: Vec<f32> =
                centers[(rng.next().abs() * 63.0) as usize].iter().map(|x| x + rng.next() * 0.3).collect();
            let q = hnsw.prepare_vector("q", q).expect("query");
            let truth = exact.search(&q, 10, Some(&filter), None).expect("exact");
            let t = std::time::Instant::now();
            let got = hnsw.search(&q, 10, Some(&filter), None).expect("hnsw");
            took += t.elapsed();
            if got.len() < truth.len() {
                short += 1;
            }
            wanted += truth.len();
            found += got.iter().filter(|h| truth.iter().any(|t| t.id == h.id)).count();
        }
        println!(
            "filter passing {label:>5}: recall@10 {:.3}, searches short of k: {short}/{queries}, {:.0} µs per search",
            found as f64 / wanted as f64,
            took.as_secs_f64() * 1e6 / queries as f64
        );
    }
}
