//! The prediction log on a real SQLite file: batched async writes, durable writes, queries
//! with pagination, feedback joined for quality, and an outage (another connection holding
//! the database's write lock) that loses nothing.

use std::time::Duration;

use kiln_records::{Feedback, PredictionFilter, Record, Recorder, RecorderConfig, Retention, WriteMode};
use sqlx::Connection;

/// One FP32 input `x` of shape [1, n], as the log stores it.
fn tensors(values: &[f32]) -> Vec<u8> {
    let x =
        kiln_core::Tensor::new("x", vec![1, values.len()], kiln_core::TensorData::Fp32(values.to_vec())).expect("x");
    kiln_records::capture::encode(std::iter::once(&x))
}

fn record(i: i64, model: &str) -> Record {
    Record {
        id: format!("req-{i:04}"),
        client_key: Some(format!("key-{i}")),
        model: model.into(),
        version: 1,
        protocol: "rest".into(),
        ts_ms: 1_000 + i,
        latency_us: 100 + i,
        outcome: if i % 10 == 9 { "error".into() } else { "success".into() },
        error: None,
        rows: 1,
        inputs: Some(tensors(&[1.0])),
        outputs: None,
        labels: Some(format!("[\"{}\"]", i % 2)),
        truncated: false,
        shadow_of: None,
    }
}

/// Another connection holding the database's write lock until it commits: the log cannot write.
async fn lock(path: &std::path::Path) -> sqlx::SqliteConnection {
    let mut locker = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.expect("connects");
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut locker).await.expect("locks");
    locker
}

