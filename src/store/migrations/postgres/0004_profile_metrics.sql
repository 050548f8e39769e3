-- The segmentation figures of each profile's latest version, beside its profile row, so
-- re-segmenting the customer base after every run reads this narrow column instead of
-- parsing every latest profile body: `[order_count, lifetime value (decimal text), first
-- order, last order (RFC 3339), segment]`. NULL while the profile has no version.
ALTER TABLE profiles ADD COLUMN metrics TEXT;

UPDATE profiles p SET metrics = jsonb_build_array(
        (v.body::jsonb #>> '{metrics,order_count}')::bigint,
        v.body::jsonb #>> '{metrics,lifetime_value,amount}',
        v.body::jsonb #>> '{metrics,first_order_at}',
        v.body::jsonb #>> '{metrics,last_order_at}',
        v.body::jsonb -> 'segment')::text
FROM profile_versions v
WHERE v.profile_id = p.profile_id AND v.version = p.latest_version;
