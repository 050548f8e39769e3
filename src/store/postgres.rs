//! The shared store: PostgreSQL, for one daemon or several replicas.
//!
//! [`PostgresStore`] owns a connection pool (optionally confined to one schema) and
//! implements [`Store`]; [`PostgresTx`] is one transaction implementing [`StoreTx`].
//! Dropping a [`PostgresTx`] without [`StoreTx::commit`] rolls it back.
//!
//! Invariants: the schema comes only from the numbered migrations in `migrations/postgres`
//! (run on every [`PostgresStore::open`], a no-op once applied). SQL text is always a
//! literal and every value a bound parameter; lists of any length are bound as arrays and
//! expanded with `UNNEST` (`WITH ORDINALITY` where rows must be matched back to their input
//! position), so each set-based [`StoreTx`] method runs a fixed number of statements
//! whatever the batch size. Each one-row [`StoreTx`] method is its set-based sibling on a
//! one-element slice, so every query exists once: a new method is one more `UNNEST`
//! statement.
//!
//! Replicas: a batch transaction first takes a transaction-scoped advisory lock (one per
//! schema), so batches commit one at a time, as on SQLite, and identity resolution never
//! sees another replica's half-written batch. The relay's [`Store::pending_events`] claims
//! rows of `outbox_pending` (`FOR UPDATE SKIP LOCKED`, `claimed_by` / `claimed_until`) for
//! this store handle, so relays on several replicas never send the same row in normal
//! operation; a claim of a relay that died expires after [`CLAIM_TTL`]. A confirmed row is
//! deleted from `outbox_pending`; `outbox` itself is only inserted into. Scheduled runs take
//! a lease row per job ([`Store::acquire_job_lease`]). Lease and claim expiry use the
//! database's clock, so replicas' clocks need not agree.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::rows::{
    DecisionRow, IDENTITY_PAGE_KEYS, IDENTITY_PAGE_LINKS, IDENTITY_PAGE_RECORDS, RELINK_BACKLOG,
    decisions, decode_customer, decode_line_item, decode_order, decode_record, distinct,
    identity_nodes, in_input_order, ingested_file, last_match_keys, metric_columns, metric_row_of,
    order_sku_rows, plan_upserts, position, source_ref, stored_size,
};
use super::{
    BlockLookup, IdentityDecision, IdentityNode, JobRun, PossibleMatch, PossibleMatchRow,
    ProfileWrite, QuarantineEntry, QuarantineRow, Store, StoreError, StoreTx, Upsert,
};
use crate::model::profile::CustomerProfile;
use crate::model::{Customer, Order, OrderLineItem, Record, SourceRef};
use crate::profile::MetricRow;
use crate::sink::OutboxEvent;
use crate::source::IngestedFile;

static MIGRATOR: Migrator = sqlx::migrate!("src/store/migrations/postgres");

/// How long a relay's claim on outbox rows lasts; every fetch renews the claims it returns.
pub const CLAIM_TTL: Duration = Duration::from_secs(60);

/// The default pool size of one store handle.
pub const DEFAULT_POOL_SIZE: u32 = 8;

/// Serialises batch transactions within one schema (the key mixes in the schema name, so
/// stores in other schemas of the same database do not wait for each other).
const BATCH_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext('conflux.batch:' || current_schema()))";

/// The PostgreSQL implementation of [`Store`].
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Names this handle's outbox claims: unique per open, readable in
    /// `outbox_pending.claimed_by`.
    claimant: String,
}

impl PostgresStore {
    /// Connects to `url`, creates `schema` when given and missing (and confines every
    /// connection to it), and runs the migrations.
    pub async fn open(
        url: &str,
        schema: Option<&str>,
        pool_size: u32,
    ) -> Result<PostgresStore, StoreError> {
        let mut options: PgConnectOptions = url.parse()?;
        if let Some(schema) = schema {
            let mut conn = PgConnection::connect_with(&options).await?;
            // A schema name cannot be a bound parameter: quote it as an identifier.
            let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
            // Replicas starting together would race `IF NOT EXISTS` into a unique violation.
            let mut tx = conn.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('conflux.schema:' || $1))")
                .bind(schema)
                .execute(&mut *tx)
                .await?;
            sqlx::query(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {quoted}"
            )))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            conn.close().await?;
            options = options.options([("search_path", quoted.as_str())]);
        }
        // Operators (and tests) tell conflux's sessions apart in pg_stat_activity.
        options = options.application_name(&match schema {
            Some(schema) => format!("conflux:{schema}"),
            None => "conflux".to_string(),
        });
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        let claimant = format!(
            "{}:{}:{}",
            hostname(),
            std::process::id(),
            Uuid::now_v7().simple()
        );
        Ok(PostgresStore { pool, claimant })
    }

    /// The connection pool, for tests and ad-hoc counts.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The name this handle's outbox claims carry.
    pub fn claimant(&self) -> &str {
        &self.claimant
    }

    async fn begin_batch(&self) -> Result<PostgresTx, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(BATCH_LOCK).execute(&mut *tx).await?;
        Ok(PostgresTx { tx })
    }
}
/// The rows of `sql` (the keys or links query of `identity_page`) in the range of source
/// refs after `from`, up to and including `to`.
async fn page_range<T>(
    conn: &mut PgConnection,
    sql: &'static str,
    from: (&str, &str, &str),
    to: &SourceRef,
) -> Result<Vec<T>, StoreError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    Ok(sqlx::query_as(sql)
        .bind(from.0)
        .bind(from.1)
        .bind(from.2)
        .bind(&to.system)
        .bind(&to.stream)
        .bind(&to.source_id)
        .fetch_all(conn)
        .await?)
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|name| name.trim().to_string())
        })
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// One open transaction of a [`PostgresStore`], holding the schema's batch lock.
pub struct PostgresTx {
    tx: Transaction<'static, Postgres>,
}

impl std::fmt::Debug for PostgresTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTx").finish_non_exhaustive()
    }
}

fn to_db_time(at: Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.as_microsecond())
        .expect("jiff's timestamp range lies within chrono's")
}

fn from_db_time(at: DateTime<Utc>, context: &str) -> Result<Timestamp, StoreError> {
    Timestamp::from_microsecond(at.timestamp_micros())
        .map_err(|error| StoreError::Corrupt(format!("{context}: {at} out of range: {error}")))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Text stored as bytea (quarantine payloads may hold NUL); it was a `String`, so it decodes.
fn text_of(bytes: Vec<u8>, context: &str) -> Result<String, StoreError> {
    String::from_utf8(bytes)
        .map_err(|error| StoreError::Corrupt(format!("{context}: not UTF-8: {error}")))
}

/// Source refs as the three parallel arrays the batch statements `UNNEST`.
fn ref_columns<'a>(refs: impl IntoIterator<Item = &'a SourceRef>) -> [Vec<&'a str>; 3] {
    let mut columns: [Vec<&str>; 3] = Default::default();
    for r in refs {
        columns[0].push(&r.system);
        columns[1].push(&r.stream);
        columns[2].push(&r.source_id);
    }
    columns
}

/// `(a, b)` string pairs as two parallel arrays.
fn pair_columns<'a>(pairs: impl IntoIterator<Item = &'a (String, String)>) -> [Vec<&'a str>; 2] {
    let mut columns: [Vec<&str>; 2] = Default::default();
    for (a, b) in pairs {
        columns[0].push(a);
        columns[1].push(b);
    }
    columns
}

