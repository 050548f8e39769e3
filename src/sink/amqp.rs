//! [`AmqpSink`]: publishes feed events to a RabbitMQ topic exchange with publisher confirms.
//!
//! The sink connects lazily on the first send and keeps one connection and one confirm-mode
//! channel ([`Session`]) between sends; any error drops the session so the next send starts
//! from a fresh connection. A send publishes the whole slice before awaiting any confirm
//! (pipelining is what keeps the publish rate up), then walks the confirms in order: the
//! acked prefix is `confirmed`, and the first nack or failure ends it. Invariants: an event
//! is confirmed only on a broker ack; messages are persistent and carry the event id as
//! `message_id`; the URL's password never appears in a description or an error.

use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use super::{OutboxEvent, SendReport, Sink, SinkError};
use crate::model::event::MESSAGE_CONTENT_TYPE;

/// The `app_id` property of every published message.
const APP_ID: &str = "conflux";
/// AMQP `delivery_mode` 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a send waits for all its confirms; a broker that blocks publishers (memory or
/// disk alarm) would otherwise hold the relay forever.
const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

/// An open connection with its confirm-mode channel on which the exchange is declared.
struct Session {
    // Held so the connection lives as long as the channel; dropping it closes the connection.
    connection: Connection,
    channel: Channel,
}

impl Session {
    fn is_usable(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

/// Publishes events to a durable topic exchange, routing each by its event type.
pub struct AmqpSink {
    url: String,
    exchange: String,
    connect_timeout: Duration,
    confirm_timeout: Duration,
    session: Option<Session>,
}

impl std::fmt::Debug for AmqpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSink")
            .field("url", &redact_url(&self.url))
            .field("exchange", &self.exchange)
            .field(
                "connected",
                &self.session.as_ref().is_some_and(Session::is_usable),
            )
            .finish()
    }
}

impl AmqpSink {
    /// A sink for `exchange` on the broker at `url`; it does not connect until the first send.
    pub fn new(url: String, exchange: String) -> AmqpSink {
        AmqpSink {
            url,
            exchange,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            session: None,
        }
    }

