//! The outbox relay: [`drain`] moves pending [`OutboxEvent`]s from an [`Outbox`] into a
//! [`Sink`] until the outbox is empty or the sink keeps failing past a retry budget.
//!
//! [`Outbox`] is the narrow slice of the store the relay needs (every
//! [`Store`](crate::store::Store) is one); [`RelaySettings`] bound the batches and the
//! retrying; [`RelayReport`] says what was delivered and what still waits. Invariants: a
//! row is marked delivered only when the sink confirmed it in this very send (confirmations
//! are recorded while the next batch is sent, or before any wait when a send failed
//! part-way), and rows are offered in outbox order, so delivery is at-least-once and ordered
//! per relay. Sending one batch overlaps marking the previous one and fetching the next.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

use super::{OutboxEvent, Sink};
use crate::store::StoreError;

/// The part of the store the relay reads and updates.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Up to `limit` undelivered events after outbox row `after`, in delivery order.
    async fn pending_events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, StoreError>;
    /// Marks the given outbox rows delivered.
    async fn mark_delivered(&self, seqs: &[i64]) -> Result<(), StoreError>;
    /// How many events wait for delivery.
    async fn pending_count(&self) -> Result<i64, StoreError>;
    /// Gives up the claims on rows this relay fetched but did not deliver (see
    /// [`Store::release_claims`](crate::store::Store::release_claims)).
    async fn release_claims(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl<T: crate::store::Store + ?Sized> Outbox for T {
    async fn pending_events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        crate::store::Store::pending_events_after(self, after, limit).await
    }

    async fn mark_delivered(&self, seqs: &[i64]) -> Result<(), StoreError> {
        crate::store::Store::mark_delivered(self, seqs).await
    }

    async fn pending_count(&self) -> Result<i64, StoreError> {
        crate::store::Store::pending_count(self).await
    }

    async fn release_claims(&self) -> Result<(), StoreError> {
        crate::store::Store::release_claims(self).await
    }
}

/// A shared store trait object (`Arc<dyn Store>`) cannot coerce to `&dyn Outbox` by
/// itself (one unsized type never coerces to another), so the shared handle is an outbox too.
#[async_trait]
impl<T: crate::store::Store + ?Sized> Outbox for std::sync::Arc<T> {
    async fn pending_events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        crate::store::Store::pending_events_after(&**self, after, limit).await
    }

    async fn mark_delivered(&self, seqs: &[i64]) -> Result<(), StoreError> {
        crate::store::Store::mark_delivered(&**self, seqs).await
    }

    async fn pending_count(&self) -> Result<i64, StoreError> {
        crate::store::Store::pending_count(&**self).await
    }

    async fn release_claims(&self) -> Result<(), StoreError> {
        crate::store::Store::release_claims(&**self).await
    }
}

/// How the relay batches and how long it keeps retrying a failing sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// The most events offered to the sink in one send.
    pub batch_size: i64,
    /// How long a streak of failed sends may last, from its first failure, before the
    /// relay gives up and leaves the rest for the next run.
    pub retry_budget: Duration,
    /// The first wait after a failure.
    pub min_backoff: Duration,
    /// The longest wait between two attempts (jitter included).
    pub max_backoff: Duration,
}

