//! One job run end to end: sources → mapper → store → resolver → profile → outbox → sink.
//!
//! [`run`] walks the job's streams in order. Each [`Batch`] a source yields is processed in
//! one store transaction ([`StoreTx`]): canonical records are upserted (unchanged ones
//! skipped by content hash), bad records quarantined, customer identities re-resolved around
//! the changed records, the affected profiles rebuilt and — when their content hash changed —
//! written as a new version with its outbox event, and the file checkpoint recorded. Only
//! after the commit is the source acknowledged (and a done file archived). After the last
//! stream the relay drains the outbox into the configured [`Sink`]; events that cannot be
//! delivered stay in the outbox for the next run. [`RunSummary`] counts everything.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use jiff::Timestamp;
use serde::Serialize;
use uuid::Uuid;

use crate::config::{Config, ConnectorConfig, FileStream, SinkConfig, StoreConfig, Transport};
use crate::mapper::{MapContext, Mapping};
use crate::model::event::{EventType, ProfileEvent};
use crate::model::{Customer, Order, Record, SourceRef};
use crate::profile::{self, ProfileSettings};
use crate::resolver::matcher::{MatchSettings, PreparedRecords};
use crate::resolver::prepare::Preparer;
use crate::resolver::{self, LinkInput};
use crate::sink::Sink;
use crate::sink::amqp::AmqpSink;
use crate::sink::file::FileSink;
use crate::sink::relay::{self, RelaySettings};
use crate::source::file::{FileFormat, FileSource, FileStreamSettings, TextEncoding};
use crate::source::http::HttpSource;
use crate::source::sql::SqlSource;
use crate::source::{Batch, Checkpoint, RawItem, Source, SourceError};
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{
    PossibleMatch, ProfileWrite, QuarantineEntry, Store, StoreError, StoreTx, Upsert,
};

/// Counters of one run, printed at its end and stored with the job run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    pub records_read: u64,
    pub records_mapped: u64,
    pub records_quarantined: u64,
    pub records_unchanged: u64,
    pub records_inserted: u64,
    pub records_updated: u64,
    pub files_read: u64,
    pub profiles_created: u64,
    pub profiles_updated: u64,
    pub profiles_merged: u64,
    /// Candidate pairs the probabilistic matcher compared.
    pub candidate_pairs: u64,
    /// Pairs stored as possible matches for review.
    pub possible_matches: u64,
    pub events_delivered: u64,
    pub events_pending: u64,
    /// Profiles re-versioned by the end-of-run segmentation (RFM, tier, lifecycle changed);
    /// their events are `customer.profile.updated`, counted here and not in
    /// `profiles_updated`.
    #[serde(default)]
    pub profiles_resegmented: u64,
    /// Conflicts listed in the profile versions written by this run.
    #[serde(default)]
    pub profile_conflicts: u64,
    /// Profile versions written by this run whose completeness is below 100 %.
    #[serde(default)]
    pub profiles_incomplete: u64,
    /// Where the feed went.
    pub feed: String,
    /// Wall time per stage.
    pub stages: StageTimes,
}

/// Wall time a run spent in each stage, summed over its batches: reading sources, mapping
/// and checking records, storing them, resolving identities, building profiles (with their
/// outbox rows), committing batches and publishing the feed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StageTimes {
    #[serde(serialize_with = "seconds")]
    pub read: std::time::Duration,
    #[serde(serialize_with = "seconds")]
    pub map: std::time::Duration,
    #[serde(serialize_with = "seconds")]
    pub store: std::time::Duration,
    #[serde(serialize_with = "seconds")]
    pub resolve: std::time::Duration,
    #[serde(serialize_with = "seconds")]
    pub build: std::time::Duration,
    #[serde(serialize_with = "seconds")]
    pub commit: std::time::Duration,
    #[serde(serialize_with = "seconds")]
    pub publish: std::time::Duration,
}

fn seconds<S: serde::Serializer>(
    duration: &std::time::Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64((duration.as_secs_f64() * 1000.0).round() / 1000.0)
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "records:  {} read, {} mapped, {} quarantined, {} unchanged ({} new, {} changed) from {} files",
            self.records_read,
            self.records_mapped,
            self.records_quarantined,
            self.records_unchanged,
            self.records_inserted,
            self.records_updated,
            self.files_read
        )?;
        writeln!(
            f,
            "profiles: {} created, {} updated, {} merged ({} candidate pairs compared, {} possible matches for review)",
            self.profiles_created,
            self.profiles_updated,
            self.profiles_merged,
            self.candidate_pairs,
            self.possible_matches
        )?;
        writeln!(
            f,
            "segments: {} profiles re-versioned; quality: {} conflicts, {} incomplete versions",
            self.profiles_resegmented, self.profile_conflicts, self.profiles_incomplete
        )?;
        writeln!(
            f,
            "events:   {} delivered, {} pending -> {}",
            self.events_delivered, self.events_pending, self.feed
        )?;
        let t = &self.stages;
        write!(
            f,
            "time:     read {:.2}s, map {:.2}s, store {:.2}s, resolve {:.2}s, build {:.2}s, commit {:.2}s, publish {:.2}s",
            t.read.as_secs_f64(),
            t.map.as_secs_f64(),
            t.store.as_secs_f64(),
            t.resolve.as_secs_f64(),
            t.build.as_secs_f64(),
            t.commit.as_secs_f64(),
            t.publish.as_secs_f64()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("connector {connector}, stream {stream}: {source}")]
    Source {
        connector: String,
        stream: String,
        #[source]
        source: SourceError,
    },
    #[error("no job named {0:?} in this config")]
    UnknownJob(String),
    #[error("identity matching: {0}")]
    Matching(String),
    #[error(
        "{pending} events undelivered to {destination}: {error}; they stay in the outbox and the next run delivers them"
    )]
    Undelivered {
        pending: u64,
        destination: String,
        error: String,
        summary: Box<RunSummary>,
    },
}

/// Opens the configured store (running its migrations).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    match &config.store {
        StoreConfig::Sqlite { path } => Ok(Arc::new(SqliteStore::open(path).await?)),
        StoreConfig::Postgres {
            url,
            schema,
            pool_size,
        } => Ok(Arc::new(
            PostgresStore::open(url, schema.as_deref(), *pool_size).await?,
        )),
    }
}

