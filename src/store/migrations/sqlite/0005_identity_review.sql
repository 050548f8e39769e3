-- Probabilistic identity resolution: possible matches waiting for a person, people's
-- decisions (which win over the model), records queued for re-resolution, and the match
-- model estimated from the data.

-- A pair is stored once, with (a) the smaller source ref.
CREATE TABLE possible_matches (
    id          INTEGER PRIMARY KEY,
    a_system    TEXT NOT NULL,
    a_stream    TEXT NOT NULL,
    a_source_id TEXT NOT NULL,
    b_system    TEXT NOT NULL,
    b_stream    TEXT NOT NULL,
    b_source_id TEXT NOT NULL,
    weight      REAL NOT NULL,
    -- The comparison level of each field, as JSON, so a reviewer sees why.
    detail      TEXT NOT NULL,
    -- pending | accepted | rejected
    status      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    decided_at  TEXT,
    UNIQUE (a_system, a_stream, a_source_id, b_system, b_stream, b_source_id)
);
CREATE INDEX possible_matches_by_status ON possible_matches (status, id);
CREATE INDEX possible_matches_by_b ON possible_matches (b_system, b_stream, b_source_id);

-- `link`: the two records are one customer; `unlink`: they never are.
CREATE TABLE identity_decisions (
    a_system    TEXT NOT NULL,
    a_stream    TEXT NOT NULL,
    a_source_id TEXT NOT NULL,
    b_system    TEXT NOT NULL,
    b_stream    TEXT NOT NULL,
    b_source_id TEXT NOT NULL,
    decision    TEXT NOT NULL,
    decided_at  TEXT NOT NULL,
    PRIMARY KEY (a_system, a_stream, a_source_id, b_system, b_stream, b_source_id)
);
CREATE INDEX identity_decisions_by_b ON identity_decisions (b_system, b_stream, b_source_id);

-- Customer records whose identity must be resolved again although their content did not
-- change (a decision was taken on them); the next run does it in its first batch.
CREATE TABLE relink_queue (
    system    TEXT NOT NULL,
    stream    TEXT NOT NULL,
    source_id TEXT NOT NULL,
    PRIMARY KEY (system, stream, source_id)
);

-- The match model (m and u per comparison level) estimated from the stored records.
CREATE TABLE match_model (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    body       TEXT NOT NULL,
    trained_at TEXT NOT NULL
);
