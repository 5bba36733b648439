//! The SQL side: connecting (SQLite file in WAL mode, or PostgreSQL), the migrations shipped in
//! the binary, batched inserts and the queries behind the REST API. Every value a client sends
//! is bound as a parameter; no SQL is ever built from request text.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use crate::{Feedback, RecordsError};

/// The database error type, for callers that do not depend on sqlx.
pub type DbError = sqlx::Error;

mod write;
pub use write::WriteError;
use write::{PER_STATEMENT, SQLITE_PRAGMAS, SqliteWriter, Writes, insert_sql, open_sqlite_writer};

/// Which SQL the store speaks (placeholders differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The database behind the prediction log.
#[derive(Clone)]
pub struct Store {
    /// Queries, feedback and the collections' points.
    pool: AnyPool,
    /// The log writer's inserts and retention.
    writes: Writes,
    dialect: Dialect,
    /// `insert_sql(PER_STATEMENT)` (PostgreSQL), built once (shared: handles are cloned per request).
    full_insert: std::sync::Arc<str>,
    /// The URL without a password, for logs.
    pub display: std::sync::Arc<str>,
}

/// What `GET /v1/predictions` filters on; every field is bound, never spliced.
#[derive(Debug, Clone, Default)]
pub struct PredictionFilter {
    pub model: Option<String>,
    pub version: Option<i64>,
    pub outcome: Option<String>,
    pub client_key: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Rows strictly older than this (ts_ms, id) position: keyset pagination.
    pub before: Option<(i64, String)>,
    pub limit: usize,
    pub with_tensors: bool,
}

/// One prediction as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PredictionRow {
    pub id: String,
    pub client_key: Option<String>,
    pub model: String,
    pub version: i64,
    pub protocol: String,
    pub ts_ms: i64,
    pub latency_us: i64,
    pub outcome: String,
    pub error: Option<String>,
    pub rows: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Value>,
    pub labels: Option<Value>,
    pub truncated: bool,
}

/// What quality is computed from: one prediction and the newest feedback for it.
#[derive(Debug, Clone)]
pub struct Scored {
    pub ts_ms: i64,
    /// The version that answered.
    pub version: i64,
    pub latency_us: i64,
    pub ok: bool,
    pub predicted: Option<Vec<String>>,
    pub truth: Option<Vec<String>>,
}

