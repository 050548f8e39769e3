-- Profiles a committed batch changed, rebuilt once by the end of the run. The queue commits
-- with the batch that filled it and is emptied with the versions it produced, so a crash
-- between the two loses no rebuild: the next run builds what is left.
CREATE TABLE profile_queue (
    profile_id TEXT PRIMARY KEY
) WITHOUT ROWID;

-- SKUs whose stock, supplier lead times, product or competing demand a committed batch changed,
-- with the order time (microseconds since the epoch) from which open orders on them are
-- affected (NULL: all). Resolved into queued profiles once, when the run builds them.
CREATE TABLE supply_queue (
    sku          TEXT PRIMARY KEY,
    changed_from INTEGER
) WITHOUT ROWID;
