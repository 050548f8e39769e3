-- Profiles a committed batch changed, rebuilt once by the end of the run. The queue commits
-- with the batch that filled it and is emptied with the versions it produced, so a crash
-- between the two loses no rebuild: the next run builds what is left.
CREATE TABLE profile_queue (
    profile_id UUID PRIMARY KEY
);
