//! Collections and their durable points: at start each collection loads every committed change
//! from the points store (then it is ready), and a follower applies what any replica commits
//! later, every `follow` interval.

use std::sync::Arc;
use std::time::Duration;

use kiln_collection::Collection;
use kiln_engine::Engine;
use kiln_records::points::{Change, Cursor, PointStore};

/// Changes read per query.
const PAGE: usize = 2048;

/// Applies every change of `collection` committed after what it has applied; returns how many.
/// Pages follow a `(seq, id)` cursor: one upsert's points share a `seq`, and a page may end
/// inside it.
pub async fn catch_up(store: &PointStore, collection: &Arc<Collection>) -> Result<usize, String> {
    let mut applied = 0;
    let mut cursor = Cursor::after_seq(collection.info().applied_seq);
    loop {
        let changes = store.changes(&collection.name, &cursor, PAGE).await.map_err(|e| e.to_string())?;
        let Some(last) = changes.last() else {
            return Ok(applied);
        };
        let next = Cursor::after(last);
        // A full page may have stopped inside the batch of its last `seq`: only the batches
        // before it are known whole, and only they may move the applied mark (a mark inside a
        // batch would skip its rest after an error or on the next catch-up).
        let whole = if changes.len() < PAGE { next.seq } else { next.seq - 1 };
        applied += changes.len();
        let target = Arc::clone(collection);
        tokio::task::spawn_blocking(move || apply(&target, changes, whole))
            .await
            .map_err(|_| "applying changes panicked".to_string())??;
        cursor = next;
    }
}

/// One page of changes, in order, each under its own sequence number (a point already held
/// from that change — this replica's own write, or a page read again — is left alone); then
/// every batch up to `whole` counts as applied.
fn apply(collection: &Collection, changes: Vec<Change>, whole: u64) -> Result<(), String> {
    for change in changes {
        match change {
            Change::Upsert { seq, point } => {
                if point.vector.len() != collection.config.dim {
                    tracing::error!(collection = %collection.name, id = point.id, "stored point has the wrong dim; skipped");
                    continue;
                }
                let payload = point.payload.and_then(|p| serde_json::from_str(&p).ok()).map(Arc::new);
                collection
                    .apply_prepared(vec![(point.id, point.vector, payload)], seq, false)
                    .map_err(|e| e.to_string())?;
            }
            Change::Delete { seq, id } => {
                collection.delete(&[id], seq, false).map_err(|e| e.to_string())?;
            }
        }
    }
    collection.delete(&[], whole, true).map_err(|e| e.to_string())?;
    Ok(())
}

/// Brings one collection from built (its folder's points indexed) to ready: it applies every
/// change the store holds for it, then answers searches; without a store it is ready at once.
/// The one place a collection becomes ready — at start ([`load_all`]) and on every reload (the
/// engine's hook, [`install`]). A catch-up that fails leaves it not ready (searches answer 503,
/// `ready` says why) until the follower's next pass succeeds.
pub async fn bring_up(store: Option<&PointStore>, collection: &Arc<Collection>) {
    let Some(store) = store else {
        collection.set_ready();
        return;
    };
    match catch_up(store, collection).await {
        Ok(n) => {
            tracing::info!(collection = %collection.name, changes = n, points = collection.info().count, "collection loaded from the points store");
            collection.set_ready();
        }
        Err(e) => tracing::error!(collection = %collection.name, "loading points failed: {e}"),
    }
}

/// Brings up the collections built before the server (at start), waiting for each.
pub async fn load_all(store: Option<&PointStore>, engine: &Engine) {
    for collection in engine.collections().iter().filter(|c| !c.is_ready()) {
        bring_up(store, collection).await;
    }
}

/// Makes [`bring_up`] run for every collection the engine builds from now on (reloads). The
/// engine builds on blocking threads and waits here, so a reloaded collection replaces the old
/// one only once it holds every stored point.
pub fn install(store: Option<PointStore>, engine: &Engine) {
    let runtime = tokio::runtime::Handle::current();
    engine.on_new_collection(Arc::new(move |collection| {
        let store = store.clone();
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            bring_up(store.as_ref(), &collection).await;
            let _ = done.send(());
        });
        let _ = wait.recv();
    }));
}

/// Follows the store: every `interval`, each collection applies what was committed since.
pub fn spawn_follower(store: PointStore, engine: Engine, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            for collection in engine.collections() {
                match catch_up(&store, &collection).await {
                    Ok(_) if !collection.is_ready() => collection.set_ready(),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(collection = %collection.name, "following the points store: {e}"),
                }
            }
        }
    })
}