/// Builds the configured sink; it connects lazily on first use.
pub fn open_sink(config: &Config) -> Box<dyn Sink> {
    match &config.feed.sink {
        SinkConfig::File { path } => Box::new(FileSink::new(path.clone())),
        SinkConfig::Amqp { url, exchange } => {
            Box::new(AmqpSink::new(url.clone(), exchange.clone()))
        }
    }
}

pub fn profile_settings(config: &Config) -> ProfileSettings {
    ProfileSettings {
        base_currency: config.profile.base_currency.clone(),
        fx: config.profile.fx.clone(),
        source_priority: config.profile.source_priority.clone(),
        survivorship: config.profile.survivorship.clone(),
        default_rule: config.profile.default_rule,
        value_excludes: config.profile.value_excludes.clone(),
        tiers: config.profile.tiers.clone(),
        lifecycle: config.profile.lifecycle.clone(),
        today: config.profile.today.unwrap_or_else(profile::utc_today),
    }
}

/// The `(connector, stream)` pairs a run covers: the named job's, or every job's in order
/// (each pair once), or — with no jobs configured — every stream of every connector.
pub fn streams_of(
    config: &Config,
    job: Option<&str>,
) -> Result<Vec<(String, String)>, PipelineError> {
    let mut pairs = Vec::new();
    match job {
        Some(name) => {
            let job = config
                .jobs
                .iter()
                .find(|j| j.name == name)
                .ok_or_else(|| PipelineError::UnknownJob(name.to_string()))?;
            pairs.extend(
                job.streams
                    .iter()
                    .map(|s| (s.connector.clone(), s.stream.clone())),
            );
        }
        None if config.jobs.is_empty() => {
            for connector in config.connectors.values() {
                pairs.extend(
                    connector
                        .stream_names()
                        .into_iter()
                        .map(|name| (connector.id.clone(), name.to_string())),
                );
            }
        }
        None => {
            for job in &config.jobs {
                pairs.extend(
                    job.streams
                        .iter()
                        .map(|s| (s.connector.clone(), s.stream.clone())),
                );
            }
        }
    }
    let mut seen = HashSet::new();
    pairs.retain(|p| seen.insert(p.clone()));
    Ok(pairs)
}

/// Runs a job (or everything, see [`streams_of`]) once and delivers the feed.
pub async fn run(config: &Config, job: Option<&str>) -> Result<RunSummary, PipelineError> {
    let store = open_store(config).await?;
    let mut sink = open_sink(config);
    run_with(config, job, store.as_ref(), sink.as_mut()).await
}

/// [`run`] on an already opened store and sink.
pub async fn run_with(
    config: &Config,
    job: Option<&str>,
    store: &dyn Store,
    sink: &mut dyn Sink,
) -> Result<RunSummary, PipelineError> {
    let pairs = streams_of(config, job)?;
    let run_id = store.start_run(job.unwrap_or("*")).await?;
    let outcome = run_streams(config, &pairs, store, sink, run_id).await;
    let (status, summary_json) = match &outcome {
        Ok(summary) => ("ok", serde_json::to_string(summary)),
        Err(PipelineError::Undelivered { summary, .. }) => {
            ("undelivered", serde_json::to_string(summary))
        }
        Err(error) => (
            "failed",
            Ok(serde_json::json!({ "error": error.to_string() }).to_string()),
        ),
    };
    let summary_json = summary_json.unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    store.finish_run(run_id, status, &summary_json).await?;
    outcome
}

async fn run_streams(
    config: &Config,
    pairs: &[(String, String)],
    store: &dyn Store,
    sink: &mut dyn Sink,
    run_id: i64,
) -> Result<RunSummary, PipelineError> {
    let mut summary = RunSummary {
        feed: sink.describe(),
        ..RunSummary::default()
    };
    let batcher = Batcher {
        config,
        settings: profile_settings(config),
        matching: match_settings(config, store).await?,
        event_source: format!("urn:conflux:{}", config.instance),
        run_id,
    };
    // Decisions people took since the last run are applied first.
    let queued = relink_queued(store, &batcher, &mut summary).await;
    // Events of batches committed before a stream failed are delivered all the same; the
    // stream's error is reported after the relay has run.
    let synced = match queued {
        Ok(()) => sync_streams(config, pairs, store, &batcher, &mut summary).await,
        Err(error) => Err(error),
    };
    // The customers the committed batches changed are resolved and their profiles built
    // even when a stream failed later, as their events are delivered. Segments are relative
    // to the whole customer base: recomputed once the base is current.
    //
    // The planner statistics are refreshed before resolving and again before building when
    // the run wrote much: resolving a first load writes every link at once, and planning the
    // build's joins on links as an empty table made it three times slower on PostgreSQL.
    let wrote_much = summary.records_inserted + summary.records_updated >= STATISTICS_FROM;
    if wrote_much {
        store.refresh_statistics().await?;
    }
    let relinked = relink_queued(store, &batcher, &mut summary).await;
    let synced = match (synced, relinked) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(error), _) | (_, Err(error)) => Err(error),
    };
    if wrote_much {
        store.refresh_statistics().await?;
    }
    let building = std::time::Instant::now();
    let built = build_queued(store, &batcher, &mut summary).await;
    let synced = match (synced, built) {
        (Ok(()), Ok(())) => resegment(store, &batcher, &mut summary).await,
        (Err(error), _) | (_, Err(error)) => Err(error),
    };
    summary.stages.build += building.elapsed();

    let settings = RelaySettings {
        batch_size: config.feed.batch_size as i64,
        retry_budget: config.feed.retry_budget,
        ..RelaySettings::default()
    };
    let publishing = std::time::Instant::now();
    let report = relay::drain(store, sink, &settings).await?;
    summary.stages.publish += publishing.elapsed();
    summary.events_delivered = report.delivered;
    summary.events_pending = report.pending;
    synced?;
    if report.pending > 0 {
        return Err(PipelineError::Undelivered {
            pending: report.pending,
            destination: sink.describe(),
            error: report
                .last_error
                .unwrap_or_else(|| "retry budget exhausted".into()),
            summary: Box::new(summary),
        });
    }
    Ok(summary)
}

