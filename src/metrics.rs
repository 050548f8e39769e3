//! The daemon's Prometheus metrics: every metric name, and the helpers that record them.
//!
//! The names are the constants below and nowhere else; [`record_run`] turns one job run's
//! [`RunSummary`] into counter increments and gauges labelled by job. [`install`] puts a
//! Prometheus recorder in place as the process-wide `metrics` recorder, once per process:
//! later calls return the same [`PrometheusHandle`], whose `render()` is the `/metrics` body.

use std::sync::OnceLock;
use std::time::Duration;

use jiff::Timestamp;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::pipeline::RunSummary;

pub const RECORDS_READ: &str = "conflux_records_read_total";
pub const RECORDS_MAPPED: &str = "conflux_records_mapped_total";
pub const RECORDS_QUARANTINED: &str = "conflux_records_quarantined_total";
pub const EVENTS_DELIVERED: &str = "conflux_events_delivered_total";
pub const EVENTS_PENDING: &str = "conflux_events_pending";
pub const RUN_DURATION: &str = "conflux_run_duration_seconds";
pub const JOB_LAST_SUCCESS: &str = "conflux_job_last_success_timestamp_seconds";
/// Conflicts listed in the profile versions a run wrote (data quality).
pub const PROFILE_CONFLICTS: &str = "conflux_profile_conflicts_total";
/// Profile versions written with a completeness below 100 % (data quality).
pub const PROFILES_INCOMPLETE: &str = "conflux_profiles_incomplete_total";
/// Profiles re-versioned by the end-of-run segmentation.
pub const PROFILES_RESEGMENTED: &str = "conflux_profiles_resegmented_total";
/// Labelled by status; it appears in the exposition with the first retry.
pub const HTTP_RETRIES: &str = "conflux_http_retries_total";

/// Every metric exposed from start-up, for checks that the exposition lists them all.
pub const ALL: [&str; 10] = [
    RECORDS_READ,
    RECORDS_MAPPED,
    RECORDS_QUARANTINED,
    EVENTS_DELIVERED,
    EVENTS_PENDING,
    RUN_DURATION,
    JOB_LAST_SUCCESS,
    PROFILE_CONFLICTS,
    PROFILES_INCOMPLETE,
    PROFILES_RESEGMENTED,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (first call only) and returns its handle.
///
/// When another recorder already owns the process-wide slot, the handle renders nothing
/// and a warning says so; the daemon keeps running without metrics.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if let Err(error) = metrics::set_global_recorder(recorder) {
                tracing::warn!(%error, "Metrics are not recorded: another recorder is installed.");
            }
            describe();
            handle
        })
        .clone()
}

/// Counts one retried HTTP request, labelled by the status that caused it (`connect` when no
/// response arrived).
pub fn http_retry(status: Option<u16>) {
    let status = status.map_or_else(|| "connect".to_string(), |s| s.to_string());
    counter!(HTTP_RETRIES, "status" => status).increment(1);
}

fn describe() {
    describe_counter!(
        HTTP_RETRIES,
        "HTTP requests retried, by the status that caused it."
    );
    describe_counter!(RECORDS_READ, "Records read from sources.");
    describe_counter!(RECORDS_MAPPED, "Records mapped to canonical records.");
    describe_counter!(RECORDS_QUARANTINED, "Records quarantined.");
    describe_counter!(EVENTS_DELIVERED, "Profile events delivered to the feed.");
    describe_gauge!(
        EVENTS_PENDING,
        "Events waiting in the outbox after the last run."
    );
    describe_counter!(
        PROFILE_CONFLICTS,
        "Conflicts (identifiers, birth date, legal name) listed in the profile versions written."
    );
    describe_counter!(
        PROFILES_INCOMPLETE,
        "Profile versions written with a completeness below 100 %."
    );
    describe_counter!(
        PROFILES_RESEGMENTED,
        "Profiles re-versioned because their RFM scores, value tier or lifecycle stage changed."
    );
    describe_histogram!(RUN_DURATION, Unit::Seconds, "Duration of job runs.");
    describe_gauge!(
        JOB_LAST_SUCCESS,
        Unit::Seconds,
        "Unix time of the job's last successful run."
    );
}

/// Makes a job's counters visible at zero before its first run, so a scrape right after
/// start-up already lists them.
pub fn register_job(job: &str) {
    let label = job.to_string();
    for name in [
        RECORDS_READ,
        RECORDS_MAPPED,
        RECORDS_QUARANTINED,
        EVENTS_DELIVERED,
        PROFILE_CONFLICTS,
        PROFILES_INCOMPLETE,
        PROFILES_RESEGMENTED,
    ] {
        counter!(name, "job" => label.clone()).increment(0);
    }
}

