//! The embedded store: one SQLite file in WAL mode.
//!
//! [`SqliteStore`] owns a connection pool and implements [`Store`]; [`SqliteTx`] is one
//! `BEGIN IMMEDIATE` transaction implementing [`StoreTx`]. Taking the write lock at `BEGIN`
//! means a batch never fails half-way on a read-to-write lock upgrade: it waits (up to the
//! 5 s busy timeout) before doing anything, or not at all. Dropping a [`SqliteTx`] without
//! [`StoreTx::commit`] rolls it back.
//!
//! Invariants: the schema comes only from the numbered migrations in `migrations/sqlite`
//! (run on every [`SqliteStore::open`], a no-op once applied); SQL text is always a literal
//! and every value is a bound parameter. Lists of any length (match keys, outbox seqs) are
//! bound as one JSON array and expanded with `json_each`, so SQLite's bound-variable limit
//! never applies and no SQL is assembled at run time. The set-based [`StoreTx`] methods use
//! the same device to run a fixed number of statements per call whatever its length, with
//! `json_each` as the outer loop of every join (`CROSS JOIN`) so each item is one index
//! lookup. Records are stored as their serde JSON and uuids and times as TEXT (RFC 3339, UTC).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use uuid::Uuid;

use super::rows::{
    DecisionRow, IDENTITY_PAGE_KEYS, IDENTITY_PAGE_LINKS, IDENTITY_PAGE_RECORDS, RELINK_BACKLOG,
    decisions, decode_customer, decode_line_item, decode_order, decode_record, distinct,
    identity_nodes, in_input_order, ingested_file, last_match_keys, metric_columns, metric_row_of,
    order_sku_rows, parent_ids, parse_time, parse_uuid, plan_upserts, position, source_ref,
    stored_size, supply_rows,
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

static MIGRATOR: Migrator = sqlx::migrate!("src/store/migrations/sqlite");

/// How long a connection waits for another writer's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Readers run concurrently under WAL; writers queue on the database lock, so a handful of
/// connections is plenty for one daemon.
const MAX_CONNECTIONS: u32 = 4;
/// Bytes of the database file each connection maps into memory.
const MMAP_SIZE: u64 = 128 << 20;
/// KiB of page cache per connection.
const CACHE_KIB: u64 = 32 << 10;
/// WAL pages (4 KiB each) written before a checkpoint.
const WAL_PAGES: u64 = 16_384;

/// The SQLite implementation of [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing, with parent directories) the database file and runs the
    /// migrations. WAL journal, busy_timeout 5 s, foreign keys on, reads memory-mapped.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(|error| {
                sqlx::Error::Io(std::io::Error::new(
                    error.kind(),
                    format!("cannot create directory {}: {error}", parent.display()),
                ))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // Reads go through a memory map instead of a copy per page read, and a page
            // cache larger than the 2 MiB default keeps the indexes a run walks in memory.
            .pragma("mmap_size", MMAP_SIZE.to_string())
            .pragma("cache_size", format!("-{}", CACHE_KIB))
            // The WAL is copied back into the database every `WAL_PAGES` pages instead of
            // every 1 000: a page that many batches change (index pages above all) is then
            // written back once rather than once per batch.
            .pragma("wal_autocheckpoint", WAL_PAGES.to_string());
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// The connection pool, for tests and ad-hoc counts.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// One open `BEGIN IMMEDIATE` transaction of a [`SqliteStore`].
pub struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
}

impl std::fmt::Debug for SqliteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTx").finish_non_exhaustive()
    }
}

fn now() -> String {
    Timestamp::now().to_string()
}
/// The rows of `sql` (the keys or links query of `identity_page`) in the range of source
/// refs after `from`, up to and including `to`.
async fn page_range<T>(
    conn: &mut SqliteConnection,
    sql: &'static str,
    from: (&str, &str, &str),
    to: &SourceRef,
) -> Result<Vec<T>, StoreError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
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

/// Adds the `order_skus` rows of `records` (see the migration that made the table).
async fn index_order_skus<'a>(
    conn: &mut sqlx::SqliteConnection,
    records: impl IntoIterator<Item = &'a Record>,
) -> Result<(), StoreError> {
    let rows = order_sku_rows(records);
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO order_skus (sku, system, order_id) \
         SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each($1) WHERE true \
         ON CONFLICT DO NOTHING",
    )
    .bind(json_list(&rows, "order skus")?)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Attaches the standalone order lines stored for each order (see [`Order::attach_lines`]),
/// in one statement for all of them.
async fn attach_lines(
    conn: &mut sqlx::SqliteConnection,
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
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT j.key, r.stream, r.source_id, r.body FROM json_each($1) j \
         CROSS JOIN records r INDEXED BY records_by_order \
             ON r.entity = 'order_line' AND r.system = j.value ->> 0 \
            AND r.order_id = j.value ->> 1",
    )
    .bind(json_list(&keys, "order ids")?)
    .fetch_all(&mut *conn)
    .await?;
    let mut items: HashMap<&(String, String), Vec<OrderLineItem>> = HashMap::new();
    for (key, stream, source_id, body) in rows {
        let order = keys[position(key, keys.len())?];
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
    String,
);

/// Possible matches by status (`$1`, all when NULL) and id (`$2`, all when NULL), at most `$3`.
const SELECT_POSSIBLE_MATCHES: &str = "SELECT id, a_system, a_stream, a_source_id, b_system, \
     b_stream, b_source_id, weight, detail, status, created_at FROM possible_matches \
     WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR id = $2) ORDER BY id LIMIT $3";

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
        created_at: parse_time(&created_at, &format!("possible match {id}"))?,
    })
}

/// A JSON array of the given values, bound as one parameter and expanded with `json_each`.
fn json_list<T: serde::Serialize>(values: &[T], what: &str) -> Result<String, StoreError> {
    serde_json::to_string(values)
        .map_err(|error| StoreError::Corrupt(format!("cannot encode {what}: {error}")))
}

/// A source ref as the JSON triple `[system, stream, source_id]` that the batch statements
/// take apart with `->> 0`, `->> 1` and `->> 2`.
fn ref_triple(record: &SourceRef) -> (&str, &str, &str) {
    (&record.system, &record.stream, &record.source_id)
}

/// Follows `retired_into` from `profile_id` to the profile that is still live, and returns
/// its latest version. A retirement cycle can only come from a corrupted store; it is
/// reported instead of looping.
async fn live_profile(
    conn: &mut SqliteConnection,
    profile_id: Uuid,
) -> Result<Option<CustomerProfile>, StoreError> {
    let mut current = profile_id;
    let mut seen = HashSet::from([current]);
    loop {
        let retired_into: Option<Option<String>> =
            sqlx::query_scalar("SELECT retired_into FROM profiles WHERE profile_id = $1")
                .bind(current.to_string())
                .fetch_optional(&mut *conn)
                .await?;
        let Some(Some(next)) = retired_into else {
            break;
        };
        let next = parse_uuid(&next, &format!("profile {current} retired_into"))?;
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
    .bind(current.to_string())
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
impl Store for SqliteStore {
    async fn begin(&self) -> Result<Box<dyn StoreTx>, StoreError> {
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(Box::new(SqliteTx { tx }))
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
        .bind(now())
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn finish_run(&self, run_id: i64, status: &str, summary: &str) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE job_runs SET finished_at = $1, status = $2, summary = $3 WHERE id = $4",
        )
        .bind(now())
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
        let started: Option<String> = sqlx::query_scalar(
            "SELECT started_at FROM job_runs WHERE job = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(job)
        .fetch_optional(&self.pool)
        .await?;
        started
            .map(|text| parse_time(&text, "job_runs.started_at"))
            .transpose()
    }

    async fn recent_runs(&self, limit: i64) -> Result<Vec<JobRun>, StoreError> {
        let rows: Vec<(i64, String, String, Option<String>, String, Option<String>)> =
            sqlx::query_as(
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
                    started_at: parse_time(&started_at, "job_runs.started_at")?,
                    finished_at: finished_at
                        .map(|text| parse_time(&text, "job_runs.finished_at"))
                        .transpose()?,
                    status,
                    summary,
                })
            })
            .collect()
    }

    async fn pending_events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT seq, event_id, event_type, body FROM outbox \
             WHERE delivered_at IS NULL AND seq > $2 ORDER BY seq LIMIT $1",
        )
        .bind(limit)
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
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
        // A re-delivered row keeps the time of its first confirmed delivery.
        sqlx::query(
            "UPDATE outbox SET delivered_at = $1 \
             WHERE delivered_at IS NULL AND seq IN (SELECT value FROM json_each($2))",
        )
        .bind(now())
        .bind(json_list(seqs, "outbox seqs")?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn pending_count(&self) -> Result<i64, StoreError> {
        let count = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(count)
    }

    async fn profile(&self, profile_id: Uuid) -> Result<Option<CustomerProfile>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        live_profile(&mut conn, profile_id).await
    }

    async fn profiles_by_email(&self, email: &str) -> Result<Vec<Uuid>, StoreError> {
        // SQLite's lower() folds ASCII letters only: addresses differing solely in the case
        // of non-ASCII letters do not match. Both sides are folded the same way, so the
        // lookup is at least symmetric.
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT l.profile_id FROM records r \
             JOIN links l ON l.system = r.system AND l.stream = r.stream \
                         AND l.source_id = r.source_id \
             JOIN json_each(r.body, '$.emails') e \
             WHERE r.entity = 'customer' AND lower(e.value) = lower($1) \
             ORDER BY l.profile_id",
        )
        .bind(email)
        .fetch_all(&self.pool)
        .await?;
        ids.iter()
            .map(|id| parse_uuid(id, "links.profile_id"))
            .collect()
    }

    async fn quarantine_rows(&self, limit: i64) -> Result<Vec<QuarantineRow>, StoreError> {
        let rows: Vec<(i64, Option<i64>, String, String, String, String, String)> = sqlx::query_as(
            "SELECT id, run_id, connector, stream, source_ref, raw, reason FROM quarantine \
                 ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, run_id, connector, stream, source_ref, raw, reason)| QuarantineRow {
                    id,
                    run_id,
                    connector,
                    stream,
                    source_ref,
                    raw,
                    reason,
                },
            )
            .collect())
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
            .bind(1)
            .fetch_optional(&self.pool)
            .await?;
        row.map(possible_match_row).transpose()
    }

    async fn decide_possible_match(
        &self,
        id: i64,
        accept: bool,
    ) -> Result<Option<PossibleMatchRow>, StoreError> {
        let mut tx = SqliteTx {
            tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
        };
        let row: Option<PossibleMatchTuple> = sqlx::query_as(SELECT_POSSIBLE_MATCHES)
            .bind(None::<&str>)
            .bind(id)
            .bind(1)
            .fetch_optional(&mut *tx.tx)
            .await?;
        let Some(row) = row.map(possible_match_row).transpose()? else {
            return Ok(None);
        };
        sqlx::query("UPDATE possible_matches SET status = $1, decided_at = $2 WHERE id = $3")
            .bind(if accept { "accepted" } else { "rejected" })
            .bind(now())
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
        // `after = None` starts before every record: ("", "", "") sorts first.
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
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
        rows.into_iter()
            .map(|(system, stream, source_id, profile_id)| {
                let record = source_ref((system, stream, source_id));
                let profile = parse_uuid(&profile_id, &format!("link of {record}"))?;
                Ok((record, profile))
            })
            .collect()
    }
}

#[async_trait]
impl StoreTx for SqliteTx {
    async fn upsert_record(&mut self, record: &Record, run_id: i64) -> Result<Upsert, StoreError> {
        let source = record.source();
        let hash = record.content_hash();
        let stored: Option<String> = sqlx::query_scalar(
            "SELECT content_hash FROM records \
             WHERE system = $1 AND stream = $2 AND source_id = $3",
        )
        .bind(&source.system)
        .bind(&source.stream)
        .bind(&source.source_id)
        .fetch_optional(&mut *self.tx)
        .await?;
        if stored.as_deref() == Some(hash.as_str()) {
            return Ok(Upsert::Unchanged);
        }
        let body = serde_json::to_string(record).map_err(|error| {
            StoreError::Corrupt(format!("cannot encode record {source}: {error}"))
        })?;
        let (customer_id, order_id) = parent_ids(record);
        if stored.is_none() {
            sqlx::query(
                "INSERT INTO records (system, stream, source_id, entity, content_hash, body, \
                 customer_id, order_id, first_run, last_changed_run, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $10, $8, $8, $9)",
            )
            .bind(&source.system)
            .bind(&source.stream)
            .bind(&source.source_id)
            .bind(record.kind().as_str())
            .bind(&hash)
            .bind(&body)
            .bind(customer_id)
            .bind(run_id)
            .bind(now())
            .bind(order_id)
            .execute(&mut *self.tx)
            .await?;
            index_order_skus(&mut self.tx, [record]).await?;
            return Ok(Upsert::Inserted);
        }
        sqlx::query(
            "UPDATE records SET entity = $1, content_hash = $2, body = $3, customer_id = $4, \
             last_changed_run = $5, updated_at = $6, order_id = $10 \
             WHERE system = $7 AND stream = $8 AND source_id = $9",
        )
        .bind(record.kind().as_str())
        .bind(&hash)
        .bind(&body)
        .bind(customer_id)
        .bind(run_id)
        .bind(now())
        .bind(&source.system)
        .bind(&source.stream)
        .bind(&source.source_id)
        .bind(order_id)
        .execute(&mut *self.tx)
        .await?;
        index_order_skus(&mut self.tx, [record]).await?;
        Ok(Upsert::Updated)
    }

