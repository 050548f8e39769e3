-- Match keys move into one B-tree ordered by key, instead of a rowid table with three indexes
-- (the unique constraint, `match_keys_by_key` and `match_keys_by_record`). A key was written
-- into two B-trees in random key order, and at a million records those random page writes
-- were most of a batch's store time. Lookups by key now walk the primary key; lookups by
-- record use `match_keys_by_record`, whose entries carry the key.
CREATE TABLE match_keys_by_key_order (
    key       TEXT NOT NULL,
    system    TEXT NOT NULL,
    stream    TEXT NOT NULL,
    source_id TEXT NOT NULL,
    PRIMARY KEY (key, system, stream, source_id)
) WITHOUT ROWID;

INSERT INTO match_keys_by_key_order (key, system, stream, source_id)
SELECT key, system, stream, source_id FROM match_keys ORDER BY key, system, stream, source_id;

DROP TABLE match_keys;
ALTER TABLE match_keys_by_key_order RENAME TO match_keys;
CREATE INDEX match_keys_by_record ON match_keys (system, stream, source_id);
