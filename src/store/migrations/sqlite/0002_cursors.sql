-- Incremental cursors of HTTP and SQL streams: the position after the last committed batch.
-- A cursor is written in the same transaction as the batch that ends its stream's run.
CREATE TABLE cursors (
    connector  TEXT NOT NULL,
    stream     TEXT NOT NULL,
    cursor     TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (connector, stream)
);
