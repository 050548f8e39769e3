//! The daemon: every scheduled job on its cron schedule, plus the operations endpoints.
//!
//! [`run_daemon`] gives each job with a `schedule` one tokio task with its own store and
//! sink. A task sleeps until the job's next fire time ([`JobSchedule`], in the job's time
//! zone) and runs the job there, so a job never overlaps itself: fire times that pass during
//! a run are skipped, not queued. At start-up a job whose previous fire time is later than
//! its last recorded run start ran while the daemon was down and runs once at once
//! ([`catch_up_due`]). When the shutdown future resolves no further run starts; runs in
//! flight get the grace period to finish and are aborted after it, which rolls back their
//! open batch (a batch commits whole or not at all) and records them as `aborted`.
//!
//! Replicas: before each run the task takes the job's lease for that fire time
//! ([`Store::acquire_job_lease`]) and renews it while the run lasts, so daemons sharing a
//! PostgreSQL store run each fire time once, never two runs of a job at a time; a replica
//! that dies holding a lease loses it after [`LEASE_TTL`]. On SQLite every lease is granted.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, DEFAULT_OPS_LISTEN, JobConfig};
use crate::metrics;
use crate::ops;
use crate::pipeline::{self, PipelineError};
use crate::sink::Sink;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("job {job}: invalid cron schedule {schedule:?}: {message}")]
    Schedule {
        job: String,
        schedule: String,
        message: String,
    },
    #[error("job {job}: unknown time zone {timezone:?}: {message}")]
    TimeZone {
        job: String,
        timezone: String,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr} for the operations endpoints: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("operations endpoints on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How many job runs the shutdown looks through for runs it aborted.
const ABORTED_RUN_SCAN: i64 = 100;

/// How long a job lease outlives its last renewal; a running job renews it every third.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// A job's cron schedule in its time zone.
#[derive(Debug, Clone)]
pub struct JobSchedule {
    job: String,
    expression: String,
    cron: Cron,
    zone: TimeZone,
}

impl JobSchedule {
    /// The schedule of `job`, or `None` when it has none (it runs only on demand).
    pub fn of(job: &JobConfig) -> Result<Option<JobSchedule>, DaemonError> {
        job.schedule
            .as_deref()
            .map(|schedule| JobSchedule::parse(&job.name, schedule, job.timezone.as_deref()))
            .transpose()
    }

    /// Parses a cron expression (5 fields, or 6 with seconds first) in an IANA time zone
    /// (UTC when `None`).
    pub fn parse(
        job: &str,
        expression: &str,
        timezone: Option<&str>,
    ) -> Result<JobSchedule, DaemonError> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|error| DaemonError::Schedule {
                job: job.to_string(),
                schedule: expression.to_string(),
                message: error.to_string(),
            })?;
        let zone = match timezone {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name).map_err(|error| DaemonError::TimeZone {
                job: job.to_string(),
                timezone: name.to_string(),
                message: error.to_string(),
            })?,
        };
        Ok(JobSchedule {
            job: job.to_string(),
            expression: expression.to_string(),
            cron,
            zone,
        })
    }

    pub fn job(&self) -> &str {
        &self.job
    }

    /// The first fire time strictly after `after`; `None` when the schedule never fires
    /// again (e.g. a date that does not exist before the end of the supported calendar).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&after.to_zoned(self.zone.clone()), false)
            .ok()
            .map(|zoned| zoned.timestamp())
    }

    /// The last fire time strictly before `before`, if the schedule ever fired.
    pub fn previous_before(&self, before: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_previous_occurrence(&before.to_zoned(self.zone.clone()), false)
            .ok()
            .map(|zoned| zoned.timestamp())
    }

    /// How many fire times lie strictly between `after` and `before`, counting at most
    /// `limit` (a long run on a seconds schedule would otherwise mean a long count).
    pub fn fire_times_between(&self, after: Timestamp, before: Timestamp, limit: u64) -> u64 {
        let mut count = 0;
        let mut at = after;
        while count < limit {
            match self.next_after(at) {
                Some(next) if next < before => {
                    count += 1;
                    at = next;
                }
                _ => break,
            }
        }
        count
    }
}