/// A 1-based `WITH ORDINALITY` position as an index into a list of `len`.
fn ordinal(ord: i64, len: usize) -> Result<usize, StoreError> {
    position(ord - 1, len)
}

type PossibleMatchTuple = (
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    f64,
    String,
    String,
    DateTime<Utc>,
);

/// Possible matches by status (`$1`, all when NULL) and id (`$2`, all when NULL), at most `$3`.
const SELECT_POSSIBLE_MATCHES: &str = "SELECT id, a_system, a_stream, a_source_id, b_system, \
     b_stream, b_source_id, weight, detail, status, created_at FROM possible_matches \
     WHERE ($1::text IS NULL OR status = $1) AND ($2::bigint IS NULL OR id = $2) \
     ORDER BY id LIMIT $3";

fn possible_match_row(row: PossibleMatchTuple) -> Result<PossibleMatchRow, StoreError> {
    let (id, a1, a2, a3, b1, b2, b3, weight, detail, status, created_at) = row;
    Ok(PossibleMatchRow {
        id,
        pair: PossibleMatch {
            a: source_ref((a1, a2, a3)),
            b: source_ref((b1, b2, b3)),
            weight,
            detail,
        },
        status,
        created_at: from_db_time(created_at, &format!("possible match {id}"))?,
    })
}

/// Attaches the standalone order lines stored for each order (see [`Order::attach_lines`]),
/// in one statement for all of them.
async fn attach_lines(
    conn: &mut PgConnection,
    orders: &mut [&mut Order],
) -> Result<(), StoreError> {
    if orders.is_empty() {
        return Ok(());
    }
    let keys: Vec<(String, String)> = orders
        .iter()
        .map(|o| (o.source.system.clone(), o.source.source_id.clone()))
        .collect();
    let keys = distinct(keys.iter());
    let [systems, order_ids] = pair_columns(keys.iter().copied());
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT k.ord, r.stream, r.source_id, r.body \
         FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS k(system, order_id, ord) \
         JOIN records r ON r.entity = 'order_line' AND r.system = k.system \
                       AND r.order_id = k.order_id \
         ORDER BY k.ord, r.stream, r.source_id",
    )
    .bind(&systems)
    .bind(&order_ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut items: HashMap<&(String, String), Vec<OrderLineItem>> = HashMap::new();
    for (ord, stream, source_id, body) in rows {
        let order = keys[ordinal(ord, keys.len())?];
        let context = format!("{}/{stream}/{source_id}", order.0);
        items
            .entry(order)
            .or_default()
            .push(decode_line_item(&body, &context)?);
    }
    for order in orders.iter_mut() {
        let key = (order.source.system.clone(), order.source.source_id.clone());
        if let Some(lines) = items.remove(&key) {
            order.attach_lines(lines);
        }
    }
    Ok(())
}

/// Follows `retired_into` from `profile_id` to the profile that is still live, and returns
/// its latest version. A retirement cycle can only come from a corrupted store; it is
/// reported instead of looping.
async fn live_profile(
    conn: &mut PgConnection,
    profile_id: Uuid,
) -> Result<Option<CustomerProfile>, StoreError> {
    let mut current = profile_id;
    let mut seen = std::collections::HashSet::from([current]);
    loop {
        let retired_into: Option<Option<Uuid>> =
            sqlx::query_scalar("SELECT retired_into FROM profiles WHERE profile_id = $1")
                .bind(current)
                .fetch_optional(&mut *conn)
                .await?;
        let Some(Some(next)) = retired_into else {
            break;
        };
        if !seen.insert(next) {
            return Err(StoreError::Corrupt(format!(
                "profile {profile_id} is retired in a cycle through {next}"
            )));
        }
        current = next;
    }
    let body: Option<String> = sqlx::query_scalar(
        "SELECT v.body FROM profiles p \
         JOIN profile_versions v ON v.profile_id = p.profile_id AND v.version = p.latest_version \
         WHERE p.profile_id = $1",
    )
    .bind(current)
    .fetch_optional(&mut *conn)
    .await?;
    body.map(|body| {
        serde_json::from_str(&body).map_err(|error| {
            StoreError::Corrupt(format!("profile {current}: undecodable version: {error}"))
        })
    })
    .transpose()
}

#[async_trait]
impl Store for PostgresStore {
    async fn begin(&self) -> Result<Box<dyn StoreTx>, StoreError> {
        Ok(Box::new(self.begin_batch().await?))
    }

    async fn cursor(&self, connector: &str, stream: &str) -> Result<Option<String>, StoreError> {
        let cursor =
            sqlx::query_scalar("SELECT cursor FROM cursors WHERE connector = $1 AND stream = $2")
                .bind(connector)
                .bind(stream)
                .fetch_optional(&self.pool)
                .await?;
        Ok(cursor)
    }