    async fn quarantine(&mut self, entry: &QuarantineEntry, run_id: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO quarantine (run_id, connector, stream, source_ref, raw, reason, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(run_id)
        .bind(&entry.connector)
        .bind(&entry.stream)
        .bind(&entry.source_ref)
        .bind(&entry.raw)
        .bind(&entry.reason)
        .bind(now())
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
            "INSERT INTO cursors (connector, stream, cursor, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (connector, stream) DO UPDATE \
             SET cursor = excluded.cursor, updated_at = excluded.updated_at",
        )
        .bind(connector)
        .bind(stream)
        .bind(cursor)
        .bind(now())
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
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (connector, stream, path, size, hash) DO NOTHING",
        )
        .bind(connector)
        .bind(stream)
        .bind(&file.path)
        .bind(size)
        .bind(&file.hash)
        .bind(now())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn set_match_keys(
        &mut self,
        record: &SourceRef,
        keys: &[String],
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM match_keys WHERE system = $1 AND stream = $2 AND source_id = $3")
            .bind(&record.system)
            .bind(&record.stream)
            .bind(&record.source_id)
            .execute(&mut *self.tx)
            .await?;
        if keys.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO match_keys (key, system, stream, source_id) \
             SELECT DISTINCT value, $1, $2, $3 FROM json_each($4)",
        )
        .bind(&record.system)
        .bind(&record.stream)
        .bind(&record.source_id)
        .bind(json_list(keys, "match keys")?)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn records_with_keys(
        &mut self,
        keys: &[String],
    ) -> Result<Vec<(SourceRef, Option<Uuid>)>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT DISTINCT m.system, m.stream, m.source_id, l.profile_id FROM match_keys m \
             LEFT JOIN links l ON l.system = m.system AND l.stream = m.stream \
                              AND l.source_id = m.source_id \
             WHERE m.key IN (SELECT value FROM json_each($1)) \
             ORDER BY m.system, m.stream, m.source_id",
        )
        .bind(json_list(keys, "match keys")?)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(system, stream, source_id, profile_id)| {
                let record = source_ref((system, stream, source_id));
                let profile_id = profile_id
                    .map(|id| parse_uuid(&id, &format!("link of {record}")))
                    .transpose()?;
                Ok((record, profile_id))
            })
            .collect()
    }

    async fn match_keys(&mut self, record: &SourceRef) -> Result<Vec<String>, StoreError> {
        let keys = sqlx::query_scalar(
            "SELECT key FROM match_keys \
             WHERE system = $1 AND stream = $2 AND source_id = $3 ORDER BY key",
        )
        .bind(&record.system)
        .bind(&record.stream)
        .bind(&record.source_id)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(keys)
    }

    async fn link_of(&mut self, record: &SourceRef) -> Result<Option<Uuid>, StoreError> {
        let profile_id: Option<String> = sqlx::query_scalar(
            "SELECT profile_id FROM links WHERE system = $1 AND stream = $2 AND source_id = $3",
        )
        .bind(&record.system)
        .bind(&record.stream)
        .bind(&record.source_id)
        .fetch_optional(&mut *self.tx)
        .await?;
        profile_id
            .map(|id| parse_uuid(&id, &format!("link of {record}")))
            .transpose()
    }

    async fn set_link(&mut self, record: &SourceRef, profile_id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO links (system, stream, source_id, profile_id) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (system, stream, source_id) DO UPDATE SET profile_id = excluded.profile_id",
        )
        .bind(&record.system)
        .bind(&record.stream)
        .bind(&record.source_id)
        .bind(profile_id.to_string())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn retire_profile(&mut self, retired: Uuid, survivor: Uuid) -> Result<(), StoreError> {
        if retired == survivor {
            return Err(StoreError::Corrupt(format!(
                "cannot retire profile {retired} into itself"
            )));
        }
        sqlx::query(
            "INSERT INTO profiles (profile_id, created_at, retired_into) VALUES ($1, $2, $3) \
             ON CONFLICT (profile_id) DO UPDATE SET retired_into = excluded.retired_into",
        )
        .bind(retired.to_string())
        .bind(now())
        .bind(survivor.to_string())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn customers_of(&mut self, profile_id: Uuid) -> Result<Vec<Customer>, StoreError> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            // CROSS JOIN fixes the join order: without statistics SQLite may otherwise walk
            // every customer record through the entity index instead of the profile's links.
            "SELECT r.system, r.stream, r.source_id, r.body FROM links l \
             CROSS JOIN records r ON r.system = l.system AND r.stream = l.stream \
                           AND r.source_id = l.source_id \
             WHERE l.profile_id = $1 AND r.entity = 'customer' \
             ORDER BY r.system, r.stream, r.source_id",
        )
        .bind(profile_id.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(system, stream, source_id, body)| {
                decode_customer(&body, &source_ref((system, stream, source_id)).to_string())
            })
            .collect()
    }

    async fn orders_of_customer(
        &mut self,
        system: &str,
        customer_id: &str,
    ) -> Result<Vec<Order>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            // Without statistics SQLite may pick the primary key (system only) and scan the
            // whole system; the customer index answers this exactly.
            "SELECT stream, source_id, body FROM records INDEXED BY records_by_customer \
             WHERE entity = 'order' AND system = $1 AND customer_id = $2 \
             ORDER BY stream, source_id",
        )
        .bind(system)
        .bind(customer_id)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut orders = rows
            .into_iter()
            .map(|(stream, source_id, body)| {
                decode_order(&body, &format!("{system}/{stream}/{source_id}"))
            })
            .collect::<Result<Vec<Order>, StoreError>>()?;
        attach_lines(&mut self.tx, &mut orders.iter_mut().collect::<Vec<_>>()).await?;
        Ok(orders)
    }

    async fn profiles_of_customer_id(
        &mut self,
        system: &str,
        customer_id: &str,
    ) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT l.profile_id FROM records r \
             JOIN links l ON l.system = r.system AND l.stream = r.stream \
                         AND l.source_id = r.source_id \
             WHERE r.entity = 'customer' AND r.system = $1 AND r.source_id = $2 \
             ORDER BY l.profile_id",
        )
        .bind(system)
        .bind(customer_id)
        .fetch_all(&mut *self.tx)
        .await?;
        ids.iter()
            .map(|id| parse_uuid(id, "links.profile_id"))
            .collect()
    }

    async fn latest_profile(
        &mut self,
        profile_id: Uuid,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let latest: Option<(i64, String)> = sqlx::query_as(
            "SELECT latest_version, latest_hash FROM profiles \
             WHERE profile_id = $1 AND latest_version IS NOT NULL",
        )
        .bind(profile_id.to_string())
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(latest)
    }

    async fn write_profile(
        &mut self,
        profile: &CustomerProfile,
        content_hash: &str,
        event_type: &str,
        event_body: &str,
    ) -> Result<(), StoreError> {
        let profile_id = profile.profile_id.to_string();
        let body = serde_json::to_string(profile).map_err(|error| {
            StoreError::Corrupt(format!("cannot encode profile {profile_id}: {error}"))
        })?;
        let created_at = now();
        // The profiles row goes first: profile_versions references it. Versions only move
        // forward, so a stale rebuild can never become the latest version.
        let advanced = sqlx::query(
            "INSERT INTO profiles (profile_id, created_at, latest_version, latest_hash, metrics) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (profile_id) DO UPDATE \
             SET latest_version = excluded.latest_version, latest_hash = excluded.latest_hash, \
                 metrics = excluded.metrics \
             WHERE profiles.latest_version IS NULL \
                OR profiles.latest_version < excluded.latest_version",
        )
        .bind(&profile_id)
        .bind(&created_at)
        .bind(profile.version)
        .bind(content_hash)
        .bind(metric_columns(profile))
        .execute(&mut *self.tx)
        .await?;
        if advanced.rows_affected() == 0 {
            return Err(StoreError::Corrupt(format!(
                "profile {profile_id}: version {} is not newer than the stored latest version",
                profile.version
            )));
        }
        sqlx::query(
            "INSERT INTO profile_versions (profile_id, version, content_hash, body, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&profile_id)
        .bind(profile.version)
        .bind(content_hash)
        .bind(&body)
        .bind(&created_at)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query(
            "INSERT INTO outbox (event_id, event_type, body, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(format!("{profile_id}:{}", profile.version))
        .bind(event_type)
        .bind(event_body)
        .bind(&created_at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn stored_order_customers(
        &mut self,
        orders: &[SourceRef],
    ) -> Result<HashMap<SourceRef, String>, StoreError> {
        if orders.is_empty() {
            return Ok(HashMap::new());
        }
        let refs: Vec<_> = orders.iter().map(ref_triple).collect();
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT r.system, r.stream, r.source_id, r.customer_id FROM json_each($1) j \
             CROSS JOIN records r ON r.system = j.value ->> 0 AND r.stream = j.value ->> 1 \
                                 AND r.source_id = j.value ->> 2 \
             WHERE r.entity = 'order' AND r.customer_id IS NOT NULL",
        )
        .bind(json_list(&refs, "order refs")?)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(system, stream, source_id, customer)| {
                (source_ref((system, stream, source_id)), customer)
            })
            .collect())
    }

    async fn block_members(
        &mut self,
        keys: &[String],
        max_block: i64,
    ) -> Result<BlockLookup, StoreError> {
        if keys.is_empty() {
            return Ok(BlockLookup::default());
        }
        let keys = json_list(&distinct(keys), "blocking keys")?;
        let sizes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT m.key, COUNT(*) FROM json_each($1) j \
             CROSS JOIN match_keys m ON m.key = j.value \
             GROUP BY m.key HAVING COUNT(*) > $2 ORDER BY m.key",
        )
        .bind(&keys)
        .bind(max_block)
        .fetch_all(&mut *self.tx)
        .await?;
        let oversized: Vec<&str> = sizes.iter().map(|(key, _)| key.as_str()).collect();
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT m.key, m.system, m.stream, m.source_id FROM json_each($1) j \
             CROSS JOIN match_keys m ON m.key = j.value \
             WHERE m.key NOT IN (SELECT value FROM json_each($2)) \
             ORDER BY m.key, m.system, m.stream, m.source_id",
        )
        .bind(&keys)
        .bind(json_list(&oversized, "blocking keys")?)
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
        let triples: Vec<_> = distinct(records).into_iter().map(ref_triple).collect();
        let mut rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
            "SELECT j.key, r.system, r.stream, r.source_id, r.body FROM json_each($1) j \
             CROSS JOIN records r ON r.system = j.value ->> 0 AND r.stream = j.value ->> 1 \
                                 AND r.source_id = j.value ->> 2 \
             WHERE r.entity = 'customer'",
        )
        .bind(json_list(&triples, "source refs")?)
        .fetch_all(&mut *self.tx)
        .await?;
        // Ordered here rather than by an ORDER BY, which would copy every body into a
        // temporary B-tree to sort rows that mostly arrive in order already.
        rows.sort_by_key(|row| row.0);
        rows.into_iter()
            .map(|(_, system, stream, source_id, body)| {
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
        let triples: Vec<_> = distinct(records).into_iter().map(ref_triple).collect();
        let rows: Vec<DecisionRow> = sqlx::query_as(
            "SELECT DISTINCT d.a_system, d.a_stream, d.a_source_id, \
                        d.b_system, d.b_stream, d.b_source_id, d.decision \
                 FROM json_each($1) j CROSS JOIN identity_decisions d \
                 ON (d.a_system = j.value ->> 0 AND d.a_stream = j.value ->> 1 \
                     AND d.a_source_id = j.value ->> 2) \
                 OR (d.b_system = j.value ->> 0 AND d.b_stream = j.value ->> 1 \
                     AND d.b_source_id = j.value ->> 2) \
                 ORDER BY 1, 2, 3, 4, 5, 6",
        )
        .bind(json_list(&triples, "source refs")?)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(decisions(rows))
    }

    async fn set_decision(&mut self, decision: &IdentityDecision) -> Result<(), StoreError> {
        let (a, b) = (&decision.a, &decision.b);
        sqlx::query(
            "INSERT INTO identity_decisions (a_system, a_stream, a_source_id, b_system, \
             b_stream, b_source_id, decision, decided_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
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
        .bind(now())
        .execute(&mut *self.tx)
        .await?;
        // A pending review of the pair is settled by the decision.
        sqlx::query(
            "UPDATE possible_matches SET status = $7, decided_at = $8 \
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
        .bind(now())
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
            let triples: Vec<_> = distinct(scope).into_iter().map(ref_triple).collect();
            sqlx::query(
                "DELETE FROM possible_matches WHERE status = 'pending' AND id IN ( \
                     SELECT p.id FROM json_each($1) j CROSS JOIN possible_matches p \
                     ON p.a_system = j.value ->> 0 AND p.a_stream = j.value ->> 1 \
                         AND p.a_source_id = j.value ->> 2 \
                     UNION ALL \
                     SELECT p.id FROM json_each($1) j CROSS JOIN possible_matches p \
                     ON p.b_system = j.value ->> 0 AND p.b_stream = j.value ->> 1 \
                         AND p.b_source_id = j.value ->> 2)",
            )
            .bind(json_list(&triples, "source refs")?)
            .execute(&mut *self.tx)
            .await?;
        }
        if pairs.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = pairs
            .iter()
            .map(|p| {
                (
                    &p.a.system,
                    &p.a.stream,
                    &p.a.source_id,
                    &p.b.system,
                    &p.b.stream,
                    &p.b.source_id,
                    p.weight,
                    &p.detail,
                )
            })
            .collect();
        sqlx::query(
            "INSERT INTO possible_matches (a_system, a_stream, a_source_id, b_system, b_stream, \
             b_source_id, weight, detail, status, created_at) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, \
                    value ->> 5, value ->> 6, value ->> 7, 'pending', $2 \
             FROM json_each($1) WHERE true \
             ON CONFLICT (a_system, a_stream, a_source_id, b_system, b_stream, b_source_id) \
             DO NOTHING",
        )
        .bind(json_list(&rows, "possible matches")?)
        .bind(now())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn queue_relink(&mut self, records: &[SourceRef]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let triples: Vec<_> = distinct(records).into_iter().map(ref_triple).collect();
        sqlx::query(
            "INSERT INTO relink_queue (system, stream, source_id) \
             SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each($1) WHERE true \
             ON CONFLICT DO NOTHING",
        )
        .bind(json_list(&triples, "source refs")?)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn take_relink(&mut self, limit: i64) -> Result<Vec<SourceRef>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "DELETE FROM relink_queue WHERE rowid IN \
             (SELECT rowid FROM relink_queue ORDER BY system, stream, source_id LIMIT $1) \
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
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        sqlx::query(
            "INSERT INTO profile_queue (profile_id) \
             SELECT value FROM json_each($1) WHERE true ON CONFLICT DO NOTHING",
        )
        .bind(json_list(&ids, "profile ids")?)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn take_profiles(&mut self, limit: i64) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "DELETE FROM profile_queue WHERE profile_id IN \
             (SELECT profile_id FROM profile_queue ORDER BY profile_id LIMIT $1) \
             RETURNING profile_id",
        )
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut ids = rows
            .into_iter()
            .map(|(id,)| parse_uuid(&id, "profile queue"))
            .collect::<Result<Vec<Uuid>, StoreError>>()?;
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
        let rows: Vec<(&str, Option<i64>)> = skus
            .iter()
            .map(|(sku, from)| (sku.as_str(), from.map(|t| t.as_microsecond())))
            .collect();
        sqlx::query(
            "INSERT INTO supply_queue (sku, changed_from) \
             SELECT value ->> 0, value ->> 1 FROM json_each($1) WHERE true \
             ON CONFLICT (sku) DO UPDATE SET changed_from = CASE \
                 WHEN supply_queue.changed_from IS NULL OR excluded.changed_from IS NULL \
                 THEN NULL ELSE min(supply_queue.changed_from, excluded.changed_from) END",
        )
        .bind(json_list(&rows, "skus")?)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn take_supply(&mut self) -> Result<Vec<(String, Option<Timestamp>)>, StoreError> {
        let rows: Vec<(String, Option<i64>)> =
            sqlx::query_as("DELETE FROM supply_queue RETURNING sku, changed_from")
                .fetch_all(&mut *self.tx)
                .await?;
        supply_rows(rows)
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
        let (system, stream, source_id) = after.map_or(("", "", ""), ref_triple);
        // `after = None` starts before every record: ("", "", "") sorts first.
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
        let links: Vec<(String, String, String, String)> =
            page_range(&mut self.tx, IDENTITY_PAGE_LINKS, from, &last).await?;
        let links = links
            .into_iter()
            .map(|(system, stream, source_id, profile_id)| {
                let record = source_ref((system, stream, source_id));
                let profile = parse_uuid(&profile_id, &format!("link of {record}"))?;
                Ok((record, profile))
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
            "INSERT INTO match_model (id, body, trained_at) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET body = excluded.body, trained_at = excluded.trained_at",
        )
        .bind(body)
        .bind(now())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn customers_of_orders(
        &mut self,
        orders: &[(String, String)],
    ) -> Result<BTreeSet<(String, String)>, StoreError> {
        if orders.is_empty() {
            return Ok(BTreeSet::new());
        }
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT r.system, r.customer_id FROM json_each($1) j \
             CROSS JOIN records r INDEXED BY records_by_source_id \
                 ON r.system = j.value ->> 0 AND r.source_id = j.value ->> 1 \
             WHERE r.entity = 'order' AND r.customer_id IS NOT NULL",
        )
        .bind(json_list(&distinct(orders), "order ids")?)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn set_links(&mut self, links: &[(SourceRef, Uuid)]) -> Result<(), StoreError> {
        if links.is_empty() {
            return Ok(());
        }
        let rows: Vec<(&str, &str, &str, String)> = links
            .iter()
            .map(|(r, p)| {
                (
                    r.system.as_str(),
                    r.stream.as_str(),
                    r.source_id.as_str(),
                    p.to_string(),
                )
            })
            .collect();
        // `WHERE true` tells SQLite's parser the ON CONFLICT belongs to the INSERT, not to a
        // join in the SELECT. Rows are inserted in array order, so a repeated record keeps
        // its last link.
        sqlx::query(
            "INSERT INTO links (system, stream, source_id, profile_id) \
             SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3 \
             FROM json_each($1) j WHERE true ORDER BY j.key \
             ON CONFLICT (system, stream, source_id) DO UPDATE SET profile_id = excluded.profile_id",
        )
        .bind(json_list(&rows, "links")?)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn write_profiles(&mut self, writes: &[ProfileWrite]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let created_at = now();
        // Three lists, so each statement parses only the JSON it reads: the bodies are most
        // of the bytes.
        let mut heads = Vec::with_capacity(writes.len());
        let mut versions = Vec::with_capacity(writes.len());
        let mut events = Vec::with_capacity(writes.len());
        for write in writes {
            let profile_id = write.profile.profile_id.to_string();
            let body = serde_json::to_string(&write.profile).map_err(|error| {
                StoreError::Corrupt(format!("cannot encode profile {profile_id}: {error}"))
            })?;
            let event_id = format!("{profile_id}:{}", write.profile.version);
            heads.push(serde_json::json!([
                profile_id,
                write.profile.version,
                write.content_hash,
                metric_columns(&write.profile)
            ]));
            versions.push(serde_json::json!([
                profile_id,
                write.profile.version,
                write.content_hash,
                body
            ]));
            events.push(serde_json::json!([
                event_id,
                write.event_type,
                write.event_body
            ]));
        }
        // As in `write_profile`: the profiles rows first, and versions only move forward.
        let advanced = sqlx::query(
            "INSERT INTO profiles (profile_id, created_at, latest_version, latest_hash, metrics) \
             SELECT j.value ->> 0, $2, j.value ->> 1, j.value ->> 2, j.value ->> 3 \
             FROM json_each($1) j WHERE true ORDER BY j.key \
             ON CONFLICT (profile_id) DO UPDATE \
             SET latest_version = excluded.latest_version, latest_hash = excluded.latest_hash, \
                 metrics = excluded.metrics \
             WHERE profiles.latest_version IS NULL \
                OR profiles.latest_version < excluded.latest_version",
        )
        .bind(json_list(&heads, "profile versions")?)
        .bind(&created_at)
        .execute(&mut *self.tx)
        .await?;
        if advanced.rows_affected() != writes.len() as u64 {
            let stale: Vec<String> = writes
                .iter()
                .map(|w| format!("{} v{}", w.profile.profile_id, w.profile.version))
                .collect();
            return Err(StoreError::Corrupt(format!(
                "{} of {} profile versions are not newer than the stored latest version \
                 (among {})",
                writes.len() as u64 - advanced.rows_affected(),
                writes.len(),
                stale.join(", ")
            )));
        }
        sqlx::query(
            "INSERT INTO profile_versions (profile_id, version, content_hash, body, created_at) \
             SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, $2 \
             FROM json_each($1) j ORDER BY j.key",
        )
        .bind(json_list(&versions, "profile versions")?)
        .bind(&created_at)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query(
            "INSERT INTO outbox (event_id, event_type, body, created_at) \
             SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, $2 \
             FROM json_each($1) j ORDER BY j.key",
        )
        .bind(json_list(&events, "outbox events")?)
        .bind(&created_at)
        .execute(&mut *self.tx)
        .await?;
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
        let refs = distinct(records.iter().map(Record::source));
        let triples: Vec<_> = refs.iter().map(|r| ref_triple(r)).collect();
        let stored: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT r.system, r.stream, r.source_id, r.content_hash FROM json_each($1) j \
             CROSS JOIN records r ON r.system = j.value ->> 0 AND r.stream = j.value ->> 1 \
                                 AND r.source_id = j.value ->> 2",
        )
        .bind(json_list(&triples, "source refs")?)
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
        let rows: Vec<_> = plan
            .writes
            .iter()
            .map(|w| {
                (
                    w.source.system.as_str(),
                    w.source.stream.as_str(),
                    w.source.source_id.as_str(),
                    w.entity,
                    w.content_hash,
                    w.body.as_str(),
                    w.customer_id,
                    w.order_id,
                )
            })
            .collect();
        // `WHERE true` resolves the parsing ambiguity between a join's ON and ON CONFLICT.
        sqlx::query(
            "INSERT INTO records (system, stream, source_id, entity, content_hash, body, \
             customer_id, order_id, first_run, last_changed_run, updated_at) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, \
                    value ->> 5, value ->> 6, value ->> 7, $2, $2, $3 \
             FROM json_each($1) WHERE true \
             ON CONFLICT (system, stream, source_id) DO UPDATE SET \
             entity = excluded.entity, content_hash = excluded.content_hash, \
             body = excluded.body, customer_id = excluded.customer_id, \
             order_id = excluded.order_id, last_changed_run = excluded.last_changed_run, updated_at = excluded.updated_at",
        )
        .bind(json_list(&rows, "records")?)
        .bind(run_id)
        .bind(now())
        .execute(&mut *self.tx)
        .await?;
        let written = records
            .iter()
            .zip(&plan.outcomes)
            .filter(|(_, outcome)| **outcome != Upsert::Unchanged)
            .map(|(record, _)| record);
        index_order_skus(&mut self.tx, written).await?;
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
        let triples: Vec<_> = refs.iter().map(|r| ref_triple(r)).collect();
        // Only the keys that changed are written: a changed record mostly keeps its keys, and
        // each key removed or added touches a page of the key tree at random.
        let stored_rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT m.key, m.system, m.stream, m.source_id FROM json_each($1) j \
             CROSS JOIN match_keys m INDEXED BY match_keys_by_record \
                 ON m.system = j.value ->> 0 AND m.stream = j.value ->> 1 \
                AND m.source_id = j.value ->> 2",
        )
        .bind(json_list(&triples, "source refs")?)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut wanted: Vec<(&str, &str, &str, &str)> = last_match_keys(&refs, keys)
            .into_iter()
            .map(|(key, r)| {
                (
                    key,
                    r.system.as_str(),
                    r.stream.as_str(),
                    r.source_id.as_str(),
                )
            })
            .collect();
        // In primary-key order and without repeats: each page of the key tree is then
        // visited once per batch, in order.
        wanted.sort_unstable();
        wanted.dedup();
        let mut stored: Vec<(&str, &str, &str, &str)> = stored_rows
            .iter()
            .map(|(k, system, stream, id)| {
                (k.as_str(), system.as_str(), stream.as_str(), id.as_str())
            })
            .collect();
        stored.sort_unstable();
        let gone: Vec<_> = stored
            .iter()
            .filter(|row| wanted.binary_search(row).is_err())
            .collect();
        let added: Vec<_> = wanted
            .iter()
            .filter(|row| stored.binary_search(row).is_err())
            .collect();
        if !gone.is_empty() {
            sqlx::query(
                "DELETE FROM match_keys WHERE (key, system, stream, source_id) IN ( \
                     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 \
                     FROM json_each($1))",
            )
            .bind(json_list(&gone, "match keys")?)
            .execute(&mut *self.tx)
            .await?;
        }
        if !added.is_empty() {
            sqlx::query(
                "INSERT INTO match_keys (key, system, stream, source_id) \
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each($1)",
            )
            .bind(json_list(&added, "match keys")?)
            .execute(&mut *self.tx)
            .await?;
        }
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
        let triples = json_list(
            &refs.iter().map(|r| ref_triple(r)).collect::<Vec<_>>(),
            "source refs",
        )?;
        let key_rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT j.key, m.key FROM json_each($1) j \
             CROSS JOIN match_keys m INDEXED BY match_keys_by_record \
                 ON m.system = j.value ->> 0 AND m.stream = j.value ->> 1 \
                AND m.source_id = j.value ->> 2",
        )
        .bind(&triples)
        .fetch_all(&mut *self.tx)
        .await?;
        let link_rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT j.key, l.profile_id FROM json_each($1) j \
             CROSS JOIN links l ON l.system = j.value ->> 0 AND l.stream = j.value ->> 1 \
                               AND l.source_id = j.value ->> 2",
        )
        .bind(&triples)
        .fetch_all(&mut *self.tx)
        .await?;

        let mut found: Vec<(Vec<String>, Option<Uuid>)> = vec![(Vec::new(), None); refs.len()];
        for (key, match_key) in key_rows {
            found[position(key, refs.len())?].0.push(match_key);
        }
        for (keys, _) in &mut found {
            keys.sort_unstable();
        }
        for (key, profile_id) in link_rows {
            let index = position(key, refs.len())?;
            let context = format!("link of {}", refs[index]);
            found[index].1 = Some(parse_uuid(&profile_id, &context)?);
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
        let profiles = distinct(profiles);
        let ids: Vec<String> = profiles.iter().map(|id| id.to_string()).collect();
        let mut rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
            // CROSS JOIN fixes the join order, as in `customers_of`: the bound profiles drive
            // the links index, each link reaches its record by primary key.
            "SELECT j.key, r.system, r.stream, r.source_id, r.body FROM json_each($1) j \
             CROSS JOIN links l INDEXED BY links_by_profile ON l.profile_id = j.value \
             CROSS JOIN records r ON r.system = l.system AND r.stream = l.stream \
                                 AND r.source_id = l.source_id \
             WHERE r.entity = 'customer'",
        )
        .bind(json_list(&ids, "profile ids")?)
        .fetch_all(&mut *self.tx)
        .await?;
        // Ordered here rather than by an ORDER BY, which would copy every body into a
        // temporary B-tree to sort rows that mostly arrive in order already.
        rows.sort_by(|a, b| (a.0, &a.1, &a.2, &a.3).cmp(&(b.0, &b.1, &b.2, &b.3)));
        let mut out: HashMap<Uuid, Vec<Customer>> = HashMap::new();
        for (key, system, stream, source_id, body) in rows {
            let profile_id = *profiles[position(key, profiles.len())?];
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
        let mut rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            // The customer index, forced as in `orders_of_customer`, answers each bound
            // customer exactly.
            "SELECT j.key, r.stream, r.source_id, r.body FROM json_each($1) j \
             CROSS JOIN records r INDEXED BY records_by_customer \
                 ON r.entity = 'order' AND r.system = j.value ->> 0 \
                AND r.customer_id = j.value ->> 1",
        )
        .bind(json_list(&customers, "customer ids")?)
        .fetch_all(&mut *self.tx)
        .await?;
        // Ordered here, as in `customers_of_many`.
        rows.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
        let mut out: HashMap<(String, String), Vec<Order>> = HashMap::new();
        for (key, stream, source_id, body) in rows {
            let customer = customers[position(key, customers.len())?];
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
        let ids: Vec<String> = sqlx::query_scalar(
            // Without statistics SQLite may serve `entity = 'customer' AND system = ?` from
            // the customer index and walk every customer of the system per bound id.
            "SELECT DISTINCT l.profile_id FROM json_each($1) j \
             CROSS JOIN records r INDEXED BY records_by_source_id \
                 ON r.system = j.value ->> 0 AND r.source_id = j.value ->> 1 \
             CROSS JOIN links l ON l.system = r.system AND l.stream = r.stream \
                               AND l.source_id = r.source_id \
             WHERE r.entity = 'customer'",
        )
        .bind(json_list(customers, "customer ids")?)
        .fetch_all(&mut *self.tx)
        .await?;
        ids.iter()
            .map(|id| parse_uuid(id, "links.profile_id"))
            .collect()
    }

    async fn latest_profiles(
        &mut self,
        profiles: &[Uuid],
    ) -> Result<HashMap<Uuid, (i64, String)>, StoreError> {
        if profiles.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<String> = profiles.iter().map(|id| id.to_string()).collect();
        let rows: Vec<(i64, i64, String)> = sqlx::query_as(
            "SELECT j.key, p.latest_version, p.latest_hash FROM json_each($1) j \
             CROSS JOIN profiles p ON p.profile_id = j.value \
             WHERE p.latest_version IS NOT NULL",
        )
        .bind(json_list(&ids, "profile ids")?)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(key, version, hash)| {
                Ok((profiles[position(key, profiles.len())?], (version, hash)))
            })
            .collect()
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    async fn latest_profile_bodies(
        &mut self,
        profiles: &[Uuid],
    ) -> Result<HashMap<Uuid, CustomerProfile>, StoreError> {
        if profiles.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<String> = profiles.iter().map(|id| id.to_string()).collect();
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT j.key, v.body FROM json_each($1) j \
             CROSS JOIN profiles p ON p.profile_id = j.value \
             CROSS JOIN profile_versions v ON v.profile_id = p.profile_id \
                                          AND v.version = p.latest_version",
        )
        .bind(json_list(&ids, "profile ids")?)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(key, body)| {
                let id = profiles[position(key, profiles.len())?];
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
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            // Candidate orders come from `order_skus`; the open ones among them whose lines
            // (embedded or standalone) are on a wanted SKU now are kept. `+o.entity` keeps
            // the planner on the candidates' rowids: on `entity` it walked every stored order
            // per call. Rows are put in order in Rust, not through a temporary B-tree.
            "SELECT o.system, o.stream, o.source_id, o.body FROM records o \
             WHERE o.rowid IN (SELECT c.rowid FROM json_each($1) j \
                               CROSS JOIN order_skus s ON s.sku = j.value \
                               CROSS JOIN records c INDEXED BY records_by_source_id \
                                   ON c.system = s.system AND c.source_id = s.order_id) \
               AND +o.entity = 'order' \
               AND json_extract(o.body, '$.status') IN ('open', 'partially_fulfilled') \
               AND (EXISTS (SELECT 1 FROM json_each(o.body, '$.lines') l \
                            WHERE json_extract(l.value, '$.sku') IN (SELECT value FROM json_each($1))) \
                    OR EXISTS (SELECT 1 FROM records li INDEXED BY records_by_order \
                               WHERE li.entity = 'order_line' AND li.system = o.system \
                                 AND li.order_id = o.source_id \
                                 AND json_extract(li.body, '$.line.sku') \
                                     IN (SELECT value FROM json_each($1))))",
        )
        .bind(json_list(skus, "skus")?)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut orders = rows
            .into_iter()
            .map(|(system, stream, source_id, body)| {
                decode_order(&body, &format!("{system}/{stream}/{source_id}"))
            })
            .collect::<Result<Vec<Order>, StoreError>>()?;
        orders.sort_by(|a, b| a.source.cmp(&b.source));
        attach_lines(&mut self.tx, &mut orders.iter_mut().collect::<Vec<_>>()).await?;
        Ok(orders)
    }

    async fn sku_records(&mut self, skus: &[String]) -> Result<Vec<Record>, StoreError> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT DISTINCT r.system, r.stream, r.source_id, r.body FROM json_each($1) j \
             CROSS JOIN records r INDEXED BY records_by_sku \
                 ON json_extract(r.body, '$.sku') = j.value \
                AND r.entity IN ('inventory', 'supplier_item', 'product') \
             ORDER BY r.system, r.stream, r.source_id",
        )
        .bind(json_list(skus, "skus")?)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(system, stream, source_id, body)| {
                decode_record(&body, &format!("{system}/{stream}/{source_id}"))
            })
            .collect()
    }

    async fn profile_metric_rows(&mut self) -> Result<Vec<MetricRow>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT p.profile_id, p.metrics FROM profiles p \
             WHERE p.retired_into IS NULL AND p.metrics IS NOT NULL \
               AND EXISTS (SELECT 1 FROM links l WHERE l.profile_id = p.profile_id) \
             ORDER BY p.profile_id",
        )
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(id, metrics)| {
                let id = parse_uuid(&id, "profiles.profile_id")?;
                metric_row_of(id, &metrics)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;
    use tempfile::TempDir;

    use super::*;
    use crate::model::OrderLine;
    use crate::model::profile::{GoldenRecord, Money, OrderMetrics, SCHEMA_VERSION};

    async fn temp_store() -> (TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("conflux.db"))
            .await
            .unwrap();
        (dir, store)
    }

    fn source(system: &str, stream: &str, source_id: &str) -> SourceRef {
        SourceRef {
            system: system.to_string(),
            stream: stream.to_string(),
            source_id: source_id.to_string(),
        }
    }

    fn customer(system: &str, stream: &str, source_id: &str, emails: &[&str]) -> Customer {
        Customer {
            source: source(system, stream, source_id),
            full_name: Some(format!("Customer {source_id}")),
            emails: emails.iter().map(|e| e.to_string()).collect(),
            ..Customer::default()
        }
    }

    fn order(system: &str, source_id: &str, customer_id: Option<&str>) -> Order {
        Order {
            source: source(system, "orders", source_id),
            order_number: source_id.to_string(),
            customer_id: customer_id.map(str::to_string),
            total: Some(Decimal::new(1050, 2)),
            currency: Some("EUR".to_string()),
            ..Order::default()
        }
    }

    fn profile(profile_id: Uuid, version: i64, name: &str) -> CustomerProfile {
        CustomerProfile {
            schema_version: SCHEMA_VERSION.to_string(),
            profile_id,
            version,
            merged_ids: Vec::new(),
            golden: GoldenRecord {
                full_name: Some(name.to_string()),
                ..GoldenRecord::default()
            },
            metrics: OrderMetrics {
                order_count: 0,
                lifetime_value: Money {
                    amount: Decimal::ZERO,
                    currency: "EUR".to_string(),
                },
                average_order_value: None,
                first_order_at: None,
                last_order_at: None,
                days_since_last_order: None,
            },
            alternates: Vec::new(),
            conflicts: Vec::new(),
            segment: Default::default(),
            open_orders: Vec::new(),
            earliest_projected_date: None,
            top_categories: Vec::new(),
            data_quality: Default::default(),
            as_of: None,
            sources: Vec::new(),
        }
    }

    fn write(profile: CustomerProfile, event_type: &str) -> ProfileWrite {
        let event_body = format!("{{\"id\":\"{}:{}\"}}", profile.profile_id, profile.version);
        ProfileWrite {
            content_hash: format!("hash-{}-{}", profile.profile_id, profile.version),
            profile,
            event_type: event_type.to_string(),
            event_body,
        }
    }

    #[tokio::test]
    async fn stored_order_customers_names_the_customer_each_stored_order_has_now() {
        let (_dir, store) = temp_store().await;
        let mut tx = store.begin().await.unwrap();
        tx.upsert_records(
            &[
                Record::Order(order("sap", "o1", Some("c1"))),
                Record::Order(order("sap", "o2", None)),
                Record::Customer(customer("sap", "orders", "o3", &[])),
            ],
            1,
        )
        .await
        .unwrap();
        let found = tx
            .stored_order_customers(&[
                source("sap", "orders", "o1"),
                source("sap", "orders", "o2"),
                source("sap", "orders", "o3"),
                source("sap", "orders", "missing"),
            ])
            .await
            .unwrap();
        assert_eq!(
            found,
            HashMap::from([(source("sap", "orders", "o1"), "c1".to_string())])
        );
        assert!(tx.stored_order_customers(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn set_links_moves_links_in_one_call_and_a_repeated_record_keeps_its_last_link() {
        let (_dir, store) = temp_store().await;
        let (p1, p2) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let (a, b) = (
            source("sap", "customers", "a"),
            source("sap", "customers", "b"),
        );
        let mut tx = store.begin().await.unwrap();
        tx.set_link(&a, p1).await.unwrap();
        tx.set_links(&[]).await.unwrap();
        tx.set_links(&[(a.clone(), p2), (b.clone(), p1), (b.clone(), p2)])
            .await
            .unwrap();
        assert_eq!(tx.link_of(&a).await.unwrap(), Some(p2));
        assert_eq!(tx.link_of(&b).await.unwrap(), Some(p2));
        let many: Vec<(SourceRef, Uuid)> = (0..5000)
            .map(|i| (source("shop", "customers", &format!("k{i}")), p1))
            .collect();
        tx.set_links(&many).await.unwrap();
        assert_eq!(
            tx.link_of(&source("shop", "customers", "k4999"))
                .await
                .unwrap(),
            Some(p1)
        );
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn write_profiles_equals_one_row_writes_and_keeps_the_outbox_order() {
        let (_dir, batched) = temp_store().await;
        let (_dir2, single) = temp_store().await;
        let ids: Vec<Uuid> = (1..=3).map(Uuid::from_u128).collect();
        let first: Vec<ProfileWrite> = ids
            .iter()
            .map(|id| write(profile(*id, 1, "Anna"), "customer.profile.created"))
            .collect();
        let second = vec![write(
            profile(ids[1], 2, "Anna B."),
            "customer.profile.updated",
        )];
        for round in [&first, &second] {
            let mut tx = batched.begin().await.unwrap();
            tx.write_profiles(round).await.unwrap();
            tx.commit().await.unwrap();
            let mut tx = single.begin().await.unwrap();
            for w in round.iter() {
                tx.write_profile(&w.profile, &w.content_hash, &w.event_type, &w.event_body)
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
        }
        for store in [&batched, &single] {
            let events = store.pending_events(10).await.unwrap();
            let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
            assert_eq!(
                ids,
                [
                    format!("{}:1", Uuid::from_u128(1)),
                    format!("{}:1", Uuid::from_u128(2)),
                    format!("{}:1", Uuid::from_u128(3)),
                    format!("{}:2", Uuid::from_u128(2)),
                ]
            );
            assert_eq!(events[3].event_type, "customer.profile.updated");
            assert_eq!(
                events[3].body,
                format!("{{\"id\":\"{}:2\"}}", Uuid::from_u128(2))
            );
            let latest = store.profile(Uuid::from_u128(2)).await.unwrap().unwrap();
            assert_eq!(latest.version, 2);
            assert_eq!(latest.golden.full_name.as_deref(), Some("Anna B."));
            let mut tx = store.begin().await.unwrap();
            assert_eq!(
                tx.latest_profiles(&[Uuid::from_u128(2)]).await.unwrap()[&Uuid::from_u128(2)],
                (2, format!("hash-{}-2", Uuid::from_u128(2)))
            );
        }
    }

    #[tokio::test]
    async fn write_profiles_refuses_a_stale_version_and_writes_nothing_of_the_batch() {
        let (_dir, store) = temp_store().await;
        let id = Uuid::from_u128(7);
        let mut tx = store.begin().await.unwrap();
        tx.write_profiles(&[write(profile(id, 2, "Anna"), "customer.profile.created")])
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let mut tx = store.begin().await.unwrap();
        let error = tx
            .write_profiles(&[
                write(
                    profile(Uuid::from_u128(8), 1, "Otto"),
                    "customer.profile.created",
                ),
                write(profile(id, 2, "Anna again"), "customer.profile.updated"),
            ])
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("1 of 2 profile versions are not newer"),
            "{error}"
        );
        drop(tx);
        assert_eq!(store.pending_count().await.unwrap(), 1);
        assert_eq!(store.profile(Uuid::from_u128(8)).await.unwrap(), None);
    }

    async fn count(store: &SqliteStore, table: &'static str) -> i64 {
        let sql = match table {
            "records" => "SELECT COUNT(*) FROM records",
            "outbox" => "SELECT COUNT(*) FROM outbox",
            "_sqlx_migrations" => "SELECT COUNT(*) FROM _sqlx_migrations",
            other => panic!("no count query for {other}"),
        };
        sqlx::query_scalar(sql)
            .fetch_one(store.pool())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn opening_twice_runs_migrations_once_and_creates_parent_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/nested/conflux.db");
        let first = SqliteStore::open(&path).await.unwrap();
        let mut tx = first.begin().await.unwrap();
        let record = Record::Customer(customer("erp", "customers", "1", &[]));
        assert_eq!(
            tx.upsert_record(&record, 1).await.unwrap(),
            Upsert::Inserted
        );
        tx.commit().await.unwrap();
        first.pool().close().await;

        let second = SqliteStore::open(&path).await.unwrap();
        assert_eq!(
            count(&second, "_sqlx_migrations").await,
            MIGRATOR.migrations.len() as i64,
            "each migration is recorded once"
        );
        assert_eq!(MIGRATOR.migrations.len(), 9);
        assert_eq!(count(&second, "records").await, 1);
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(second.pool())
            .await
            .unwrap();
        assert_eq!(journal, "wal");
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(second.pool())
            .await
            .unwrap();
        assert_eq!(foreign_keys, 1);
    }

    #[tokio::test]
    async fn open_reports_a_parent_directory_it_cannot_create() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, "a file, not a directory").unwrap();
        let error = SqliteStore::open(&blocker.join("state/conflux.db"))
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "store: error communicating with database: cannot create directory {}: \
                 Not a directory (os error 20)",
                blocker.join("state").display()
            )
        );
    }

    #[tokio::test]
    async fn upsert_reports_inserted_unchanged_updated_and_tracks_runs() {
        let (_dir, store) = temp_store().await;
        let mut first = order("erp", "SO-1", Some("C-7"));
        let mut tx = store.begin().await.unwrap();
        let inserted = tx
            .upsert_record(&Record::Order(first.clone()), 1)
            .await
            .unwrap();
        let unchanged = tx
            .upsert_record(&Record::Order(first.clone()), 2)
            .await
            .unwrap();
        first.total = Some(Decimal::new(2000, 2));
        first.customer_id = Some("C-8".to_string());
        let updated = tx
            .upsert_record(&Record::Order(first.clone()), 3)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            (inserted, unchanged, updated),
            (Upsert::Inserted, Upsert::Unchanged, Upsert::Updated)
        );

        let row: (String, String, Option<String>, i64, i64, String) = sqlx::query_as(
            "SELECT entity, content_hash, customer_id, first_run, last_changed_run, body \
             FROM records WHERE system = 'erp' AND stream = 'orders' AND source_id = 'SO-1'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        let record = Record::Order(first);
        assert_eq!(row.0, "order");
        assert_eq!(row.1, record.content_hash());
        assert_eq!(row.2.as_deref(), Some("C-8"));
        assert_eq!((row.3, row.4), (1, 3));
        assert_eq!(serde_json::from_str::<Record>(&row.5).unwrap(), record);

        let mut tx = store.begin().await.unwrap();
        let customer = Record::Customer(customer("erp", "customers", "C-8", &[]));
        assert_eq!(
            tx.upsert_record(&customer, 4).await.unwrap(),
            Upsert::Inserted
        );
        tx.commit().await.unwrap();
        let customer_id: Option<String> = sqlx::query_scalar(
            "SELECT customer_id FROM records WHERE entity = 'customer' AND source_id = 'C-8'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(customer_id, None);
    }

    #[tokio::test]
    async fn dropping_a_transaction_rolls_everything_back() {
        let (_dir, store) = temp_store().await;
        let profile_id = Uuid::from_u128(1);
        {
            let mut tx = store.begin().await.unwrap();
            let record = Record::Customer(customer("erp", "customers", "1", &["a@b.c"]));
            tx.upsert_record(&record, 1).await.unwrap();
            tx.set_link(record.source(), profile_id).await.unwrap();
            tx.write_profile(
                &profile(profile_id, 1, "A"),
                "h1",
                "customer.profile.created",
                "{}",
            )
            .await
            .unwrap();
            tx.mark_ingested(
                "drop",
                "customers",
                &IngestedFile {
                    path: "a.csv".to_string(),
                    size: 3,
                    hash: "abc".to_string(),
                },
            )
            .await
            .unwrap();
        }
        assert_eq!(count(&store, "records").await, 0);
        assert_eq!(count(&store, "outbox").await, 0);
        assert_eq!(store.profile(profile_id).await.unwrap(), None);
        assert!(
            store
                .ingested_files("drop", "customers")
                .await
                .unwrap()
                .is_empty()
        );
        // The connection went back to the pool usable: a new batch can write and commit.
        let mut tx = store.begin().await.unwrap();
        let record = Record::Customer(customer("erp", "customers", "1", &[]));
        assert_eq!(
            tx.upsert_record(&record, 2).await.unwrap(),
            Upsert::Inserted
        );
        tx.commit().await.unwrap();
        assert_eq!(count(&store, "records").await, 1);
    }

    #[tokio::test]
    async fn begin_takes_the_write_lock_immediately() {
        let (dir, store) = temp_store().await;
        let tx = store.begin().await.unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("conflux.db"))
            .busy_timeout(Duration::ZERO);
        let mut other = <SqliteConnection as sqlx::Connection>::connect_with(&options)
            .await
            .unwrap();
        let locked = sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap_err();
        assert_eq!(
            locked.to_string(),
            "error returned from database: (code: 5) database is locked"
        );
        drop(tx);
    }

    #[tokio::test]
    async fn a_cursor_moves_only_with_its_committed_batch() {
        let (_dir, store) = temp_store().await;
        assert_eq!(store.cursor("sap", "partners").await.unwrap(), None);
        let mut tx = store.begin().await.unwrap();
        tx.set_cursor(
            "sap",
            "partners",
            "2024-05-01T00:00:00Z'; DROP TABLE records; --",
        )
        .await
        .unwrap();
        drop(tx);
        assert_eq!(
            store.cursor("sap", "partners").await.unwrap(),
            None,
            "rolled back"
        );
        for cursor in ["2024-05-01T00:00:00Z", "2024-06-01T00:00:00Z"] {
            let mut tx = store.begin().await.unwrap();
            tx.set_cursor("sap", "partners", cursor).await.unwrap();
            tx.commit().await.unwrap();
        }
        assert_eq!(
            store.cursor("sap", "partners").await.unwrap().as_deref(),
            Some("2024-06-01T00:00:00Z")
        );
        assert_eq!(store.cursor("sap", "orders").await.unwrap(), None);
    }

    #[tokio::test]
    async fn ingested_files_are_idempotent_and_listed_per_stream() {
        let (_dir, store) = temp_store().await;
        let a = IngestedFile {
            path: "in/b.csv".to_string(),
            size: 10,
            hash: "h-b".to_string(),
        };
        let b = IngestedFile {
            path: "in/a.csv".to_string(),
            size: 20,
            hash: "h-a".to_string(),
        };
        let a_rewritten = IngestedFile {
            hash: "h-b2".to_string(),
            ..a.clone()
        };
        let mut tx = store.begin().await.unwrap();
        tx.mark_ingested("drop", "customers", &a).await.unwrap();
        tx.mark_ingested("drop", "customers", &a).await.unwrap();
        tx.mark_ingested("drop", "customers", &b).await.unwrap();
        tx.mark_ingested("drop", "customers", &a_rewritten)
            .await
            .unwrap();
        tx.mark_ingested("drop", "orders", &a).await.unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        tx.mark_ingested("drop", "customers", &a).await.unwrap();
        tx.commit().await.unwrap();

        assert_eq!(
            store.ingested_files("drop", "customers").await.unwrap(),
            vec![b, a.clone(), a_rewritten]
        );
        assert_eq!(
            store.ingested_files("drop", "orders").await.unwrap(),
            vec![a]
        );
        assert!(
            store
                .ingested_files("other", "orders")
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn quarantine_rows_are_listed_newest_first() {
        let (_dir, store) = temp_store().await;
        let mut tx = store.begin().await.unwrap();
        for n in 1..=3 {
            let entry = QuarantineEntry {
                connector: "drop".to_string(),
                stream: "customers".to_string(),
                source_ref: format!("in/c.csv:{n}"),
                raw: format!("raw {n}"),
                reason: format!("reason {n}"),
            };
            tx.quarantine(&entry, 7).await.unwrap();
        }
        tx.commit().await.unwrap();

        let rows = store.quarantine_rows(2).await.unwrap();
        assert_eq!(
            rows,
            vec![
                QuarantineRow {
                    id: 3,
                    run_id: Some(7),
                    connector: "drop".to_string(),
                    stream: "customers".to_string(),
                    source_ref: "in/c.csv:3".to_string(),
                    raw: "raw 3".to_string(),
                    reason: "reason 3".to_string(),
                },
                QuarantineRow {
                    id: 2,
                    run_id: Some(7),
                    connector: "drop".to_string(),
                    stream: "customers".to_string(),
                    source_ref: "in/c.csv:2".to_string(),
                    raw: "raw 2".to_string(),
                    reason: "reason 2".to_string(),
                },
            ]
        );
        assert_eq!(store.quarantine_rows(10).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn match_keys_are_replaced_and_looked_up_with_links() {
        let (_dir, store) = temp_store().await;
        let one = source("erp", "customers", "1");
        let two = source("crm", "contacts", "2");
        let three = source("erp", "customers", "3");
        let profile_id = Uuid::from_u128(42);
        let mut tx = store.begin().await.unwrap();
        tx.set_match_keys(&one, &["email:a@b.c".to_string(), "phone:+491".to_string()])
            .await
            .unwrap();
        tx.set_match_keys(
            &two,
            &["email:a@b.c".to_string(), "email:a@b.c".to_string()],
        )
        .await
        .unwrap();
        tx.set_match_keys(&three, &["email:x@y.z".to_string()])
            .await
            .unwrap();
        tx.set_link(&two, profile_id).await.unwrap();
        assert_eq!(
            tx.match_keys(&one).await.unwrap(),
            vec!["email:a@b.c".to_string(), "phone:+491".to_string()]
        );
        assert_eq!(
            tx.match_keys(&two).await.unwrap(),
            vec!["email:a@b.c".to_string()]
        );

        let found = tx
            .records_with_keys(&["email:a@b.c".to_string(), "phone:+491".to_string()])
            .await
            .unwrap();
        assert_eq!(
            found,
            vec![(two.clone(), Some(profile_id)), (one.clone(), None)]
        );

        tx.set_match_keys(&one, &["phone:+492".to_string()])
            .await
            .unwrap();
        assert_eq!(
            tx.match_keys(&one).await.unwrap(),
            vec!["phone:+492".to_string()]
        );
        assert_eq!(
            tx.records_with_keys(&["phone:+491".to_string()])
                .await
                .unwrap(),
            Vec::new()
        );
        tx.set_match_keys(&three, &[]).await.unwrap();
        assert!(tx.match_keys(&three).await.unwrap().is_empty());
        assert!(tx.records_with_keys(&[]).await.unwrap().is_empty());

        // More keys than SQLite accepts bound variables (32766) in one statement.
        let mut many: Vec<String> = (0..40_000).map(|n| format!("email:{n}@x.y")).collect();
        many.push("phone:+492".to_string());
        assert_eq!(
            tx.records_with_keys(&many).await.unwrap(),
            vec![(one.clone(), None)]
        );
        tx.set_match_keys(&three, &many).await.unwrap();
        assert_eq!(tx.match_keys(&three).await.unwrap().len(), 40_001);
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn links_resolve_customers_and_profiles_of_customer_ids() {
        let (_dir, store) = temp_store().await;
        let p1 = Uuid::from_u128(1);
        let p2 = Uuid::from_u128(2);
        let erp = customer("erp", "customers", "0010034884", &["a@b.c"]);
        let erp_other_stream = customer("erp", "contacts", "0010034884", &[]);
        let crm = customer("crm", "contacts", "c-1", &[]);
        let order_same_id = order("erp", "0010034884", None);
        let mut tx = store.begin().await.unwrap();
        for record in [
            Record::Customer(erp.clone()),
            Record::Customer(erp_other_stream.clone()),
            Record::Customer(crm.clone()),
            Record::Order(order_same_id.clone()),
        ] {
            tx.upsert_record(&record, 1).await.unwrap();
        }
        tx.set_link(&erp.source, p1).await.unwrap();
        tx.set_link(&crm.source, p1).await.unwrap();
        tx.set_link(&erp_other_stream.source, p1).await.unwrap();
        // Relinking replaces the earlier link.
        tx.set_link(&erp_other_stream.source, p2).await.unwrap();
        // A link on a non-customer record never counts as a customer of the profile.
        tx.set_link(&order_same_id.source, p1).await.unwrap();

        assert_eq!(
            tx.link_of(&erp_other_stream.source).await.unwrap(),
            Some(p2)
        );
        assert_eq!(
            tx.link_of(&source("erp", "customers", "missing"))
                .await
                .unwrap(),
            None
        );
        assert_eq!(tx.customers_of(p1).await.unwrap(), vec![crm, erp]);
        assert_eq!(tx.customers_of(p2).await.unwrap(), vec![erp_other_stream]);
        assert!(
            tx.customers_of(Uuid::from_u128(3))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            tx.profiles_of_customer_id("erp", "0010034884")
                .await
                .unwrap(),
            vec![p1, p2]
        );
        assert_eq!(
            tx.profiles_of_customer_id("crm", "c-1").await.unwrap(),
            vec![p1]
        );
        assert!(
            tx.profiles_of_customer_id("crm", "0010034884")
                .await
                .unwrap()
                .is_empty()
        );
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn standalone_lines_join_their_order_whichever_arrives_first() {
        let (_dir, store) = temp_store().await;
        let line = |id: &str, order_id: &str, number: &str, sku: &str| {
            Record::OrderLine(OrderLineItem {
                source: source("odoo", "lines", id),
                order_id: order_id.to_string(),
                line: OrderLine {
                    line_number: Some(number.to_string()),
                    sku: Some(sku.to_string()),
                    ..OrderLine::default()
                },
            })
        };
        let mut tx = store.begin().await.unwrap();
        // Lines of order 42 arrive a batch before the order; "10" sorts after "9".
        tx.upsert_records(
            &[
                line("501", "42", "10", "B"),
                line("500", "42", "9", "A"),
                line("502", "43", "1", "C"),
            ],
            1,
        )
        .await
        .unwrap();
        assert!(
            tx.customers_of_orders(&[("odoo".into(), "42".into())])
                .await
                .unwrap()
                .is_empty(),
            "an order not stored yet has no customer"
        );
        let mut with_own_lines = order("odoo", "43", Some("7"));
        with_own_lines.lines = vec![OrderLine {
            sku: Some("OWN".to_string()),
            ..OrderLine::default()
        }];
        tx.upsert_records(
            &[
                Record::Order(order("odoo", "42", Some("7"))),
                Record::Order(with_own_lines),
            ],
            1,
        )
        .await
        .unwrap();
        let skus = |orders: Vec<Order>| -> Vec<(String, Vec<String>)> {
            orders
                .into_iter()
                .map(|o| {
                    let skus = o.lines.into_iter().filter_map(|l| l.sku).collect();
                    (o.source.source_id, skus)
                })
                .collect()
        };
        let expected = vec![
            ("42".to_string(), vec!["A".to_string(), "B".to_string()]),
            ("43".to_string(), vec!["OWN".to_string()]),
        ];
        assert_eq!(
            skus(tx.orders_of_customer("odoo", "7").await.unwrap()),
            expected
        );
        let many = tx
            .orders_of_customers(&[("odoo".into(), "7".into())])
            .await
            .unwrap();
        assert_eq!(
            skus(many[&("odoo".to_string(), "7".to_string())].clone()),
            expected
        );
        assert_eq!(
            tx.customers_of_orders(&[("odoo".into(), "42".into()), ("odoo".into(), "99".into())])
                .await
                .unwrap(),
            BTreeSet::from([("odoo".to_string(), "7".to_string())])
        );
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn orders_of_customer_match_system_and_customer_id() {
        let (_dir, store) = temp_store().await;
        let a1 = order("erp", "SO-1", Some("C-1"));
        let a2 = order("erp", "SO-2", Some("C-1"));
        let other_customer = order("erp", "SO-3", Some("C-2"));
        let other_system = order("shop", "SO-4", Some("C-1"));
        let no_customer = order("erp", "SO-5", None);
        let mut tx = store.begin().await.unwrap();
        for o in [&a2, &a1, &other_customer, &other_system, &no_customer] {
            tx.upsert_record(&Record::Order(o.clone()), 1)
                .await
                .unwrap();
        }
        tx.upsert_record(
            &Record::Customer(customer("erp", "customers", "C-1", &[])),
            1,
        )
        .await
        .unwrap();
        assert_eq!(
            tx.orders_of_customer("erp", "C-1").await.unwrap(),
            vec![a1, a2]
        );
        assert_eq!(
            tx.orders_of_customer("shop", "C-1").await.unwrap(),
            vec![other_system]
        );
        assert!(
            tx.orders_of_customer("erp", "C-9")
                .await
                .unwrap()
                .is_empty()
        );
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn profiles_are_versioned_followed_through_retirement_and_fed_to_the_outbox() {
        let (_dir, store) = temp_store().await;
        let survivor = Uuid::from_u128(10);
        let retired = Uuid::from_u128(11);
        let v1 = profile(survivor, 1, "Müller GmbH");
        let v2 = profile(survivor, 2, "Müller AG");
        let r1 = profile(retired, 1, "Mueller");

        let mut tx = store.begin().await.unwrap();
        assert_eq!(tx.latest_profile(survivor).await.unwrap(), None);
        tx.write_profile(&v1, "hash-1", "customer.profile.created", "{\"n\":1}")
            .await
            .unwrap();
        tx.write_profile(&r1, "hash-r", "customer.profile.created", "{\"n\":2}")
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let mut tx = store.begin().await.unwrap();
        assert_eq!(
            tx.latest_profile(survivor).await.unwrap(),
            Some((1, "hash-1".to_string()))
        );
        tx.write_profile(&v2, "hash-2", "customer.profile.merged", "{\"n\":3}")
            .await
            .unwrap();
        tx.retire_profile(retired, survivor).await.unwrap();
        assert_eq!(
            tx.latest_profile(survivor).await.unwrap(),
            Some((2, "hash-2".to_string()))
        );
        tx.commit().await.unwrap();

        assert_eq!(store.profile(survivor).await.unwrap(), Some(v2.clone()));
        assert_eq!(store.profile(retired).await.unwrap(), Some(v2.clone()));
        assert_eq!(store.profile(Uuid::from_u128(99)).await.unwrap(), None);
        let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM profile_versions")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(versions, 3);

        // A profile retired before any version of it was stored, two merges deep.
        let mut tx = store.begin().await.unwrap();
        let unseen = Uuid::from_u128(12);
        tx.retire_profile(unseen, retired).await.unwrap();
        assert_eq!(tx.latest_profile(unseen).await.unwrap(), None);
        tx.commit().await.unwrap();
        assert_eq!(store.profile(unseen).await.unwrap(), Some(v2));

        assert_eq!(store.pending_count().await.unwrap(), 3);
        let pending = store.pending_events(2).await.unwrap();
        assert_eq!(
            pending,
            vec![
                OutboxEvent {
                    seq: 1,
                    event_id: format!("{survivor}:1"),
                    event_type: "customer.profile.created".to_string(),
                    body: "{\"n\":1}".to_string(),
                },
                OutboxEvent {
                    seq: 2,
                    event_id: format!("{retired}:1"),
                    event_type: "customer.profile.created".to_string(),
                    body: "{\"n\":2}".to_string(),
                },
            ]
        );
        store.mark_delivered(&[1, 2]).await.unwrap();
        assert_eq!(store.pending_count().await.unwrap(), 1);
        let rest = store.pending_events(10).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].seq, 3);
        assert_eq!(rest[0].event_id, format!("{survivor}:2"));
        assert_eq!(rest[0].event_type, "customer.profile.merged");
        store.mark_delivered(&[]).await.unwrap();
        store.mark_delivered(&[3]).await.unwrap();
        assert_eq!(store.pending_count().await.unwrap(), 0);
        assert!(store.pending_events(10).await.unwrap().is_empty());
        let delivered: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NOT NULL")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(delivered, 3);
    }

    #[tokio::test]
    async fn writing_a_profile_version_that_is_not_newer_fails_and_keeps_the_latest() {
        let (_dir, store) = temp_store().await;
        let id = Uuid::from_u128(5);
        let mut tx = store.begin().await.unwrap();
        tx.write_profile(&profile(id, 1, "A"), "h1", "customer.profile.created", "{}")
            .await
            .unwrap();
        tx.write_profile(&profile(id, 2, "B"), "h2", "customer.profile.updated", "{}")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        for stale in [2, 1] {
            let mut tx = store.begin().await.unwrap();
            let error = tx
                .write_profile(
                    &profile(id, stale, "C"),
                    "h3",
                    "customer.profile.updated",
                    "{}",
                )
                .await
                .unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "store: profile {id}: version {stale} is not newer than the stored latest \
                     version"
                )
            );
            assert_eq!(
                tx.latest_profile(id).await.unwrap(),
                Some((2, "h2".to_string()))
            );
        }
        assert_eq!(store.profile(id).await.unwrap(), Some(profile(id, 2, "B")));
        assert_eq!(store.pending_count().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn retirement_cycles_and_self_retirement_are_reported() {
        let (_dir, store) = temp_store().await;
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let mut tx = store.begin().await.unwrap();
        let error = tx.retire_profile(a, a).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("store: cannot retire profile {a} into itself")
        );
        tx.retire_profile(a, b).await.unwrap();
        tx.retire_profile(b, a).await.unwrap();
        tx.commit().await.unwrap();
        let error = store.profile(a).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("store: profile {a} is retired in a cycle through {a}")
        );
    }

    #[tokio::test]
    async fn profiles_by_email_compares_case_insensitively_over_linked_customers() {
        let (_dir, store) = temp_store().await;
        let p1 = Uuid::from_u128(1);
        let p2 = Uuid::from_u128(2);
        let one = customer(
            "erp",
            "customers",
            "1",
            &["info@mueller.de", "sales@mueller.de"],
        );
        let two = customer("crm", "contacts", "2", &["Info@Mueller.DE"]);
        let unlinked = customer("crm", "contacts", "3", &["info@mueller.de"]);
        let mut tx = store.begin().await.unwrap();
        for c in [&one, &two, &unlinked] {
            tx.upsert_record(&Record::Customer(c.clone()), 1)
                .await
                .unwrap();
        }
        tx.set_link(&one.source, p2).await.unwrap();
        tx.set_link(&two.source, p1).await.unwrap();
        tx.commit().await.unwrap();

        assert_eq!(
            store.profiles_by_email("INFO@mueller.de").await.unwrap(),
            vec![p1, p2]
        );
        assert_eq!(
            store.profiles_by_email("sales@mueller.de").await.unwrap(),
            vec![p2]
        );
        assert!(
            store
                .profiles_by_email("mueller.de")
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// id, job, started_at, finished_at, status, summary.
    type JobRunRow = (i64, String, String, Option<String>, String, Option<String>);

    #[tokio::test]
    async fn job_runs_record_start_and_outcome() {
        let (_dir, store) = temp_store().await;
        let first = store.start_run("nightly").await.unwrap();
        let second = store.start_run("hourly").await.unwrap();
        assert_eq!((first, second), (1, 2));
        store
            .finish_run(first, "succeeded", "{\"records\":3}")
            .await
            .unwrap();

        let rows: Vec<JobRunRow> = sqlx::query_as(
            "SELECT id, job, started_at, finished_at, status, summary FROM job_runs \
                 ORDER BY id",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        assert_eq!(rows.len(), 2);
        let (id, job, started_at, finished_at, status, summary) = &rows[0];
        assert_eq!(
            (*id, job.as_str(), status.as_str()),
            (1, "nightly", "succeeded")
        );
        assert_eq!(summary.as_deref(), Some("{\"records\":3}"));
        let started: Timestamp = started_at.parse().unwrap();
        let finished: Timestamp = finished_at.as_deref().unwrap().parse().unwrap();
        assert!(started <= finished);
        let (_, job, _, finished_at, status, summary) = &rows[1];
        assert_eq!((job.as_str(), status.as_str()), ("hourly", "running"));
        assert_eq!((finished_at, summary), (&None, &None));

        let error = store.finish_run(99, "failed", "{}").await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "store: cannot finish job run 99: no such run"
        );
    }

    #[tokio::test]
    async fn last_run_started_is_the_latest_run_of_the_job() {
        let (_dir, store) = temp_store().await;
        assert_eq!(store.last_run_started("nightly").await.unwrap(), None);
        let before = Timestamp::now();
        let first = store.start_run("nightly").await.unwrap();
        store.start_run("hourly").await.unwrap();
        store.finish_run(first, "failed", "{}").await.unwrap();
        let second = store.start_run("nightly").await.unwrap();

        let started = store.last_run_started("nightly").await.unwrap().unwrap();
        let recorded: String = sqlx::query_scalar("SELECT started_at FROM job_runs WHERE id = $1")
            .bind(second)
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(started, recorded.parse::<Timestamp>().unwrap());
        assert!(started >= before);
        assert_eq!(store.last_run_started("weekly").await.unwrap(), None);

        sqlx::query("UPDATE job_runs SET started_at = 'yesterday' WHERE id = $1")
            .bind(second)
            .execute(store.pool())
            .await
            .unwrap();
        let error = store.last_run_started("nightly").await.unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("store: job_runs.started_at: \"yesterday\" is not a timestamp: "),
            "{error}"
        );
    }

    #[tokio::test]
    async fn recent_runs_are_listed_newest_first() {
        let (_dir, store) = temp_store().await;
        let first = store.start_run("nightly").await.unwrap();
        store
            .finish_run(first, "ok", "{\"records_read\":3}")
            .await
            .unwrap();
        let second = store.start_run("hourly").await.unwrap();
        store.start_run("*").await.unwrap();

        let runs = store.recent_runs(2).await.unwrap();
        let listed: Vec<(i64, &str, &str, Option<&str>, bool)> = runs
            .iter()
            .map(|run| {
                (
                    run.id,
                    run.job.as_str(),
                    run.status.as_str(),
                    run.summary.as_deref(),
                    run.finished_at.is_some(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                (3, "*", "running", None, false),
                (second, "hourly", "running", None, false)
            ]
        );

        let all = store.recent_runs(10).await.unwrap();
        assert_eq!(all.len(), 3);
        let oldest = &all[2];
        assert_eq!(
            (oldest.id, oldest.status.as_str(), oldest.summary.as_deref()),
            (first, "ok", Some("{\"records_read\":3}"))
        );
        let finished = oldest.finished_at.unwrap();
        assert!(oldest.started_at <= finished);
    }

    /// Every row of `records` except `updated_at` (a clock reading), in key order.
    type StoredRecord = (
        String,
        String,
        String,
        String,
        String,
        String,
        Option<String>,
        i64,
        i64,
    );

    async fn stored_records(store: &SqliteStore) -> Vec<StoredRecord> {
        sqlx::query_as(
            "SELECT system, stream, source_id, entity, content_hash, body, customer_id, \
             first_run, last_changed_run FROM records ORDER BY system, stream, source_id",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
    }

    async fn stored_match_keys(store: &SqliteStore) -> Vec<(String, String, String, String)> {
        sqlx::query_as(
            "SELECT key, system, stream, source_id FROM match_keys \
             ORDER BY key, system, stream, source_id",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn upsert_records_matches_one_row_upserts_including_repeats_within_a_batch() {
        let (_batch_dir, batch_store) = temp_store().await;
        let (_row_dir, row_store) = temp_store().await;
        let c1 = Record::Customer(customer("erp", "customers", "1", &["a@b.c"]));
        let o1 = order("erp", "SO-1", Some("C-1"));
        let mut o1_changed = o1.clone();
        o1_changed.customer_id = Some("C-2".to_string());
        let c2 = Record::Customer(customer("crm", "contacts", "2", &[]));
        let mut c2_renamed = customer("crm", "contacts", "2", &[]);
        c2_renamed.full_name = Some("Renamed".to_string());
        let batches = vec![
            (
                1,
                vec![
                    c1.clone(),
                    Record::Order(o1.clone()),
                    c1.clone(),
                    Record::Order(o1_changed.clone()),
                    Record::Order(o1.clone()),
                ],
                vec![
                    Upsert::Inserted,
                    Upsert::Inserted,
                    Upsert::Unchanged,
                    Upsert::Updated,
                    Upsert::Updated,
                ],
            ),
            (
                2,
                vec![
                    c1.clone(),
                    Record::Order(o1_changed.clone()),
                    c2.clone(),
                    Record::Customer(c2_renamed.clone()),
                    Record::Customer(c2_renamed),
                ],
                vec![
                    Upsert::Unchanged,
                    Upsert::Updated,
                    Upsert::Inserted,
                    Upsert::Updated,
                    Upsert::Unchanged,
                ],
            ),
            (
                3,
                vec![c1.clone(), c2.clone()],
                vec![Upsert::Unchanged, Upsert::Updated],
            ),
        ];
        for (run_id, records, expected) in batches {
            let mut tx = batch_store.begin().await.unwrap();
            assert_eq!(tx.upsert_records(&records, run_id).await.unwrap(), expected);
            tx.commit().await.unwrap();
            let mut tx = row_store.begin().await.unwrap();
            let mut one_row = Vec::new();
            for record in &records {
                one_row.push(tx.upsert_record(record, run_id).await.unwrap());
            }
            tx.commit().await.unwrap();
            assert_eq!(one_row, expected);
            assert_eq!(
                stored_records(&batch_store).await,
                stored_records(&row_store).await
            );
        }

        let stored = stored_records(&batch_store).await;
        let summary: Vec<(&str, Option<&str>, i64, i64)> = stored
            .iter()
            .map(|row| (row.2.as_str(), row.6.as_deref(), row.7, row.8))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("2", None, 2, 3),
                ("1", None, 1, 1),
                ("SO-1", Some("C-2"), 1, 2),
            ]
        );
        assert_eq!(serde_json::from_str::<Record>(&stored[0].5).unwrap(), c2);

        let mut tx = batch_store.begin().await.unwrap();
        assert!(tx.upsert_records(&[], 4).await.unwrap().is_empty());
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn set_match_keys_many_matches_one_row_calls_and_the_last_list_wins() {
        let (_batch_dir, batch_store) = temp_store().await;
        let (_row_dir, row_store) = temp_store().await;
        let one = source("erp", "customers", "1");
        let two = source("crm", "contacts", "2");
        let three = source("erp", "customers", "3");
        let untouched = source("erp", "customers", "4");
        let keys = |list: &[&str]| list.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let before = vec![
            (one.clone(), keys(&["email:old@b.c", "phone:+491"])),
            (three.clone(), keys(&["email:three@b.c"])),
            (untouched.clone(), keys(&["email:four@b.c"])),
        ];
        let batch = vec![
            (one.clone(), keys(&["email:first@b.c"])),
            (
                two.clone(),
                keys(&["email:a@b.c", "email:a@b.c", "phone:+492"]),
            ),
            (three.clone(), Vec::new()),
            (one.clone(), keys(&["email:a@b.c", "phone:+491"])),
        ];
        for store in [&batch_store, &row_store] {
            let mut tx = store.begin().await.unwrap();
            for (record, keys) in &before {
                tx.set_match_keys(record, keys).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
        let mut tx = batch_store.begin().await.unwrap();
        tx.set_match_keys_many(&batch).await.unwrap();
        tx.set_match_keys_many(&[]).await.unwrap();
        tx.commit().await.unwrap();
        let mut tx = row_store.begin().await.unwrap();
        for (record, keys) in &batch {
            tx.set_match_keys(record, keys).await.unwrap();
        }
        tx.commit().await.unwrap();

        let stored = stored_match_keys(&batch_store).await;
        assert_eq!(stored, stored_match_keys(&row_store).await);
        let row = |key: &str, record: &SourceRef| {
            (
                key.to_string(),
                record.system.clone(),
                record.stream.clone(),
                record.source_id.clone(),
            )
        };
        assert_eq!(
            stored,
            vec![
                row("email:a@b.c", &two),
                row("email:a@b.c", &one),
                row("email:four@b.c", &untouched),
                row("phone:+491", &one),
                row("phone:+492", &two),
            ]
        );
    }

    #[tokio::test]
    async fn keys_and_links_match_one_row_lookups_in_input_order() {
        let (_dir, store) = temp_store().await;
        let one = source("erp", "customers", "1");
        let two = source("crm", "contacts", "2");
        let unlinked = source("erp", "customers", "3");
        let missing = source("erp", "customers", "9");
        let p1 = Uuid::from_u128(1);
        let mut tx = store.begin().await.unwrap();
        tx.set_match_keys(&one, &["phone:+491".to_string(), "email:a@b.c".to_string()])
            .await
            .unwrap();
        tx.set_match_keys(&unlinked, &["email:x@y.z".to_string()])
            .await
            .unwrap();
        tx.set_link(&one, p1).await.unwrap();
        tx.set_link(&two, p1).await.unwrap();

        let input = vec![
            missing.clone(),
            one.clone(),
            two.clone(),
            unlinked.clone(),
            one.clone(),
        ];
        let found = tx.keys_and_links(&input).await.unwrap();
        let mut one_row = Vec::new();
        for record in &input {
            one_row.push((
                tx.match_keys(record).await.unwrap(),
                tx.link_of(record).await.unwrap(),
            ));
        }
        assert_eq!(found, one_row);
        let one_found = (
            vec!["email:a@b.c".to_string(), "phone:+491".to_string()],
            Some(p1),
        );
        assert_eq!(
            found,
            vec![
                (Vec::new(), None),
                one_found.clone(),
                (Vec::new(), Some(p1)),
                (vec!["email:x@y.z".to_string()], None),
                one_found,
            ]
        );
        assert!(tx.keys_and_links(&[]).await.unwrap().is_empty());
        tx.commit().await.unwrap();
    }

    /// Two profiles over customers of two systems, a customer id shared by two streams of
    /// one system, orders of some customers, and a link on an order that must never count.
    async fn linked_store() -> (TempDir, SqliteStore, Uuid, Uuid) {
        let (dir, store) = temp_store().await;
        let p1 = Uuid::from_u128(1);
        let p2 = Uuid::from_u128(2);
        let erp = customer("erp", "customers", "C-1", &[]);
        let erp_other_stream = customer("erp", "contacts", "C-1", &[]);
        let crm = customer("crm", "contacts", "c-1", &[]);
        let records = vec![
            Record::Customer(erp.clone()),
            Record::Customer(erp_other_stream.clone()),
            Record::Customer(crm.clone()),
            Record::Customer(customer("erp", "customers", "C-2", &[])),
            Record::Order(order("erp", "SO-2", Some("C-1"))),
            Record::Order(order("erp", "SO-1", Some("C-1"))),
            Record::Order(order("erp", "C-1", Some("C-2"))),
            Record::Order(order("shop", "SO-3", Some("C-1"))),
        ];
        let mut tx = store.begin().await.unwrap();
        for record in &records {
            tx.upsert_record(record, 1).await.unwrap();
        }
        tx.set_link(&erp.source, p1).await.unwrap();
        tx.set_link(&crm.source, p1).await.unwrap();
        tx.set_link(&erp_other_stream.source, p2).await.unwrap();
        tx.set_link(&source("erp", "orders", "C-1"), p2)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        (dir, store, p1, p2)
    }

    #[tokio::test]
    async fn customers_of_many_matches_customers_of_and_omits_profiles_without_any() {
        let (_dir, store, p1, p2) = linked_store().await;
        let nobody = Uuid::from_u128(3);
        let mut tx = store.begin().await.unwrap();
        let found = tx.customers_of_many(&[p2, nobody, p1, p2]).await.unwrap();
        let expected = HashMap::from([
            (p1, tx.customers_of(p1).await.unwrap()),
            (p2, tx.customers_of(p2).await.unwrap()),
        ]);
        assert_eq!(found, expected);
        let sources: Vec<&SourceRef> = found[&p1].iter().map(|c| &c.source).collect();
        assert_eq!(
            sources,
            vec![
                &source("crm", "contacts", "c-1"),
                &source("erp", "customers", "C-1")
            ]
        );
        assert_eq!(found[&p2].len(), 1);
        assert!(tx.customers_of_many(&[nobody]).await.unwrap().is_empty());
        assert!(tx.customers_of_many(&[]).await.unwrap().is_empty());
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn orders_of_customers_matches_orders_of_customer_keyed_like_the_input() {
        let (_dir, store, _, _) = linked_store().await;
        let key = |system: &str, id: &str| (system.to_string(), id.to_string());
        let input = vec![
            key("erp", "C-1"),
            key("shop", "C-1"),
            key("erp", "C-9"),
            key("erp", "C-2"),
            key("erp", "C-1"),
        ];
        let mut tx = store.begin().await.unwrap();
        let found = tx.orders_of_customers(&input).await.unwrap();
        let mut expected = HashMap::new();
        for (system, id) in &input {
            let orders = tx.orders_of_customer(system, id).await.unwrap();
            if !orders.is_empty() {
                expected.insert((system.clone(), id.clone()), orders);
            }
        }
        assert_eq!(found, expected);
        assert_eq!(found.len(), 3);
        let numbers: Vec<&str> = found[&key("erp", "C-1")]
            .iter()
            .map(|o| o.order_number.as_str())
            .collect();
        assert_eq!(numbers, vec!["SO-1", "SO-2"]);
        assert!(tx.orders_of_customers(&[]).await.unwrap().is_empty());
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn profiles_of_customer_ids_is_the_union_of_the_one_row_lookups() {
        let (_dir, store, p1, p2) = linked_store().await;
        let key = |system: &str, id: &str| (system.to_string(), id.to_string());
        let mut tx = store.begin().await.unwrap();
        let cases = vec![
            (vec![key("erp", "C-1")], BTreeSet::from([p1, p2])),
            (
                vec![key("crm", "c-1"), key("crm", "c-1")],
                BTreeSet::from([p1]),
            ),
            // C-2 is a customer without a link; erp/orders/C-1 is linked but an order.
            (vec![key("erp", "C-2"), key("crm", "C-1")], BTreeSet::new()),
            (Vec::new(), BTreeSet::new()),
        ];
        for (input, expected) in cases {
            let found = tx.profiles_of_customer_ids(&input).await.unwrap();
            let mut one_row = BTreeSet::new();
            for (system, id) in &input {
                one_row.extend(tx.profiles_of_customer_id(system, id).await.unwrap());
            }
            assert_eq!(found, one_row);
            assert_eq!(found, expected);
        }
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn latest_profiles_matches_latest_profile_and_skips_profiles_without_versions() {
        let (_dir, store) = temp_store().await;
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let retired_unseen = Uuid::from_u128(3);
        let unknown = Uuid::from_u128(4);
        let mut tx = store.begin().await.unwrap();
        tx.write_profile(&profile(a, 1, "A"), "a1", "customer.profile.created", "{}")
            .await
            .unwrap();
        tx.write_profile(&profile(a, 2, "A2"), "a2", "customer.profile.updated", "{}")
            .await
            .unwrap();
        tx.write_profile(&profile(b, 1, "B"), "b1", "customer.profile.created", "{}")
            .await
            .unwrap();
        tx.retire_profile(retired_unseen, a).await.unwrap();
        let input = [unknown, b, retired_unseen, a, b];
        let found = tx.latest_profiles(&input).await.unwrap();
        let mut one_row = HashMap::new();
        for id in input {
            if let Some(latest) = tx.latest_profile(id).await.unwrap() {
                one_row.insert(id, latest);
            }
        }
        assert_eq!(found, one_row);
        assert_eq!(
            found,
            HashMap::from([(a, (2, "a2".to_string())), (b, (1, "b1".to_string()))])
        );
        assert!(tx.latest_profiles(&[]).await.unwrap().is_empty());
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn batch_methods_take_more_items_than_sqlite_binds_variables() {
        // 12,000 refs of three values each exceed SQLite's 32,766 bound variables.
        const N: usize = 12_000;
        let (_dir, store) = temp_store().await;
        let customers: Vec<Customer> = (0..N)
            .map(|n| customer("erp", "customers", &format!("C-{n}"), &[]))
            .collect();
        let records: Vec<Record> =
            customers
                .iter()
                .map(|c| Record::Customer(c.clone()))
                .chain((0..N).map(|n| {
                    Record::Order(order("erp", &format!("SO-{n}"), Some(&format!("C-{n}"))))
                }))
                .collect();
        let refs: Vec<SourceRef> = customers.iter().map(|c| c.source.clone()).collect();
        let profiles: Vec<Uuid> = (0..N).map(|n| Uuid::from_u128(n as u128 + 1)).collect();
        let ids: Vec<(String, String)> = (0..N)
            .map(|n| ("erp".to_string(), format!("C-{n}")))
            .collect();

        let mut tx = store.begin().await.unwrap();
        let outcomes = tx.upsert_records(&records, 1).await.unwrap();
        assert_eq!(outcomes, vec![Upsert::Inserted; 2 * N]);
        let keys: Vec<(SourceRef, Vec<String>)> = refs
            .iter()
            .enumerate()
            .map(|(n, r)| (r.clone(), vec![format!("email:{n}@x.y")]))
            .collect();
        tx.set_match_keys_many(&keys).await.unwrap();
        for (record, profile_id) in refs.iter().zip(&profiles) {
            tx.set_link(record, *profile_id).await.unwrap();
        }
        let found = tx.keys_and_links(&refs).await.unwrap();
        assert_eq!(found.len(), N);
        assert_eq!(
            found[N - 1],
            (vec![format!("email:{}@x.y", N - 1)], Some(profiles[N - 1]))
        );
        assert_eq!(tx.customers_of_many(&profiles).await.unwrap().len(), N);
        assert_eq!(tx.orders_of_customers(&ids).await.unwrap().len(), N);
        assert_eq!(tx.profiles_of_customer_ids(&ids).await.unwrap().len(), N);
        assert!(tx.latest_profiles(&profiles).await.unwrap().is_empty());
        let outcomes = tx.upsert_records(&records, 2).await.unwrap();
        assert_eq!(outcomes, vec![Upsert::Unchanged; 2 * N]);
        tx.commit().await.unwrap();
        assert_eq!(count(&store, "records").await, 2 * N as i64);
    }

    /// Counts the statements one transaction runs, from the `sqlx::query` event sqlx emits
    /// for each statement on the connection's worker thread. Two runs of one marker statement
    /// on that thread bracket the counted call; only
    /// `each_batch_method_runs_a_constant_number_of_statements` runs the marker, one call at
    /// a time, so the last two marker events on a thread are always its own.
    mod statement_count {
        use std::sync::{Mutex, OnceLock};

        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::{Context, SubscriberExt};

        use super::SqliteTx;

        const MARKER: &str = "SELECT 'statement count marker'";

        /// (worker thread, the event's fields) of every `sqlx::query` event.
        static EVENTS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

        struct Recorder;

        struct Fields(String);

        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={value:?} ", field.name()));
            }
        }

        impl<S: tracing::Subscriber> Layer<S> for Recorder {
            fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
                if event.metadata().target() != "sqlx::query" {
                    return;
                }
                let mut fields = Fields(String::new());
                event.record(&mut fields);
                let thread = std::thread::current()
                    .name()
                    .unwrap_or_default()
                    .to_string();
                EVENTS.lock().unwrap().push((thread, fields.0));
            }
        }

        pub async fn marker(tx: &mut SqliteTx) {
            static INSTALLED: OnceLock<()> = OnceLock::new();
            INSTALLED.get_or_init(|| {
                tracing::subscriber::set_global_default(
                    tracing_subscriber::registry().with(Recorder),
                )
                .unwrap();
            });
            sqlx::query(MARKER).execute(&mut *tx.tx).await.unwrap();
        }

        /// The statements between the last two markers of the thread that ran the last one.
        pub fn since_previous_marker() -> usize {
            let events = EVENTS.lock().unwrap();
            let is_marker = |fields: &str| fields.contains(MARKER);
            let (end, (thread, _)) = events
                .iter()
                .enumerate()
                .rev()
                .find(|(_, (_, fields))| is_marker(fields))
                .unwrap();
            let start = events[..end]
                .iter()
                .rposition(|(t, fields)| t == thread && is_marker(fields))
                .unwrap();
            events[start + 1..end]
                .iter()
                .filter(|(t, _)| t == thread)
                .count()
        }
    }

    #[tokio::test]
    async fn each_batch_method_runs_a_constant_number_of_statements() {
        let (_dir, store, p1, p2) = linked_store().await;
        let mut tx = SqliteTx {
            tx: store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap(),
        };
        // Three, so the small batch already names every customer with orders.
        let small = 3;
        let large = 300;
        let records = |n: usize, run: u32| -> Vec<Record> {
            (0..n)
                .map(|i| {
                    let mut c = customer("erp", "customers", &format!("B-{i}"), &[]);
                    c.full_name = Some(format!("run {run}"));
                    Record::Customer(c)
                })
                .collect()
        };
        let refs = |n: usize| -> Vec<SourceRef> {
            (0..n)
                .map(|i| source("erp", "customers", &format!("B-{i}")))
                .collect()
        };
        let ids = |n: usize| -> Vec<(String, String)> {
            (0..n)
                .map(|i| ("erp".to_string(), format!("C-{}", i % 3)))
                .collect()
        };
        let profiles = |n: usize| -> Vec<Uuid> { (0..n).map(|i| [p1, p2][i % 2]).collect() };

        let mut counts = Vec::new();
        for n in [small, large] {
            let mut per_method = Vec::new();
            statement_count::marker(&mut tx).await;
            // Inserts (or updates) every record: the lookup and one upsert.
            tx.upsert_records(&records(n, 1), 1).await.unwrap();
            statement_count::marker(&mut tx).await;
            per_method.push(("upsert_records", statement_count::since_previous_marker()));
            // Nothing changed: the lookup only.
            tx.upsert_records(&records(n, 1), 1).await.unwrap();
            statement_count::marker(&mut tx).await;
            per_method.push((
                "upsert_records unchanged",
                statement_count::since_previous_marker(),
            ));
            let keys: Vec<_> = refs(n)
                .into_iter()
                .map(|r| (r, vec!["email:a@b.c".to_string()]))
                .collect();
            tx.set_match_keys_many(&keys).await.unwrap();
            statement_count::marker(&mut tx).await;
            per_method.push((
                "set_match_keys_many",
                statement_count::since_previous_marker(),
            ));
            tx.keys_and_links(&refs(n)).await.unwrap();
            statement_count::marker(&mut tx).await;
            per_method.push(("keys_and_links", statement_count::since_previous_marker()));
            tx.customers_of_many(&profiles(n)).await.unwrap();
            statement_count::marker(&mut tx).await;
            per_method.push((
                "customers_of_many",
                statement_count::since_previous_marker(),
            ));
            tx.orders_of_customers(&ids(n)).await.unwrap();
            statement_count::marker(&mut tx).await;
            per_method.push((
                "orders_of_customers",
                statement_count::since_previous_marker(),
            ));
            tx.profiles_of_customer_ids(&ids(n)).await.unwrap();
            statement_count::marker(&mut tx).await;
            per_method.push((
                "profiles_of_customer_ids",
                statement_count::since_previous_marker(),
            ));
            tx.latest_profiles(&profiles(n)).await.unwrap();
            statement_count::marker(&mut tx).await;
            per_method.push(("latest_profiles", statement_count::since_previous_marker()));
            tx.latest_profile_bodies(&profiles(n)).await.unwrap();
            statement_count::marker(&mut tx).await;
            per_method.push((
                "latest_profile_bodies",
                statement_count::since_previous_marker(),
            ));
            let skus: Vec<String> = (0..n).map(|i| format!("SKU-{i}")).collect();
            tx.open_orders_with_skus(&skus).await.unwrap();
            statement_count::marker(&mut tx).await;
            per_method.push((
                "open_orders_with_skus",
                statement_count::since_previous_marker(),
            ));
            tx.sku_records(&skus).await.unwrap();
            statement_count::marker(&mut tx).await;
            per_method.push(("sku_records", statement_count::since_previous_marker()));
            tx.upsert_records(&[], 1).await.unwrap();
            tx.set_match_keys_many(&[]).await.unwrap();
            tx.keys_and_links(&[]).await.unwrap();
            tx.customers_of_many(&[]).await.unwrap();
            tx.orders_of_customers(&[]).await.unwrap();
            tx.profiles_of_customer_ids(&[]).await.unwrap();
            tx.latest_profiles(&[]).await.unwrap();
            tx.latest_profile_bodies(&[]).await.unwrap();
            tx.open_orders_with_skus(&[]).await.unwrap();
            tx.sku_records(&[]).await.unwrap();
            statement_count::marker(&mut tx).await;
            per_method.push(("empty inputs", statement_count::since_previous_marker()));
            counts.push(per_method);
        }
        let expected = vec![
            ("upsert_records", 2),
            ("upsert_records unchanged", 1),
            ("set_match_keys_many", 2),
            ("keys_and_links", 2),
            ("customers_of_many", 1),
            // The orders, then the standalone lines of all of them.
            ("orders_of_customers", 2),
            ("profiles_of_customer_ids", 1),
            ("latest_profiles", 1),
            ("latest_profile_bodies", 1),
            // No open order has these SKUs, so no lines are attached (one more when some do).
            ("open_orders_with_skus", 1),
            ("sku_records", 1),
            ("empty inputs", 0),
        ];
        assert_eq!(counts, vec![expected.clone(), expected]);
    }
}
