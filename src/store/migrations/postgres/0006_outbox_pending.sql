-- Delivery state lives apart from the event bodies: one narrow row per undelivered event,
-- claimed by a relay (`claimed_by` / `claimed_until`, as before) and deleted once the sink
-- confirmed the event. Claiming and marking 1 000 events rewrote 1 000 body-sized rows
-- twice; now they update and delete rows of a few dozen bytes, and `outbox` is only
-- inserted into. The fill factor leaves room for claim updates on the same page (HOT).
-- An event is delivered when it has no row here.

-- The partial index of undelivered rows had the new table's name.
DROP INDEX outbox_pending;

CREATE TABLE outbox_pending (
    seq           BIGINT PRIMARY KEY,
    claimed_by    TEXT,
    claimed_until TIMESTAMPTZ
) WITH (fillfactor = 50);

INSERT INTO outbox_pending (seq, claimed_by, claimed_until)
SELECT seq, claimed_by, claimed_until FROM outbox WHERE delivered_at IS NULL;

ALTER TABLE outbox DROP COLUMN delivered_at,
                   DROP COLUMN claimed_by,
                   DROP COLUMN claimed_until;
