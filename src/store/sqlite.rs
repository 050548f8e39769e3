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
//! never applies and no SQL is assembled at run time. Records are stored as their serde
//! JSON and uuids and times as TEXT (RFC 3339, UTC).

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use uuid::Uuid;

use super::{QuarantineEntry, QuarantineRow, Store, StoreError, StoreTx, Upsert};
use crate::model::profile::CustomerProfile;
use crate::model::{Customer, Order, Record, SourceRef};
use crate::sink::OutboxEvent;
use crate::source::IngestedFile;

static MIGRATOR: Migrator = sqlx::migrate!("src/store/migrations/sqlite");

/// How long a connection waits for another writer's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Readers run concurrently under WAL; writers queue on the database lock, so a handful of
/// connections is plenty for one daemon.
const MAX_CONNECTIONS: u32 = 4;

/// The SQLite implementation of [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing, with parent directories) the database file and runs the
    /// migrations. WAL journal, busy_timeout 5 s, foreign keys on.
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
            .foreign_keys(true);
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

fn parse_uuid(text: &str, context: &str) -> Result<Uuid, StoreError> {
    Uuid::from_str(text)
        .map_err(|error| StoreError::Corrupt(format!("{context}: {text:?} is not a uuid: {error}")))
}

fn decode_record(body: &str, context: &str) -> Result<Record, StoreError> {
    serde_json::from_str(body)
        .map_err(|error| StoreError::Corrupt(format!("{context}: undecodable record: {error}")))
}

/// A JSON array of the given values, bound as one parameter and expanded with `json_each`.
fn json_list<T: serde::Serialize>(values: &[T], what: &str) -> Result<String, StoreError> {
    serde_json::to_string(values)
        .map_err(|error| StoreError::Corrupt(format!("cannot encode {what}: {error}")))
}

fn source_ref((system, stream, source_id): (String, String, String)) -> SourceRef {
    SourceRef {
        system,
        stream,
        source_id,
    }
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
            .map(|(path, size, hash)| {
                let size = u64::try_from(size).map_err(|_| {
                    StoreError::Corrupt(format!(
                        "ingested file {connector}/{stream}/{path} has negative size {size}"
                    ))
                })?;
                Ok(IngestedFile { path, size, hash })
            })
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

    async fn finish_run(
        &self,
        run_id: i64,
        status: &str,
        summary: &str,
    ) -> Result<(), StoreError> {
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

    async fn pending_events(&self, limit: i64) -> Result<Vec<OutboxEvent>, StoreError> {
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT seq, event_id, event_type, body FROM outbox \
             WHERE delivered_at IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(limit)
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
        // SQLite's lower() folds ASCII only; stored addresses are normalised by the mapper's
        // `email` transform, so the ASCII fold covers what differs between spellings.
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
        let rows: Vec<(i64, Option<i64>, String, String, String, String, String)> =
            sqlx::query_as(
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
        let customer_id = match record {
            Record::Order(order) => order.customer_id.as_deref(),
            _ => None,
        };
        if stored.is_none() {
            sqlx::query(
                "INSERT INTO records (system, stream, source_id, entity, content_hash, body, \
                 customer_id, first_run, last_changed_run, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)",
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
            .execute(&mut *self.tx)
            .await?;
            return Ok(Upsert::Inserted);
        }
        sqlx::query(
            "UPDATE records SET entity = $1, content_hash = $2, body = $3, customer_id = $4, \
             last_changed_run = $5, updated_at = $6 \
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
        .execute(&mut *self.tx)
        .await?;
        Ok(Upsert::Updated)
    }

    async fn quarantine(
        &mut self,
        entry: &QuarantineEntry,
        run_id: i64,
    ) -> Result<(), StoreError> {
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

    async fn mark_ingested(
        &mut self,
        connector: &str,
        stream: &str,
        file: &IngestedFile,
    ) -> Result<(), StoreError> {
        let size = i64::try_from(file.size).map_err(|_| {
            StoreError::Corrupt(format!(
                "ingested file {connector}/{stream}/{}: size {} exceeds the store's range",
                file.path, file.size
            ))
        })?;
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
            "SELECT r.system, r.stream, r.source_id, r.body FROM links l \
             JOIN records r ON r.system = l.system AND r.stream = l.stream \
                           AND r.source_id = l.source_id \
             WHERE l.profile_id = $1 AND r.entity = 'customer' \
             ORDER BY r.system, r.stream, r.source_id",
        )
        .bind(profile_id.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(system, stream, source_id, body)| {
                let context = source_ref((system, stream, source_id)).to_string();
                match decode_record(&body, &context)? {
                    Record::Customer(customer) => Ok(customer),
                    other => Err(StoreError::Corrupt(format!(
                        "{context}: stored as a customer but holds a {} record",
                        other.kind()
                    ))),
                }
            })
            .collect()
    }

    async fn orders_of_customer(
        &mut self,
        system: &str,
        customer_id: &str,
    ) -> Result<Vec<Order>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT stream, source_id, body FROM records \
             WHERE entity = 'order' AND system = $1 AND customer_id = $2 \
             ORDER BY stream, source_id",
        )
        .bind(system)
        .bind(customer_id)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(stream, source_id, body)| {
                let context = format!("{system}/{stream}/{source_id}");
                match decode_record(&body, &context)? {
                    Record::Order(order) => Ok(order),
                    other => Err(StoreError::Corrupt(format!(
                        "{context}: stored as an order but holds a {} record",
                        other.kind()
                    ))),
                }
            })
            .collect()
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
        // The profiles row goes first: profile_versions references it.
        sqlx::query(
            "INSERT INTO profiles (profile_id, created_at, latest_version, latest_hash) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (profile_id) DO UPDATE \
             SET latest_version = excluded.latest_version, latest_hash = excluded.latest_hash",
        )
        .bind(&profile_id)
        .bind(&created_at)
        .bind(profile.version)
        .bind(content_hash)
        .execute(&mut *self.tx)
        .await?;
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

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}
