//! The log writer's side of the store: batched inserts, retention deletes and the size
//! measurement — for SQLite on its own rusqlite connection and thread, for PostgreSQL on a
//! one-connection pool.

use std::sync::Arc;

use sqlx::{AnyPool, Executor, Row};

use super::Store;
use crate::Record;

/// Why the log writer's insert, delete or size query failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the SQLite writer thread stopped")]
    Stopped,
}

/// PostgreSQL: rows per INSERT statement, a fixed size, so the statement is prepared once and
/// cached.
pub(super) const PER_STATEMENT: usize = 256;

const INSERT_COLUMNS: &str = "INSERT INTO predictions (id, client_key, model, version, protocol, ts_ms, latency_us, \
     outcome, error, rows_n, inputs_bin, outputs_bin, labels, truncated) VALUES ";

/// PostgreSQL's multi-row INSERT of `rows` rows.
pub(super) fn insert_sql(rows: usize) -> String {
    const COLUMNS: usize = 14;
    let mut sql = String::from(INSERT_COLUMNS);
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        let row: Vec<String> = (1..=COLUMNS).map(|c| format!("${}", i * COLUMNS + c)).collect();
        sql.push_str(&format!("({})", row.join(",")));
    }
    sql.push_str(" ON CONFLICT (id) DO NOTHING");
    sql
}

/// SQLite's single-row INSERT, prepared once on the writer's connection and run per row.
fn sqlite_insert_sql() -> String {
    format!("{INSERT_COLUMNS}(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) ON CONFLICT (id) DO NOTHING")
}

/// A shadow version's answer (`Record::shadow_of`), `?1`…`?9` (`$n` in PostgreSQL).
fn shadow_insert_sql(dollar: bool) -> String {
    let ph: Vec<String> = (1..=9).map(|n| if dollar { format!("${n}") } else { format!("?{n}") }).collect();
    format!(
        "INSERT INTO shadow_predictions (id, shadow_of, model, version, ts_ms, latency_us, outcome, outputs_bin, labels) \
         VALUES ({}) ON CONFLICT (id) DO NOTHING",
        ph.join(", ")
    )
}

/// The per-connection settings of a SQLite connection (the pool's and the writer's).
pub(super) const SQLITE_PRAGMAS: &[&str] = &[
    // A new file only (fixed once a table exists): rows of a few hundred bytes fill 8 KiB
    // pages ~98 %, 4 KiB ones ~92 %.
    "PRAGMA page_size = 8192",
    // WAL: readers never block the writer; a short busy timeout so a locked file shows up as a
    // retryable failure instead of a long stall.
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 1000",
    // Keep the indexes' pages in memory and read the file through mmap: page reads were
    // syscalls that cost more than the inserts.
    "PRAGMA cache_size = -65536",
    "PRAGMA mmap_size = 268435456",
    "PRAGMA wal_autocheckpoint = 2000", // pages: 16 MiB
    // Statement journals (multi-row statements) in memory, not a temporary file created and
    // deleted per statement.
    "PRAGMA temp_store = MEMORY",
];

/// The connection the log writer inserts, deletes and measures through.
#[derive(Clone)]
pub(super) enum Writes {
    /// SQLite: its own rusqlite connection on its own thread. Binding each row's values
    /// straight into a prepared statement costs a fraction of sqlx's driver, which converts
    /// every value twice (`Any` to SQLite arguments) and ships them to a worker thread.
    Sqlite(SqliteWriter),
    /// PostgreSQL: a one-connection pool.
    Pool(AnyPool),
}

type Job = Box<dyn FnOnce(&mut rusqlite::Connection) + Send>;

/// The thread that owns the SQLite writer's connection and runs its jobs in order (one
/// connection keeps SQLite's page cache of the indexes it appends to valid between
/// transactions). It ends when the last handle goes.
#[derive(Clone)]
pub(super) struct SqliteWriter(std::sync::mpsc::Sender<Job>);

impl SqliteWriter {
    pub(super) fn start(mut conn: rusqlite::Connection) -> std::io::Result<SqliteWriter> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new().name("kiln-records-sqlite".into()).spawn(move || {
            for job in queue {
                job(&mut conn);
            }
        })?;
        Ok(SqliteWriter(jobs))
    }

    /// Runs `work` on the connection and returns its answer.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, WriteError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.0
            .send(Box::new(move |conn| {
                let _ = done.send(work(conn));
            }))
            .map_err(|_| WriteError::Stopped)?;
        Ok(answer.await.map_err(|_| WriteError::Stopped)??)
    }
}

