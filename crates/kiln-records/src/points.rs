//! The durable side of vector collections: every point upserted or deleted through the API,
//! in the same database as the prediction log (SQLite beside the repository, or PostgreSQL
//! shared by replicas). A replica loads a collection's rows at start and then follows
//! [`PointStore::changes`] — rows whose `seq` is above what it has applied.
//!
//! Durability: a batch is acknowledged after its transaction commits. SQLite runs in WAL mode
//! with `synchronous = NORMAL`: a commit survives the process being killed (`kill -9`), not
//! the machine losing power; PostgreSQL's commit is its own.

use base64::Engine as _;
use sqlx::Row;

use crate::RecordsError;
use crate::store::{Dialect, Store};

/// Rows per INSERT statement.
const PER_STATEMENT: usize = 32;

/// One point as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPoint {
    pub id: String,
    pub vector: Vec<f32>,
    /// JSON text.
    pub payload: Option<String>,
}

/// One committed change, in `seq` order.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Upsert { seq: u64, point: StoredPoint },
    Delete { seq: u64, id: String },
}

impl Change {
    pub fn seq(&self) -> u64 {
        match self {
            Change::Upsert { seq, .. } | Change::Delete { seq, .. } => *seq,
        }
    }
}

/// Where a reader of [`PointStore::changes`] stands: after every change up to `seq`, or — when
/// `id` is set — after the change of `seq` to point `id` (a page ended inside that batch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub seq: u64,
    pub id: Option<String>,
}

impl Cursor {
    /// After every change up to and including `seq`.
    pub fn after_seq(seq: u64) -> Cursor {
        Cursor { seq, id: None }
    }

    /// The position after the last change of a page.
    pub fn after(change: &Change) -> Cursor {
        let (seq, id) = match change {
            Change::Upsert { seq, point } => (*seq, &point.id),
            Change::Delete { seq, id } => (*seq, id),
        };
        Cursor { seq, id: Some(id.clone()) }
    }
}