/// These rows are stamped in 1970: no age limit, or retention would delete them at once.
fn config(url: &str, mode: WriteMode) -> RecorderConfig {
    RecorderConfig { retention: Retention { max_age: None, max_bytes: None }, ..RecorderConfig::new(url, mode) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_writes_queries_and_feedback() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite:{}", dir.path().join("log.sqlite").display());
    let recorder = Recorder::open(config(&url, WriteMode::Async)).await.expect("opens");
    for i in 0..250 {
        recorder.record(record(i, if i % 5 == 0 { "b" } else { "a" })).await.expect("queued");
    }
    assert!(recorder.flush(Duration::from_secs(10)).await);
    let store = recorder.store();
    // Pagination: newest first, 3 pages of 70 + the rest, no row twice.
    let mut seen = Vec::new();
    let mut filter = PredictionFilter { model: Some("a".into()), limit: 70, ..Default::default() };
    loop {
        let page = store.predictions(&filter).await.expect("query");
        if page.is_empty() {
            break;
        }
        let last = page.last().expect("row");
        filter.before = Some((last.ts_ms, last.id.clone()));
        seen.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(seen.len(), 200);
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 200, "no duplicates across pages");
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");
    // Filters are values, never SQL.
    let evil = PredictionFilter { model: Some("a' OR '1'='1".into()), limit: 10, ..Default::default() };
    assert!(store.predictions(&evil).await.expect("query").is_empty());
    let errors = PredictionFilter { outcome: Some("error".into()), limit: 1000, ..Default::default() };
    assert_eq!(store.predictions(&errors).await.expect("query").len(), 25);
    // Feedback by request id and by client key, joined for quality.
    recorder
        .feedback(&Feedback {
            id: "f1".into(),
            prediction_id: Some("req-0001".into()),
            client_key: None,
            ts_ms: 5,
            labels: vec!["1".into()],
        })
        .await
        .expect("stored");
    recorder
        .feedback(&Feedback {
            id: "f2".into(),
            prediction_id: None,
            client_key: Some("key-2".into()),
            ts_ms: 6,
            labels: vec!["1".into()],
        })
        .await
        .expect("stored");
    let (row, feedback) = store.prediction("req-0001").await.expect("query").expect("found");
    assert_eq!(row.inputs.expect("tensors")["x"]["data"][0], 1.0);
    assert_eq!(feedback.len(), 1);
    let scored = store.scored("a", 0, i64::MAX).await.expect("scored");
    assert_eq!(scored.len(), 200);
    let labeled: Vec<_> = scored.iter().filter(|s| s.truth.is_some()).collect();
    assert_eq!(labeled.len(), 2, "req-0001 (predicted 1, true 1) and req-0002 (predicted 0, true 1)");
    let (_, total) = kiln_records::quality::report(&scored, 0, 60_000);
    assert_eq!(total.accuracy, Some(0.5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_writes_survive_a_locked_database() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("log.sqlite");
    let url = format!("sqlite:{}", path.display());
    let recorder = Recorder::open(config(&url, WriteMode::Durable)).await.expect("opens");
    recorder.record(record(1, "a")).await.expect("committed");
    assert_eq!(
        recorder.store().predictions(&PredictionFilter { limit: 10, ..Default::default() }).await.expect("q").len(),
        1
    );

    // Another process's write lock: the log cannot write, keeps the rows, and writes them after.
    let mut locker = lock(&path).await;
    let waiting = {
        let recorder = recorder.clone();
        tokio::spawn(async move { recorder.record(record(2, "a")).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "a durable write waits for its commit");
    sqlx::query("COMMIT").execute(&mut locker).await.expect("unlocks");
    waiting.await.expect("join").expect("committed after the lock");
    assert_eq!(
        recorder.store().predictions(&PredictionFilter { limit: 10, ..Default::default() }).await.expect("q").len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_file_under_its_cap_and_the_newest_rows() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("log.sqlite");
    let url = format!("sqlite:{}", path.display());
    let cap = 1024 * 1024;
    let retention = Retention { max_age: None, max_bytes: Some(cap) };
    let recorder = Recorder::open(RecorderConfig { retention, ..RecorderConfig::new(&url, WriteMode::Async) })
        .await
        .expect("opens");
    let now = kiln_records::now_ms();
    let n = 20_000;
    for i in 0..n {
        let mut r = record(i, "a");
        r.ts_ms = now + i;
        r.inputs = Some(tensors(&[i as f32, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]));
        recorder.record(r).await.expect("queued");
    }
    assert!(recorder.flush(Duration::from_secs(30)).await);
    assert_eq!(recorder.dropped(), 0);
    let store = recorder.store();
    assert!(store.used_bytes().await.expect("size") <= cap as i64);
    assert!(std::fs::metadata(&path).expect("file").len() <= cap, "the file is over its cap");
    let kept = store.predictions(&PredictionFilter { limit: 1000, ..Default::default() }).await.expect("q");
    assert_eq!(kept.len(), 1000, "most rows were deleted, not all");
    // The newest thousand, in order: retention deletes from the old end only.
    for (j, row) in kept.iter().enumerate() {
        assert_eq!(row.id, format!("req-{:04}", n - 1 - j as i64));
    }
}

/// A log written before tensors were stored as binary: the migration keeps its rows, whose
/// JSON text the API still shows, beside the new binary rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_from_before_the_binary_tensors_still_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("old.sqlite");
    let url = format!("sqlite:{}", path.display());
    {
        // One row in the old form.
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.expect("connects");
        let mut before = sqlx::migrate!("./migrations");
        before.migrations = before.migrations.iter().filter(|m| m.version <= 2).cloned().collect::<Vec<_>>().into();
        before.run(&mut conn).await.expect("the schema as migration 0002 left it");
        sqlx::raw_sql(
            r#"INSERT INTO predictions VALUES ('old', NULL, 'a', 1, 'rest', 1, 10, 'success', NULL, 1,
               '{"x":{"datatype":"FP32","shape":[1,1],"data":[4.5]}}', NULL, '["0"]', 0)"#,
        )
        .execute(&mut conn)
        .await
        .expect("old row");
    }
    let recorder = Recorder::open(config(&url, WriteMode::Async)).await.expect("opens and migrates");
    let mut new = record(1, "a");
    new.id = "new".into();
    recorder.record(new).await.expect("queued");
    assert!(recorder.flush(Duration::from_secs(10)).await);
    let rows = recorder
        .store()
        .predictions(&PredictionFilter { with_tensors: true, limit: 10, ..Default::default() })
        .await
        .expect("query");
    let data: Vec<_> =
        rows.iter().map(|r| (r.id.as_str(), r.inputs.as_ref().expect("tensors")["x"]["data"][0].clone())).collect();
    assert_eq!(data, [("new", serde_json::json!(1.0)), ("old", serde_json::json!(4.5))]);
}

/// While the database cannot be written, the rows waiting hold at most `max_pending_bytes`:
/// the rest are dropped and counted, and everything kept is written once the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_waiting_for_a_locked_database_stay_under_their_byte_bound() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("log.sqlite");
    let url = format!("sqlite:{}", path.display());
    let bound = 256 * 1024;
    let recorder = Recorder::open(RecorderConfig { max_pending_bytes: bound, ..config(&url, WriteMode::Async) })
        .await
        .expect("opens");
    let mut locker = lock(&path).await;
    // 1,000 rows of ~4 KiB of tensors: ~4 MiB, sixteen times the bound.
    let n = 1000;
    for i in 0..n {
        let mut r = record(i, "a");
        r.inputs = Some(tensors(&[0.5; 1024]));
        recorder.record(r).await.expect("async never fails");
    }
    let dropped = recorder.dropped();
    assert!(dropped > 0, "the bound refused rows");
    assert!(dropped < n as u64, "rows up to the bound were kept");
    let kept = n as u64 - dropped;
    assert!(kept * 4096 <= bound as u64, "{kept} rows of 4 KiB kept under a {bound}-byte bound");
    sqlx::query("COMMIT").execute(&mut locker).await.expect("unlocks");
    assert!(recorder.flush(Duration::from_secs(20)).await);
    let stored =
        recorder.store().predictions(&PredictionFilter { limit: 2000, ..Default::default() }).await.expect("q");
    assert_eq!(stored.len() as u64, kept, "every row kept was written after the lock");
    // The room is free again.
    recorder.record(record(n, "a")).await.expect("queued");
    assert!(recorder.flush(Duration::from_secs(10)).await);
    assert_eq!(recorder.dropped(), dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_answers_are_kept_apart_scored_by_their_requests_feedback_and_retained_with_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite:{}", dir.path().join("log.sqlite").display());
    let recorder = Recorder::open(config(&url, WriteMode::Async)).await.expect("opens");
    for i in 0..20 {
        recorder.record(record(i, "a")).await.expect("queued");
        // Version 2 shadows every request and answers the opposite label.
        let shadow = Record {
            id: format!("shadow-{i:04}"),
            version: 2,
            protocol: "shadow".into(),
            inputs: None,
            labels: Some(format!("[\"{}\"]", 1 - i % 2)),
            shadow_of: Some(format!("req-{i:04}")),
            ..record(i, "a")
        };
        recorder.record(shadow).await.expect("queued");
    }
    assert!(recorder.flush(Duration::from_secs(10)).await);
    let store = recorder.store();
    let listed = store.predictions(&PredictionFilter { limit: 100, ..Default::default() }).await.expect("q");
    assert_eq!(listed.len(), 20);
    assert!(listed.iter().all(|p| p.version == 1));
    // Feedback for even requests by id, odd ones by client key: the truth is i % 2.
    for i in 0..20 {
        let (prediction_id, client_key) =
            if i % 2 == 0 { (Some(format!("req-{i:04}")), None) } else { (None, Some(format!("key-{i}"))) };
        let f = Feedback {
            id: format!("f-{i}"),
            prediction_id,
            client_key,
            ts_ms: 5_000,
            labels: vec![(i % 2).to_string()],
        };
        recorder.feedback(&f).await.expect("feedback");
    }
    let shadows = store.shadow_scored("a", 0, i64::MAX).await.expect("scored");
    assert_eq!(shadows.len(), 20);
    for s in &shadows {
        assert_eq!(s.version, 2);
        let (predicted, truth) = (s.predicted.as_ref().expect("label"), s.truth.as_ref().expect("feedback"));
        assert_ne!(predicted, truth, "{s:?}");
    }
    // Age: shadows older than the cutoff go with their predictions.
    store.delete_older_than(1_010, 1_000).await.expect("deletes");
    assert_eq!(store.shadow_scored("a", 0, i64::MAX).await.expect("scored").len(), 10);
    // Size: the oldest predictions, then the shadows older than the oldest one left.
    store.delete_oldest(5).await.expect("deletes");
    let left = store.shadow_scored("a", 0, i64::MAX).await.expect("scored");
    assert_eq!(left.len(), 5);
    assert!(left.iter().all(|s| s.ts_ms >= 1_015));
    // Deleted, not merely unmatched.
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", dir.path().join("log.sqlite").display()))
        .await
        .expect("c");
    let (stored,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM shadow_predictions").fetch_one(&mut conn).await.expect("count");
    assert_eq!(stored, 5);
}
