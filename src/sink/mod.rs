//! Sinks deliver feed events; the outbox relay drains the store's outbox into one.
//!
//! A [`Sink`] sends a slice of [`OutboxEvent`]s and reports which of them the destination
//! confirmed ([`SendReport`]). The relay ([`relay`]) marks rows delivered only from that
//! report, so an event is never marked delivered before the broker (or the file system) has
//! it. Implementations: [`file::FileSink`] (NDJSON, the embedded default) and
//! [`amqp::AmqpSink`] (RabbitMQ with publisher confirms).

pub mod amqp;
pub mod file;
pub mod relay;
pub mod tail;

use async_trait::async_trait;

/// One outbox row: a serialised CloudEvent waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The outbox row id (monotonic; delivery order).
    pub seq: i64,
    /// CloudEvents `id` = `<profile_id>:<version>`; the AMQP `message_id`.
    pub event_id: String,
    /// `customer.profile.created|updated|merged`; also the routing key.
    pub event_type: String,
    /// The structured-mode CloudEvent JSON body.
    pub body: String,
}

/// What a send achieved: the `seq`s the destination confirmed, and the error that stopped
/// the rest, if any.
#[derive(Debug, Default)]
pub struct SendReport {
    pub confirmed: Vec<i64>,
    pub error: Option<SinkError>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot reach {destination}: {reason}")]
    Unreachable { destination: String, reason: String },
    #[error("{destination} rejected event {event_id}: {reason}")]
    Rejected {
        destination: String,
        event_id: String,
        reason: String,
    },
    #[error("{destination}: {reason}")]
    Io { destination: String, reason: String },
}

#[async_trait]
pub trait Sink: Send {
    /// A human-readable name of the destination, for logs and the run summary.
    fn describe(&self) -> String;

    /// Delivers `events` in order and reports which were confirmed.
    async fn send(&mut self, events: &[OutboxEvent]) -> SendReport;
}
