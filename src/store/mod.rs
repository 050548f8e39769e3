//! Durable state: canonical records, file checkpoints, quarantine, identity links, versioned
//! profiles, the outbox and job runs.
//!
//! [`Store`] is the trait the pipeline and the relay talk to; [`StoreTx`] is one open
//! transaction. Everything one batch changes goes through one `StoreTx` and becomes visible
//! at [`StoreTx::commit`] or not at all. [`sqlite::SqliteStore`] is the embedded
//! implementation, [`postgres::PostgresStore`] the one several daemon replicas share; each
//! has its own numbered migrations (`migrations/sqlite`, `migrations/postgres`). Pure logic
//! both share (row decoding, batch planning) lives in `rows`.
//!
//! `StoreTx` has a small required surface of one-row operations and set-based variants on
//! top (`upsert_records`, `keys_and_links`, ...) whose default implementations loop over the
//! one-row ones. The pipeline calls the set-based variants once per batch; a backend
//! overrides them with a few statements per batch instead of a few per record.

pub mod postgres;
mod rows;
pub mod sqlite;

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use jiff::Timestamp;
use uuid::Uuid;

use crate::model::profile::CustomerProfile;
use crate::model::{Customer, Order, Record, SourceRef};
use crate::profile::MetricRow;
use crate::sink::OutboxEvent;
use crate::source::IngestedFile;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store: {0}")]
    Corrupt(String),
    #[error("unsupported store url {0:?}: expected sqlite://<path> or postgres://<host>/<db>")]
    UnsupportedUrl(String),
}

/// Whether an upsert changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Inserted,
    Updated,
    Unchanged,
}

/// A record that failed parsing, mapping or validation, kept with its raw payload.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineEntry {
    pub connector: String,
    pub stream: String,
    /// The source id when the mapping got that far, else the origin (`file:line`).
    pub source_ref: String,
    pub raw: String,
    pub reason: String,
}

/// A customer record with the profile it is linked to.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkedCustomer {
    pub customer: Customer,
    pub profile_id: Uuid,
}

/// A new profile version with its outbox event, as written by [`StoreTx::write_profiles`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileWrite {
    pub profile: CustomerProfile,
    pub content_hash: String,
    pub event_type: String,
    pub event_body: String,
}

/// One row of the quarantine, as listed to operators.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineRow {
    pub id: i64,
    pub run_id: Option<i64>,
    pub connector: String,
    pub stream: String,
    pub source_ref: String,
    pub raw: String,
    pub reason: String,
}

/// One recorded job run, as listed to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    pub id: i64,
    /// The job name, or `*` for a run of everything.
    pub job: String,
    pub started_at: Timestamp,
    /// `None` while the run is in progress (or when it was aborted).
    pub finished_at: Option<Timestamp>,
    /// `running`, `ok`, `undelivered` or `failed`.
    pub status: String,
    /// The run's summary (JSON), once finished.
    pub summary: Option<String>,
}

/// A person's decision on two customer records, which wins over the match model: `link`
/// (they are one customer) or not (they never are). `a` is the smaller source ref.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IdentityDecision {
    pub a: SourceRef,
    pub b: SourceRef,
    pub link: bool,
}

impl IdentityDecision {
    /// The decision on the pair, whichever order the refs come in.
    pub fn new(x: SourceRef, y: SourceRef, link: bool) -> IdentityDecision {
        let (a, b) = if x <= y { (x, y) } else { (y, x) };
        IdentityDecision { a, b, link }
    }
}

/// One stored customer record with its match keys (sorted) and current link, as read by
/// [`StoreTx::identity_page`].
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityNode {
    pub customer: Customer,
    pub keys: Vec<String>,
    pub current: Option<Uuid>,
}

/// A pair scored in the review band: `a` is the smaller source ref, `detail` the comparison
/// level of each field (JSON) so a reviewer sees why.
#[derive(Debug, Clone, PartialEq)]
pub struct PossibleMatch {
    pub a: SourceRef,
    pub b: SourceRef,
    pub weight: f64,
    pub detail: String,
}

/// One stored possible match, as listed to reviewers.
#[derive(Debug, Clone, PartialEq)]
pub struct PossibleMatchRow {
    pub id: i64,
    pub pair: PossibleMatch,
    /// `pending`, `accepted` or `rejected`.
    pub status: String,
    pub created_at: Timestamp,
}