/// The points table.
#[derive(Clone)]
pub struct PointStore {
    store: Store,
    /// One writer at a time in this process (SQLite has one anyway; PostgreSQL writers in
    /// other processes are ordered by an advisory lock).
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

fn encode(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode(text: &str) -> Option<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

impl PointStore {
    /// Opens (and migrates) the database at `url`: `sqlite:PATH` or `postgres://…`.
    pub async fn connect(url: &str) -> Result<PointStore, RecordsError> {
        let store = Store::connect(url).await?;
        Ok(PointStore { store, writer: std::sync::Arc::new(tokio::sync::Mutex::new(())) })
    }

    /// The URL without a password, for logs.
    pub fn display(&self) -> &str {
        &self.store.display
    }

    fn upsert_sql(&self, rows: usize) -> String {
        let mut sql = String::from("INSERT INTO points (collection, id, seq, vector, payload, deleted) VALUES ");
        for r in 0..rows {
            if r > 0 {
                sql.push(',');
            }
            let cells: Vec<String> = (1..=6)
                .map(|c| match self.store.dialect() {
                    Dialect::Sqlite => "?".to_string(),
                    Dialect::Postgres => format!("${}", r * 6 + c),
                })
                .collect();
            sql.push_str(&format!("({})", cells.join(",")));
        }
        sql.push_str(
            " ON CONFLICT (collection, id) DO UPDATE SET seq = excluded.seq, vector = excluded.vector, \
             payload = excluded.payload, deleted = excluded.deleted",
        );
        sql
    }

    /// Writes rows (upserts, or tombstones when `vector` is None) as one transaction under the
    /// collection's next sequence number, which it returns once committed.
    async fn write(
        &self,
        collection: &str,
        rows: Vec<(String, Option<String>, Option<String>)>,
    ) -> Result<u64, sqlx::Error> {
        let _one_writer = self.writer.lock().await;
        let mut tx = self.store.pool().begin().await?;
        let (lock, max) = match self.store.dialect() {
            Dialect::Postgres => (
                Some("SELECT pg_advisory_xact_lock(hashtext($1))::TEXT"),
                "SELECT COALESCE(MAX(seq), 0) FROM points WHERE collection = $1",
            ),
            Dialect::Sqlite => (None, "SELECT COALESCE(MAX(seq), 0) FROM points WHERE collection = ?"),
        };
        if let Some(lock) = lock {
            sqlx::query(lock).bind(collection).fetch_one(&mut *tx).await?;
        }
        let last: i64 = sqlx::query(max).bind(collection).fetch_one(&mut *tx).await?.try_get(0)?;
        let seq = last + 1;
        for chunk in rows.chunks(PER_STATEMENT) {
            let sql = self.upsert_sql(chunk.len());
            let mut query = sqlx::query(&sql);
            for (id, vector, payload) in chunk {
                let deleted = i64::from(vector.is_none());
                query = query
                    .bind(collection)
                    .bind(id.as_str())
                    .bind(seq)
                    .bind(vector.clone())
                    .bind(payload.clone())
                    .bind(deleted);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(seq as u64)
    }

    /// Upserts points; returns the batch's sequence number after it committed.
    pub async fn upsert(&self, collection: &str, points: &[StoredPoint]) -> Result<u64, sqlx::Error> {
        let rows = points.iter().map(|p| (p.id.clone(), Some(encode(&p.vector)), p.payload.clone())).collect();
        self.write(collection, rows).await
    }

    /// Deletes points by id (a tombstone each, also for ids only the folder's points file
    /// holds); returns the batch's sequence number.
    pub async fn delete(&self, collection: &str, ids: &[String]) -> Result<u64, sqlx::Error> {
        let rows = ids.iter().map(|id| (id.clone(), None, None)).collect();
        self.write(collection, rows).await
    }

    /// Up to `limit` changes of a collection after `after`, in `(seq, id)` order. One upsert
    /// shares one `seq` across all its points, so a page can end inside a batch: the next page
    /// starts after the last `(seq, id)` read, never after the last `seq` (that skipped the rest
    /// of the batch).
    pub async fn changes(&self, collection: &str, after: &Cursor, limit: usize) -> Result<Vec<Change>, sqlx::Error> {
        let sql = match self.store.dialect() {
            Dialect::Sqlite => {
                "SELECT id, seq, vector, payload, deleted FROM points WHERE collection = ? \
                 AND (seq > ? OR (seq = ? AND id > ?)) ORDER BY seq, id LIMIT ?"
            }
            Dialect::Postgres => {
                "SELECT id, seq, vector, payload, deleted FROM points WHERE collection = $1 \
                 AND (seq > $2 OR (seq = $3 AND id > $4)) ORDER BY seq, id LIMIT $5"
            }
        };
        // Without an id, every row of `after.seq` has been read: `seq = after.seq AND id > NULL`
        // matches nothing.
        let rows = sqlx::query(sql)
            .bind(collection)
            .bind(after.seq as i64)
            .bind(after.seq as i64)
            .bind(after.id.as_deref())
            .bind(limit as i64)
            .fetch_all(self.store.pool())
            .await?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0)?;
            let seq = row.try_get::<i64, _>(1)? as u64;
            let deleted: i64 = row.try_get(4)?;
            let vector: Option<String> = row.try_get(2)?;
            match (deleted, vector.as_deref().and_then(decode)) {
                (0, Some(vector)) => {
                    changes.push(Change::Upsert { seq, point: StoredPoint { id, vector, payload: row.try_get(3)? } });
                }
                (0, None) => {
                    tracing::error!(collection, id, "points row with an unreadable vector skipped");
                }
                _ => changes.push(Change::Delete { seq, id }),
            }
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn vectors_round_trip() {
        let v = vec![0.0, -1.5, f32::MIN_POSITIVE, 3.25e7];
        assert_eq!(super::decode(&super::encode(&v)), Some(v));
        assert_eq!(super::decode("AAA"), None);
    }
}
