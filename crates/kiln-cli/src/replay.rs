//! `kiln replay`: runs a model's logged requests again, on a candidate version, and compares its
//! answers with what was logged — the shadow comparison of `[rollout]`, after the fact.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kiln_core::Tensor;
use kiln_engine::Engine;
use kiln_records::{PredictionFilter, Store};
use kiln_serving::stats::LatencyBuckets;
use serde_json::{Value, json};

pub struct ReplayArgs<'a> {
    pub repository: &'a Path,
    pub model: &'a str,
    pub version: u64,
    pub since: Duration,
    pub records: Option<&'a str>,
    pub limit: usize,
    pub tolerance: f64,
    pub json: bool,
}

/// A logged `{name: {datatype, shape, data}}` document as tensors (through the v2 JSON decoder).
fn tensors(document: &Value, key: &str) -> Result<Vec<Tensor>> {
    let list: Vec<Value> = document
        .as_object()
        .context("not an object of tensors")?
        .iter()
        .map(|(name, t)| json!({"name": name, "datatype": t["datatype"], "shape": t["shape"], "data": t["data"]}))
        .collect();
    let body = serde_json::to_vec(&json!({ key: list }))?;
    Ok(if key == "inputs" {
        kiln_protocol::v2::decode_request(&body, None).map_err(|e| anyhow::anyhow!("{}", e.0))?.inputs
    } else {
        kiln_protocol::v2::decode_response(&body, None).map_err(|e| anyhow::anyhow!("{}", e.0))?
    })
}

fn default_records(repository: &Path) -> String {
    let repo = repository.canonicalize().unwrap_or_else(|_| repository.to_path_buf());
    let name = repo.file_name().map_or_else(|| "kiln".into(), |n| n.to_string_lossy().into_owned());
    let path = repo.parent().unwrap_or(Path::new(".")).join(format!("{name}.records.sqlite"));
    format!("sqlite:{}", path.display())
}

pub fn run(onnxruntime: Option<&Path>, args: &ReplayArgs<'_>) -> Result<()> {
    crate::start_runtime(onnxruntime)?;
    let engine = Engine::load_repository(args.repository).context("loading the repository")?;
    let candidate = engine
        .model(args.model, Some(&args.version.to_string()))
        .with_context(|| format!("model '{}' version {}", args.model, args.version))?;
    let url = args.records.map_or_else(|| default_records(args.repository), str::to_string);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = Store::connect(&url).await.with_context(|| format!("the prediction log at {url}"))?;
        let since = kiln_records::now_ms() - i64::try_from(args.since.as_millis()).unwrap_or(i64::MAX);
        let filter = PredictionFilter {
            model: Some(args.model.to_string()),
            outcome: Some("success".into()),
            since_ms: Some(since),
            limit: args.limit,
            with_tensors: true,
            ..PredictionFilter::default()
        };
        let rows = store.predictions(&filter).await.context("reading the prediction log")?;
        if rows.is_empty() {
            bail!("no successful requests of '{}' logged since {since} ms in {url}", args.model);
        }
        let (logged_latency, candidate_latency) = (LatencyBuckets::default(), LatencyBuckets::default());
        let (mut agreed, mut disagreed, mut failed, mut skipped) = (0u64, 0u64, 0u64, 0u64);
        let mut from_versions = std::collections::BTreeMap::<i64, u64>::new();
        for row in &rows {
            let (Some(inputs), Some(outputs)) = (&row.inputs, &row.outputs) else {
                skipped += 1;
                continue;
            };
            let (Ok(inputs), Ok(logged)) = (tensors(inputs, "inputs"), tensors(outputs, "outputs")) else {
                // Past the capture cap the log kept shapes only.
                skipped += 1;
                continue;
            };
            *from_versions.entry(row.version).or_default() += 1;
            logged_latency.record(Duration::from_micros(u64::try_from(row.latency_us).unwrap_or(0)));
            let outputs: Vec<String> = logged.iter().map(|t| t.name.clone()).collect();
            let started = Instant::now();
            let request = kiln_serving::InferRequest {
                inputs,
                outputs,
                protocol: kiln_serving::Protocol::InProcess,
                ..Default::default()
            };
            match candidate.infer(request).await {
                Ok(answer) => {
                    candidate_latency.record(started.elapsed());
                    if kiln_engine::rollout::agree(&logged, &answer.outputs, args.tolerance) {
                        agreed += 1;
                    } else {
                        disagreed += 1;
                    }
                }
                Err(_) => failed += 1,
            }
        }
        let (l, c) = (logged_latency.snapshot(), candidate_latency.snapshot());
        let compared = agreed + disagreed;
        let report = json!({
            "model": args.model,
            "candidate_version": args.version,
            "logged_versions": from_versions,
            "replayed": compared + failed,
            "agreed": agreed,
            "disagreed": disagreed,
            "failed": failed,
            "skipped": skipped,
            "agreement": (compared > 0).then(|| agreed as f64 / compared as f64),
            "tolerance": args.tolerance,
            "latency_ms": {
                "logged": {"p50": LatencyBuckets::quantile_ms(&l, 0.5), "p99": LatencyBuckets::quantile_ms(&l, 0.99)},
                "candidate": {"p50": LatencyBuckets::quantile_ms(&c, 0.5), "p99": LatencyBuckets::quantile_ms(&c, 0.99)},
            },
        });
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            let ms = |v: &Value| v.as_f64().map_or_else(|| "-".to_string(), |x| format!("{x:.2}"));
            println!(
                "{}: {} logged requests (versions {:?}) replayed on version {}",
                args.model,
                compared + failed,
                from_versions,
                args.version
            );
            println!(
                "  agreed {agreed}, disagreed {disagreed}, failed {failed}, skipped {skipped} (shapes only) — agreement {}",
                report["agreement"].as_f64().map_or_else(|| "-".into(), |a| format!("{:.1} %", a * 100.0))
            );
            println!(
                "  latency p50 / p99: logged {} / {} ms, candidate {} / {} ms (in-process, one at a time)",
                ms(&report["latency_ms"]["logged"]["p50"]),
                ms(&report["latency_ms"]["logged"]["p99"]),
                ms(&report["latency_ms"]["candidate"]["p50"]),
                ms(&report["latency_ms"]["candidate"]["p99"])
            );
        }
        Ok(())
    })
}