/// Whether a job missed a run while the daemon was down: its last fire time before now is
/// later than its last recorded run start. A job that never ran has missed its schedule
/// too, once it has fired at all.
pub fn catch_up_due(previous_fire: Option<Timestamp>, last_started: Option<Timestamp>) -> bool {
    match (previous_fire, last_started) {
        (Some(fire), Some(started)) => fire > started,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Runs every scheduled job of `config` and serves the operations endpoints until
/// `shutdown` resolves; then waits up to `grace` for runs in flight and aborts the rest.
pub async fn run_daemon(
    config: &Config,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(), DaemonError> {
    let metrics_handle = metrics::install();
    let mut schedules = Vec::new();
    for job in &config.jobs {
        match JobSchedule::of(job)? {
            Some(schedule) => schedules.push(schedule),
            None => tracing::info!(job = %job.name, "Job has no schedule; it runs only on demand."),
        }
    }
    if schedules.is_empty() {
        tracing::warn!("No job has a schedule; the daemon only serves its operations endpoints.");
    }

    let addr = config.ops_listen.unwrap_or(DEFAULT_OPS_LISTEN);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen { addr, source })?;
    let ops_store = pipeline::open_store(config).await?;
    let (stop, stopped) = watch::channel(false);
    let bus = match &config.feed.sink {
        crate::config::SinkConfig::Amqp { url, exchange } => Some(Arc::new(
            crate::sink::amqp::AmqpSink::new(url.clone(), exchange.clone()),
        )),
        crate::config::SinkConfig::File { .. } => None,
    };
    let mut server = tokio::spawn(ops::serve(
        listener,
        ops_store.clone(),
        metrics_handle,
        bus,
        stopped.clone(),
    ));

    let started_at = Timestamp::now();
    let shared = Arc::new(config.clone());
    // Names this daemon's job leases among replicas.
    let holder: Arc<str> = Arc::from(format!(
        "pid {} / {}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    ));
    let mut tasks = JoinSet::new();
    let mut names = BTreeSet::new();
    for schedule in schedules {
        let store = pipeline::open_store(config).await?;
        let sink = pipeline::open_sink(config);
        metrics::register_job(schedule.job());
        names.insert(schedule.job().to_string());
        tasks.spawn(job_loop(
            shared.clone(),
            holder.clone(),
            schedule,
            store,
            sink,
            stopped.clone(),
        ));
    }
    tracing::info!(%addr, jobs = names.len(), "Daemon started.");

    let mut served = None;
    tokio::select! {
        () = shutdown => tracing::info!("Shutting down: no new runs start."),
        outcome = &mut server => served = Some(outcome),
    }
    stop.send_replace(true);

    let deadline = tokio::time::Instant::now() + grace;
    let drained = tokio::time::timeout_at(deadline, async {
        while let Some(joined) = tasks.join_next().await {
            if let Err(error) = joined {
                tracing::error!(%error, "A job task ended abnormally.");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            in_flight = tasks.len(),
            grace_seconds = grace.as_secs_f64(),
            "Grace period over: aborting runs in flight; their open batches roll back."
        );
        tasks.shutdown().await;
        mark_aborted(ops_store.as_ref(), &names, started_at).await;
    }

    let served = match served {
        Some(outcome) => outcome,
        None => match tokio::time::timeout_at(deadline, &mut server).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // Open keep-alive connections hold a graceful server; they do not hold us.
                server.abort();
                return Ok(());
            }
        },
    };
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(DaemonError::Serve { addr, source }),
        Err(error) => Err(DaemonError::Serve {
            addr,
            source: std::io::Error::other(error.to_string()),
        }),
    }
}

/// Records the runs the shutdown aborted (started by this daemon, still `running`), so
/// `conflux runs` does not show them as in progress forever.
async fn mark_aborted(store: &dyn Store, jobs: &BTreeSet<String>, since: Timestamp) {
    let runs = match store.recent_runs(ABORTED_RUN_SCAN).await {
        Ok(runs) => runs,
        Err(error) => {
            tracing::error!(%error, "Cannot record the aborted runs.");
            return;
        }
    };
    let aborted = runs.iter().filter(|run| {
        run.status == "running" && run.started_at >= since && jobs.contains(&run.job)
    });
    for run in aborted {
        let summary = serde_json::json!({ "error": "aborted at shutdown after the grace period" });
        if let Err(error) = store
            .finish_run(run.id, "aborted", &summary.to_string())
            .await
        {
            tracing::error!(run = run.id, %error, "Cannot record the aborted run.");
        }
    }
}

/// One job's life in the daemon: a catch-up run if one is due, then a run at each fire
/// time until the stop signal.
async fn job_loop(
    config: Arc<Config>,
    holder: Arc<str>,
    schedule: JobSchedule,
    store: Arc<dyn Store>,
    mut sink: Box<dyn Sink>,
    mut stop: watch::Receiver<bool>,
) {
    let job = schedule.job().to_string();
    let now = Timestamp::now();
    match store.last_run_started(&job).await {
        Ok(last_started) => {
            let previous = schedule.previous_before(now);
            if let Some(fire_at) = previous.filter(|_| catch_up_due(previous, last_started)) {
                tracing::info!(job = %job, "A scheduled run was missed; running it now.");
                let leased = Leased {
                    job: &job,
                    holder: &holder,
                    fire_at,
                };
                leased.run(&config, store.as_ref(), sink.as_mut()).await;
            }
        }
        Err(error) => {
            tracing::error!(job = %job, %error, "Cannot tell whether a run was missed; waiting for the next fire time.");
        }
    }

    let mut after = Timestamp::now();
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(next) = schedule.next_after(after) else {
            tracing::warn!(job = %job, schedule = %schedule.expression, "The schedule fires no more.");
            return;
        };
        let wait = Duration::try_from(next.duration_since(Timestamp::now())).unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            // A closed channel means the daemon is gone: stop as well.
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let leased = Leased {
            job: &job,
            holder: &holder,
            fire_at: next,
        };
        leased.run(&config, store.as_ref(), sink.as_mut()).await;
        let finished = Timestamp::now();
        let skipped = schedule.fire_times_between(next, finished, 100_000);
        if skipped > 0 {
            tracing::warn!(job = %job, skipped, "The run outlasted its interval; the fire times that passed meanwhile are skipped.");
        }
        // The tokio timer and the wall clock may disagree by a hair; `next` never fires twice.
        after = finished.max(next);
    }
}

/// One fire time of a job, run under the job's lease.
struct Leased<'a> {
    job: &'a str,
    holder: &'a str,
    fire_at: Timestamp,
}

impl Leased<'_> {
    /// Runs the job if this daemon gets the lease for the fire time, renewing it meanwhile;
    /// another replica holding it (or having run this fire time) is normal and skips it here.
    async fn run(&self, config: &Config, store: &dyn Store, sink: &mut dyn Sink) {
        let job = self.job;
        match store
            .acquire_job_lease(job, self.holder, self.fire_at, LEASE_TTL)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(job, fire_at = %self.fire_at, "Another replica runs this fire time.");
                return;
            }
            Err(error) => {
                tracing::error!(job, %error, "Cannot take the job's lease; this fire time is skipped.");
                return;
            }
        }
        let renew = async {
            loop {
                tokio::time::sleep(LEASE_TTL / 3).await;
                match store.renew_job_lease(job, self.holder, LEASE_TTL).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(job, "The job's lease was taken over while it ran.")
                    }
                    Err(error) => tracing::warn!(job, %error, "Cannot renew the job's lease."),
                }
            }
        };
        tokio::select! {
            () = run_once(config, job, store, sink) => {}
            _ = renew => {}
        }
        if let Err(error) = store.release_job_lease(job, self.holder).await {
            tracing::warn!(job, %error, "Cannot release the job's lease; it expires by itself.");
        }
    }
}

