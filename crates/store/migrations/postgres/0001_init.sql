-- Atelier's metadata on PostgreSQL: the same tables as migrations/sqlite (integers are BIGINT,
-- flags 0/1 as there, so that one set of queries reads both). Blobs live in the blob store;
-- rows hold their keys. Times are Unix seconds.

CREATE TABLE api_keys (
    id      TEXT PRIMARY KEY,            -- the public part of the key (`k…`)
    owner   TEXT NOT NULL,               -- the account the key acts for
    hash    TEXT NOT NULL,               -- argon2id PHC string of the secret part
    label   TEXT NOT NULL DEFAULT '',
    created BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE models (
    owner      TEXT NOT NULL,
    name       TEXT NOT NULL,
    visibility TEXT NOT NULL CHECK (visibility IN ('private', 'public')),
    blob       TEXT NOT NULL,            -- blob key of the .safetensors file
    card       TEXT NOT NULL,            -- the model card (JSON)
    size       BIGINT NOT NULL,
    job        TEXT,                     -- the training job that made it, if any
    created    BIGINT NOT NULL,
    PRIMARY KEY (owner, name)
);
CREATE INDEX models_public ON models (visibility, name);

CREATE TABLE datasets (
    id      TEXT PRIMARY KEY,
    owner   TEXT NOT NULL,
    name    TEXT NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('unpaired', 'paired', 'single')),
    count_a BIGINT NOT NULL DEFAULT 0,
    count_b BIGINT NOT NULL DEFAULT 0,
    bytes   BIGINT NOT NULL DEFAULT 0,
    skipped TEXT NOT NULL DEFAULT '[]',  -- JSON [{file, reason}]
    created BIGINT NOT NULL
);
CREATE INDEX datasets_owner ON datasets (owner, created);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    owner            TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('stylize', 'train')),
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    spec             TEXT NOT NULL,      -- the request (JSON)
    progress         TEXT NOT NULL DEFAULT '{}',
    results          TEXT NOT NULL DEFAULT '[]',  -- JSON [name]
    error            TEXT,
    model            TEXT,               -- training: the model it makes
    dataset          TEXT,               -- training: the dataset it reads
    attempts         BIGINT NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_until      BIGINT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    created          BIGINT NOT NULL,
    updated          BIGINT NOT NULL,
    finished         BIGINT
);
CREATE INDEX jobs_queue ON jobs (status, kind, created);
CREATE INDEX jobs_owner ON jobs (owner, created);