/// The SQLite log writer's connection to the (already migrated) file.
pub(super) fn open_sqlite_writer(path: &str) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    for pragma in SQLITE_PRAGMAS {
        // `journal_mode` answers with a row; the others with none.
        conn.query_row(pragma, [], |_| Ok(())).or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(()),
            e => Err(e),
        })?;
    }
    Ok(conn)
}

/// One batch in one transaction, through the cached single-row statement.
fn insert_sqlite(conn: &mut rusqlite::Connection, records: &[Arc<Record>]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut statement = tx.prepare_cached(&sqlite_insert_sql())?;
        let mut shadows = tx.prepare_cached(&shadow_insert_sql(false))?;
        for r in records {
            if let Some(of) = &r.shadow_of {
                shadows.execute(rusqlite::params![
                    r.id,
                    of,
                    r.model,
                    r.version,
                    r.ts_ms,
                    r.latency_us,
                    r.outcome,
                    r.outputs,
                    r.labels
                ])?;
                continue;
            }
            statement.execute(rusqlite::params![
                r.id,
                r.client_key,
                r.model,
                r.version,
                r.protocol,
                r.ts_ms,
                r.latency_us,
                r.outcome,
                r.error,
                r.rows,
                r.inputs,
                r.outputs,
                r.labels,
                i64::from(r.truncated),
            ])?;
        }
    }
    tx.commit()
}

