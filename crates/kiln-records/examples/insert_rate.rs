//! How fast the store inserts rows (CPU per row), without a server around it:
//!     cargo run --release -p kiln-records --example insert_rate [-- URL]
use std::time::Instant;

use kiln_records::{Record, Store};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let url = std::env::args().nth(1).unwrap_or_else(|| format!("sqlite:{}", dir.path().join("r.sqlite").display()));
    let store = Store::connect(&url).await?;
    let input = kiln_core::Tensor::new("input", vec![1, 30], kiln_core::TensorData::Fp32(vec![0.123_456_78; 30]))?;
    let inputs = kiln_records::capture::encode(std::iter::once(&input));
    let label = kiln_core::Tensor::new("label", vec![1], kiln_core::TensorData::Int64(vec![0]))?;
    let outputs = kiln_records::capture::encode(std::iter::once(&label));
    let rows: Vec<std::sync::Arc<Record>> = (0..200_000)
        .map(|i| Record {
            id: format!("{:012x}{:020x}", 1_000_000 + i, fastrand::u128(..) >> 48),
            client_key: None,
            model: "fraud".into(),
            version: 1,
            protocol: "rest".into(),
            ts_ms: 1_000_000 + i,
            latency_us: 500,
            outcome: "success".into(),
            error: None,
            rows: 1,
            inputs: Some(inputs.clone()),
            outputs: Some(outputs.clone()),
            labels: Some("[\"0\"]".into()),
            truncated: false,
            shadow_of: None,
        })
        .map(std::sync::Arc::new)
        .collect();
    for batch in [1usize, 64, 512] {
        let started = Instant::now();
        let cpu = cpu_time();
        let mut n = 0;
        for chunk in rows.chunks(batch).take(200_000 / batch / 4) {
            store.insert(chunk.to_vec()).await?;
            n += chunk.len();
        }
        let wall = started.elapsed().as_secs_f64();
        println!(
            "batch {batch:>4}: {:>8.0} rows/s, {:.1} µs CPU per row",
            n as f64 / wall,
            (cpu_time() - cpu) * 1e6 / n as f64
        );
    }
    Ok(())
}

/// This process's CPU seconds (user + system) from /proc.
fn cpu_time() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