fn redact(url: &str) -> String {
    // postgres://user:secret@host/db -> postgres://user:***@host/db
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A row's tensors: the binary blob, or (rows written before it) the JSON text.
fn tensors(r: &AnyRow, blob: &str, text: &str) -> Result<Option<Value>, sqlx::Error> {
    Ok(match r.try_get::<Option<Vec<u8>>, _>(blob)? {
        Some(bytes) => Some(
            crate::capture::to_json(&bytes)
                .unwrap_or_else(|e| serde_json::json!({"error": format!("the stored tensors cannot be read: {e}")})),
        ),
        None => json_text(r.try_get(text)?),
    })
}

fn json_text(v: Option<String>) -> Option<Value> {
    v.and_then(|s| serde_json::from_str(&s).ok())
}

fn labels_of(v: Option<String>) -> Option<Vec<String>> {
    v.and_then(|s| serde_json::from_str::<Vec<String>>(&s).ok())
}

impl Store {
    /// Connects and runs the migrations. `sqlite:PATH` creates the file (WAL mode);
    /// `postgres://...` needs the database to exist.
    pub async fn connect(url: &str) -> Result<Store, RecordsError> {
        sqlx::any::install_default_drivers();
        let mut sqlite_path = None;
        let (dialect, url) = if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            if path.is_empty() {
                return Err(RecordsError::Config("sqlite: needs a file path, e.g. sqlite:kiln-records.sqlite".into()));
            }
            sqlite_path = Some(path.to_string());
            (Dialect::Sqlite, format!("sqlite://{path}?mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_string())
        } else {
            return Err(RecordsError::Config(format!(
                "--records takes sqlite:PATH, postgres://USER@HOST/DB or off, not '{}'",
                redact(url)
            )));
        };
        let display = redact(&url);
        let options = |connections: u32| {
            AnyPoolOptions::new().max_connections(connections).acquire_timeout(Duration::from_secs(5)).after_connect(
                move |conn, _| {
                    Box::pin(async move {
                        if dialect == Dialect::Sqlite {
                            for pragma in SQLITE_PRAGMAS {
                                conn.execute(*pragma).await?;
                            }
                        }
                        Ok(())
                    })
                },
            )
        };
        let open = |connections: u32| {
            let url = url.clone();
            let display = display.clone();
            async move {
                options(connections)
                    .connect(&url)
                    .await
                    .map_err(|e| RecordsError::Database(format!("cannot open the records database {display}: {e}")))
            }
        };
        let pool = open(if dialect == Dialect::Sqlite { 4 } else { 8 }).await?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| RecordsError::Database(format!("migrating the records database {display}: {e}")))?;
        let writes = match sqlite_path {
            Some(path) => Writes::Sqlite(
                open_sqlite_writer(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|conn| SqliteWriter::start(conn).map_err(|e| e.to_string()))
                    .map_err(|e| RecordsError::Database(format!("cannot open the records database {display}: {e}")))?,
            ),
            None => Writes::Pool(open(1).await?),
        };
        Ok(Store { pool, writes, dialect, full_insert: insert_sql(PER_STATEMENT).into(), display: display.into() })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The connection pool (the collection store shares it).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// What a retention delete picks rows by: SQLite's rowid (the table's own key: no lookup
    /// through the id index per row), PostgreSQL's primary key.
    fn row_key(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "rowid",
            Dialect::Postgres => "id",
        }
    }

    /// The `n`-th (1-based) placeholder.
    fn ph(&self, n: usize) -> String {
        match self.dialect {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    pub async fn add_feedback(&self, f: &Feedback) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO feedback (id, prediction_id, client_key, ts_ms, labels) VALUES ({}, {}, {}, {}, {})",
            self.ph(1),
            self.ph(2),
            self.ph(3),
            self.ph(4),
            self.ph(5)
        );
        sqlx::query(&sql)
            .bind(f.id.clone())
            .bind(f.prediction_id.clone())
            .bind(f.client_key.clone())
            .bind(f.ts_ms)
            .bind(serde_json::to_string(&f.labels).unwrap_or_default())
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// The row counts of the stored predictions with this request id or client key (empty:
    /// none is stored, or not yet — the log is written behind the answers).
    pub async fn prediction_rows(&self, id: Option<&str>, key: Option<&str>) -> Result<Vec<i64>, sqlx::Error> {
        let sql = format!(
            "SELECT DISTINCT rows_n FROM predictions WHERE id = {} OR client_key = {} ORDER BY rows_n",
            self.ph(1),
            self.ph(2)
        );
        let rows =
            sqlx::query(&sql).bind(id.map(str::to_string)).bind(key.map(str::to_string)).fetch_all(&self.pool).await?;
        rows.iter().map(|r| r.try_get::<i64, _>("rows_n")).collect()
    }

    fn row(&self, r: &AnyRow, with_tensors: bool) -> Result<PredictionRow, sqlx::Error> {
        Ok(PredictionRow {
            id: r.try_get("id")?,
            client_key: r.try_get("client_key")?,
            model: r.try_get("model")?,
            version: r.try_get("version")?,
            protocol: r.try_get("protocol")?,
            ts_ms: r.try_get("ts_ms")?,
            latency_us: r.try_get("latency_us")?,
            outcome: r.try_get("outcome")?,
            error: r.try_get("error")?,
            rows: r.try_get("rows_n")?,
            inputs: if with_tensors { tensors(r, "inputs_bin", "inputs")? } else { None },
            outputs: if with_tensors { tensors(r, "outputs_bin", "outputs")? } else { None },
            labels: json_text(r.try_get("labels")?),
            truncated: r.try_get::<i64, _>("truncated")? != 0,
        })
    }

    /// Newest first; `filter.limit` rows at most.
    pub async fn predictions(&self, filter: &PredictionFilter) -> Result<Vec<PredictionRow>, sqlx::Error> {
        let mut clauses = Vec::new();
        let mut n = 0;
        let mut next = |this: &Store| {
            n += 1;
            this.ph(n)
        };
        if filter.model.is_some() {
            clauses.push(format!("model = {}", next(self)));
        }
        if filter.version.is_some() {
            clauses.push(format!("version = {}", next(self)));
        }
        if filter.outcome.is_some() {
            clauses.push(format!("outcome = {}", next(self)));
        }
        if filter.client_key.is_some() {
            clauses.push(format!("client_key = {}", next(self)));
        }
        if filter.since_ms.is_some() {
            clauses.push(format!("ts_ms >= {}", next(self)));
        }
        if filter.until_ms.is_some() {
            clauses.push(format!("ts_ms < {}", next(self)));
        }
        if filter.before.is_some() {
            let (a, b, c) = (next(self), next(self), next(self));
            clauses.push(format!("(ts_ms < {a} OR (ts_ms = {b} AND id < {c}))"));
        }
        let limit = next(self);
        let mut sql = String::from("SELECT * FROM predictions");
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY ts_ms DESC, id DESC LIMIT {limit}"));
        let mut query = sqlx::query(&sql);
        if let Some(m) = &filter.model {
            query = query.bind(m.clone());
        }
        if let Some(v) = filter.version {
            query = query.bind(v);
        }
        if let Some(o) = &filter.outcome {
            query = query.bind(o.clone());
        }
        if let Some(k) = &filter.client_key {
            query = query.bind(k.clone());
        }
        if let Some(s) = filter.since_ms {
            query = query.bind(s);
        }
        if let Some(u) = filter.until_ms {
            query = query.bind(u);
        }
        if let Some((ts, id)) = &filter.before {
            query = query.bind(*ts).bind(*ts).bind(id.clone());
        }
        query = query.bind(filter.limit as i64);
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(|r| self.row(r, filter.with_tensors)).collect()
    }

    /// One prediction with every feedback stored for it (by request id or client key).
    pub async fn prediction(&self, id: &str) -> Result<Option<(PredictionRow, Vec<Value>)>, sqlx::Error> {
        let sql = format!("SELECT * FROM predictions WHERE id = {}", self.ph(1));
        let Some(row) = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let prediction = self.row(&row, true)?;
        let sql = format!(
            "SELECT id, ts_ms, labels FROM feedback WHERE prediction_id = {} OR (client_key IS NOT NULL AND client_key = {}) ORDER BY ts_ms",
            self.ph(1),
            self.ph(2)
        );
        let feedback = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(prediction.client_key.clone())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|f| {
                Ok(serde_json::json!({
                    "id": f.try_get::<String, _>("id")?,
                    "ts_ms": f.try_get::<i64, _>("ts_ms")?,
                    "labels": json_text(f.try_get("labels")?),
                }))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Some((prediction, feedback)))
    }

    /// A model's predictions in [since, until) with the newest feedback of each.
    pub async fn scored(&self, model: &str, since_ms: i64, until_ms: i64) -> Result<Vec<Scored>, sqlx::Error> {
        let sql = format!(
            "SELECT p.id AS id, p.ts_ms AS ts_ms, p.version AS version, p.latency_us AS latency_us, p.outcome AS outcome, p.labels AS labels, \
             p.rows_n AS rows_n, f1.labels AS by_id, f1.ts_ms AS by_id_ts, f2.labels AS by_key, f2.ts_ms AS by_key_ts \
             FROM predictions p \
             LEFT JOIN feedback f1 ON f1.prediction_id = p.id \
             LEFT JOIN feedback f2 ON p.client_key IS NOT NULL AND f2.client_key = p.client_key \
             WHERE p.model = {} AND p.ts_ms >= {} AND p.ts_ms < {} ORDER BY p.ts_ms, p.id",
            self.ph(1),
            self.ph(2),
            self.ph(3)
        );
        self.scored_rows(&sql, model, since_ms, until_ms).await
    }

    /// A model's `[rollout]` shadow answers in [since, until), each with the newest feedback of
    /// the prediction it answered beside (by that request's id or client key).
    pub async fn shadow_scored(&self, model: &str, since_ms: i64, until_ms: i64) -> Result<Vec<Scored>, sqlx::Error> {
        let sql = format!(
            "SELECT s.id AS id, s.ts_ms AS ts_ms, s.version AS version, s.latency_us AS latency_us, s.outcome AS outcome, \
             s.labels AS labels, p.rows_n AS rows_n, f1.labels AS by_id, f1.ts_ms AS by_id_ts, f2.labels AS by_key, \
             f2.ts_ms AS by_key_ts \
             FROM shadow_predictions s \
             JOIN predictions p ON p.id = s.shadow_of \
             LEFT JOIN feedback f1 ON f1.prediction_id = s.shadow_of \
             LEFT JOIN feedback f2 ON p.client_key IS NOT NULL AND f2.client_key = p.client_key \
             WHERE s.model = {} AND s.ts_ms >= {} AND s.ts_ms < {} ORDER BY s.ts_ms, s.id",
            self.ph(1),
            self.ph(2),
            self.ph(3)
        );
        self.scored_rows(&sql, model, since_ms, until_ms).await
    }

    /// Runs a scoring query (`model`, `since`, `until` bound in order; the columns of
    /// [`Store::scored`]'s) and keeps the newest feedback of each prediction.
    async fn scored_rows(
        &self,
        sql: &str,
        model: &str,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<Scored>, sqlx::Error> {
        let rows = sqlx::query(sql).bind(model.to_string()).bind(since_ms).bind(until_ms).fetch_all(&self.pool).await?;
        let mut out: Vec<Scored> = Vec::new();
        let mut last: Option<(String, i64)> = None;
        for r in &rows {
            let id: String = r.try_get("id")?;
            // The newest feedback, by request id or by client key.
            let candidates = [
                (r.try_get::<Option<i64>, _>("by_id_ts")?, r.try_get::<Option<String>, _>("by_id")?),
                (r.try_get::<Option<i64>, _>("by_key_ts")?, r.try_get::<Option<String>, _>("by_key")?),
            ];
            // Feedback whose label count is not the prediction's row count (it came before its
            // prediction was logged, so it could not be refused) never replaces any.
            let rows_n = r.try_get::<i64, _>("rows_n")?;
            let newest = candidates
                .into_iter()
                .filter_map(|(ts, l)| Some((ts?, l?)))
                .filter(|(_, l)| labels_of(Some(l.clone())).is_some_and(|l| l.len() as i64 == rows_n))
                .max_by_key(|(ts, _)| *ts);
            if let Some((prev, prev_ts)) = &last
                && *prev == id
            {
                // Another feedback row for the same prediction: keep the newest.
                if let (Some((ts, labels)), Some(entry)) = (newest, out.last_mut())
                    && ts >= *prev_ts
                {
                    entry.truth = labels_of(Some(labels));
                    last = Some((id, ts));
                }
                continue;
            }
            let newest_ts = newest.as_ref().map_or(i64::MIN, |(ts, _)| *ts);
            out.push(Scored {
                ts_ms: r.try_get("ts_ms")?,
                version: r.try_get("version")?,
                latency_us: r.try_get("latency_us")?,
                ok: r.try_get::<String, _>("outcome")? == "success",
                predicted: labels_of(r.try_get("labels")?),
                truth: newest.and_then(|(_, l)| labels_of(Some(l))),
            });
            last = Some((id, newest_ts));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("postgres://kiln:s3cret@127.0.0.1:5432/db"), "postgres://kiln:***@127.0.0.1:5432/db");
        assert_eq!(redact("postgres://kiln@127.0.0.1/db"), "postgres://kiln@127.0.0.1/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