/// One run of `job`, logged and recorded in the metrics (the store records it itself).
async fn run_once(config: &Config, job: &str, store: &dyn Store, sink: &mut dyn Sink) {
    let started = Instant::now();
    let outcome = pipeline::run_with(config, Some(job), store, sink).await;
    let duration = started.elapsed();
    match &outcome {
        Ok(summary) => {
            tracing::info!(
                job,
                seconds = duration.as_secs_f64(),
                read = summary.records_read,
                quarantined = summary.records_quarantined,
                delivered = summary.events_delivered,
                "Job run finished."
            );
            metrics::record_run(job, Some(summary), duration, Some(Timestamp::now()));
        }
        Err(error) => {
            tracing::error!(job, %error, "Job run failed.");
            let summary = match error {
                PipelineError::Undelivered { summary, .. } => Some(summary.as_ref()),
                _ => None,
            };
            metrics::record_run(job, summary, duration, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn fire_times_follow_the_job_time_zone() {
        let schedule = JobSchedule::parse("nightly", "30 2 * * *", Some("Europe/Berlin")).unwrap();
        // 02:30 in Berlin is 01:30 UTC in winter and 00:30 UTC in summer.
        assert_eq!(
            schedule.next_after(at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-11T01:30:00Z"))
        );
        assert_eq!(
            schedule.next_after(at("2026-07-10T12:00:00Z")),
            Some(at("2026-07-11T00:30:00Z"))
        );
        assert_eq!(
            schedule.previous_before(at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-10T01:30:00Z"))
        );
        // Strictly after: a fire time is not its own successor.
        assert_eq!(
            schedule.next_after(at("2026-01-11T01:30:00Z")),
            Some(at("2026-01-12T01:30:00Z"))
        );

        let utc = JobSchedule::parse("often", "*/15 * * * * *", None).unwrap();
        assert_eq!(
            utc.next_after(at("2026-01-10T12:00:07Z")),
            Some(at("2026-01-10T12:00:15Z"))
        );
    }

    #[test]
    fn skipped_fire_times_are_counted_between_two_instants() {
        let schedule = JobSchedule::parse("often", "* * * * * *", None).unwrap();
        let fired = at("2026-01-10T12:00:00Z");
        assert_eq!(
            schedule.fire_times_between(fired, at("2026-01-10T12:00:03.5Z"), 100),
            3
        );
        assert_eq!(
            schedule.fire_times_between(fired, at("2026-01-10T12:00:00.9Z"), 100),
            0
        );
        assert_eq!(
            schedule.fire_times_between(fired, at("2026-01-10T13:00:00Z"), 100),
            100
        );
    }

    #[test]
    fn a_run_missed_while_down_is_due_once_at_start_up() {
        let schedule = JobSchedule::parse("nightly", "30 2 * * *", Some("UTC")).unwrap();
        let now = at("2026-03-05T09:00:00Z");
        let previous = schedule.previous_before(now);
        assert_eq!(previous, Some(at("2026-03-05T02:30:00Z")));

        // Last ran the night before: last night's run was missed.
        assert!(catch_up_due(previous, Some(at("2026-03-04T02:30:01Z"))));
        // Ran after last night's fire time (on schedule, or by hand): nothing is missed.
        assert!(!catch_up_due(previous, Some(at("2026-03-05T02:30:00.2Z"))));
        assert!(!catch_up_due(previous, Some(at("2026-03-05T08:00:00Z"))));
        // Never ran: the schedule has been missed.
        assert!(catch_up_due(previous, None));
        // A schedule that never fired has nothing to catch up.
        assert!(!catch_up_due(None, None));
        assert!(!catch_up_due(None, Some(at("2026-03-05T08:00:00Z"))));
    }

    #[test]
    fn bad_schedules_and_zones_name_the_job() {
        let error = JobSchedule::parse("nightly", "61 * * * *", None).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("job nightly: invalid cron schedule \"61 * * * *\": "),
            "{error}"
        );
        let error = JobSchedule::parse("nightly", "* * * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("job nightly: unknown time zone \"Mars/Olympus\": "),
            "{error}"
        );
        let job = JobConfig {
            name: "manual".into(),
            schedule: None,
            timezone: None,
            streams: Vec::new(),
        };
        assert!(JobSchedule::of(&job).unwrap().is_none());
    }
}
