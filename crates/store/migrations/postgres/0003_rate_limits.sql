-- Per-owner token buckets shared by every API node (a single SQLite node keeps its buckets
-- in memory).
CREATE TABLE rate_limits (
    owner      TEXT PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    updated_ms BIGINT NOT NULL,
    ok         INTEGER NOT NULL
);