    /// Bounds connecting, opening the channel and declaring the exchange (default 10 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> AmqpSink {
        self.connect_timeout = timeout;
        self
    }

    /// Bounds the wait for one send's publisher confirms (default 60 s).
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> AmqpSink {
        self.confirm_timeout = timeout;
        self
    }

    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The live channel, connecting first when there is none or the old one broke.
    async fn channel(&mut self) -> Result<Channel, SinkError> {
        if let Some(session) = &self.session
            && session.is_usable()
        {
            return Ok(session.channel.clone());
        }
        self.session = None;
        let session = tokio::time::timeout(self.connect_timeout, self.open_session())
            .await
            .map_err(|_| SinkError::Unreachable {
                destination: self.describe(),
                reason: format!("no connection within {}", humanize(self.connect_timeout)),
            })??;
        let channel = session.channel.clone();
        self.session = Some(session);
        Ok(channel)
    }

    /// Connects and opens a channel without declaring or publishing anything, then closes:
    /// `validate --check-connections` uses it to tell whether the broker is reachable.
    pub async fn probe(&self) -> Result<(), SinkError> {
        let connect = async {
            let connection = Connection::connect(&self.url, ConnectionProperties::default())
                .await
                .map_err(|e| SinkError::Unreachable {
                    destination: self.describe(),
                    reason: self.scrub(&e.to_string()),
                })?;
            let opened = connection.create_channel().await;
            let _ = connection.close(200, "probe done".into()).await;
            opened
                .map(|_| ())
                .map_err(|e| self.io_error(format!("cannot open a channel: {e}")))
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| SinkError::Unreachable {
                destination: self.describe(),
                reason: format!("no connection within {}", humanize(self.connect_timeout)),
            })?
    }

    async fn open_session(&self) -> Result<Session, SinkError> {
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .map_err(|e| SinkError::Unreachable {
                destination: self.describe(),
                reason: self.scrub(&e.to_string()),
            })?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| self.io_error(format!("cannot open a channel: {e}")))?;
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                self.io_error(format!(
                    "cannot declare topic exchange {:?}: {e}",
                    self.exchange
                ))
            })?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.io_error(format!("cannot enable publisher confirms: {e}")))?;
        Ok(Session {
            connection,
            channel,
        })
    }

    /// Publishes all events, then awaits their confirms in order; returns the acked prefix
    /// and the error that ended it.
    async fn publish(&self, channel: &Channel, events: &[OutboxEvent]) -> SendReport {
        let mut pending = Vec::with_capacity(events.len());
        let mut publish_error = None;
        for event in events {
            let properties = BasicProperties::default()
                .with_delivery_mode(PERSISTENT)
                .with_message_id(event.event_id.as_str().into())
                .with_content_type(MESSAGE_CONTENT_TYPE.into())
                .with_type(event.event_type.as_str().into())
                .with_app_id(APP_ID.into());
            let published = channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    event.event_type.as_str().into(),
                    BasicPublishOptions::default(),
                    event.body.as_bytes(),
                    properties,
                )
                .await;
            match published {
                Ok(confirm) => pending.push((event, confirm)),
                Err(e) => {
                    publish_error = Some(
                        self.io_error(format!("cannot publish event {}: {e}", event.event_id)),
                    );
                    break;
                }
            }
        }

        let mut report = SendReport::default();
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        for (event, confirm) in pending {
            let outcome = match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(_))) => {
                    report.confirmed.push(event.seq);
                    continue;
                }
                Ok(Ok(Confirmation::Nack(_))) => SinkError::Rejected {
                    destination: self.describe(),
                    event_id: event.event_id.clone(),
                    reason: "the broker nacked the message".to_string(),
                },
                // Only possible if confirm mode were off, which open_session rules out; it
                // is still not an acknowledgement, so it must not count as one.
                Ok(Ok(Confirmation::NotRequested)) => self.io_error(format!(
                    "no publisher confirm for event {}: confirms are not enabled",
                    event.event_id
                )),
                Ok(Err(e)) => self.io_error(format!(
                    "lost the publisher confirm for event {}: {e}",
                    event.event_id
                )),
                Err(_) => self.io_error(format!(
                    "no publisher confirm for event {} within {}",
                    event.event_id,
                    humanize(self.confirm_timeout)
                )),
            };
            report.error = Some(outcome);
            return report;
        }
        report.error = publish_error;
        report
    }

    fn io_error(&self, reason: String) -> SinkError {
        SinkError::Io {
            destination: self.describe(),
            reason: self.scrub(&reason),
        }
    }

    /// Removes the URL's password from text produced by the client library.
    fn scrub(&self, text: &str) -> String {
        let mut text = text.replace(&self.url, &redact_url(&self.url));
        if let Some(password) = url_password(&self.url) {
            text = text.replace(&format!(":{password}@"), ":***@");
        }
        text
    }
}

#[async_trait]
impl Sink for AmqpSink {
    fn describe(&self) -> String {
        redact_url(&self.url)
    }

    async fn send(&mut self, events: &[OutboxEvent]) -> SendReport {
        if events.is_empty() {
            return SendReport::default();
        }
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err(error) => {
                return SendReport {
                    confirmed: Vec::new(),
                    error: Some(error),
                };
            }
        };
        let report = self.publish(&channel, events).await;
        if report.error.is_some() {
            // After a failure the channel's state is unknown (closed by the broker, confirms
            // outstanding); a fresh connection on the next send is the only safe footing.
            self.session = None;
        }
        report
    }
}

/// The authority part of an AMQP URL (`user:pass@host:port`), with its byte range.
fn authority(url: &str) -> Option<(usize, &str)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((start, &rest[..end]))
}

fn url_password(url: &str) -> Option<&str> {
    let (_, authority) = authority(url)?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// The URL with its password replaced by `***`; a URL without one is returned unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((start, authority)) = authority(url) else {
        return url.to_string();
    };
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let Some((user, password)) = userinfo.split_once(':') else {
        return url.to_string();
    };
    if password.is_empty() {
        return url.to_string();
    }
    let password_start = start + user.len() + 1;
    let password_end = password_start + password.len();
    format!("{}***{}", &url[..password_start], &url[password_end..])
}