impl Store {
    /// Inserts rows in one transaction; rows already there (a retry after a lost commit
    /// acknowledgement) are left as they are. SQLite: one prepared single-row statement run
    /// per row (~1 µs of CPU a row here: `cargo run --release -p kiln-records --example
    /// insert_rate`); PostgreSQL: values bound into cached 256-row statements.
    pub async fn insert(&self, records: Vec<Arc<Record>>) -> Result<(), WriteError> {
        match &self.writes {
            Writes::Sqlite(conn) => conn.run(move |conn| insert_sqlite(conn, &records)).await,
            Writes::Pool(pool) => {
                let mut tx = pool.begin().await?;
                let (shadows, records): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| r.shadow_of.is_some());
                // Shadow answers are a share of one model's traffic at most: a statement each.
                let shadow_sql = shadow_insert_sql(true);
                for r in &shadows {
                    let query = sqlx::query(&shadow_sql)
                        .bind(r.id.as_str())
                        .bind(r.shadow_of.as_deref())
                        .bind(r.model.as_str())
                        .bind(r.version)
                        .bind(r.ts_ms)
                        .bind(r.latency_us)
                        .bind(r.outcome.as_str())
                        .bind(r.outputs.as_deref())
                        .bind(r.labels.as_deref());
                    tx.execute(query).await?;
                }
                for chunk in records.chunks(PER_STATEMENT) {
                    // Full chunks reuse the statement built at connect time; only a batch's last,
                    // shorter chunk builds its own.
                    let sql = if chunk.len() == PER_STATEMENT {
                        std::borrow::Cow::Borrowed(&*self.full_insert)
                    } else {
                        std::borrow::Cow::Owned(insert_sql(chunk.len()))
                    };
                    let mut query = sqlx::query(&sql);
                    for r in chunk {
                        query = query
                            .bind(r.id.as_str())
                            .bind(r.client_key.as_deref())
                            .bind(r.model.as_str())
                            .bind(r.version)
                            .bind(r.protocol.as_str())
                            .bind(r.ts_ms)
                            .bind(r.latency_us)
                            .bind(r.outcome.as_str())
                            .bind(r.error.as_deref())
                            .bind(r.rows)
                            .bind(r.inputs.as_deref())
                            .bind(r.outputs.as_deref())
                            .bind(r.labels.as_deref())
                            .bind(i64::from(r.truncated));
                    }
                    tx.execute(query).await?;
                }
                Ok(tx.commit().await?)
            }
        }
    }

    /// Runs one retention statement (`a`, then `b` when given, bound in order); returns the
    /// rows it changed.
    async fn write(&self, sql: String, a: i64, b: Option<i64>) -> Result<u64, WriteError> {
        match &self.writes {
            Writes::Sqlite(conn) => {
                conn.run(move |conn| {
                    let mut statement = conn.prepare_cached(&sql)?;
                    let n = match b {
                        Some(b) => statement.execute([a, b])?,
                        None => statement.execute([a])?,
                    };
                    Ok(n as u64)
                })
                .await
            }
            Writes::Pool(pool) => {
                let mut query = sqlx::query(&sql).bind(a);
                if let Some(b) = b {
                    query = query.bind(b);
                }
                Ok(query.execute(pool).await?.rows_affected())
            }
        }
    }

    /// Deletes up to `limit` of the oldest predictions older than `cutoff_ms`; returns how many.
    pub async fn delete_older_than(&self, cutoff_ms: i64, limit: i64) -> Result<u64, WriteError> {
        let key = self.row_key();
        let sql = format!(
            "DELETE FROM predictions WHERE {key} IN (SELECT {key} FROM predictions WHERE ts_ms < {} ORDER BY ts_ms LIMIT {})",
            self.ph(1),
            self.ph(2)
        );
        let done = self.write(sql, cutoff_ms, Some(limit)).await?;
        let sql = format!(
            "DELETE FROM feedback WHERE id IN (SELECT id FROM feedback WHERE ts_ms < {} ORDER BY ts_ms LIMIT {})",
            self.ph(1),
            self.ph(2)
        );
        self.write(sql, cutoff_ms, Some(limit)).await?;
        let sql = format!(
            "DELETE FROM shadow_predictions WHERE id IN (SELECT id FROM shadow_predictions WHERE ts_ms < {} ORDER BY ts_ms LIMIT {})",
            self.ph(1),
            self.ph(2)
        );
        self.write(sql, cutoff_ms, Some(limit)).await?;
        Ok(done)
    }

    /// Deletes the `limit` oldest predictions; returns how many.
    pub async fn delete_oldest(&self, limit: i64) -> Result<u64, WriteError> {
        let key = self.row_key();
        let sql = format!(
            "DELETE FROM predictions WHERE {key} IN (SELECT {key} FROM predictions ORDER BY ts_ms LIMIT {})",
            self.ph(1)
        );
        let done = self.write(sql, limit, None).await?;
        // Shadow answers go with the oldest predictions they answered beside.
        let sql = format!(
            "DELETE FROM shadow_predictions WHERE id IN (SELECT id FROM shadow_predictions \
             WHERE ts_ms < (SELECT MIN(ts_ms) FROM predictions) ORDER BY ts_ms LIMIT {})",
            self.ph(1)
        );
        self.write(sql, limit, None).await?;
        Ok(done)
    }

    /// Bytes the log's data takes now, and (PostgreSQL) about how many predictions it holds.
    /// SQLite: the pages in use, exact (freed pages are reused, so the file stops growing at
    /// its high-water mark); no row count. PostgreSQL: the tables' size (indexes and TOAST
    /// included) times the share of live rows, and the live rows, as the statistics collector
    /// last saw them (it lags by about a second; deleted rows' space returns after autovacuum).
    pub async fn usage(&self) -> Result<(i64, Option<i64>), WriteError> {
        match &self.writes {
            Writes::Sqlite(conn) => {
                let sql = "SELECT ((SELECT page_count FROM pragma_page_count()) \
                           - (SELECT freelist_count FROM pragma_freelist_count())) \
                           * (SELECT page_size FROM pragma_page_size())";
                let used = conn.run(move |conn| conn.prepare_cached(sql)?.query_row([], |r| r.get(0))).await?;
                Ok((used, None))
            }
            Writes::Pool(pool) => {
                let sql = "SELECT CAST(COALESCE(SUM(pg_total_relation_size(relid) * (n_live_tup + 1.0) \
                           / (n_live_tup + n_dead_tup + 1.0)), 0) AS BIGINT) AS used, \
                           CAST(COALESCE(SUM(CASE WHEN relname = 'predictions' THEN n_live_tup END), 0) AS BIGINT) AS live \
                           FROM pg_stat_user_tables WHERE relname IN ('predictions', 'feedback', 'shadow_predictions')";
                let row = sqlx::query(sql).fetch_one(pool).await?;
                Ok((row.try_get::<i64, _>("used")?, Some(row.try_get::<i64, _>("live")?)))
            }
        }
    }

    /// [`Store::usage`]'s bytes.
    pub async fn used_bytes(&self) -> Result<i64, WriteError> {
        Ok(self.usage().await?.0)
    }
}