    async fn ingested_files(
        &self,
        connector: &str,
        stream: &str,
    ) -> Result<Vec<IngestedFile>, StoreError> {
        let rows: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT path, size, hash FROM ingested_files \
             WHERE connector = $1 AND stream = $2 ORDER BY path, size, hash",
        )
        .bind(connector)
        .bind(stream)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| ingested_file(connector, stream, row))
            .collect()
    }

    async fn start_run(&self, job: &str) -> Result<i64, StoreError> {
        let id = sqlx::query_scalar(
            "INSERT INTO job_runs (job, started_at, status) VALUES ($1, $2, 'running') \
             RETURNING id",
        )
        .bind(job)
        .bind(to_db_time(Timestamp::now()))
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn finish_run(&self, run_id: i64, status: &str, summary: &str) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE job_runs SET finished_at = $1, status = $2, summary = $3 WHERE id = $4",
        )
        .bind(to_db_time(Timestamp::now()))
        .bind(status)
        .bind(summary)
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Corrupt(format!(
                "cannot finish job run {run_id}: no such run"
            )));
        }
        Ok(())
    }

    async fn last_run_started(&self, job: &str) -> Result<Option<Timestamp>, StoreError> {
        let started: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT started_at FROM job_runs WHERE job = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(job)
        .fetch_optional(&self.pool)
        .await?;
        started
            .map(|at| from_db_time(at, "job_runs.started_at"))
            .transpose()
    }

    async fn recent_runs(&self, limit: i64) -> Result<Vec<JobRun>, StoreError> {
        type Row = (
            i64,
            String,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
            String,
            Option<String>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, job, started_at, finished_at, status, summary FROM job_runs \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, job, started_at, finished_at, status, summary)| {
                Ok(JobRun {
                    id,
                    job,
                    started_at: from_db_time(started_at, "job_runs.started_at")?,
                    finished_at: finished_at
                        .map(|at| from_db_time(at, "job_runs.finished_at"))
                        .transpose()?,
                    status,
                    summary,
                })
            })
            .collect()
    }

    /// Claims up to `limit` undelivered rows for this handle: rows nobody claims, rows whose
    /// claim expired, and this handle's own claims (renewed). Rows another relay is claiming
    /// in this very moment are skipped, not waited for.
    async fn pending_events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let mut rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "WITH picked AS ( \
                 SELECT seq FROM outbox_pending \
                 WHERE seq > $4 \
                   AND (claimed_until IS NULL OR claimed_until < clock_timestamp() \
                        OR claimed_by = $2) \
                 ORDER BY seq LIMIT $1 \
                 FOR UPDATE SKIP LOCKED), \
             claimed AS ( \
                 UPDATE outbox_pending p SET claimed_by = $2, \
                     claimed_until = clock_timestamp() + $3 * interval '1 millisecond' \
                 FROM picked WHERE p.seq = picked.seq \
                 RETURNING p.seq) \
             SELECT o.seq, o.event_id, o.event_type, o.body \
             FROM claimed JOIN outbox o ON o.seq = claimed.seq",
        )
        .bind(limit)
        .bind(&self.claimant)
        .bind(millis(CLAIM_TTL))
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        // RETURNING follows no order; delivery does.
        rows.sort_by_key(|row| row.0);
        Ok(rows
            .into_iter()
            .map(|(seq, event_id, event_type, body)| OutboxEvent {
                seq,
                event_id,
                event_type,
                body,
            })
            .collect())
    }

    async fn mark_delivered(&self, seqs: &[i64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM outbox_pending WHERE seq = ANY($1)")
            .bind(seqs)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Undelivered rows that wait for this handle's relay: rows under another relay's live
    /// claim are being delivered by that relay and are not counted.
    async fn pending_count(&self) -> Result<i64, StoreError> {
        let count = sqlx::query_scalar(
            "SELECT COUNT(*) FROM outbox_pending \
             WHERE claimed_until IS NULL OR claimed_until < clock_timestamp() \
                OR claimed_by = $1",
        )
        .bind(&self.claimant)
        .fetch_one(&self.pool)
        .await?;
        Ok(count)
    }

    async fn profile(&self, profile_id: Uuid) -> Result<Option<CustomerProfile>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        live_profile(&mut conn, profile_id).await
    }

    async fn profiles_by_email(&self, email: &str) -> Result<Vec<Uuid>, StoreError> {
        // `json`, not `jsonb`: a body may hold `\u0000`, which jsonb refuses.
        let ids = sqlx::query_scalar(
            "SELECT DISTINCT l.profile_id FROM records r \
             JOIN links l ON l.system = r.system AND l.stream = r.stream \
                         AND l.source_id = r.source_id \
             CROSS JOIN LATERAL json_array_elements_text( \
                 CASE WHEN json_typeof(r.body::json -> 'emails') = 'array' \
                      THEN r.body::json -> 'emails' ELSE '[]'::json END) AS e(value) \
             WHERE r.entity = 'customer' AND lower(e.value) = lower($1) \
             ORDER BY l.profile_id",
        )
        .bind(email)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids)
    }

    async fn quarantine_rows(&self, limit: i64) -> Result<Vec<QuarantineRow>, StoreError> {
        type Row = (i64, Option<i64>, String, String, Vec<u8>, Vec<u8>, Vec<u8>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, run_id, connector, stream, source_ref, raw, reason FROM quarantine \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, run_id, connector, stream, source_ref, raw, reason)| {
                let context = format!("quarantine row {id}");
                Ok(QuarantineRow {
                    id,
                    run_id,
                    connector,
                    stream,
                    source_ref: text_of(source_ref, &context)?,
                    raw: text_of(raw, &context)?,
                    reason: text_of(reason, &context)?,
                })
            })
            .collect()
    }

    async fn possible_matches(
        &self,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<PossibleMatchRow>, StoreError> {
        let rows: Vec<PossibleMatchTuple> = sqlx::query_as(SELECT_POSSIBLE_MATCHES)
            .bind(status)
            .bind(None::<i64>)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(possible_match_row).collect()
    }

    async fn possible_match(&self, id: i64) -> Result<Option<PossibleMatchRow>, StoreError> {
        let row: Option<PossibleMatchTuple> = sqlx::query_as(SELECT_POSSIBLE_MATCHES)
            .bind(None::<&str>)
            .bind(id)
            .bind(1i64)
            .fetch_optional(&self.pool)
            .await?;
        row.map(possible_match_row).transpose()
    }

    async fn decide_possible_match(
        &self,
        id: i64,
        accept: bool,
    ) -> Result<Option<PossibleMatchRow>, StoreError> {
        let mut tx = self.begin_batch().await?;
        let row: Option<PossibleMatchTuple> = sqlx::query_as(SELECT_POSSIBLE_MATCHES)
            .bind(None::<&str>)
            .bind(id)
            .bind(1i64)
            .fetch_optional(&mut *tx.tx)
            .await?;
        let Some(row) = row.map(possible_match_row).transpose()? else {
            return Ok(None);
        };
        sqlx::query("UPDATE possible_matches SET status = $1, decided_at = now() WHERE id = $2")
            .bind(if accept { "accepted" } else { "rejected" })
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        let decision = IdentityDecision::new(row.pair.a.clone(), row.pair.b.clone(), accept);
        tx.set_decision(&decision).await?;
        tx.tx.commit().await?;
        Ok(Some(row))
    }

    async fn match_model(&self) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT body FROM match_model WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn identity_rows(
        &self,
        after: Option<&SourceRef>,
        limit: i64,
    ) -> Result<Vec<(SourceRef, Uuid)>, StoreError> {
        let (system, stream, source_id) = after.map_or(("", "", ""), |r| {
            (r.system.as_str(), r.stream.as_str(), r.source_id.as_str())
        });
        // `after = None` starts before every record: ("", "", "") sorts first (COLLATE "C").
        let rows: Vec<(String, String, String, Uuid)> = sqlx::query_as(
            "SELECT system, stream, source_id, profile_id FROM links \
             WHERE (system, stream, source_id) > ($1, $2, $3) \
             ORDER BY system, stream, source_id LIMIT $4",
        )
        .bind(system)
        .bind(stream)
        .bind(source_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(system, stream, source_id, profile)| {
                (source_ref((system, stream, source_id)), profile)
            })
            .collect())
    }

    async fn acquire_job_lease(
        &self,
        job: &str,
        holder: &str,
        fire_at: Timestamp,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        // The row lock of ON CONFLICT makes this atomic: of two replicas racing for one fire
        // time, the second sees the first one's lease and last_fire.
        let taken = sqlx::query(
            "INSERT INTO job_leases (job, holder, expires_at, last_fire) \
             VALUES ($1, $2, clock_timestamp() + $3 * interval '1 millisecond', $4) \
             ON CONFLICT (job) DO UPDATE \
             SET holder = excluded.holder, expires_at = excluded.expires_at, \
                 last_fire = excluded.last_fire \
             WHERE (job_leases.holder IS NULL OR job_leases.holder = excluded.holder \
                    OR job_leases.expires_at < clock_timestamp()) \
               AND (job_leases.last_fire IS NULL OR job_leases.last_fire < excluded.last_fire)",
        )
        .bind(job)
        .bind(holder)
        .bind(millis(ttl))
        .bind(to_db_time(fire_at))
        .execute(&self.pool)
        .await?;
        Ok(taken.rows_affected() == 1)
    }

    async fn renew_job_lease(
        &self,
        job: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let renewed = sqlx::query(
            "UPDATE job_leases SET expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
             WHERE job = $1 AND holder = $2",
        )
        .bind(job)
        .bind(holder)
        .bind(millis(ttl))
        .execute(&self.pool)
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    async fn refresh_statistics(&self) -> Result<(), StoreError> {
        sqlx::query(
            "ANALYZE records, match_keys, links, profiles, profile_versions, outbox, \
             outbox_pending, profile_queue, supply_queue, relink_queue, order_skus",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release_claims(&self) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox_pending SET claimed_by = NULL, claimed_until = NULL \
             WHERE claimed_by = $1",
        )
        .bind(&self.claimant)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release_job_lease(&self, job: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE job_leases SET holder = NULL, expires_at = NULL \
             WHERE job = $1 AND holder = $2",
        )
        .bind(job)
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// The single result of a set-based call made for one item.
fn single<T>(mut items: Vec<T>, what: &str) -> Result<T, StoreError> {
    match (items.pop(), items.is_empty()) {
        (Some(item), true) => Ok(item),
        _ => Err(StoreError::Corrupt(format!(
            "{what}: expected one result for one input"
        ))),
    }
}

#[async_trait]
impl StoreTx for PostgresTx {
    async fn upsert_record(&mut self, record: &Record, run_id: i64) -> Result<Upsert, StoreError> {
        let outcomes = self
            .upsert_records(std::slice::from_ref(record), run_id)
            .await?;
        single(outcomes, "upsert_record")
    }

    async fn quarantine(&mut self, entry: &QuarantineEntry, run_id: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO quarantine (run_id, connector, stream, source_ref, raw, reason, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, now())",
        )
        .bind(run_id)
        .bind(&entry.connector)
        .bind(&entry.stream)
        .bind(entry.source_ref.as_bytes())
        .bind(entry.raw.as_bytes())
        .bind(entry.reason.as_bytes())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn mark_ingested(
        &mut self,
        connector: &str,
        stream: &str,
        file: &IngestedFile,
    ) -> Result<(), StoreError> {
        let size = stored_size(connector, stream, file)?;
        sqlx::query(
            "INSERT INTO ingested_files (connector, stream, path, size, hash, ingested_at) \
             VALUES ($1, $2, $3, $4, $5, now()) \
             ON CONFLICT (connector, stream, path, size, hash) DO NOTHING",
        )
        .bind(connector)
        .bind(stream)
        .bind(&file.path)
        .bind(size)
        .bind(&file.hash)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn set_cursor(
        &mut self,
        connector: &str,
        stream: &str,
        cursor: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cursors (connector, stream, cursor, updated_at) \
             VALUES ($1, $2, $3, now()) \
             ON CONFLICT (connector, stream) DO UPDATE \
             SET cursor = excluded.cursor, updated_at = excluded.updated_at",
        )
        .bind(connector)
        .bind(stream)
        .bind(cursor)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn set_match_keys(
        &mut self,
        record: &SourceRef,
        keys: &[String],
    ) -> Result<(), StoreError> {
        self.set_match_keys_many(&[(record.clone(), keys.to_vec())])
            .await
    }

    async fn records_with_keys(
        &mut self,
        keys: &[String],
    ) -> Result<Vec<(SourceRef, Option<Uuid>)>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, String, Option<Uuid>)> = sqlx::query_as(
            "SELECT DISTINCT m.system, m.stream, m.source_id, l.profile_id FROM match_keys m \
             LEFT JOIN links l ON l.system = m.system AND l.stream = m.stream \
                              AND l.source_id = m.source_id \
             WHERE m.key = ANY($1) \
             ORDER BY m.system, m.stream, m.source_id",
        )
        .bind(keys)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(system, stream, source_id, profile_id)| {
                (source_ref((system, stream, source_id)), profile_id)
            })
            .collect())
    }

    async fn match_keys(&mut self, record: &SourceRef) -> Result<Vec<String>, StoreError> {
        let found = self.keys_and_links(std::slice::from_ref(record)).await?;
        Ok(single(found, "match_keys")?.0)
    }

    async fn link_of(&mut self, record: &SourceRef) -> Result<Option<Uuid>, StoreError> {
        let found = self.keys_and_links(std::slice::from_ref(record)).await?;
        Ok(single(found, "link_of")?.1)
    }

    async fn set_link(&mut self, record: &SourceRef, profile_id: Uuid) -> Result<(), StoreError> {
        self.set_links(&[(record.clone(), profile_id)]).await
    }

    async fn retire_profile(&mut self, retired: Uuid, survivor: Uuid) -> Result<(), StoreError> {
        if retired == survivor {
            return Err(StoreError::Corrupt(format!(
                "cannot retire profile {retired} into itself"
            )));
        }
        sqlx::query(
            "INSERT INTO profiles (profile_id, created_at, retired_into) VALUES ($1, now(), $2) \
             ON CONFLICT (profile_id) DO UPDATE SET retired_into = excluded.retired_into",
        )
        .bind(retired)
        .bind(survivor)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn customers_of(&mut self, profile_id: Uuid) -> Result<Vec<Customer>, StoreError> {
        let mut found = self.customers_of_many(&[profile_id]).await?;
        Ok(found.remove(&profile_id).unwrap_or_default())
    }

    async fn orders_of_customer(
        &mut self,
        system: &str,
        customer_id: &str,
    ) -> Result<Vec<Order>, StoreError> {
        let key = (system.to_string(), customer_id.to_string());
        let mut found = self.orders_of_customers(std::slice::from_ref(&key)).await?;
        Ok(found.remove(&key).unwrap_or_default())
    }

    async fn profiles_of_customer_id(
        &mut self,
        system: &str,
        customer_id: &str,
    ) -> Result<Vec<Uuid>, StoreError> {
        let found = self
            .profiles_of_customer_ids(&[(system.to_string(), customer_id.to_string())])
            .await?;
        Ok(found.into_iter().collect())
    }

    async fn latest_profile(
        &mut self,
        profile_id: Uuid,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let mut found = self.latest_profiles(&[profile_id]).await?;
        Ok(found.remove(&profile_id))
    }

    async fn write_profile(
        &mut self,
        profile: &CustomerProfile,
        content_hash: &str,
        event_type: &str,
        event_body: &str,
    ) -> Result<(), StoreError> {
        self.write_profiles(&[ProfileWrite {
            profile: profile.clone(),
            content_hash: content_hash.to_string(),
            event_type: event_type.to_string(),
            event_body: event_body.to_string(),
        }])
        .await
    }

    async fn stored_order_customers(
        &mut self,
        orders: &[SourceRef],
    ) -> Result<HashMap<SourceRef, String>, StoreError> {
        if orders.is_empty() {
            return Ok(HashMap::new());
        }
        let [systems, streams, ids] = ref_columns(distinct(orders));
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT r.system, r.stream, r.source_id, r.customer_id \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k(system, stream, source_id) \
             JOIN records r ON r.system = k.system AND r.stream = k.stream \
                           AND r.source_id = k.source_id \
             WHERE r.entity = 'order' AND r.customer_id IS NOT NULL",
        )
        .bind(&systems)
        .bind(&streams)
        .bind(&ids)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(system, stream, source_id, customer)| {
                (source_ref((system, stream, source_id)), customer)
            })
            .collect())
    }

    async fn customers_of_orders(
        &mut self,
        orders: &[(String, String)],
    ) -> Result<BTreeSet<(String, String)>, StoreError> {
        if orders.is_empty() {
            return Ok(BTreeSet::new());
        }
        let [systems, ids] = pair_columns(distinct(orders));
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT r.system, r.customer_id \
             FROM UNNEST($1::text[], $2::text[]) AS k(system, source_id) \
             JOIN records r ON r.system = k.system AND r.source_id = k.source_id \
             WHERE r.entity = 'order' AND r.customer_id IS NOT NULL",
        )
        .bind(&systems)
        .bind(&ids)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn block_members(
        &mut self,
        keys: &[String],
        max_block: i64,
    ) -> Result<BlockLookup, StoreError> {
        if keys.is_empty() {
            return Ok(BlockLookup::default());
        }
        let keys: Vec<&str> = distinct(keys).into_iter().map(String::as_str).collect();
        let sizes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT key, COUNT(*) FROM match_keys WHERE key = ANY($1) \
             GROUP BY key HAVING COUNT(*) > $2 ORDER BY key",
        )
        .bind(&keys)
        .bind(max_block)
        .fetch_all(&mut *self.tx)
        .await?;
        let oversized: Vec<&str> = sizes.iter().map(|(key, _)| key.as_str()).collect();
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT key, system, stream, source_id FROM match_keys \
             WHERE key = ANY($1) AND NOT (key = ANY($2)) \
             ORDER BY key, system, stream, source_id",
        )
        .bind(&keys)
        .bind(&oversized)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(BlockLookup {
            members: rows
                .into_iter()
                .map(|(key, system, stream, source_id)| {
                    (key, source_ref((system, stream, source_id)))
                })
                .collect(),
            oversized: sizes,
        })
    }

    async fn customers_by_refs(
        &mut self,
        records: &[SourceRef],
    ) -> Result<Vec<Customer>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let [systems, streams, ids] = ref_columns(distinct(records));
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT r.system, r.stream, r.source_id, r.body \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY \
                 AS k(system, stream, source_id, ord) \
             JOIN records r ON r.system = k.system AND r.stream = k.stream \
                           AND r.source_id = k.source_id \
             WHERE r.entity = 'customer' ORDER BY k.ord",
        )
        .bind(&systems)
        .bind(&streams)
        .bind(&ids)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(system, stream, source_id, body)| {
                decode_customer(&body, &source_ref((system, stream, source_id)).to_string())
            })
            .collect()
    }

    async fn decisions_touching(
        &mut self,
        records: &[SourceRef],
    ) -> Result<Vec<IdentityDecision>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let [systems, streams, ids] = ref_columns(distinct(records));
        let rows: Vec<DecisionRow> = sqlx::query_as(
            "WITH k AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) \
                        AS k(system, stream, source_id)) \
             SELECT d.a_system, d.a_stream, d.a_source_id, d.b_system, d.b_stream, \
                    d.b_source_id, d.decision \
             FROM k JOIN identity_decisions d ON d.a_system = k.system \
                  AND d.a_stream = k.stream AND d.a_source_id = k.source_id \
             UNION \
             SELECT d.a_system, d.a_stream, d.a_source_id, d.b_system, d.b_stream, \
                    d.b_source_id, d.decision \
             FROM k JOIN identity_decisions d ON d.b_system = k.system \
                  AND d.b_stream = k.stream AND d.b_source_id = k.source_id \
             ORDER BY 1, 2, 3, 4, 5, 6",
        )
        .bind(&systems)
        .bind(&streams)
        .bind(&ids)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(decisions(rows))
    }

    async fn set_decision(&mut self, decision: &IdentityDecision) -> Result<(), StoreError> {
        let (a, b) = (&decision.a, &decision.b);
        sqlx::query(
            "INSERT INTO identity_decisions (a_system, a_stream, a_source_id, b_system, \
             b_stream, b_source_id, decision, decided_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, now()) \
             ON CONFLICT (a_system, a_stream, a_source_id, b_system, b_stream, b_source_id) \
             DO UPDATE SET decision = excluded.decision, decided_at = excluded.decided_at",
        )
        .bind(&a.system)
        .bind(&a.stream)
        .bind(&a.source_id)
        .bind(&b.system)
        .bind(&b.stream)
        .bind(&b.source_id)
        .bind(if decision.link { "link" } else { "unlink" })
        .execute(&mut *self.tx)
        .await?;
        // A pending review of the pair is settled by the decision.
        sqlx::query(
            "UPDATE possible_matches SET status = $7, decided_at = now() \
             WHERE status = 'pending' AND a_system = $1 AND a_stream = $2 AND a_source_id = $3 \
             AND b_system = $4 AND b_stream = $5 AND b_source_id = $6",
        )
        .bind(&a.system)
        .bind(&a.stream)
        .bind(&a.source_id)
        .bind(&b.system)
        .bind(&b.stream)
        .bind(&b.source_id)
        .bind(if decision.link {
            "accepted"
        } else {
            "rejected"
        })
        .execute(&mut *self.tx)
        .await?;
        self.queue_relink(&[a.clone(), b.clone()]).await
    }

    async fn replace_possible_matches(
        &mut self,
        scope: &[SourceRef],
        pairs: &[PossibleMatch],
    ) -> Result<(), StoreError> {
        if !scope.is_empty() {
            let [systems, streams, ids] = ref_columns(distinct(scope));
            sqlx::query(
                "WITH k AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) \
                            AS k(system, stream, source_id)) \
                 DELETE FROM possible_matches WHERE status = 'pending' AND id IN ( \
                     SELECT p.id FROM k JOIN possible_matches p ON p.a_system = k.system \
                         AND p.a_stream = k.stream AND p.a_source_id = k.source_id \
                     UNION ALL \
                     SELECT p.id FROM k JOIN possible_matches p ON p.b_system = k.system \
                         AND p.b_stream = k.stream AND p.b_source_id = k.source_id)",
            )
            .bind(&systems)
            .bind(&streams)
            .bind(&ids)
            .execute(&mut *self.tx)
            .await?;
        }
        if pairs.is_empty() {
            return Ok(());
        }
        let [a_systems, a_streams, a_ids] = ref_columns(pairs.iter().map(|p| &p.a));
        let [b_systems, b_streams, b_ids] = ref_columns(pairs.iter().map(|p| &p.b));
        let weights: Vec<f64> = pairs.iter().map(|p| p.weight).collect();
        let details: Vec<&str> = pairs.iter().map(|p| p.detail.as_str()).collect();
        sqlx::query(
            "INSERT INTO possible_matches (a_system, a_stream, a_source_id, b_system, b_stream, \
             b_source_id, weight, detail, status, created_at) \
             SELECT a1, a2, a3, b1, b2, b3, w, d, 'pending', now() \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                         $6::text[], $7::float8[], $8::text[]) \
                 WITH ORDINALITY AS k(a1, a2, a3, b1, b2, b3, w, d, ord) \
             ORDER BY ord \
             ON CONFLICT (a_system, a_stream, a_source_id, b_system, b_stream, b_source_id) \
             DO NOTHING",
        )
        .bind(&a_systems)
        .bind(&a_streams)
        .bind(&a_ids)
        .bind(&b_systems)
        .bind(&b_streams)
        .bind(&b_ids)
        .bind(&weights)
        .bind(&details)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn queue_relink(&mut self, records: &[SourceRef]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let [systems, streams, ids] = ref_columns(distinct(records));
        sqlx::query(
            "INSERT INTO relink_queue (system, stream, source_id) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&systems)
        .bind(&streams)
        .bind(&ids)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn take_relink(&mut self, limit: i64) -> Result<Vec<SourceRef>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "DELETE FROM relink_queue WHERE (system, stream, source_id) IN \
             (SELECT system, stream, source_id FROM relink_queue \
              ORDER BY system, stream, source_id LIMIT $1) \
             RETURNING system, stream, source_id",
        )
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut refs: Vec<SourceRef> = rows.into_iter().map(source_ref).collect();
        refs.sort();
        Ok(refs)
    }

    async fn queue_profiles(&mut self, ids: &[Uuid]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO profile_queue (profile_id) \
             SELECT * FROM UNNEST($1::uuid[]) ON CONFLICT DO NOTHING",
        )
        .bind(ids)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn take_profiles(&mut self, limit: i64) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "DELETE FROM profile_queue WHERE profile_id IN \
             (SELECT profile_id FROM profile_queue ORDER BY profile_id LIMIT $1 \
              FOR UPDATE SKIP LOCKED) \
             RETURNING profile_id",
        )
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut ids: Vec<Uuid> = rows.into_iter().map(|(id,)| id).collect();
        ids.sort();
        Ok(ids)
    }

    async fn queue_supply(
        &mut self,
        skus: &[(String, Option<Timestamp>)],
    ) -> Result<(), StoreError> {
        if skus.is_empty() {
            return Ok(());
        }
        // One row per SKU: ON CONFLICT cannot touch a row twice in one statement.
        let mut earliest: std::collections::BTreeMap<&str, Option<i64>> =
            std::collections::BTreeMap::new();
        for (sku, from) in skus {
            let from = from.map(|t| t.as_microsecond());
            let entry = earliest.entry(sku.as_str()).or_insert(from);
            if from.is_none() || entry.is_some_and(|e| from.is_some_and(|f| f < e)) {
                *entry = from;
            }
        }
        let (names, froms): (Vec<&str>, Vec<Option<i64>>) = earliest.into_iter().unzip();
        sqlx::query(
            "INSERT INTO supply_queue (sku, changed_from) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
             ON CONFLICT (sku) DO UPDATE SET changed_from = CASE \
                 WHEN supply_queue.changed_from IS NULL OR excluded.changed_from IS NULL \
                 THEN NULL ELSE LEAST(supply_queue.changed_from, excluded.changed_from) END",
        )
        .bind(&names)
        .bind(&froms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn take_supply(&mut self) -> Result<Vec<(String, Option<Timestamp>)>, StoreError> {
        let rows: Vec<(String, Option<i64>)> =
            sqlx::query_as("DELETE FROM supply_queue RETURNING sku, changed_from")
                .fetch_all(&mut *self.tx)
                .await?;
        super::rows::supply_rows(rows)
    }

    async fn relink_backlog(&mut self) -> Result<(i64, i64), StoreError> {
        Ok(sqlx::query_as(RELINK_BACKLOG)
            .fetch_one(&mut *self.tx)
            .await?)
    }

    async fn identity_page(
        &mut self,
        after: Option<&SourceRef>,
        limit: i64,
    ) -> Result<Vec<IdentityNode>, StoreError> {
        let (system, stream, source_id) = after.map_or(("", "", ""), |r| {
            (r.system.as_str(), r.stream.as_str(), r.source_id.as_str())
        });
        // `after = None` starts before every record: ("", "", "") sorts first (COLLATE "C").
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(IDENTITY_PAGE_RECORDS)
            .bind(system)
            .bind(stream)
            .bind(source_id)
            .bind(limit)
            .fetch_all(&mut *self.tx)
            .await?;
        let customers = rows
            .into_iter()
            .map(|(system, stream, source_id, body)| {
                decode_customer(&body, &source_ref((system, stream, source_id)).to_string())
            })
            .collect::<Result<Vec<Customer>, StoreError>>()?;
        let Some(last) = customers.last().map(|c| c.source.clone()) else {
            return Ok(Vec::new());
        };
        // The keys and links of the page's range of source refs.
        let from = (system, stream, source_id);
        let keys: Vec<(String, String, String, String)> =
            page_range(&mut self.tx, IDENTITY_PAGE_KEYS, from, &last).await?;
        let links: Vec<(String, String, String, Uuid)> =
            page_range(&mut self.tx, IDENTITY_PAGE_LINKS, from, &last).await?;
        let links = links
            .into_iter()
            .map(|(system, stream, source_id, profile_id)| {
                Ok((source_ref((system, stream, source_id)), profile_id))
            })
            .collect::<Result<Vec<(SourceRef, Uuid)>, StoreError>>()?;
        Ok(identity_nodes(customers, keys, links))
    }

    async fn all_decisions(&mut self) -> Result<Vec<IdentityDecision>, StoreError> {
        let rows: Vec<DecisionRow> = sqlx::query_as(
            "SELECT a_system, a_stream, a_source_id, b_system, b_stream, b_source_id, \
                        decision FROM identity_decisions ORDER BY 1, 2, 3, 4, 5, 6",
        )
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(decisions(rows))
    }

    async fn set_match_model(&mut self, body: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO match_model (id, body, trained_at) VALUES (1, $1, now()) \
             ON CONFLICT (id) DO UPDATE SET body = excluded.body, trained_at = excluded.trained_at",
        )
        .bind(body)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    async fn upsert_records(
        &mut self,
        records: &[Record],
        run_id: i64,
    ) -> Result<Vec<Upsert>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let [systems, streams, ids] = ref_columns(distinct(records.iter().map(Record::source)));
        let stored: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT r.system, r.stream, r.source_id, r.content_hash \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k(system, stream, source_id) \
             JOIN records r ON r.system = k.system AND r.stream = k.stream \
                           AND r.source_id = k.source_id",
        )
        .bind(&systems)
        .bind(&streams)
        .bind(&ids)
        .fetch_all(&mut *self.tx)
        .await?;
        let stored: HashMap<SourceRef, String> = stored
            .into_iter()
            .map(|(system, stream, source_id, hash)| {
                (source_ref((system, stream, source_id)), hash)
            })
            .collect();
        let hashes: Vec<String> = records.iter().map(Record::content_hash).collect();
        let plan = plan_upserts(records, &hashes, &stored)?;
        if plan.writes.is_empty() {
            return Ok(plan.outcomes);
        }
        let [systems, streams, ids] = ref_columns(plan.writes.iter().map(|w| w.source));
        let entities: Vec<&str> = plan.writes.iter().map(|w| w.entity).collect();
        let content_hashes: Vec<&str> = plan.writes.iter().map(|w| w.content_hash).collect();
        let bodies: Vec<&str> = plan.writes.iter().map(|w| w.body.as_str()).collect();
        let customer_ids: Vec<Option<&str>> = plan.writes.iter().map(|w| w.customer_id).collect();
        let order_ids: Vec<Option<&str>> = plan.writes.iter().map(|w| w.order_id).collect();
        sqlx::query(
            "INSERT INTO records (system, stream, source_id, entity, content_hash, body, \
             customer_id, order_id, first_run, last_changed_run, updated_at) \
             SELECT s, st, id, e, h, b, c, o, $9, $9, now() \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                         $6::text[], $7::text[], $8::text[]) AS k(s, st, id, e, h, b, c, o) \
             ON CONFLICT (system, stream, source_id) DO UPDATE SET \
             entity = excluded.entity, content_hash = excluded.content_hash, \
             body = excluded.body, customer_id = excluded.customer_id, \
             order_id = excluded.order_id, last_changed_run = excluded.last_changed_run, \
             updated_at = excluded.updated_at",
        )
        .bind(&systems)
        .bind(&streams)
        .bind(&ids)
        .bind(&entities)
        .bind(&content_hashes)
        .bind(&bodies)
        .bind(&customer_ids)
        .bind(&order_ids)
        .bind(run_id)
        .execute(&mut *self.tx)
        .await?;
        // Which orders have a line on which SKU (see the migration that made the table).
        let written = records
            .iter()
            .zip(&plan.outcomes)
            .filter(|(_, outcome)| **outcome != Upsert::Unchanged)
            .map(|(record, _)| record);
        let rows = order_sku_rows(written);
        if !rows.is_empty() {
            let skus: Vec<&str> = rows.iter().map(|r| r.0).collect();
            let systems: Vec<&str> = rows.iter().map(|r| r.1).collect();
            let orders: Vec<&str> = rows.iter().map(|r| r.2).collect();
            sqlx::query(
                "INSERT INTO order_skus (sku, system, order_id) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&skus)
            .bind(&systems)
            .bind(&orders)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(plan.outcomes)
    }

    async fn set_match_keys_many(
        &mut self,
        keys: &[(SourceRef, Vec<String>)],
    ) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let refs = distinct(keys.iter().map(|(record, _)| record));
        let [systems, streams, ids] = ref_columns(refs.iter().copied());
        sqlx::query(
            "DELETE FROM match_keys m \
             USING UNNEST($1::text[], $2::text[], $3::text[]) AS k(system, stream, source_id) \
             WHERE m.system = k.system AND m.stream = k.stream AND m.source_id = k.source_id",
        )
        .bind(&systems)
        .bind(&streams)
        .bind(&ids)
        .execute(&mut *self.tx)
        .await?;

        let rows = last_match_keys(&refs, keys);
        if rows.is_empty() {
            return Ok(());
        }
        let match_keys: Vec<&str> = rows.iter().map(|(key, _)| *key).collect();
        let [systems, streams, ids] = ref_columns(rows.iter().map(|(_, record)| *record));
        sqlx::query(
            "INSERT INTO match_keys (key, system, stream, source_id) \
             SELECT DISTINCT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&match_keys)
        .bind(&systems)
        .bind(&streams)
        .bind(&ids)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn keys_and_links(
        &mut self,
        records: &[SourceRef],
    ) -> Result<Vec<(Vec<String>, Option<Uuid>)>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let refs = distinct(records);
        let [systems, streams, ids] = ref_columns(refs.iter().copied());
        let key_rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT k.ord, m.key \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY \
                 AS k(system, stream, source_id, ord) \
             JOIN match_keys m ON m.system = k.system AND m.stream = k.stream \
                              AND m.source_id = k.source_id \
             ORDER BY k.ord, m.key",
        )
        .bind(&systems)
        .bind(&streams)
        .bind(&ids)
        .fetch_all(&mut *self.tx)
        .await?;
        let link_rows: Vec<(i64, Uuid)> = sqlx::query_as(
            "SELECT k.ord, l.profile_id \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY \
                 AS k(system, stream, source_id, ord) \
             JOIN links l ON l.system = k.system AND l.stream = k.stream \
                         AND l.source_id = k.source_id",
        )
        .bind(&systems)
        .bind(&streams)
        .bind(&ids)
        .fetch_all(&mut *self.tx)
        .await?;

        let mut found: Vec<(Vec<String>, Option<Uuid>)> = vec![(Vec::new(), None); refs.len()];
        for (ord, match_key) in key_rows {
            found[ordinal(ord, refs.len())?].0.push(match_key);
        }
        for (ord, profile_id) in link_rows {
            found[ordinal(ord, refs.len())?].1 = Some(profile_id);
        }
        in_input_order(records, &refs, &found)
    }

    async fn customers_of_many(
        &mut self,
        profiles: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<Customer>>, StoreError> {
        if profiles.is_empty() {
            return Ok(HashMap::new());
        }
        let profiles: Vec<Uuid> = distinct(profiles).into_iter().copied().collect();
        let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
            "SELECT k.ord, r.system, r.stream, r.source_id, r.body \
             FROM UNNEST($1::uuid[]) WITH ORDINALITY AS k(profile_id, ord) \
             JOIN links l ON l.profile_id = k.profile_id \
             JOIN records r ON r.system = l.system AND r.stream = l.stream \
                           AND r.source_id = l.source_id \
             WHERE r.entity = 'customer' \
             ORDER BY k.ord, r.system, r.stream, r.source_id",
        )
        .bind(&profiles)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut out: HashMap<Uuid, Vec<Customer>> = HashMap::new();
        for (ord, system, stream, source_id, body) in rows {
            let profile_id = profiles[ordinal(ord, profiles.len())?];
            let context = source_ref((system, stream, source_id)).to_string();
            out.entry(profile_id)
                .or_default()
                .push(decode_customer(&body, &context)?);
        }
        Ok(out)
    }

    async fn orders_of_customers(
        &mut self,
        customers: &[(String, String)],
    ) -> Result<HashMap<(String, String), Vec<Order>>, StoreError> {
        if customers.is_empty() {
            return Ok(HashMap::new());
        }
        let customers = distinct(customers);
        let [systems, customer_ids] = pair_columns(customers.iter().copied());
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT k.ord, r.stream, r.source_id, r.body \
             FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS k(system, customer_id, ord) \
             JOIN records r ON r.entity = 'order' AND r.system = k.system \
                           AND r.customer_id = k.customer_id \
             ORDER BY k.ord, r.stream, r.source_id",
        )
        .bind(&systems)
        .bind(&customer_ids)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut out: HashMap<(String, String), Vec<Order>> = HashMap::new();
        for (ord, stream, source_id, body) in rows {
            let customer = customers[ordinal(ord, customers.len())?];
            let context = format!("{}/{stream}/{source_id}", customer.0);
            let order = decode_order(&body, &context)?;
            out.entry(customer.clone()).or_default().push(order);
        }
        let mut orders: Vec<&mut Order> = out.values_mut().flatten().collect();
        attach_lines(&mut self.tx, &mut orders).await?;
        Ok(out)
    }

    async fn profiles_of_customer_ids(
        &mut self,
        customers: &[(String, String)],
    ) -> Result<BTreeSet<Uuid>, StoreError> {
        if customers.is_empty() {
            return Ok(BTreeSet::new());
        }
        let [systems, ids] = pair_columns(distinct(customers));
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT l.profile_id \
             FROM UNNEST($1::text[], $2::text[]) AS k(system, source_id) \
             JOIN records r ON r.system = k.system AND r.source_id = k.source_id \
             JOIN links l ON l.system = r.system AND l.stream = r.stream \
                         AND l.source_id = r.source_id \
             WHERE r.entity = 'customer'",
        )
        .bind(&systems)
        .bind(&ids)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(ids.into_iter().collect())
    }

    async fn latest_profiles(
        &mut self,
        profiles: &[Uuid],
    ) -> Result<HashMap<Uuid, (i64, String)>, StoreError> {
        if profiles.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(Uuid, i64, String)> = sqlx::query_as(
            "SELECT profile_id, latest_version, latest_hash FROM profiles \
             WHERE profile_id = ANY($1) AND latest_version IS NOT NULL",
        )
        .bind(profiles)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, version, hash)| (id, (version, hash)))
            .collect())
    }

    async fn set_links(&mut self, links: &[(SourceRef, Uuid)]) -> Result<(), StoreError> {
        if links.is_empty() {
            return Ok(());
        }
        // One statement may not update a row twice: a repeated record keeps its last link.
        let last: HashMap<&SourceRef, Uuid> = links.iter().map(|(r, p)| (r, *p)).collect();
        let refs = distinct(links.iter().map(|(record, _)| record));
        let [systems, streams, ids] = ref_columns(refs.iter().copied());
        let profiles: Vec<Uuid> = refs.iter().map(|r| last[*r]).collect();
        sqlx::query(
            "INSERT INTO links (system, stream, source_id, profile_id) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[]) \
             ON CONFLICT (system, stream, source_id) DO UPDATE SET profile_id = excluded.profile_id",
        )
        .bind(&systems)
        .bind(&streams)
        .bind(&ids)
        .bind(&profiles)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn write_profiles(&mut self, writes: &[ProfileWrite]) -> Result<(), StoreError> {
        // One statement may not update a profiles row twice: a profile written again in one
        // call starts the next round, so rounds (and outbox rows) keep the input order.
        let mut round: Vec<&ProfileWrite> = Vec::new();
        let mut in_round = std::collections::HashSet::new();
        for write in writes {
            if !in_round.insert(write.profile.profile_id) {
                write_profile_round(&mut self.tx, &round).await?;
                round.clear();
                in_round = std::collections::HashSet::from([write.profile.profile_id]);
            }
            round.push(write);
        }
        write_profile_round(&mut self.tx, &round).await
    }

    async fn latest_profile_bodies(
        &mut self,
        profiles: &[Uuid],
    ) -> Result<HashMap<Uuid, CustomerProfile>, StoreError> {
        if profiles.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT p.profile_id, v.body FROM profiles p \
             JOIN profile_versions v ON v.profile_id = p.profile_id \
                                    AND v.version = p.latest_version \
             WHERE p.profile_id = ANY($1)",
        )
        .bind(profiles)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(id, body)| {
                let profile = serde_json::from_str(&body).map_err(|error| {
                    StoreError::Corrupt(format!("profile {id}: undecodable version: {error}"))
                })?;
                Ok((id, profile))
            })
            .collect()
    }

    async fn open_orders_with_skus(&mut self, skus: &[String]) -> Result<Vec<Order>, StoreError> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        // Candidate orders come from `order_skus`; the open ones among them whose lines
        // (embedded or standalone) are on a wanted SKU now are kept.
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT o.system, o.stream, o.source_id, o.body FROM records o \
             WHERE (o.system, o.source_id) IN \
                   (SELECT s.system, s.order_id FROM order_skus s WHERE s.sku = ANY($1)) \
               AND o.entity = 'order' \
               AND (o.body::jsonb ->> 'status') IN ('open', 'partially_fulfilled') \
               AND (EXISTS (SELECT 1 FROM jsonb_array_elements( \
                                CASE WHEN jsonb_typeof(o.body::jsonb -> 'lines') = 'array' \
                                     THEN o.body::jsonb -> 'lines' ELSE '[]'::jsonb END) l \
                            WHERE l ->> 'sku' = ANY($1)) \
                    OR EXISTS (SELECT 1 FROM records li \
                               WHERE li.entity = 'order_line' AND li.system = o.system \
                                 AND li.order_id = o.source_id \
                                 AND li.body::jsonb #>> '{line,sku}' = ANY($1))) \
             ORDER BY o.system, o.stream, o.source_id",
        )
        .bind(skus)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut orders = rows
            .into_iter()
            .map(|(system, stream, source_id, body)| {
                decode_order(&body, &format!("{system}/{stream}/{source_id}"))
            })
            .collect::<Result<Vec<Order>, StoreError>>()?;
        attach_lines(&mut self.tx, &mut orders.iter_mut().collect::<Vec<_>>()).await?;
        Ok(orders)
    }

    async fn sku_records(&mut self, skus: &[String]) -> Result<Vec<Record>, StoreError> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT r.system, r.stream, r.source_id, r.body FROM records r \
             WHERE (r.body::jsonb ->> 'sku') = ANY($1) \
               AND r.entity IN ('inventory', 'supplier_item', 'product') \
             ORDER BY r.system, r.stream, r.source_id",
        )
        .bind(skus)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(system, stream, source_id, body)| {
                decode_record(&body, &format!("{system}/{stream}/{source_id}"))
            })
            .collect()
    }

    async fn profile_metric_rows(&mut self) -> Result<Vec<MetricRow>, StoreError> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT p.profile_id, p.metrics FROM profiles p \
             WHERE p.retired_into IS NULL AND p.metrics IS NOT NULL \
               AND EXISTS (SELECT 1 FROM links l WHERE l.profile_id = p.profile_id) \
             ORDER BY p.profile_id",
        )
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(id, metrics)| metric_row_of(id, &metrics))
            .collect()
    }
}

