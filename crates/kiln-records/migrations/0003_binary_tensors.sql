-- Tensors as a compact binary blob (format in kiln-records' capture.rs, docs/records.md): a
-- third of the JSON text's bytes, and nothing to format on the way in. Rows written before keep
-- their JSON in `inputs` / `outputs`; new rows leave those NULL.
-- Portable SQL: BYTEA is PostgreSQL's binary type; SQLite gives the name NUMERIC affinity,
-- which stores a BLOB value as it is.
ALTER TABLE predictions ADD COLUMN inputs_bin BYTEA;
ALTER TABLE predictions ADD COLUMN outputs_bin BYTEA;
-- Most requests carry no client key: index only those that do (`client_key = ?` implies
-- NOT NULL, so both databases use the partial index for every lookup and join).
DROP INDEX predictions_client_key;
CREATE INDEX predictions_client_key ON predictions (client_key) WHERE client_key IS NOT NULL;
