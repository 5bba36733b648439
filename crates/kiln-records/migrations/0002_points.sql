-- The points of vector collections: the durable copy every kiln replica builds its in-memory
-- index from and follows. A delete is a row with deleted = 1 (a tombstone), so replicas that
-- follow the table see it; `seq` orders one collection's changes (one number per committed
-- batch, assigned under a lock, so it grows in commit order).
-- Portable SQL: the same file runs on SQLite and PostgreSQL.
CREATE TABLE points (
    collection  TEXT NOT NULL,
    id          TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    vector      TEXT,                  -- base64 of little-endian float32s; NULL for a tombstone
    payload     TEXT,                  -- JSON, or NULL
    deleted     BIGINT NOT NULL,       -- 1 for a tombstone
    PRIMARY KEY (collection, id)
);
CREATE INDEX points_seq ON points (collection, seq);