impl Default for RelaySettings {
    fn default() -> RelaySettings {
        RelaySettings {
            batch_size: 500,
            retry_budget: Duration::from_secs(30),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// The outcome of one [`drain`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Events marked delivered by this drain.
    pub delivered: u64,
    /// Events still waiting when the drain stopped.
    pub pending: u64,
    /// The sink error that ended the drain; `None` when the outbox was emptied.
    pub last_error: Option<String>,
}

/// A run of consecutive failed sends: when it began and the delays still to come.
struct FailureStreak {
    started: Instant,
    delays: ExponentialBackoff,
}

/// Delivers pending events to `sink` until none remain or the retry budget is spent.
///
/// Store errors end the drain with `Err`: without the store the relay can neither fetch nor
/// record anything, and retrying belongs to the caller's schedule.
pub async fn drain<O: Outbox + ?Sized>(
    outbox: &O,
    sink: &mut dyn Sink,
    settings: &RelaySettings,
) -> Result<RelayReport, StoreError> {
    let destination = sink.describe();
    let backoff = ExponentialBuilder::default()
        .with_min_delay(settings.min_backoff)
        .with_max_delay(settings.max_backoff)
        .with_jitter()
        .without_max_times();
    let mut delivered = 0u64;
    let mut streak: Option<FailureStreak> = None;
    let size = settings.batch_size;
    // Confirmed by the last send, marked while the next batch is sent.
    let mut unmarked: Vec<i64> = Vec::new();
    let mut next = outbox.pending_events_after(0, size).await?;

    let last_error = loop {
        let batch = std::mem::take(&mut next);
        let Some(last) = batch.last().map(|e| e.seq) else {
            mark(outbox, &mut unmarked, &mut delivered).await?;
            break None;
        };
        // One batch is sent while the previous one is marked and the next one fetched.
        let (report, marked, fetched) = tokio::join!(
            sink.send(&batch),
            mark(outbox, &mut unmarked, &mut delivered),
            outbox.pending_events_after(last, size),
        );
        let confirmed = confirmed_in_batch(&batch, &report.confirmed);
        if !confirmed.is_empty() {
            unmarked = confirmed;
            // Progress ends a failure streak even if this same send failed afterwards.
            streak = None;
        }
        let fetched = match marked.and(fetched) {
            Ok(fetched) => fetched,
            Err(error) => {
                // Recorded if the store still answers; otherwise re-delivered later.
                let _ = mark(outbox, &mut unmarked, &mut delivered).await;
                return Err(error);
            }
        };
        let error = match report.error {
            Some(error) => error.to_string(),
            None if unmarked.len() == batch.len() => {
                streak = None;
                next = fetched;
                continue;
            }
            // A sink that neither confirms nor explains would otherwise be re-sent the same
            // batch in a tight loop.
            None => format!(
                "{destination} confirmed {} of {} events without reporting an error",
                unmarked.len(),
                batch.len()
            ),
        };
        // What was confirmed is recorded before waiting; the unconfirmed rest is fetched
        // again, from the oldest undelivered row, once the wait is over.
        mark(outbox, &mut unmarked, &mut delivered).await?;

        let streak = streak.get_or_insert_with(|| FailureStreak {
            started: Instant::now(),
            delays: backoff.build(),
        });
        let elapsed = streak.started.elapsed();
        let Some(remaining) = settings
            .retry_budget
            .checked_sub(elapsed)
            .filter(|r| !r.is_zero())
        else {
            break Some(error);
        };
        let retry_in = streak
            .delays
            .next()
            .unwrap_or(settings.max_backoff)
            .min(settings.max_backoff)
            .min(remaining);
        tracing::warn!(
            destination = %destination,
            error = %error,
            retry_in = ?retry_in,
            "Delivering feed events failed; retrying."
        );
        tokio::time::sleep(retry_in).await;
        next = outbox.pending_events_after(0, size).await?;
    };

    // What this drain leaves undelivered is free for the next relay, here or on a replica.
    outbox.release_claims().await?;
    let pending = outbox.pending_count().await?;
    Ok(RelayReport {
        delivered,
        pending: u64::try_from(pending).unwrap_or(0),
        last_error,
    })
}

/// The confirmed seqs that belong to `batch`, in batch order, each once. A sink can only
/// confirm what it was given; anything else in its report is ignored rather than marked.
async fn mark<O: Outbox + ?Sized>(
    outbox: &O,
    unmarked: &mut Vec<i64>,
    delivered: &mut u64,
) -> Result<(), StoreError> {
    if unmarked.is_empty() {
        return Ok(());
    }
    outbox.mark_delivered(unmarked).await?;
    *delivered += unmarked.len() as u64;
    unmarked.clear();
    Ok(())
}

fn confirmed_in_batch(batch: &[OutboxEvent], confirmed: &[i64]) -> Vec<i64> {
    let confirmed: HashSet<i64> = confirmed.iter().copied().collect();
    batch
        .iter()
        .map(|e| e.seq)
        .filter(|seq| confirmed.contains(seq))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::sink::{SendReport, SinkError};

    /// An outbox in memory: rows with a delivered flag, and a log of every mark call.
    #[derive(Default)]
    struct MemoryOutbox {
        rows: Mutex<Vec<(OutboxEvent, bool)>>,
        marks: Mutex<Vec<Vec<i64>>>,
    }

    impl MemoryOutbox {
        fn with_events(n: i64) -> MemoryOutbox {
            let rows = (1..=n)
                .map(|seq| {
                    let event = OutboxEvent {
                        seq,
                        event_id: format!("p{seq}:1"),
                        event_type: "customer.profile.created".to_string(),
                        body: format!(r#"{{"id":"p{seq}:1"}}"#),
                    };
                    (event, false)
                })
                .collect();
            MemoryOutbox {
                rows: Mutex::new(rows),
                marks: Mutex::default(),
            }
        }

        fn delivered(&self) -> Vec<i64> {
            let rows = self.rows.lock().unwrap();
            rows.iter().filter(|r| r.1).map(|r| r.0.seq).collect()
        }

        fn marks(&self) -> Vec<Vec<i64>> {
            self.marks.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Outbox for MemoryOutbox {
        async fn pending_events_after(
            &self,
            after: i64,
            limit: i64,
        ) -> Result<Vec<OutboxEvent>, StoreError> {
            let rows = self.rows.lock().unwrap();
            Ok(rows
                .iter()
                .filter(|r| !r.1 && r.0.seq > after)
                .take(limit as usize)
                .map(|r| r.0.clone())
                .collect())
        }

        async fn mark_delivered(&self, seqs: &[i64]) -> Result<(), StoreError> {
            let mut rows = self.rows.lock().unwrap();
            for seq in seqs {
                let row = rows.iter_mut().find(|r| r.0.seq == *seq).unwrap();
                assert!(!row.1, "seq {seq} marked delivered twice");
                row.1 = true;
            }
            self.marks.lock().unwrap().push(seqs.to_vec());
            Ok(())
        }

        async fn pending_count(&self) -> Result<i64, StoreError> {
            Ok(self.rows.lock().unwrap().iter().filter(|r| !r.1).count() as i64)
        }
    }

    /// What the scripted sink does with one send.
    enum Step {
        ConfirmAll,
        /// Confirms the first n events, then fails.
        ConfirmFirst(usize),
        Fail,
    }

    /// A sink that follows a script (then confirms everything) and records every send.
    struct ScriptedSink {
        script: VecDeque<Step>,
        always_fail: bool,
        sends: Arc<Mutex<Vec<Vec<i64>>>>,
    }

    impl ScriptedSink {
        fn new(script: Vec<Step>) -> ScriptedSink {
            ScriptedSink {
                script: script.into(),
                always_fail: false,
                sends: Arc::default(),
            }
        }

        fn failing() -> ScriptedSink {
            ScriptedSink {
                always_fail: true,
                ..ScriptedSink::new(Vec::new())
            }
        }

        fn sends(&self) -> Vec<Vec<i64>> {
            self.sends.lock().unwrap().clone()
        }
    }

    fn unreachable() -> SinkError {
        SinkError::Unreachable {
            destination: "amqp://bus".to_string(),
            reason: "connection refused".to_string(),
        }
    }

    #[async_trait]
    impl Sink for ScriptedSink {
        fn describe(&self) -> String {
            "amqp://bus".to_string()
        }

        async fn send(&mut self, events: &[OutboxEvent]) -> SendReport {
            self.sends
                .lock()
                .unwrap()
                .push(events.iter().map(|e| e.seq).collect());
            let step = if self.always_fail {
                Step::Fail
            } else {
                self.script.pop_front().unwrap_or(Step::ConfirmAll)
            };
            let seqs = events.iter().map(|e| e.seq);
            match step {
                Step::ConfirmAll => SendReport {
                    confirmed: seqs.collect(),
                    error: None,
                },
                Step::ConfirmFirst(n) => SendReport {
                    confirmed: seqs.take(n).collect(),
                    error: Some(unreachable()),
                },
                Step::Fail => SendReport {
                    confirmed: Vec::new(),
                    error: Some(unreachable()),
                },
            }
        }
    }

    fn fast_settings(batch_size: i64) -> RelaySettings {
        RelaySettings {
            batch_size,
            retry_budget: Duration::from_secs(5),
            min_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
        }
    }

    #[tokio::test]
    async fn delivers_everything_in_order_in_batches() {
        let outbox = MemoryOutbox::with_events(7);
        let mut sink = ScriptedSink::new(Vec::new());

        let report = drain(&outbox, &mut sink, &fast_settings(3)).await.unwrap();

        assert_eq!(
            report,
            RelayReport {
                delivered: 7,
                pending: 0,
                last_error: None
            }
        );
        assert_eq!(sink.sends(), vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
        assert_eq!(outbox.marks(), sink.sends());
        assert_eq!(outbox.delivered(), (1..=7).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn empty_outbox_sends_nothing() {
        let outbox = MemoryOutbox::with_events(0);
        let mut sink = ScriptedSink::new(Vec::new());
        let report = drain(&outbox, &mut sink, &fast_settings(3)).await.unwrap();
        assert_eq!(report, RelayReport::default());
        assert!(sink.sends().is_empty());
    }

    #[tokio::test]
    async fn two_failures_then_success_delivers_each_event_once() {
        let outbox = MemoryOutbox::with_events(4);
        let mut sink = ScriptedSink::new(vec![Step::Fail, Step::Fail]);

        let report = drain(&outbox, &mut sink, &fast_settings(10)).await.unwrap();

        assert_eq!(
            report,
            RelayReport {
                delivered: 4,
                pending: 0,
                last_error: None
            }
        );
        assert_eq!(sink.sends(), vec![vec![1, 2, 3, 4]; 3]);
        assert_eq!(outbox.marks(), vec![vec![1, 2, 3, 4]]);
    }

    #[tokio::test]
    async fn always_failing_sink_stops_after_the_budget_and_marks_nothing() {
        let outbox = MemoryOutbox::with_events(5);
        let mut sink = ScriptedSink::failing();
        let settings = RelaySettings {
            batch_size: 2,
            retry_budget: Duration::from_secs(1),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(300),
        };

        let started = std::time::Instant::now();
        let report = drain(&outbox, &mut sink, &settings).await.unwrap();
        let took = started.elapsed();

        assert!(took >= Duration::from_secs(1), "stopped early: {took:?}");
        assert!(took < Duration::from_millis(1500), "overran: {took:?}");
        assert_eq!(
            report,
            RelayReport {
                delivered: 0,
                pending: 5,
                last_error: Some("cannot reach amqp://bus: connection refused".to_string()),
            }
        );
        assert!(outbox.marks().is_empty());
        let sends = sink.sends();
        assert!(sends.len() >= 3, "too few retries: {}", sends.len());
        assert!(sends.iter().all(|s| s == &vec![1, 2]));
    }

    #[tokio::test]
    async fn partial_confirm_marks_only_the_confirmed_events() {
        let outbox = MemoryOutbox::with_events(4);
        let mut sink = ScriptedSink::new(vec![Step::ConfirmFirst(2)]);

        let report = drain(&outbox, &mut sink, &fast_settings(10)).await.unwrap();

        assert_eq!(report.delivered, 4);
        assert_eq!(sink.sends(), vec![vec![1, 2, 3, 4], vec![3, 4]]);
        assert_eq!(outbox.marks(), vec![vec![1, 2], vec![3, 4]]);
    }

    #[tokio::test]
    async fn partial_confirm_then_budget_spent_leaves_the_rest_pending() {
        let outbox = MemoryOutbox::with_events(4);
        let mut sink = ScriptedSink::new(vec![Step::ConfirmFirst(1)]);
        sink.script.extend((0..1000).map(|_| Step::Fail));
        let settings = RelaySettings {
            retry_budget: Duration::from_millis(100),
            ..fast_settings(10)
        };

        let report = drain(&outbox, &mut sink, &settings).await.unwrap();

        assert_eq!(report.delivered, 1);
        assert_eq!(report.pending, 3);
        assert_eq!(
            report.last_error.as_deref(),
            Some("cannot reach amqp://bus: connection refused")
        );
        assert_eq!(outbox.marks(), vec![vec![1]]);
        assert_eq!(outbox.delivered(), vec![1]);
    }

    /// A sink that claims seqs it was never given, and leaves part of its batch unconfirmed
    /// without an error.
    struct OverclaimingSink;

    #[async_trait]
    impl Sink for OverclaimingSink {
        fn describe(&self) -> String {
            "odd".to_string()
        }

        async fn send(&mut self, events: &[OutboxEvent]) -> SendReport {
            let mut confirmed = vec![99];
            confirmed.extend(events.iter().take(1).map(|e| e.seq));
            SendReport {
                confirmed,
                error: None,
            }
        }
    }

    #[tokio::test]
    async fn confirmations_outside_the_batch_are_never_marked() {
        let outbox = MemoryOutbox::with_events(2);
        let mut sink = OverclaimingSink;
        let report = drain(&outbox, &mut sink, &fast_settings(10)).await.unwrap();
        assert_eq!(report.delivered, 2);
        assert_eq!(outbox.marks(), vec![vec![1], vec![2]]);
    }

    /// Compiles only while a shared `Arc<dyn Store>` is an outbox.
    #[allow(dead_code)]
    fn shared_store_is_an_outbox(shared: &Arc<dyn crate::store::Store>) -> &dyn Outbox {
        shared
    }

    #[test]
    fn default_settings_match_the_documented_values() {
        let settings = RelaySettings::default();
        assert_eq!(settings.batch_size, 500);
        assert_eq!(settings.retry_budget, Duration::from_secs(30));
        assert_eq!(settings.min_backoff, Duration::from_millis(200));
        assert_eq!(settings.max_backoff, Duration::from_secs(5));
    }
}
