use std::time::Instant;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

fn rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

fn normalize(v: &mut [f32]) { let n = v.iter().map(|x| x * x).sum::<f32>().sqrt(); v.iter_mut().for_each(|x| *x /= n); }

fn main() {
    let n: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(100_000);
    let dim = 384; let nq = 1000; let k = 10;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let centers: Vec<Vec<f32>> = (0..256).map(|_| { let mut c: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect(); normalize(&mut c); c }).collect();
    let make = |rng: &mut rand::rngs::StdRng| { let c = &centers[rng.random_range(0..centers.len())]; let spread = 0.02 + 0.04 * rng.random::<f32>(); let nd = Normal::new(0.0, spread).unwrap(); let mut v: Vec<f32> = c.iter().map(|x| x + nd.sample(rng)).collect(); normalize(&mut v); v };
    let data: Vec<Vec<f32>> = (0..n).map(|_| make(&mut rng)).collect();
    let queries: Vec<Vec<f32>> = (0..nq).map(|_| make(&mut rng)).collect();
    let base = rss_mb();
    // exact
    let t = Instant::now();
    let truth: Vec<Vec<usize>> = queries.iter().map(|q| { let mut s: Vec<(f32, usize)> = data.iter().enumerate().map(|(i, v)| (-v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), i)).collect(); s.select_nth_unstable_by(k, |a, b| a.0.partial_cmp(&b.0).unwrap()); let mut top: Vec<_> = s[..k].to_vec(); top.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap()); top.into_iter().map(|x| x.1).collect() }).collect();
    println!("exact naive: {:.0} q/s", nq as f64 / t.elapsed().as_secs_f64());
    // usearch
    let opts = usearch::IndexOptions { dimensions: dim, metric: usearch::MetricKind::Cos, quantization: usearch::ScalarKind::F32, connectivity: 16, expansion_add: 128, expansion_search: 64, multi: false };
    let idx = usearch::Index::new(&opts).unwrap();
    idx.reserve_capacity_and_threads(n, 2).unwrap();
    let t = Instant::now();
    std::thread::scope(|s| { for w in 0..2 { let idx = &idx; let data = &data; s.spawn(move || { for i in (w..n).step_by(2) { idx.add(i as u64, &data[i]).unwrap(); } }); } });
    println!("usearch build {:.1}s (2 threads), mem {} MB (index says), rss +{:.0} MB", t.elapsed().as_secs_f64(), idx.memory_usage() / 1_000_000, rss_mb() - base);
    for ef in [32, 64, 128, 256] {
        idx.change_expansion_search(ef);
        let t = Instant::now(); let mut hit = 0;
        for (q, tr) in queries.iter().zip(&truth) { let m = idx.search(q, k).unwrap(); hit += m.keys.iter().filter(|key| tr.contains(&(**key as usize))).count(); }
        let e = t.elapsed().as_secs_f64();
        println!("usearch ef={ef}: recall@10 {:.4}, {:.0} q/s 1 thread", hit as f64 / (nq * k) as f64, nq as f64 / e);
    }
    let t = Instant::now(); let mut hit = 0;
    for (q, tr) in queries.iter().zip(&truth).take(200) { let m = idx.exact_search(q, k).unwrap(); hit += m.keys.iter().filter(|key| tr.contains(&(**key as usize))).count(); }
    println!("usearch exact: recall {:.4}, {:.0} q/s", hit as f64 / (200 * k) as f64, 200.0 / t.elapsed().as_secs_f64());
    drop(idx); if std::env::var("SKIP_HNSW").is_ok() { return; }
    let base = rss_mb();
    // hnsw_rs
    let h = hnsw_rs::hnsw::Hnsw::<f32, hnsw_rs::prelude::DistCosine>::new(16, n, 16, 128, hnsw_rs::prelude::DistCosine {});
    let t = Instant::now();
    let refs: Vec<(&Vec<f32>, usize)> = data.iter().enumerate().map(|(i, v)| (v, i)).collect();
    h.parallel_insert(&refs);
    println!("hnsw_rs build {:.1}s (rayon), rss +{:.0} MB", t.elapsed().as_secs_f64(), rss_mb() - base);
    for ef in [32, 64, 128, 256] {
        let t = Instant::now(); let mut hit = 0;
        for (q, tr) in queries.iter().zip(&truth) { let m = h.search(q, k, ef); hit += m.iter().filter(|nb| tr.contains(&nb.d_id)).count(); }
        let e = t.elapsed().as_secs_f64();
        println!("hnsw_rs ef={ef}: recall@10 {:.4}, {:.0} q/s 1 thread", hit as f64 / (nq * k) as f64, nq as f64 / e);
    }
}
