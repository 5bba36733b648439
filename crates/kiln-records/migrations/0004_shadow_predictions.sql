-- A [rollout] shadow version's answers to logged requests (`shadow_of`: the prediction the caller
-- got), kept apart from the answers callers got, so that listings, quality, drift and replay never
-- mix them in; the rollout view scores them against the same feedback.
CREATE TABLE shadow_predictions (
    id          TEXT PRIMARY KEY,
    shadow_of   TEXT NOT NULL,
    model       TEXT NOT NULL,
    version     BIGINT NOT NULL,
    ts_ms       BIGINT NOT NULL,
    latency_us  BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    outputs_bin BYTEA,
    labels      TEXT
);
CREATE INDEX shadow_predictions_model_ts ON shadow_predictions (model, ts_ms);
CREATE INDEX shadow_predictions_ts ON shadow_predictions (ts_ms);