/// Syncs each `(connector, stream)` pair in order, one committed batch at a time.
async fn sync_streams(
    config: &Config,
    pairs: &[(String, String)],
    store: &dyn Store,
    batcher: &Batcher<'_>,
    summary: &mut RunSummary,
) -> Result<(), PipelineError> {
    // The store's statistics are refreshed each time the records written by this run double,
    // so a store that grows from nothing is not planned as an empty one.
    let mut refresh_at = STATISTICS_FROM;
    for (connector_id, stream_name) in pairs {
        let connector = &config.connectors[connector_id];
        let source_error = |source| PipelineError::Source {
            connector: connector_id.clone(),
            stream: stream_name.clone(),
            source,
        };
        // The registry of transports meets the pipeline here: one arm per `kind`.
        let (mut source, mapping): (Box<dyn Source>, &str) = match &connector.transport {
            Transport::File(file) => {
                let Some(stream) = file.streams.iter().find(|s| &s.name == stream_name) else {
                    continue;
                };
                let ingested = store.ingested_files(connector_id, stream_name).await?;
                let source = FileSource::new(
                    file.dir.clone(),
                    file.archive_dir.clone(),
                    &stream.pattern,
                    file_settings(stream),
                    ingested,
                )
                .map_err(source_error)?;
                (Box::new(source), &stream.mapping)
            }
            Transport::Http(http) => {
                let Some(stream) = http.streams.iter().find(|s| &s.name == stream_name) else {
                    continue;
                };
                let cursor = store.cursor(connector_id, stream_name).await?;
                let location = format!("{connector_id}/{stream_name}");
                let source = HttpSource::new(stream.settings.clone(), cursor, &location)
                    .map_err(source_error)?;
                (Box::new(source), &stream.mapping)
            }
            Transport::Sql(sql) => {
                let Some(stream) = sql.streams.iter().find(|s| &s.name == stream_name) else {
                    continue;
                };
                let cursor = store.cursor(connector_id, stream_name).await?;
                let location = format!("{connector_id}/{stream_name}");
                let source = SqlSource::new(stream.settings.clone(), cursor, &location)
                    .await
                    .map_err(source_error)?;
                (Box::new(source), &stream.mapping)
            }
        };
        let mapping = &config.mappings[mapping];
        let progress = progress_bar(connector_id, stream_name);
        let before = summary.clone();
        let mut last_report = std::time::Instant::now();
        loop {
            let reading = std::time::Instant::now();
            let next = source.next_batch().await.map_err(source_error)?;
            summary.stages.read += reading.elapsed();
            let Some(batch) = next else { break };
            let checkpoint = batch.checkpoint.clone();
            let mut tx = store.begin().await?;
            let read = batch.items.len() as u64;
            batcher
                .process(tx.as_mut(), connector, stream_name, mapping, batch, summary)
                .await?;
            let committing = std::time::Instant::now();
            tx.commit().await?;
            let written = summary.records_inserted + summary.records_updated;
            if written >= refresh_at {
                store.refresh_statistics().await?;
                refresh_at = written.saturating_mul(2);
            }
            summary.stages.commit += committing.elapsed();
            if matches!(checkpoint, Checkpoint::FileDone(_)) {
                summary.files_read += 1;
            }
            source
                .acknowledge(&checkpoint)
                .await
                .map_err(source_error)?;
            progress.inc(read);
            if progress.is_hidden() && last_report.elapsed() >= PROGRESS_LOG_INTERVAL {
                last_report = std::time::Instant::now();
                tracing::info!(
                    connector = %connector_id,
                    stream = %stream_name,
                    read = summary.records_read - before.records_read,
                    quarantined = summary.records_quarantined - before.records_quarantined,
                    "Stream in progress."
                );
            }
        }
        progress.finish_and_clear();
        tracing::info!(
            connector = %connector_id,
            stream = %stream_name,
            read = summary.records_read - before.records_read,
            quarantined = summary.records_quarantined - before.records_quarantined,
            unchanged = summary.records_unchanged - before.records_unchanged,
            "Stream synced."
        );
    }

    Ok(())
}

/// The reader settings of a configured file stream (its names were checked by validation).
pub fn file_settings(stream: &FileStream) -> FileStreamSettings {
    FileStreamSettings {
        format: FileFormat::parse(&stream.format).unwrap_or(FileFormat::Json),
        records: stream.records.clone(),
        delimiter: stream.delimiter,
        quote: stream.quote,
        encoding: TextEncoding::parse(&stream.encoding).unwrap_or(TextEncoding::Utf8),
        batch_size: stream.batch_size,
    }
}

/// Without a terminal, a long stream logs its progress this often.
const PROGRESS_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// A bar on a terminal; hidden otherwise (the per-stream log line reports progress there).
fn progress_bar(connector: &str, stream: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}: {pos} records ({per_sec})") {
        bar.set_style(style);
    }
    bar.set_message(format!("{connector}/{stream}"));
    bar
}

