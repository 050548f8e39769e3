-- The initial schema of the embedded store. Times are RFC 3339 TEXT (UTC), uuids TEXT.
-- Run ids are plain integers without a foreign key: records and quarantine rows outlive the
-- job_runs history an operator may prune.

-- Canonical records keyed by their source ref; body is the Record's serde JSON.
CREATE TABLE records (
    system           TEXT    NOT NULL,
    stream           TEXT    NOT NULL,
    source_id        TEXT    NOT NULL,
    entity           TEXT    NOT NULL,
    content_hash     TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    -- Orders only: the customer's source id in the same system.
    customer_id      TEXT,
    first_run        INTEGER NOT NULL,
    last_changed_run INTEGER NOT NULL,
    updated_at       TEXT    NOT NULL,
    PRIMARY KEY (system, stream, source_id)
);
CREATE INDEX records_by_customer ON records (entity, system, customer_id);
-- Customer lookups by (system, source_id) span every stream of a system.
CREATE INDEX records_by_source_id ON records (system, source_id);

-- Files read completely, so a file is never ingested twice.
CREATE TABLE ingested_files (
    connector   TEXT    NOT NULL,
    stream      TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    hash        TEXT    NOT NULL,
    ingested_at TEXT    NOT NULL,
    UNIQUE (connector, stream, path, size, hash)
);

CREATE TABLE quarantine (
    id         INTEGER PRIMARY KEY,
    run_id     INTEGER,
    connector  TEXT NOT NULL,
    stream     TEXT NOT NULL,
    source_ref TEXT NOT NULL,
    raw        TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- Strong match keys of customer records (`email:a@b.c`, `phone:+49...`).
CREATE TABLE match_keys (
    key       TEXT NOT NULL,
    system    TEXT NOT NULL,
    stream    TEXT NOT NULL,
    source_id TEXT NOT NULL,
    UNIQUE (key, system, stream, source_id)
);
CREATE INDEX match_keys_by_key ON match_keys (key);
CREATE INDEX match_keys_by_record ON match_keys (system, stream, source_id);

-- The identity link of each customer record. No foreign key to profiles: the resolver
-- links records before the profile builder writes the profile's first version.
CREATE TABLE links (
    system     TEXT NOT NULL,
    stream     TEXT NOT NULL,
    source_id  TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    PRIMARY KEY (system, stream, source_id)
);
CREATE INDEX links_by_profile ON links (profile_id);

-- latest_version and latest_hash are NULL for a profile that was retired before any
-- version of it was written here.
CREATE TABLE profiles (
    profile_id     TEXT PRIMARY KEY,
    created_at     TEXT NOT NULL,
    retired_into   TEXT,
    latest_version INTEGER,
    latest_hash    TEXT
);

CREATE TABLE profile_versions (
    profile_id   TEXT    NOT NULL REFERENCES profiles (profile_id),
    version      INTEGER NOT NULL,
    content_hash TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    PRIMARY KEY (profile_id, version)
);

-- Feed events waiting for (or past) delivery; seq is the delivery order.
CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    event_type   TEXT NOT NULL,
    body         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    delivered_at TEXT
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE delivered_at IS NULL;

CREATE TABLE job_runs (
    id          INTEGER PRIMARY KEY,
    job         TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    status      TEXT NOT NULL,
    summary     TEXT
);
