-- Job kinds are an open set (the job handlers in atelier-jobs define them): the store keeps
-- any well-formed kind name. SQLite cannot drop a CHECK, so the table is rebuilt.
CREATE TABLE jobs_new (
    id               TEXT PRIMARY KEY,
    owner            TEXT NOT NULL,
    kind             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    spec             TEXT NOT NULL,      -- the request (JSON)
    progress         TEXT NOT NULL DEFAULT '{}',
    results          TEXT NOT NULL DEFAULT '[]',  -- JSON [name]
    error            TEXT,
    model            TEXT,               -- training: the model it makes
    dataset          TEXT,               -- training: the dataset it reads
    attempts         INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_until      INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created          INTEGER NOT NULL,
    updated          INTEGER NOT NULL,
    finished         INTEGER
);
INSERT INTO jobs_new SELECT id, owner, kind, status, spec, progress, results, error, model,
    dataset, attempts, lease_owner, lease_until, cancel_requested, created, updated, finished
    FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_queue ON jobs (status, kind, created);
CREATE INDEX jobs_owner ON jobs (owner, created);
