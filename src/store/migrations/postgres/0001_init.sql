-- The PostgreSQL schema: the same tables as the SQLite store (see migrations/sqlite), in
-- native types (uuid, timestamptz, bigint identities), plus the replica coordination:
-- outbox claims and job leases. Text that is ordered or compared uses COLLATE "C" so that
-- rows sort byte-wise, exactly as in SQLite, whatever the database's locale.
-- Quarantined raw payloads and reasons are bytea: hostile input may hold NUL, which text
-- refuses.

CREATE TABLE records (
    system           TEXT COLLATE "C" NOT NULL,
    stream           TEXT COLLATE "C" NOT NULL,
    source_id        TEXT COLLATE "C" NOT NULL,
    entity           TEXT COLLATE "C" NOT NULL,
    content_hash     TEXT        NOT NULL,
    body             TEXT        NOT NULL,
    customer_id      TEXT COLLATE "C",
    order_id         TEXT COLLATE "C",
    first_run        BIGINT      NOT NULL,
    last_changed_run BIGINT      NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (system, stream, source_id)
);
CREATE INDEX records_by_customer ON records (entity, system, customer_id);
CREATE INDEX records_by_source_id ON records (system, source_id);
CREATE INDEX records_by_order ON records (entity, system, order_id) WHERE order_id IS NOT NULL;

CREATE TABLE ingested_files (
    connector   TEXT COLLATE "C" NOT NULL,
    stream      TEXT COLLATE "C" NOT NULL,
    path        TEXT COLLATE "C" NOT NULL,
    size        BIGINT      NOT NULL,
    hash        TEXT COLLATE "C" NOT NULL,
    ingested_at TIMESTAMPTZ NOT NULL,
    UNIQUE (connector, stream, path, size, hash)
);

CREATE TABLE quarantine (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id     BIGINT,
    connector  TEXT        NOT NULL,
    stream     TEXT        NOT NULL,
    source_ref BYTEA       NOT NULL,
    raw        BYTEA       NOT NULL,
    reason     BYTEA       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE match_keys (
    key       TEXT COLLATE "C" NOT NULL,
    system    TEXT COLLATE "C" NOT NULL,
    stream    TEXT COLLATE "C" NOT NULL,
    source_id TEXT COLLATE "C" NOT NULL,
    UNIQUE (key, system, stream, source_id)
);
CREATE INDEX match_keys_by_record ON match_keys (system, stream, source_id);

CREATE TABLE links (
    system     TEXT COLLATE "C" NOT NULL,
    stream     TEXT COLLATE "C" NOT NULL,
    source_id  TEXT COLLATE "C" NOT NULL,
    profile_id UUID NOT NULL,
    PRIMARY KEY (system, stream, source_id)
);
CREATE INDEX links_by_profile ON links (profile_id);

CREATE TABLE profiles (
    profile_id     UUID PRIMARY KEY,
    created_at     TIMESTAMPTZ NOT NULL,
    retired_into   UUID,
    latest_version BIGINT,
    latest_hash    TEXT
);

CREATE TABLE profile_versions (
    profile_id   UUID        NOT NULL REFERENCES profiles (profile_id),
    version      BIGINT      NOT NULL,
    content_hash TEXT        NOT NULL,
    body         TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (profile_id, version)
);

-- claimed_by / claimed_until: the relay (one per store handle) delivering the row right now;
-- other relays skip it until the claim expires.
CREATE TABLE outbox (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      TEXT        NOT NULL UNIQUE,
    event_type    TEXT        NOT NULL,
    body          TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    delivered_at  TIMESTAMPTZ,
    claimed_by    TEXT,
    claimed_until TIMESTAMPTZ
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE delivered_at IS NULL;

CREATE TABLE job_runs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job         TEXT COLLATE "C" NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    status      TEXT        NOT NULL,
    summary     TEXT
);
CREATE INDEX job_runs_by_job ON job_runs (job, id);

-- One row per scheduled job: who runs it now (until expires_at, renewed while running) and
-- the latest fire time that was taken, so each fire time runs once across replicas.
CREATE TABLE job_leases (
    job        TEXT COLLATE "C" PRIMARY KEY,
    holder     TEXT,
    expires_at TIMESTAMPTZ,
    last_fire  TIMESTAMPTZ
);

CREATE TABLE cursors (
    connector  TEXT COLLATE "C" NOT NULL,
    stream     TEXT COLLATE "C" NOT NULL,
    cursor     TEXT        NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (connector, stream)
);

CREATE TABLE possible_matches (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    a_system    TEXT COLLATE "C" NOT NULL,
    a_stream    TEXT COLLATE "C" NOT NULL,
    a_source_id TEXT COLLATE "C" NOT NULL,
    b_system    TEXT COLLATE "C" NOT NULL,
    b_stream    TEXT COLLATE "C" NOT NULL,
    b_source_id TEXT COLLATE "C" NOT NULL,
    weight      DOUBLE PRECISION NOT NULL,
    detail      TEXT        NOT NULL,
    status      TEXT COLLATE "C" NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    decided_at  TIMESTAMPTZ,
    UNIQUE (a_system, a_stream, a_source_id, b_system, b_stream, b_source_id)
);
CREATE INDEX possible_matches_by_status ON possible_matches (status, id);
CREATE INDEX possible_matches_by_b ON possible_matches (b_system, b_stream, b_source_id);

CREATE TABLE identity_decisions (
    a_system    TEXT COLLATE "C" NOT NULL,
    a_stream    TEXT COLLATE "C" NOT NULL,
    a_source_id TEXT COLLATE "C" NOT NULL,
    b_system    TEXT COLLATE "C" NOT NULL,
    b_stream    TEXT COLLATE "C" NOT NULL,
    b_source_id TEXT COLLATE "C" NOT NULL,
    decision    TEXT        NOT NULL,
    decided_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (a_system, a_stream, a_source_id, b_system, b_stream, b_source_id)
);
CREATE INDEX identity_decisions_by_b ON identity_decisions (b_system, b_stream, b_source_id);

CREATE TABLE relink_queue (
    system    TEXT COLLATE "C" NOT NULL,
    stream    TEXT COLLATE "C" NOT NULL,
    source_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (system, stream, source_id)
);

CREATE TABLE match_model (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    body       TEXT        NOT NULL,
    trained_at TIMESTAMPTZ NOT NULL
);