/// Writes profile versions of distinct profiles and their outbox rows (in input order).
async fn write_profile_round(
    conn: &mut PgConnection,
    writes: &[&ProfileWrite],
) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(writes.len());
    let mut versions = Vec::with_capacity(writes.len());
    let mut hashes = Vec::with_capacity(writes.len());
    let mut metrics = Vec::with_capacity(writes.len());
    let mut bodies = Vec::with_capacity(writes.len());
    let mut event_ids = Vec::with_capacity(writes.len());
    let mut event_types = Vec::with_capacity(writes.len());
    let mut event_bodies = Vec::with_capacity(writes.len());
    for write in writes {
        let profile_id = write.profile.profile_id;
        let body = serde_json::to_string(&write.profile).map_err(|error| {
            StoreError::Corrupt(format!("cannot encode profile {profile_id}: {error}"))
        })?;
        ids.push(profile_id);
        versions.push(write.profile.version);
        hashes.push(write.content_hash.as_str());
        metrics.push(metric_columns(&write.profile));
        bodies.push(body);
        event_ids.push(format!("{profile_id}:{}", write.profile.version));
        event_types.push(write.event_type.as_str());
        event_bodies.push(write.event_body.as_str());
    }
    // The profiles rows first (profile_versions references them); versions only move forward,
    // so a stale rebuild can never become the latest version.
    let advanced = sqlx::query(
        "INSERT INTO profiles (profile_id, created_at, latest_version, latest_hash, metrics) \
         SELECT id, now(), v, h, m \
         FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[]) AS k(id, v, h, m) \
         ON CONFLICT (profile_id) DO UPDATE \
         SET latest_version = excluded.latest_version, latest_hash = excluded.latest_hash, \
             metrics = excluded.metrics \
         WHERE profiles.latest_version IS NULL \
            OR profiles.latest_version < excluded.latest_version",
    )
    .bind(&ids)
    .bind(&versions)
    .bind(&hashes)
    .bind(&metrics)
    .execute(&mut *conn)
    .await?;
    if let ([write], 0) = (writes, advanced.rows_affected()) {
        return Err(StoreError::Corrupt(format!(
            "profile {}: version {} is not newer than the stored latest version",
            write.profile.profile_id, write.profile.version
        )));
    }
    if advanced.rows_affected() != writes.len() as u64 {
        let stale: Vec<String> = writes
            .iter()
            .map(|w| format!("{} v{}", w.profile.profile_id, w.profile.version))
            .collect();
        return Err(StoreError::Corrupt(format!(
            "{} of {} profile versions are not newer than the stored latest version (among {})",
            writes.len() as u64 - advanced.rows_affected(),
            writes.len(),
            stale.join(", ")
        )));
    }
    sqlx::query(
        "INSERT INTO profile_versions (profile_id, version, content_hash, body, created_at) \
         SELECT id, v, h, b, now() \
         FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[]) AS k(id, v, h, b)",
    )
    .bind(&ids)
    .bind(&versions)
    .bind(&hashes)
    .bind(&bodies)
    .execute(&mut *conn)
    .await?;
    // Identity values are drawn as the ordered rows are inserted: seq follows input order.
    sqlx::query(
        "WITH added AS ( \
             INSERT INTO outbox (event_id, event_type, body, created_at) \
             SELECT i, t, b, now() \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(i, t, b, ord) \
             ORDER BY ord \
             RETURNING seq) \
         INSERT INTO outbox_pending (seq) SELECT seq FROM added",
    )
    .bind(&event_ids)
    .bind(&event_types)
    .bind(&event_bodies)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