/// Checks a mapped record against the deployment's rules before it is stored.
pub fn check_record(record: &Record, settings: &ProfileSettings) -> Result<(), String> {
    if let Record::Order(order) = record {
        let has_amount =
            order.total.is_some() || order.lines.iter().any(|l| l.line_total.is_some());
        match order.currency.as_deref() {
            None if has_amount => {
                return Err(format!(
                    "order {} has an amount but no currency; map `currency` or give it a default",
                    order.order_number
                ));
            }
            Some(c) if c != settings.base_currency && !settings.fx.contains_key(c) => {
                return Err(format!(
                    "order {} is in {c}, which has no FX rate in [profile.fx] (base currency {}); it is not converted at 1.0",
                    order.order_number, settings.base_currency
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The matcher settings of a run: the configured ones, with the model estimated from the
/// store's data (`conflux identities train`) when there is one, and the configured
/// overrides on top. `None` when probabilistic matching is off.
pub async fn match_settings(
    config: &Config,
    store: &dyn Store,
) -> Result<Option<MatchSettings>, PipelineError> {
    let Some(mut settings) = config.identity.matching.clone() else {
        return Ok(None);
    };
    if let Some(body) = store.match_model().await? {
        settings.model = serde_json::from_str(&body).map_err(|error| {
            PipelineError::Matching(format!("the stored match model is unreadable: {error}"))
        })?;
    }
    settings
        .model
        .apply(&settings.overrides)
        .map_err(|errors| PipelineError::Matching(join_errors(&errors)))?;
    Ok(Some(settings))
}

fn join_errors(errors: &[impl std::fmt::Display]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Re-resolves the records queued by people's decisions (review accept/reject, manual
/// link/unlink), a bounded number per transaction, and rebuilds the profiles they touch.
async fn relink_queued(
    store: &dyn Store,
    batcher: &Batcher<'_>,
    summary: &mut RunSummary,
) -> Result<(), PipelineError> {
    let resolving = std::time::Instant::now();
    let relinked = relink_chunks(store, batcher, summary).await;
    summary.stages.resolve += resolving.elapsed();
    relinked
}

/// Customer records resolved per transaction by [`relink_queued`]. The larger, the fewer
/// times the neighbourhood shared by two chunks is gathered and compared; memory grows with
/// it (about 3 KiB per record of the neighbourhood).
const RELINK_CHUNK: i64 = 50_000;

/// A backlog of at least 1/`WHOLE_GRAPH_SHARE` of the stored customer records is resolved
/// over the whole identity graph at once ([`relink_whole`]), held in memory at about 2.8 KiB
/// a record (a first load of 1M records peaked at 2.8 GiB this way). Chunks are no way around
/// that: a chunk's neighbourhood in so large a share of the store is most of the store, and
/// a 1M first load in chunks had reached 3.7 GiB, still running, after twice the time the
/// whole-graph run took.
const WHOLE_GRAPH_SHARE: i64 = 4;

async fn relink_chunks(
    store: &dyn Store,
    batcher: &Batcher<'_>,
    summary: &mut RunSummary,
) -> Result<(), PipelineError> {
    loop {
        let mut tx = store.begin().await?;
        let (queued, stored) = tx.relink_backlog().await?;
        if queued == 0 {
            return Ok(());
        }
        let matching = batcher.matching.as_ref();
        let (affected, merges) = if queued.saturating_mul(WHOLE_GRAPH_SHARE) >= stored {
            let changed = tx.take_relink(queued).await?;
            relink_whole(tx.as_mut(), changed, matching, summary).await?
        } else {
            let changed = tx.take_relink(RELINK_CHUNK).await?;
            relink(tx.as_mut(), changed, matching, summary).await?
        };
        // Survivors of a merge are built at once, so the `merged` event commits with the
        // retirement; every other profile is queued and built once by [`build_queued`].
        let survivors: BTreeSet<Uuid> = merges.keys().copied().collect();
        batcher
            .rebuild(
                tx.as_mut(),
                &survivors,
                &merges,
                &mut SupplyCache::default(),
                summary,
            )
            .await?;
        let deferred: Vec<Uuid> = affected.difference(&survivors).copied().collect();
        tx.queue_profiles(&deferred).await?;
        tx.commit().await?;
    }
}

/// The per-batch work, shared by every stream of a run.
struct Batcher<'a> {
    config: &'a Config,
    settings: ProfileSettings,
    matching: Option<MatchSettings>,
    event_source: String,
    run_id: i64,
}

impl Batcher<'_> {
    async fn process(
        &self,
        tx: &mut dyn StoreTx,
        connector: &ConnectorConfig,
        stream: &str,
        mapping: &Mapping,
        batch: Batch,
        summary: &mut RunSummary,
    ) -> Result<(), PipelineError> {
        let mut clock = std::time::Instant::now();
        let ctx = MapContext {
            system: &connector.system,
            stream,
            empty_values: &connector.empty_values,
        };
        let quarantine = |source_ref: String, raw: String, reason: String| QuarantineEntry {
            connector: connector.id.clone(),
            stream: stream.to_string(),
            source_ref,
            raw,
            reason,
        };
        let mut records = Vec::with_capacity(batch.items.len());
        for item in batch.items {
            summary.records_read += 1;
            let entry = match item {
                RawItem::Broken(broken) => {
                    quarantine(broken.origin.to_string(), broken.raw, broken.reason)
                }
                RawItem::Record(raw) => match mapping.apply(&raw.value, &ctx) {
                    Err(error) => quarantine(
                        raw.origin.to_string(),
                        raw.value.to_string(),
                        error.to_string(),
                    ),
                    Ok(record) => match check_record(&record, &self.settings) {
                        Err(reason) => {
                            quarantine(record.source().to_string(), raw.value.to_string(), reason)
                        }
                        Ok(()) => {
                            records.push(record);
                            continue;
                        }
                    },
                },
            };
            tracing::warn!(
                connector = %entry.connector,
                stream = %entry.stream,
                record = %entry.source_ref,
                reason = %entry.reason,
                "Record quarantined."
            );
            summary.records_quarantined += 1;
            tx.quarantine(&entry, self.run_id).await?;
        }
        summary.stages.map += lap(&mut clock);
        match &batch.checkpoint {
            Checkpoint::FileDone(file) => tx.mark_ingested(&connector.id, stream, file).await?,
            Checkpoint::Cursor(cursor) => tx.set_cursor(&connector.id, stream, cursor).await?,
            Checkpoint::None => {}
        }

        summary.records_mapped += records.len() as u64;
        let order_refs: Vec<SourceRef> = records
            .iter()
            .filter(|r| matches!(r, Record::Order(_)))
            .map(|r| r.source().clone())
            .collect();
        let mut previous_customers = tx.stored_order_customers(&order_refs).await?;
        let outcomes = tx.upsert_records(&records, self.run_id).await?;
        let rules = &self.config.identity.match_on;
        let preparer = self
            .matching
            .as_ref()
            .map(|m| (Preparer::new(&m.normalise), &m.blocking));
        let mut customer_keys = Vec::new();
        let mut order_customers = BTreeSet::new();
        let mut line_orders = BTreeSet::new();
        // SKUs whose stock, lead times, category or competing demand changed, with the
        // order date from which their open orders are affected (`None`: all of them).
        let mut changed_skus: BTreeMap<String, Option<Timestamp>> = BTreeMap::new();
        for (record, outcome) in records.into_iter().zip(outcomes) {
            match outcome {
                Upsert::Unchanged => {
                    summary.records_unchanged += 1;
                    continue;
                }
                Upsert::Inserted => summary.records_inserted += 1,
                Upsert::Updated => summary.records_updated += 1,
            }
            match record {
                Record::Customer(customer) => {
                    let mut keys = resolver::match_keys(&customer, rules);
                    if let Some((preparer, blocking)) = &preparer {
                        let prepared = preparer.prepare(&customer);
                        keys.extend(resolver::blocking::blocking_keys(&prepared, blocking));
                    }
                    customer_keys.push((customer.source, keys));
                }
                Record::Order(order) => {
                    // Stock goes to the oldest orders first: a changed order moves only the
                    // allocation of orders as new as it or newer.
                    let from = order.ordered_at.unwrap_or(Timestamp::MAX);
                    for sku in order.lines.iter().filter_map(|l| l.sku.clone()) {
                        affects_from(&mut changed_skus, sku, Some(from));
                    }
                    // An order that moved to another customer changes the profile it left.
                    if let Some(previous) = previous_customers.remove(&order.source) {
                        order_customers.insert((order.source.system.clone(), previous));
                    }
                    if let Some(customer) = order.customer_id {
                        order_customers.insert((order.source.system, customer));
                    }
                }
                Record::OrderLine(item) => {
                    // A standalone line's order date is not at hand here: its SKU is
                    // re-evaluated for every open order.
                    if let Some(sku) = item.line.sku {
                        affects_from(&mut changed_skus, sku, None);
                    }
                    line_orders.insert((item.source.system, item.order_id));
                }
                Record::Inventory(item) => affects_from(&mut changed_skus, item.sku, None),
                Record::SupplierItem(item) => affects_from(&mut changed_skus, item.sku, None),
                Record::Product(product) => affects_from(&mut changed_skus, product.sku, None),
                Record::Supplier(_) => {}
            }
        }
        tx.set_match_keys_many(&customer_keys).await?;
        // Identities are resolved once per run, over every changed customer at once
        // ([`relink_queued`]): per batch, each batch gathered and compared a neighbourhood
        // that mostly overlapped the previous batch's. The queue commits with the records.
        let changed: Vec<SourceRef> = customer_keys.into_iter().map(|(r, _)| r).collect();
        tx.queue_relink(&changed).await?;
        summary.stages.store += lap(&mut clock);
        let line_orders: Vec<(String, String)> = line_orders.into_iter().collect();
        order_customers.extend(tx.customers_of_orders(&line_orders).await?);
        // Which profiles a supply change reaches is worked out once per run, when the queued
        // profiles are built ([`queue_supply_changes`]), not per batch: the open orders on a
        // SKU are read once for all the batches that changed it.
        let changed_skus: Vec<(String, Option<Timestamp>)> = changed_skus.into_iter().collect();
        tx.queue_supply(&changed_skus).await?;
        // Every profile is built once by the end of the run ([`build_queued`]): a customer
        // whose orders, stock and supplier items arrive in many batches would otherwise get a
        // version per batch. A customer not linked yet gets its profile when it is.
        let order_customers: Vec<(String, String)> = order_customers.into_iter().collect();
        let affected: Vec<Uuid> = tx
            .profiles_of_customer_ids(&order_customers)
            .await?
            .into_iter()
            .collect();
        tx.queue_profiles(&affected).await?;
        summary.stages.build += lap(&mut clock);
        Ok(())
    }

    /// Writes a new version of each profile whose content changed (or that absorbed others).
    async fn rebuild(
        &self,
        tx: &mut dyn StoreTx,
        profiles: &BTreeSet<Uuid>,
        merges: &BTreeMap<Uuid, Vec<Uuid>>,
        cache: &mut SupplyCache,
        summary: &mut RunSummary,
    ) -> Result<(), StoreError> {
        let ids: Vec<Uuid> = profiles.iter().copied().collect();
        let mut customers = tx.customers_of_many(&ids).await?;
        let owners: Vec<(String, String)> = customers
            .values()
            .flatten()
            .map(|c| (c.source.system.clone(), c.source.source_id.clone()))
            .collect();
        let mut orders = tx.orders_of_customers(&owners).await?;
        self.supply(tx, orders.values().flatten(), cache).await?;
        let supply = &cache.supply;
        let latest = tx.latest_profiles(&ids).await?;
        let previous = tx.latest_profile_bodies(&ids).await?;
        let mut writes = Vec::new();
        for profile_id in ids {
            let Some(members) = customers.remove(&profile_id) else {
                continue;
            };
            let member_orders: Vec<Order> = members
                .iter()
                .filter_map(|c| {
                    orders.remove(&(c.source.system.clone(), c.source.source_id.clone()))
                })
                .flatten()
                .collect();
            let latest = latest.get(&profile_id);
            let merged_ids = merges.get(&profile_id).cloned().unwrap_or_default();
            let version = latest.map_or(1, |(v, _)| v + 1);
            let built = profile::build(
                profile_id,
                version,
                merged_ids,
                &members,
                &member_orders,
                supply,
                previous.get(&profile_id).map(|p| &p.segment),
                &self.settings,
            );
            let hash = built.content_hash();
            let event_type = match latest {
                _ if !built.merged_ids.is_empty() => EventType::Merged,
                None => EventType::Created,
                Some((_, old)) if *old == hash => continue,
                Some(_) => EventType::Updated,
            };
            match event_type {
                EventType::Created => summary.profiles_created += 1,
                EventType::Updated => summary.profiles_updated += 1,
                EventType::Merged => summary.profiles_merged += 1,
            }
            writes.push(self.profile_write(built, hash, event_type, summary)?);
        }
        tx.write_profiles(&writes).await
    }

    /// Adds to `cache` the supply picture of the open lines of `orders`: every open order
    /// competing for their SKUs, the SKUs' stock, supplier lead times and products. SKUs the
    /// cache already holds are not read again.
    async fn supply<'o>(
        &self,
        tx: &mut dyn StoreTx,
        orders: impl Iterator<Item = &'o Order> + Clone,
        cache: &mut SupplyCache,
    ) -> Result<(), StoreError> {
        if cache.supply.lines.len() > SupplyCache::MAX_LINES {
            *cache = SupplyCache::default();
        }
        let open: BTreeSet<String> = profile::open_skus(orders.clone())
            .into_iter()
            .filter(|sku| !cache.allocated.contains(sku))
            .collect();
        let described: Vec<String> = orders
            .flat_map(|o| &o.lines)
            .filter_map(|l| l.sku.clone())
            .filter(|sku| !cache.described.contains(sku))
            .chain(open.iter().cloned())
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect();
        if described.is_empty() {
            return Ok(());
        }
        let open_list: Vec<String> = open.iter().cloned().collect();
        let competing = tx.open_orders_with_skus(&open_list).await?;
        let (mut inventory, mut supplier_items, mut products) =
            (Vec::new(), Vec::new(), Vec::new());
        for record in tx.sku_records(&described).await? {
            match record {
                Record::Inventory(item) => inventory.push(item),
                Record::SupplierItem(item) => supplier_items.push(item),
                Record::Product(product) => products.push(product),
                _ => {}
            }
        }
        let fresh = profile::allocate(
            &competing,
            &inventory,
            &supplier_items,
            &products,
            &open,
            self.settings.today,
        );
        cache.supply.lines.extend(fresh.lines);
        cache.supply.categories.extend(fresh.categories);
        cache.allocated.extend(open);
        cache.described.extend(described);
        Ok(())
    }

    /// The store write of a profile version and its event; counts its data quality.
    fn profile_write(
        &self,
        built: crate::model::profile::CustomerProfile,
        hash: String,
        event_type: EventType,
        summary: &mut RunSummary,
    ) -> Result<ProfileWrite, StoreError> {
        summary.profile_conflicts += built.data_quality.conflict_count;
        if built.data_quality.completeness < 100 {
            summary.profiles_incomplete += 1;
        }
        let event = ProfileEvent::new(&self.event_source, event_type, Timestamp::now(), built);
        let event_body = serde_json::to_string(&event)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialise event: {e}")))?;
        Ok(ProfileWrite {
            profile: event.data,
            content_hash: hash,
            event_type: event_type.as_str().to_string(),
            event_body,
        })
    }
}

/// The supply picture of the SKUs read so far: each SKU's stock is allocated over every open
/// order on it, whichever profile asks, so the profiles built after one another in a run share
/// one allocation per SKU instead of each chunk reading the competing orders again. Valid while
/// no order, stock or supplier record changes, so it lives for one build pass.
#[derive(Default)]
struct SupplyCache {
    supply: profile::Supply,
    /// SKUs whose open lines are allocated in `supply`.
    allocated: HashSet<String>,
    /// SKUs whose product category is in `supply` (when they have one).
    described: HashSet<String>,
}

impl SupplyCache {
    /// Allocated lines held before the cache starts over, bounding its memory.
    const MAX_LINES: usize = 500_000;
}

/// Queues the profiles a queued supply change reaches: those with an open order on one of the
/// SKUs, as new as the change or newer (stock goes to the oldest orders first, so a changed
/// order moves only the allocation of orders as new as it or newer).
async fn queue_supply_changes(tx: &mut dyn StoreTx) -> Result<(), StoreError> {
    let changed: BTreeMap<String, Option<Timestamp>> =
        tx.take_supply().await?.into_iter().collect();
    if changed.is_empty() {
        return Ok(());
    }
    let skus: Vec<String> = changed.keys().cloned().collect();
    let mut customers = BTreeSet::new();
    for order in tx.open_orders_with_skus(&skus).await? {
        let at = order.ordered_at.unwrap_or(Timestamp::MAX);
        let reached = order
            .lines
            .iter()
            .filter_map(|l| l.sku.as_ref())
            .any(|sku| {
                changed
                    .get(sku)
                    .is_some_and(|from| from.is_none_or(|from| at >= from))
            });
        if reached && let Some(customer) = order.customer_id {
            customers.insert((order.source.system, customer));
        }
    }
    let customers: Vec<(String, String)> = customers.into_iter().collect();
    let profiles: Vec<Uuid> = tx
        .profiles_of_customer_ids(&customers)
        .await?
        .into_iter()
        .collect();
    tx.queue_profiles(&profiles).await
}

/// Records a run writes before the store's statistics are first refreshed.
const STATISTICS_FROM: u64 = 5_000;

/// Queued profiles built per transaction by [`build_queued`].
const BUILD_CHUNK: i64 = 2_000;

/// Builds the profiles queued by the run's batches (and by any earlier run that stopped
/// before building them), a bounded number per transaction: each gets at most one new
/// version, and only if its content changed.
async fn build_queued(
    store: &dyn Store,
    batcher: &Batcher<'_>,
    summary: &mut RunSummary,
) -> Result<(), PipelineError> {
    let mut tx = store.begin().await?;
    queue_supply_changes(tx.as_mut()).await?;
    tx.commit().await?;
    let mut cache = SupplyCache::default();
    loop {
        let mut tx = store.begin().await?;
        let queued = tx.take_profiles(BUILD_CHUNK).await?;
        if queued.is_empty() {
            return Ok(());
        }
        let ids: BTreeSet<Uuid> = queued.into_iter().collect();
        batcher
            .rebuild(tx.as_mut(), &ids, &BTreeMap::new(), &mut cache, summary)
            .await?;
        tx.commit().await?;
    }
}

/// Profiles re-versioned per transaction by [`resegment`].
const RESEGMENT_CHUNK: usize = 500;

/// Recomputes RFM scores, value tiers and lifecycle stages over every live profile (compact
/// metric rows, not whole profiles) and writes a new version of each profile whose segment
/// changed, a bounded number per transaction.
async fn resegment(
    store: &dyn Store,
    batcher: &Batcher<'_>,
    summary: &mut RunSummary,
) -> Result<(), PipelineError> {
    let rows = {
        let mut tx = store.begin().await?;
        tx.profile_metric_rows().await?
    };
    let changed = profile::resegment(&rows, &batcher.settings);
    drop(rows);
    for chunk in changed.chunks(RESEGMENT_CHUNK) {
        let mut tx = store.begin().await?;
        let ids: Vec<Uuid> = chunk.iter().map(|(id, _)| *id).collect();
        let mut bodies = tx.latest_profile_bodies(&ids).await?;
        let mut writes = Vec::new();
        for (id, segment) in chunk {
            let Some(stored) = bodies.remove(id) else {
                continue;
            };
            let mut profile = profile::with_segment(stored, *segment, &batcher.settings);
            profile.version += 1;
            profile.merged_ids.clear();
            let hash = profile.content_hash();
            summary.profiles_resegmented += 1;
            writes.push(batcher.profile_write(profile, hash, EventType::Updated, summary)?);
        }
        tx.write_profiles(&writes).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Records that the open orders on `sku` from the order date `from` on (all when `None`) need
/// their supply re-evaluated.
fn affects_from(
    skus: &mut BTreeMap<String, Option<Timestamp>>,
    sku: String,
    from: Option<Timestamp>,
) {
    let entry = skus.entry(sku).or_insert(from);
    if from < *entry {
        *entry = from;
    }
}

/// The time since `clock`, which moves to now.
fn lap(clock: &mut std::time::Instant) -> std::time::Duration {
    let now = std::time::Instant::now();
    let elapsed = now - *clock;
    *clock = now;
    elapsed
}

/// Re-resolves identities around the changed customer records: gathers the closed
/// neighbourhood (records sharing keys, members of the profiles touched), resolves it, and
/// stores new links and retirements. Returns the profiles to rebuild and the merges by
/// survivor.
async fn relink(
    tx: &mut dyn StoreTx,
    changed: Vec<SourceRef>,
    matching: Option<&MatchSettings>,
    summary: &mut RunSummary,
) -> Result<(BTreeSet<Uuid>, BTreeMap<Uuid, Vec<Uuid>>), PipelineError> {
    let mut gathered = Gathered::default();
    gathered.gather(tx, changed.clone()).await?;
    let Some(matching) = matching else {
        let inputs: Vec<LinkInput> = gathered.nodes.into_values().collect();
        return resolve_nodes(
            tx,
            &inputs,
            PreparedRecords::default(),
            &[],
            changed,
            None,
            summary,
        )
        .await;
    };

    // One hop of blocking candidates around the changed records, with their profiles.
    let blocking_keys: Vec<String> = changed
        .iter()
        .filter_map(|r| gathered.nodes.get(r))
        .flat_map(|n| {
            n.keys
                .iter()
                .filter(|k| !resolver::is_strong_key(k))
                .cloned()
        })
        .collect::<BTreeSet<String>>()
        .into_iter()
        .collect();
    let lookup = tx
        .block_members(&blocking_keys, matching.max_block_size as i64)
        .await?;
    for (key, size) in &lookup.oversized {
        tracing::debug!(key = %key, size, "Blocking key skipped: too many records share it.");
    }
    let candidates: Vec<SourceRef> = lookup
        .members
        .into_iter()
        .map(|(_, record)| record)
        .filter(|r| !gathered.nodes.contains_key(r))
        .collect();
    gathered.gather(tx, candidates).await?;
    let Gathered { nodes, bodies, .. } = gathered;

    let refs: Vec<SourceRef> = nodes.keys().cloned().collect();
    // Members of the gathered profiles came with their bodies; only the others are read.
    let unread: Vec<SourceRef> = refs
        .iter()
        .filter(|r| !bodies.contains_key(*r))
        .cloned()
        .collect();
    // Every member gathered became a node, so every kept body is one of the neighbourhood.
    let mut customers: Vec<Customer> = tx.customers_by_refs(&unread).await?;
    customers.extend(bodies.into_values());
    let decisions: Vec<(SourceRef, SourceRef, bool)> = tx
        .decisions_touching(&refs)
        .await?
        .into_iter()
        .filter(|d| nodes.contains_key(&d.a) && nodes.contains_key(&d.b))
        .map(|d| (d.a, d.b, d.link))
        .collect();
    let inputs: Vec<LinkInput> = nodes.into_values().collect();
    let mut records = PreparedRecords::default();
    prepare_records(&mut records, &customers, matching);
    drop(customers);
    resolve_nodes(
        tx,
        &inputs,
        records,
        &decisions,
        changed,
        Some(matching),
        summary,
    )
    .await
}

/// Prepares `customers` for matching and adds them to `records`, on one thread when there
/// are few.
fn prepare_records(
    records: &mut PreparedRecords,
    customers: &[Customer],
    matching: &MatchSettings,
) {
    let threads = if customers.len() < resolver::neighbourhood::PARALLEL_FROM {
        1
    } else {
        matching.threads
    };
    records.extend(customers, &matching.normalise, threads);
}

/// Customer records read per statement by [`relink_whole`].
const IDENTITY_PAGE: i64 = 20_000;

/// [`relink`] over the whole identity graph, read in pages in source-ref order instead of
/// gathered record by record: for a run whose changes are a large share of the store (the
/// first load above all), reading everything costs less than looking up the neighbourhood
/// of each change.
async fn relink_whole(
    tx: &mut dyn StoreTx,
    changed: Vec<SourceRef>,
    matching: Option<&MatchSettings>,
    summary: &mut RunSummary,
) -> Result<(BTreeSet<Uuid>, BTreeMap<Uuid, Vec<Uuid>>), PipelineError> {
    // Only the prepared form of each body is kept, and only the strong keys: blocking keys
    // are recomputed in memory. At 1M records the bodies alone took about 1 GiB.
    let mut inputs = Vec::new();
    let mut records = PreparedRecords::default();
    let mut after: Option<SourceRef> = None;
    loop {
        let page = tx.identity_page(after.as_ref(), IDENTITY_PAGE).await?;
        let done = (page.len() as i64) < IDENTITY_PAGE;
        after = page.last().map(|n| n.customer.source.clone());
        let mut customers = Vec::with_capacity(page.len());
        for mut node in page {
            node.keys.retain(|k| resolver::is_strong_key(k));
            node.keys.shrink_to_fit();
            inputs.push(LinkInput {
                record: node.customer.source.clone(),
                keys: node.keys,
                current: node.current,
            });
            customers.push(node.customer);
        }
        if let Some(matching) = matching {
            prepare_records(&mut records, &customers, matching);
        }
        if done {
            break;
        }
    }
    let decisions: Vec<(SourceRef, SourceRef, bool)> = tx
        .all_decisions()
        .await?
        .into_iter()
        .map(|d| (d.a, d.b, d.link))
        .collect();
    resolve_nodes(tx, &inputs, records, &decisions, changed, matching, summary).await
}

/// Resolves a closed neighbourhood (`inputs`, with their prepared bodies `records` and the
/// `decisions` on its pairs) around the `changed` records and stores the outcome: links,
/// retirements and possible matches for review.
async fn resolve_nodes(
    tx: &mut dyn StoreTx,
    inputs: &[LinkInput],
    mut records: PreparedRecords,
    decisions: &[(SourceRef, SourceRef, bool)],
    changed: Vec<SourceRef>,
    matching: Option<&MatchSettings>,
    summary: &mut RunSummary,
) -> Result<(BTreeSet<Uuid>, BTreeMap<Uuid, Vec<Uuid>>), PipelineError> {
    let Some(matching) = matching else {
        let resolution = resolver::resolve(inputs, Uuid::now_v7);
        return Ok(store_resolution(tx, inputs, &resolution, &changed).await?);
    };
    let outcome = resolver::neighbourhood::resolve_neighbourhood(
        inputs,
        &mut records,
        decisions,
        Some(&changed),
        matching,
        Uuid::now_v7,
    )
    .map_err(|errors| PipelineError::Matching(join_errors(&errors)))?;
    summary.candidate_pairs += outcome.candidate_pairs;
    let decided: HashSet<(&SourceRef, &SourceRef)> =
        decisions.iter().map(|(a, b, _)| (a, b)).collect();
    let review: Vec<PossibleMatch> = outcome
        .review
        .iter()
        .filter(|p| !decided.contains(&(&p.a, &p.b)) && !decided.contains(&(&p.b, &p.a)))
        .map(|p| {
            let detail = match (records.get(&p.a), records.get(&p.b)) {
                (Some(a), Some(b)) => {
                    serde_json::to_string(&resolver::explain::explain_prepared(a, b, matching))
                        .unwrap_or_default()
                }
                _ => format!("{{\"probability\":{:.4}}}", p.probability),
            };
            PossibleMatch {
                a: p.a.clone(),
                b: p.b.clone(),
                weight: p.weight,
                detail,
            }
        })
        .collect();
    drop(records);
    summary.possible_matches += review.len() as u64;
    tx.replace_possible_matches(&outcome.scope, &review).await?;
    Ok(store_resolution(tx, inputs, &outcome.resolution, &changed).await?)
}

/// The closed neighbourhood [`relink`] gathers from the store: its nodes, and what the
/// gathering already did (strong keys looked up, profiles expanded, member bodies read).
#[derive(Default)]
struct Gathered {
    nodes: BTreeMap<SourceRef, LinkInput>,
    queried_keys: HashSet<String>,
    expanded: HashSet<Uuid>,
    /// The bodies of the profile members read while expanding profiles.
    bodies: HashMap<SourceRef, Customer>,
}

impl Gathered {
    /// Adds `pending` and everything reachable from it to the nodes: records sharing a strong
    /// key and every member of the profiles they are linked to, whose bodies are kept.
    async fn gather(
        &mut self,
        tx: &mut dyn StoreTx,
        mut pending: Vec<SourceRef>,
    ) -> Result<(), StoreError> {
        while !pending.is_empty() {
            pending.sort();
            pending.dedup();
            pending.retain(|r| !self.nodes.contains_key(r));
            let found = tx.keys_and_links(&pending).await?;
            let mut new_keys = Vec::new();
            let mut new_profiles = Vec::new();
            for (record, (keys, current)) in std::mem::take(&mut pending).into_iter().zip(found) {
                new_keys.extend(
                    keys.iter()
                        .filter(|k| resolver::is_strong_key(k))
                        .filter(|k| self.queried_keys.insert((*k).clone()))
                        .cloned(),
                );
                if let Some(profile) = current
                    && self.expanded.insert(profile)
                {
                    new_profiles.push(profile);
                }
                self.nodes.insert(
                    record.clone(),
                    LinkInput {
                        record,
                        keys,
                        current,
                    },
                );
            }
            if !new_profiles.is_empty() {
                let members = tx.customers_of_many(&new_profiles).await?;
                for member in members.into_values().flatten() {
                    pending.push(member.source.clone());
                    self.bodies.insert(member.source.clone(), member);
                }
            }
            if !new_keys.is_empty() {
                pending.extend(
                    tx.records_with_keys(&new_keys)
                        .await?
                        .into_iter()
                        .map(|(record, _)| record),
                );
            }
            pending.retain(|r| !self.nodes.contains_key(r));
        }
        Ok(())
    }
}

/// Stores the links and retirements of a resolution; returns the profiles to rebuild (those
/// holding a `changed` record, gaining or losing a member, or absorbing others) and the
/// merges by survivor.
async fn store_resolution(
    tx: &mut dyn StoreTx,
    inputs: &[LinkInput],
    resolution: &resolver::Resolution,
    changed: &[SourceRef],
) -> Result<(BTreeSet<Uuid>, BTreeMap<Uuid, Vec<Uuid>>), StoreError> {
    let current: BTreeMap<&SourceRef, Option<Uuid>> =
        inputs.iter().map(|n| (&n.record, n.current)).collect();
    let moved: Vec<(SourceRef, Uuid)> = resolution
        .assignments
        .iter()
        .filter(|(record, profile)| current.get(record).copied().flatten() != Some(*profile))
        .cloned()
        .collect();
    tx.set_links(&moved).await?;
    let mut merges = BTreeMap::new();
    for merge in &resolution.merges {
        for retired in &merge.retired {
            tx.retire_profile(*retired, merge.survivor).await?;
        }
        merges.insert(merge.survivor, merge.retired.clone());
    }
    // A profile whose members and their records are all unchanged builds to the same content,
    // so only these need rebuilding: the neighbourhood around a batch is much larger than the
    // batch once the store is large, and rebuilding all of it made runs quadratic.
    let changed: BTreeSet<&SourceRef> = changed.iter().collect();
    let mut affected: BTreeSet<Uuid> = merges.keys().copied().collect();
    for (record, profile) in &resolution.assignments {
        if changed.contains(record) {
            affected.insert(*profile);
        }
    }
    for (record, profile) in &moved {
        affected.insert(*profile);
        if let Some(Some(old)) = current.get(record) {
            affected.insert(*old);
        }
    }
    // Retired ids are rebuilt through their survivor only.
    let retired: BTreeSet<Uuid> = merges.values().flatten().copied().collect();
    affected.retain(|id| !retired.contains(id));
    Ok((affected, merges))
}

/// Estimates the match model from every stored customer record and stores it
/// (`conflux identities train`); the next runs match with it.
pub async fn train(
    config: &Config,
    store: &dyn Store,
) -> Result<resolver::matcher::TrainReport, PipelineError> {
    let Some(settings) = config.identity.matching.clone() else {
        return Err(PipelineError::Matching(
            "probabilistic matching is off ([identity] probabilistic = false)".into(),
        ));
    };
    let customers = stored_customers(store).await?;
    let report = resolver::matcher::estimate_model(&customers, &settings)
        .map_err(|errors| PipelineError::Matching(join_errors(&errors)))?;
    let body = serde_json::to_string(&report.model)
        .map_err(|error| PipelineError::Matching(format!("cannot serialise the model: {error}")))?;
    let mut tx = store.begin().await?;
    tx.set_match_model(&body).await?;
    tx.commit().await?;
    Ok(report)
}

/// Every stored customer record, read in pages.
async fn stored_customers(store: &dyn Store) -> Result<Vec<crate::model::Customer>, StoreError> {
    const PAGE: i64 = 20_000;
    let mut customers = Vec::new();
    let mut after: Option<SourceRef> = None;
    loop {
        let page = store.identity_rows(after.as_ref(), PAGE).await?;
        let done = (page.len() as i64) < PAGE;
        after = page.last().map(|(r, _)| r.clone());
        let refs: Vec<SourceRef> = page.into_iter().map(|(r, _)| r).collect();
        let mut tx = store.begin().await?;
        customers.extend(tx.customers_by_refs(&refs).await?);
        tx.commit().await?;
        if done {
            return Ok(customers);
        }
    }
}