/// The members of blocking keys: `(key, record)` rows for every key with at most the given
/// number of members, and the keys left out as too common, with their size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockLookup {
    pub members: Vec<(String, SourceRef)>,
    pub oversized: Vec<(String, i64)>,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Opens a transaction for one batch.
    async fn begin(&self) -> Result<Box<dyn StoreTx>, StoreError>;

    /// The committed incremental cursor of a connector stream, if it has one.
    async fn cursor(&self, connector: &str, stream: &str) -> Result<Option<String>, StoreError>;

    /// Files of a connector stream that are already ingested.
    async fn ingested_files(
        &self,
        connector: &str,
        stream: &str,
    ) -> Result<Vec<IngestedFile>, StoreError>;

    /// Records the start of a job run and returns its id.
    async fn start_run(&self, job: &str) -> Result<i64, StoreError>;
    /// Records the end of a job run with its outcome and summary (JSON).
    async fn finish_run(&self, run_id: i64, status: &str, summary: &str) -> Result<(), StoreError>;
    /// When the latest recorded run of `job` started, whatever its outcome.
    async fn last_run_started(&self, job: &str) -> Result<Option<Timestamp>, StoreError>;
    /// Up to `limit` job runs, newest first.
    async fn recent_runs(&self, limit: i64) -> Result<Vec<JobRun>, StoreError>;

    /// Up to `limit` undelivered events in delivery order.
    async fn pending_events(&self, limit: i64) -> Result<Vec<OutboxEvent>, StoreError> {
        self.pending_events_after(0, limit).await
    }
    /// Up to `limit` undelivered events after outbox row `after`, in delivery order, so a
    /// relay can fetch the next batch while the previous one is still being confirmed.
    async fn pending_events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, StoreError>;
    /// Marks the given outbox rows delivered.
    async fn mark_delivered(&self, seqs: &[i64]) -> Result<(), StoreError>;
    /// How many events wait for delivery.
    async fn pending_count(&self) -> Result<i64, StoreError>;

    /// The latest version of a profile; a retired id resolves to the profile it merged into.
    async fn profile(&self, profile_id: Uuid) -> Result<Option<CustomerProfile>, StoreError>;
    /// Profile ids whose customers carry this (normalised) e-mail address.
    async fn profiles_by_email(&self, email: &str) -> Result<Vec<Uuid>, StoreError>;
    /// Quarantined rows, newest first.
    async fn quarantine_rows(&self, limit: i64) -> Result<Vec<QuarantineRow>, StoreError>;

    /// Possible matches with the given status (all when `None`), oldest first.
    async fn possible_matches(
        &self,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<PossibleMatchRow>, StoreError>;
    async fn possible_match(&self, id: i64) -> Result<Option<PossibleMatchRow>, StoreError>;
    /// Accepts or rejects a pending possible match: stores the decision and queues both
    /// records for re-resolution by the next run. `None` when there is no such match.
    async fn decide_possible_match(
        &self,
        id: i64,
        accept: bool,
    ) -> Result<Option<PossibleMatchRow>, StoreError>;
    /// The stored match model (JSON), if one was estimated.
    async fn match_model(&self) -> Result<Option<String>, StoreError>;

    /// Takes the run lease of `job` for its fire time `fire_at` on behalf of `holder`, for
    /// `ttl`: granted only when no other holder's lease is live and no run was taken for
    /// this or a later fire time, so each fire time runs once across daemons sharing the
    /// store. The default grants every lease: an embedded store serves one daemon, whose job
    /// loop never overlaps itself.
    async fn acquire_job_lease(
        &self,
        job: &str,
        holder: &str,
        fire_at: Timestamp,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let _ = (job, holder, fire_at, ttl);
        Ok(true)
    }
    /// Extends `holder`'s live lease of `job` by `ttl` from now; `false` when it lost it.
    async fn renew_job_lease(
        &self,
        job: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let _ = (job, holder, ttl);
        Ok(true)
    }
    /// Refreshes the planner's statistics after bulk writes. PostgreSQL plans the batch
    /// queries from them, and a table that grew from nothing in one run would otherwise be
    /// planned as if it were still empty (sequential scans of every link per batch). The
    /// default has nothing to do.
    async fn refresh_statistics(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Gives up this handle's claims on undelivered outbox rows (its relay stopped), so the
    /// next relay on any replica takes them at once instead of after the claim expires. The
    /// default has nothing to release: an embedded store does not claim.
    async fn release_claims(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Gives up `holder`'s lease of `job` (the run is over).
    async fn release_job_lease(&self, job: &str, holder: &str) -> Result<(), StoreError> {
        let _ = (job, holder);
        Ok(())
    }
    /// Up to `limit` customer records with the profile each is linked to, in record order,
    /// starting after `after` (keyset paging: pass the last record of the previous page).
    async fn identity_rows(
        &self,
        after: Option<&SourceRef>,
        limit: i64,
    ) -> Result<Vec<(SourceRef, Uuid)>, StoreError>;
}

#[async_trait]
pub trait StoreTx: Send {
    /// Stores a canonical record keyed by its source ref, unless its content hash is unchanged.
    async fn upsert_record(&mut self, record: &Record, run_id: i64) -> Result<Upsert, StoreError>;
    async fn quarantine(&mut self, entry: &QuarantineEntry, run_id: i64) -> Result<(), StoreError>;
    async fn mark_ingested(
        &mut self,
        connector: &str,
        stream: &str,
        file: &IngestedFile,
    ) -> Result<(), StoreError>;
    /// Moves a stream's incremental cursor; it becomes visible with the batch it covers.
    async fn set_cursor(
        &mut self,
        connector: &str,
        stream: &str,
        cursor: &str,
    ) -> Result<(), StoreError>;

    /// Replaces the strong match keys of a customer record (`email:a@b.c`, `phone:+49...`).
    async fn set_match_keys(
        &mut self,
        record: &SourceRef,
        keys: &[String],
    ) -> Result<(), StoreError>;
    /// Customer records holding any of these keys, with their current profile id.
    async fn records_with_keys(
        &mut self,
        keys: &[String],
    ) -> Result<Vec<(SourceRef, Option<Uuid>)>, StoreError>;
    /// The match keys of a customer record.
    async fn match_keys(&mut self, record: &SourceRef) -> Result<Vec<String>, StoreError>;
    /// The profile a customer record is linked to.
    async fn link_of(&mut self, record: &SourceRef) -> Result<Option<Uuid>, StoreError>;
    /// Links a customer record to a profile (replacing any earlier link).
    async fn set_link(&mut self, record: &SourceRef, profile_id: Uuid) -> Result<(), StoreError>;
    /// Marks `retired` as merged into `survivor`; its lookups resolve to the survivor.
    async fn retire_profile(&mut self, retired: Uuid, survivor: Uuid) -> Result<(), StoreError>;
    /// All customer records linked to a profile.
    async fn customers_of(&mut self, profile_id: Uuid) -> Result<Vec<Customer>, StoreError>;
    /// Orders whose customer ref is `(system, customer_id)`.
    async fn orders_of_customer(
        &mut self,
        system: &str,
        customer_id: &str,
    ) -> Result<Vec<Order>, StoreError>;
    /// Profiles linked to a customer `(system, source_id)` in any customer stream.
    async fn profiles_of_customer_id(
        &mut self,
        system: &str,
        customer_id: &str,
    ) -> Result<Vec<Uuid>, StoreError>;
    /// The latest stored version number and content hash of a profile.
    async fn latest_profile(
        &mut self,
        profile_id: Uuid,
    ) -> Result<Option<(i64, String)>, StoreError>;
    /// Writes a new profile version and its outbox event in this transaction.
    async fn write_profile(
        &mut self,
        profile: &CustomerProfile,
        content_hash: &str,
        event_type: &str,
        event_body: &str,
    ) -> Result<(), StoreError>;

    /// The customer ids the given order records are stored with now (orders not stored yet,
    /// or stored without a customer, are absent), so a batch that moves an order to another
    /// customer can rebuild the profile it leaves.
    async fn stored_order_customers(
        &mut self,
        orders: &[SourceRef],
    ) -> Result<HashMap<SourceRef, String>, StoreError>;

    /// The customers `(system, customer_id)` of the stored orders `(system, order source_id)`
    /// in any order stream of the system, so a change to a standalone order line rebuilds the
    /// profile its order belongs to. Orders not stored yet, or without a customer, add nothing.
    async fn customers_of_orders(
        &mut self,
        orders: &[(String, String)],
    ) -> Result<BTreeSet<(String, String)>, StoreError>;

    /// The records holding each blocking key, for keys with at most `max_block` members.
    async fn block_members(
        &mut self,
        keys: &[String],
        max_block: i64,
    ) -> Result<BlockLookup, StoreError>;
    /// The stored customer records among `records` (absent ones are skipped).
    async fn customers_by_refs(
        &mut self,
        records: &[SourceRef],
    ) -> Result<Vec<Customer>, StoreError>;
    /// Every decision on a pair that involves one of `records`.
    async fn decisions_touching(
        &mut self,
        records: &[SourceRef],
    ) -> Result<Vec<IdentityDecision>, StoreError>;
    /// Stores a decision (replacing an earlier one on the same pair) and queues both records
    /// for re-resolution.
    async fn set_decision(&mut self, decision: &IdentityDecision) -> Result<(), StoreError>;
    /// Replaces the pending possible matches holding a record of `scope` by `pairs`; pairs a
    /// person already decided keep their decision.
    async fn replace_possible_matches(
        &mut self,
        scope: &[SourceRef],
        pairs: &[PossibleMatch],
    ) -> Result<(), StoreError>;
    /// Queues records for re-resolution by the next run.
    async fn queue_relink(&mut self, records: &[SourceRef]) -> Result<(), StoreError>;
    /// Takes up to `limit` queued records off the queue (the removal commits with the batch).
    async fn take_relink(&mut self, limit: i64) -> Result<Vec<SourceRef>, StoreError>;
    /// Queues profiles whose content a batch may have changed, to be rebuilt once by the end
    /// of the run; the queue commits with the batch, so a crash loses no rebuild.
    async fn queue_profiles(&mut self, ids: &[Uuid]) -> Result<(), StoreError>;
    /// Takes up to `limit` queued profiles off the queue, in id order (the removal commits
    /// with the versions built from them).
    async fn take_profiles(&mut self, limit: i64) -> Result<Vec<Uuid>, StoreError>;
    /// Queues SKUs whose supply picture a batch changed, each with the order time from which
    /// open orders on it are affected (`None`: all); a SKU queued twice keeps the earlier.
    async fn queue_supply(
        &mut self,
        skus: &[(String, Option<Timestamp>)],
    ) -> Result<(), StoreError>;
    /// Takes every queued SKU off the supply queue, in SKU order.
    async fn take_supply(&mut self) -> Result<Vec<(String, Option<Timestamp>)>, StoreError>;
    /// The records queued for re-resolution and the stored customer records, counted: how a
    /// run resolves its changes depends on the share of the store they are. With nothing
    /// queued the stored records are not counted: `(0, 0)`.
    async fn relink_backlog(&mut self) -> Result<(i64, i64), StoreError>;
    /// Up to `limit` stored customer records after `after` (from the first when `None`), in
    /// source-ref order, each with its match keys and current link: the whole identity graph,
    /// read in pages by a run that changed a large share of it.
    async fn identity_page(
        &mut self,
        after: Option<&SourceRef>,
        limit: i64,
    ) -> Result<Vec<IdentityNode>, StoreError>;
    /// Every decision people took, ordered by pair.
    async fn all_decisions(&mut self) -> Result<Vec<IdentityDecision>, StoreError>;
    /// Stores the estimated match model (JSON).
    async fn set_match_model(&mut self, body: &str) -> Result<(), StoreError>;

    async fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// The latest stored version of each profile that has one (retired ids are not
    /// followed), for carrying a profile's segment forward and re-versioning it.
    async fn latest_profile_bodies(
        &mut self,
        profiles: &[Uuid],
    ) -> Result<HashMap<Uuid, CustomerProfile>, StoreError>;

    /// Every stored order that is open or partially fulfilled and has a line (embedded or
    /// standalone) on one of `skus`, with its standalone lines attached, ordered by source
    /// ref: the demand that competes for those SKUs' stock.
    async fn open_orders_with_skus(&mut self, skus: &[String]) -> Result<Vec<Order>, StoreError>;

    /// The stored inventory, supplier item and product records of `skus`, ordered by source
    /// ref.
    async fn sku_records(&mut self, skus: &[String]) -> Result<Vec<Record>, StoreError>;

    /// The compact segmentation figures of every live profile (not retired, with linked
    /// records and a stored version), read from the latest versions, ordered by profile id.
    async fn profile_metric_rows(&mut self) -> Result<Vec<MetricRow>, StoreError>;

    /// [`StoreTx::upsert_record`] for a whole batch, in order: a source ref that appears twice
    /// is inserted by its first occurrence and updated (or unchanged) by the later ones.
    async fn upsert_records(
        &mut self,
        records: &[Record],
        run_id: i64,
    ) -> Result<Vec<Upsert>, StoreError> {
        let mut outcomes = Vec::with_capacity(records.len());
        for record in records {
            outcomes.push(self.upsert_record(record, run_id).await?);
        }
        Ok(outcomes)
    }

    /// [`StoreTx::set_match_keys`] for many records.
    async fn set_match_keys_many(
        &mut self,
        keys: &[(SourceRef, Vec<String>)],
    ) -> Result<(), StoreError> {
        for (record, keys) in keys {
            self.set_match_keys(record, keys).await?;
        }
        Ok(())
    }

    /// The match keys (sorted) and current link of each record, in input order.
    async fn keys_and_links(
        &mut self,
        records: &[SourceRef],
    ) -> Result<Vec<(Vec<String>, Option<Uuid>)>, StoreError> {
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let keys = self.match_keys(record).await?;
            let link = self.link_of(record).await?;
            out.push((keys, link));
        }
        Ok(out)
    }

    /// The customer records of each profile (profiles without any are absent).
    async fn customers_of_many(
        &mut self,
        profiles: &[Uuid],
    ) -> Result<HashMap<Uuid, Vec<Customer>>, StoreError> {
        let mut out = HashMap::new();
        for &profile in profiles {
            let customers = self.customers_of(profile).await?;
            if !customers.is_empty() {
                out.insert(profile, customers);
            }
        }
        Ok(out)
    }

    /// The orders of each customer `(system, customer_id)`, keyed like the input.
    async fn orders_of_customers(
        &mut self,
        customers: &[(String, String)],
    ) -> Result<HashMap<(String, String), Vec<Order>>, StoreError> {
        let mut out = HashMap::new();
        for (system, customer_id) in customers {
            let orders = self.orders_of_customer(system, customer_id).await?;
            if !orders.is_empty() {
                out.insert((system.clone(), customer_id.clone()), orders);
            }
        }
        Ok(out)
    }

    /// The profiles linked to any of these customers `(system, source_id)`.
    async fn profiles_of_customer_ids(
        &mut self,
        customers: &[(String, String)],
    ) -> Result<BTreeSet<Uuid>, StoreError> {
        let mut out = BTreeSet::new();
        for (system, customer_id) in customers {
            out.extend(self.profiles_of_customer_id(system, customer_id).await?);
        }
        Ok(out)
    }

    /// [`StoreTx::set_link`] for many records; a record listed twice keeps its last link.
    async fn set_links(&mut self, links: &[(SourceRef, Uuid)]) -> Result<(), StoreError> {
        for (record, profile) in links {
            self.set_link(record, *profile).await?;
        }
        Ok(())
    }

    /// [`StoreTx::write_profile`] for many profiles; outbox rows follow the input order.
    async fn write_profiles(&mut self, writes: &[ProfileWrite]) -> Result<(), StoreError> {
        for write in writes {
            self.write_profile(
                &write.profile,
                &write.content_hash,
                &write.event_type,
                &write.event_body,
            )
            .await?;
        }
        Ok(())
    }

    /// The latest stored version and content hash of each profile that has one.
    async fn latest_profiles(
        &mut self,
        profiles: &[Uuid],
    ) -> Result<HashMap<Uuid, (i64, String)>, StoreError> {
        let mut out = HashMap::new();
        for &profile in profiles {
            if let Some(latest) = self.latest_profile(profile).await? {
                out.insert(profile, latest);
            }
        }
        Ok(out)
    }
}