fn humanize(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use lapin::options::{
        BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, ShortString};

    use super::*;

    const DEFAULT_TEST_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    /// The broker URL for tests, or `None` (after saying so) when no broker answers. With
    /// `CONFLUX_REQUIRE_SERVICES=1` an unreachable broker fails the test instead.
    pub(crate) async fn amqp_test_url() -> Option<String> {
        let url =
            std::env::var("CONFLUX_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_TEST_URL.into());
        let probe = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(&url, ConnectionProperties::default()),
        )
        .await;
        match probe {
            Ok(Ok(connection)) => {
                let _ = connection.close(200, "probe done".into()).await;
                Some(url)
            }
            failure => {
                let reason = match failure {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                let redacted = redact_url(&url);
                if std::env::var("CONFLUX_REQUIRE_SERVICES").as_deref() == Ok("1") {
                    panic!("RabbitMQ not reachable at {redacted} ({reason}) but required");
                }
                eprintln!("skipping: RabbitMQ not reachable at {redacted} ({reason})");
                None
            }
        }
    }

    fn event(seq: i64, kind: &str) -> OutboxEvent {
        let event_id = format!("0190a5c2-0000-7000-8000-00000000000{seq}:{seq}");
        OutboxEvent {
            seq,
            body: format!(r#"{{"specversion":"1.0","id":"{event_id}","type":"{kind}"}}"#),
            event_id,
            event_type: kind.to_string(),
        }
    }

    fn three_events() -> Vec<OutboxEvent> {
        vec![
            event(1, "customer.profile.created"),
            event(2, "customer.profile.updated"),
            event(3, "customer.profile.merged"),
        ]
    }

    /// A test's own view of the broker: a unique exchange and an exclusive queue bound to it.
    struct Observer {
        _connection: Connection,
        channel: Channel,
        exchange: String,
        queue: ShortString,
    }

    impl Observer {
        async fn new(url: &str, queue_arguments: FieldTable) -> Observer {
            let connection = Connection::connect(url, ConnectionProperties::default())
                .await
                .unwrap();
            let channel = connection.create_channel().await.unwrap();
            let exchange = format!("conflux.test.{}", uuid::Uuid::now_v7());
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    lapin::ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let queue = channel
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    queue_arguments,
                )
                .await
                .unwrap()
                .name()
                .clone();
            channel
                .queue_bind(
                    queue.clone(),
                    exchange.as_str().into(),
                    "customer.profile.*".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            Observer {
                _connection: connection,
                channel,
                exchange,
                queue,
            }
        }

        /// Takes up to `n` messages, waiting up to 5 s for them to arrive, and then checks
        /// that nothing beyond them arrives within a moment.
        async fn take(&self, n: usize) -> Vec<lapin::message::BasicGetMessage> {
            let mut messages = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while messages.len() < n && tokio::time::Instant::now() < deadline {
                let got = self
                    .channel
                    .basic_get(self.queue.clone(), BasicGetOptions { no_ack: true })
                    .await
                    .unwrap();
                match got {
                    Some(message) => messages.push(message),
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let extra = self
                .channel
                .basic_get(self.queue.clone(), BasicGetOptions { no_ack: true })
                .await
                .unwrap();
            assert!(extra.is_none(), "unexpected message: {extra:?}");
            messages
        }

        async fn delete_exchange(&self) {
            self.channel
                .exchange_delete(
                    self.exchange.as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await
                .unwrap();
        }
    }

    fn text(value: &Option<ShortString>) -> Option<&str> {
        value.as_ref().map(ShortString::as_str)
    }

    #[tokio::test]
    async fn publishes_persistent_cloudevents_routed_by_event_type() {
        let Some(url) = amqp_test_url().await else {
            return;
        };
        let observer = Observer::new(&url, FieldTable::default()).await;
        let mut sink = AmqpSink::new(url.clone(), observer.exchange.clone());
        let events = three_events();

        let report = sink.send(&events).await;
        let messages = observer.take(3).await;
        observer.delete_exchange().await;

        assert!(report.error.is_none(), "{:?}", report.error);
        assert_eq!(report.confirmed, vec![1, 2, 3]);
        assert_eq!(messages.len(), 3);
        for (message, event) in messages.iter().zip(&events) {
            assert_eq!(message.delivery.exchange.as_str(), observer.exchange);
            assert_eq!(message.delivery.routing_key.as_str(), event.event_type);
            let properties = &message.delivery.properties;
            assert_eq!(text(properties.message_id()), Some(event.event_id.as_str()));
            assert_eq!(
                text(properties.content_type()),
                Some("application/cloudevents+json")
            );
            assert_eq!(*properties.delivery_mode(), Some(2));
            assert_eq!(text(properties.kind()), Some(event.event_type.as_str()));
            assert_eq!(text(properties.app_id()), Some("conflux"));
            assert_eq!(message.delivery.data, event.body.as_bytes());
        }
    }

    #[tokio::test]
    async fn reconnects_after_the_connection_is_closed() {
        let Some(url) = amqp_test_url().await else {
            return;
        };
        let observer = Observer::new(&url, FieldTable::default()).await;
        let mut sink = AmqpSink::new(url.clone(), observer.exchange.clone());
        let events = three_events();

        let first = sink.send(&events[..1]).await;
        let session = sink.session.as_ref().unwrap();
        session.connection.close(200, "test".into()).await.unwrap();
        assert!(!session.is_usable());
        let second = sink.send(&events[1..]).await;
        let messages = observer.take(3).await;
        observer.delete_exchange().await;

        assert_eq!(first.confirmed, vec![1]);
        assert!(second.error.is_none(), "{:?}", second.error);
        assert_eq!(second.confirmed, vec![2, 3]);
        let ids: Vec<&str> = messages
            .iter()
            .map(|m| text(m.delivery.properties.message_id()).unwrap())
            .collect();
        let expected: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, expected);
    }

    #[tokio::test]
    async fn nacked_events_end_the_confirmed_prefix() {
        let Some(url) = amqp_test_url().await else {
            return;
        };
        // A queue that holds one message and rejects further publishes makes the broker nack.
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        let observer = Observer::new(&url, arguments).await;
        let mut sink = AmqpSink::new(url.clone(), observer.exchange.clone());
        let events = three_events();

        let report = sink.send(&events).await;
        let messages = observer.take(1).await;
        observer.delete_exchange().await;

        assert_eq!(report.confirmed, vec![1]);
        assert_eq!(
            report.error.unwrap().to_string(),
            format!(
                "{} rejected event {}: the broker nacked the message",
                redact_url(&url),
                events[1].event_id
            )
        );
        assert!(sink.session.is_none());
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].delivery.data, events[0].body.as_bytes());
    }

    #[tokio::test]
    async fn unreachable_broker_is_reported_quickly_without_the_password() {
        let url = "amqp://guest:s3cret-pw@127.0.0.1:1/%2f".to_string();
        let mut sink = AmqpSink::new(url, "conflux.customers".to_string())
            .with_connect_timeout(Duration::from_secs(3));

        let started = std::time::Instant::now();
        let report = sink.send(&three_events()).await;

        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(report.confirmed.is_empty());
        let error = report.error.unwrap();
        assert!(
            matches!(&error, SinkError::Unreachable { destination, .. }
                if destination == "amqp://guest:***@127.0.0.1:1/%2f"),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(
            text.starts_with("cannot reach amqp://guest:***@127.0.0.1:1/%2f: "),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
        assert!(!format!("{error:?} {sink:?}").contains("s3cret"));
        assert!(sink.session.is_none());
    }

    #[tokio::test]
    async fn connect_timeout_bounds_a_silent_host() {
        // A listener that accepts and never speaks AMQP: the handshake would wait forever.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                sockets.push(socket);
            }
        });
        let url = format!("amqp://guest:s3cret-pw@127.0.0.1:{port}/%2f");
        let mut sink = AmqpSink::new(url, "conflux.customers".to_string())
            .with_connect_timeout(Duration::from_millis(300));

        let started = std::time::Instant::now();
        let report = sink.send(&three_events()).await;
        hold.abort();

        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(report.confirmed.is_empty());
        assert_eq!(
            report.error.unwrap().to_string(),
            format!(
                "cannot reach amqp://guest:***@127.0.0.1:{port}/%2f: no connection within 300 ms"
            )
        );
    }

    #[test]
    fn redacts_only_the_password() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("amqps://svc:p%40ss:w@bus.example:5671/prod?heartbeat=10"),
            "amqps://svc:***@bus.example:5671/prod?heartbeat=10"
        );
        assert_eq!(
            redact_url("amqp://127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://user@host/"), "amqp://user@host/");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn scrub_removes_the_password_from_library_messages() {
        let sink = AmqpSink::new("amqp://u:hunter22@h:5672/v".to_string(), "x".to_string());
        assert_eq!(
            sink.scrub("bad uri amqp://u:hunter22@h:5672/v; also u:hunter22@h"),
            "bad uri amqp://u:***@h:5672/v; also u:***@h"
        );
        assert_eq!(sink.describe(), "amqp://u:***@h:5672/v");
    }
}
