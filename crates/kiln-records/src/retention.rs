//! The writer's retention: the rows the policy ([`Retention`]) no longer keeps — by age and,
//! past the size cap, the oldest — deleted a bounded amount at a time between inserts.

use std::time::{Duration, Instant};

use metrics::{counter, gauge};

use crate::store::WriteError;
use crate::{Dialect, Retention, Store, now_ms};

/// Rows one retention statement deletes: small, so inserts never wait long behind it.
const RETENTION_BATCH: i64 = 2000;
/// Retention statements per writer pass at most; the next pass goes on where this one left.
const RETENTION_BATCHES: usize = 4;

/// The writer's retention state: when the limits are next checked.
pub(crate) struct Retainer {
    policy: Retention,
    next_age_check: Instant,
    /// PostgreSQL: when the size is next measured.
    next_size_check: Instant,
    /// SQLite: the size last measured, when, and about how much was written since.
    measured: Option<(i64, Instant, i64)>,
}

impl Retainer {
    pub(crate) fn new(policy: Retention) -> Self {
        Retainer { policy, next_age_check: Instant::now(), next_size_check: Instant::now(), measured: None }
    }

    fn deleted(reason: &'static str, rows: u64) {
        if rows > 0 {
            counter!("kiln_records_retention_deleted_total", "reason" => reason).increment(rows);
        }
    }

    /// Deletes what the policy no longer keeps — with room for `incoming` more bytes — a
    /// bounded amount per call. Failures are logged and retried on the next pass; they never
    /// touch the rows waiting to be written.
    pub(crate) async fn enforce(&mut self, store: &Store, incoming: u64) {
        if let Err(e) = self.enforce_inner(store, i64::try_from(incoming).unwrap_or(i64::MAX)).await {
            tracing::warn!(database = %store.display, error = %e, "prediction log retention failed; retrying later");
        }
    }

    async fn enforce_inner(&mut self, store: &Store, incoming: i64) -> Result<(), WriteError> {
        if let Some(age) = self.policy.max_age
            && Instant::now() >= self.next_age_check
        {
            let cutoff = now_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
            let mut drained = false;
            for _ in 0..RETENTION_BATCHES {
                let n = store.delete_older_than(cutoff, RETENTION_BATCH).await?;
                Self::deleted("age", n);
                if n < RETENTION_BATCH as u64 {
                    drained = true;
                    break;
                }
            }
            // Once caught up, once a second is enough; while behind, every pass.
            if drained {
                self.next_age_check = Instant::now() + Duration::from_secs(1);
            }
        }
        if let Some(cap) = self.policy.max_bytes {
            let cap = i64::try_from(cap).unwrap_or(i64::MAX);
            // Trim at the high mark down to the low one. SQLite is measured exactly just before
            // each insert: 98 % down to 95 %. PostgreSQL's figures lag by a second of batches
            // written meanwhile: 95 % down to 85 %.
            let (high, low) = match store.dialect() {
                Dialect::Sqlite => (cap / 50 * 49, cap / 20 * 19),
                Dialect::Postgres => (cap / 20 * 19, cap / 20 * 17),
            };
            match store.dialect() {
                // Exact and cheap: measure after every delete until under the low mark.
                Dialect::Sqlite => {
                    // Between measurements, count what was written (twice the rows' text: B-tree
                    // pages are never full); measure only when that estimate nears the cap, or
                    // every few seconds.
                    let estimate = self.measured.map(|(used, at, since)| (used.saturating_add(since), at));
                    if let Some((guess, at)) = estimate
                        && guess.saturating_add(2 * incoming) <= low
                        && at.elapsed() < Duration::from_secs(5)
                    {
                        if let Some((_, _, since)) = &mut self.measured {
                            *since = since.saturating_add(2 * incoming);
                        }
                        return Ok(());
                    }
                    let mut used = store.used_bytes().await?;
                    if used.saturating_add(incoming) > high {
                        for _ in 0..RETENTION_BATCHES {
                            let n = store.delete_oldest(RETENTION_BATCH).await?;
                            Self::deleted("size", n);
                            used = store.used_bytes().await?;
                            if n == 0 || used.saturating_add(incoming) <= low {
                                break;
                            }
                        }
                    }
                    self.measured = Some((used, Instant::now(), 2 * incoming));
                    gauge!("kiln_records_used_bytes").set(used as f64);
                }
                // The statistics lag: once a second, delete the estimated excess in rows (at the
                // average row size), never re-measuring stale figures in between.
                Dialect::Postgres if Instant::now() >= self.next_size_check => {
                    self.next_size_check = Instant::now() + Duration::from_secs(1);
                    let (used, live) = store.usage().await?;
                    let live = live.unwrap_or(0);
                    if used > high && live > 0 {
                        let per_row = (used / live).max(1);
                        let excess = ((used - low) / per_row + 1).clamp(1, 50_000).min(live);
                        let n = store.delete_oldest(excess).await?;
                        Self::deleted("size", n);
                    }
                    gauge!("kiln_records_used_bytes").set(used as f64);
                }
                Dialect::Postgres => {}
            }
        }
        Ok(())
    }
}
