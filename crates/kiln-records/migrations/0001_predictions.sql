-- Every prediction kiln served (one row per request) and the feedback that arrived for it.
-- Portable SQL: the same file runs on SQLite and PostgreSQL.
CREATE TABLE predictions (
    id          TEXT PRIMARY KEY,      -- kiln's request id (returned in x-kiln-request-id)
    client_key  TEXT,                  -- the request's own v2 `id`, if it sent one
    model       TEXT NOT NULL,
    version     BIGINT NOT NULL,
    protocol    TEXT NOT NULL,         -- rest | grpc | in-process
    ts_ms       BIGINT NOT NULL,       -- when the request arrived, ms since the Unix epoch
    latency_us  BIGINT NOT NULL,
    outcome     TEXT NOT NULL,         -- success | error
    error       TEXT,
    rows_n      BIGINT NOT NULL,       -- rows in the request (first dimension)
    inputs      TEXT,                  -- JSON {name: {datatype, shape, data}}, capped
    outputs     TEXT,                  -- JSON, same shape, capped
    labels      TEXT,                  -- JSON array: the predicted label per row (quality)
    truncated   BIGINT NOT NULL        -- 1 when inputs/outputs were cut at the size cap
);
CREATE INDEX predictions_model_ts ON predictions (model, ts_ms);
CREATE INDEX predictions_ts ON predictions (ts_ms);
CREATE INDEX predictions_client_key ON predictions (client_key);

CREATE TABLE feedback (
    id             TEXT PRIMARY KEY,
    prediction_id  TEXT,               -- kiln's request id, when the caller had it
    client_key     TEXT,               -- or the request's own id
    ts_ms          BIGINT NOT NULL,
    labels         TEXT NOT NULL       -- JSON array: the true label per row
);
CREATE INDEX feedback_prediction ON feedback (prediction_id);
CREATE INDEX feedback_client_key ON feedback (client_key);