/// Records one finished run of `job`: its counts (when it got far enough to have a
/// summary), its duration, and — when it succeeded — the time it finished.
pub fn record_run(
    job: &str,
    summary: Option<&RunSummary>,
    duration: Duration,
    succeeded_at: Option<Timestamp>,
) {
    let label = job.to_string();
    if let Some(summary) = summary {
        counter!(RECORDS_READ, "job" => label.clone()).increment(summary.records_read);
        counter!(RECORDS_MAPPED, "job" => label.clone()).increment(summary.records_mapped);
        counter!(RECORDS_QUARANTINED, "job" => label.clone())
            .increment(summary.records_quarantined);
        counter!(EVENTS_DELIVERED, "job" => label.clone()).increment(summary.events_delivered);
        counter!(PROFILE_CONFLICTS, "job" => label.clone()).increment(summary.profile_conflicts);
        counter!(PROFILES_INCOMPLETE, "job" => label.clone())
            .increment(summary.profiles_incomplete);
        counter!(PROFILES_RESEGMENTED, "job" => label.clone())
            .increment(summary.profiles_resegmented);
        // The outbox is shared by all jobs, so its depth carries no job label.
        gauge!(EVENTS_PENDING).set(summary.events_pending as f64);
    }
    histogram!(RUN_DURATION, "job" => label.clone()).record(duration.as_secs_f64());
    if let Some(at) = succeeded_at {
        gauge!(JOB_LAST_SUCCESS, "job" => label).set(at.as_millisecond() as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_run_shows_in_the_exposition() {
        let handle = install();
        let summary = RunSummary {
            records_read: 7,
            records_mapped: 5,
            records_quarantined: 2,
            events_delivered: 3,
            events_pending: 1,
            profile_conflicts: 4,
            profiles_incomplete: 5,
            profiles_resegmented: 6,
            ..RunSummary::default()
        };
        let finished: Timestamp = "2026-01-02T03:04:05.5Z".parse().unwrap();
        record_run(
            "metrics-test",
            Some(&summary),
            Duration::from_millis(1500),
            Some(finished),
        );
        record_run("metrics-test-failed", None, Duration::from_secs(2), None);
        handle.run_upkeep();
        let text = handle.render();

        for line in [
            "conflux_records_read_total{job=\"metrics-test\"} 7",
            "conflux_records_mapped_total{job=\"metrics-test\"} 5",
            "conflux_records_quarantined_total{job=\"metrics-test\"} 2",
            "conflux_events_delivered_total{job=\"metrics-test\"} 3",
            "conflux_profile_conflicts_total{job=\"metrics-test\"} 4",
            "conflux_profiles_incomplete_total{job=\"metrics-test\"} 5",
            "conflux_profiles_resegmented_total{job=\"metrics-test\"} 6",
            "conflux_run_duration_seconds_count{job=\"metrics-test\"} 1",
            "conflux_run_duration_seconds_sum{job=\"metrics-test\"} 1.5",
            "conflux_run_duration_seconds_count{job=\"metrics-test-failed\"} 1",
            "conflux_job_last_success_timestamp_seconds{job=\"metrics-test\"} 1767323045.5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert!(text.contains("conflux_events_pending "), "{text}");
        assert!(
            !text.contains(
                "conflux_job_last_success_timestamp_seconds{job=\"metrics-test-failed\"}"
            ),
            "{text}"
        );
        assert!(
            !text.contains("conflux_records_read_total{job=\"metrics-test-failed\"}"),
            "{text}"
        );
    }

    #[test]
    fn http_retries_are_counted_by_status() {
        let handle = install();
        // 599 is used by no other test; HTTP source tests in this process may count 503s
        // and connection failures concurrently.
        http_retry(Some(599));
        http_retry(Some(599));
        http_retry(None);
        let text = handle.render();
        assert!(
            text.contains("conflux_http_retries_total{status=\"599\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("conflux_http_retries_total{status=\"connect\"} "),
            "{text}"
        );
    }

    #[test]
    fn registered_jobs_are_listed_at_zero() {
        let handle = install();
        register_job("metrics-fresh");
        let text = handle.render();
        assert!(
            text.lines()
                .any(|l| l == "conflux_records_read_total{job=\"metrics-fresh\"} 0"),
            "{text}"
        );
    }
}
