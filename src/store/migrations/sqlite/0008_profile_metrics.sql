-- The segmentation figures of each profile's latest version, beside its profile row, so
-- re-segmenting the customer base after every run reads this narrow column instead of
-- parsing every latest profile body: `[order_count, lifetime value (decimal text), first
-- order, last order (RFC 3339), segment]`. NULL while the profile has no version.
ALTER TABLE profiles ADD COLUMN metrics TEXT;

UPDATE profiles SET metrics = (
    SELECT json_array(
               json_extract(v.body, '$.metrics.order_count'),
               json_extract(v.body, '$.metrics.lifetime_value.amount'),
               json_extract(v.body, '$.metrics.first_order_at'),
               json_extract(v.body, '$.metrics.last_order_at'),
               json(json_extract(v.body, '$.segment')))
    FROM profile_versions v
    WHERE v.profile_id = profiles.profile_id AND v.version = profiles.latest_version
);
