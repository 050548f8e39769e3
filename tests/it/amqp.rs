//! The feed on the real RabbitMQ of this machine: a consumer declared by the test receives
//! exactly the outbox's events with the right routing keys, message ids and bodies; with the
//! broker unreachable the events stay in the outbox and a later run delivers each once.

use std::path::Path;
use std::time::{Duration, Instant};

use conflux::pipeline::{self, PipelineError};
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::common::{amqp_url, load, project_copy};

/// Points the demo config at an AMQP feed on `exchange` at `url`.
fn amqp_demo_config(project: &Path, url: &str, exchange: &str, retry_budget: &str) {
    let path = project.join("config/demo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let file_feed = "[feed]\nsink = \"file\"\npath = \".conflux/feed.ndjson\"\n";
    assert!(
        text.contains(file_feed),
        "demo.toml's [feed] block changed; update this test"
    );
    let amqp_feed = format!(
        "[feed]\nsink = \"amqp\"\nretry_budget = \"{retry_budget}\"\namqp = {{ url = \"{url}\", exchange = \"{exchange}\" }}\n"
    );
    std::fs::write(&path, text.replace(file_feed, &amqp_feed)).unwrap();
}

struct Consumer {
    _connection: Connection,
    channel: Channel,
    queue: String,
    exchange: String,
}

impl Consumer {
    /// Declares the exchange as conflux does and binds an exclusive queue to every profile
    /// event, as a consuming application would before events flow.
    async fn bind(url: &str, exchange: &str) -> Consumer {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
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
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = queue.name().as_str().to_string();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                "customer.profile.*".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Consumer {
            _connection: connection,
            channel,
            queue,
            exchange: exchange.to_string(),
        }
    }

    /// Takes every message waiting in the queue (waiting up to 5 s for `at_least`).
    async fn take(&self, at_least: usize) -> Vec<lapin::message::Delivery> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        loop {
            let got = self
                .channel
                .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap();
            match got {
                Some(message) => out.push(message.delivery),
                None if out.len() >= at_least || Instant::now() > deadline => return out,
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn delete_exchange(&self) {
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// The outbox rows of the store, in delivery order: (event id, event type, body).
async fn outbox_rows(db: &Path) -> Vec<(String, String, String)> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT event_id, event_type, body FROM outbox ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    rows
}

fn assert_deliveries_match(
    deliveries: &[lapin::message::Delivery],
    rows: &[(String, String, String)],
) {
    assert_eq!(deliveries.len(), rows.len());
    for (delivery, (id, event_type, body)) in deliveries.iter().zip(rows) {
        assert_eq!(delivery.routing_key.as_str(), event_type);
        let props = &delivery.properties;
        assert_eq!(
            props.message_id().as_ref().map(|s| s.as_str()),
            Some(id.as_str())
        );
        assert_eq!(
            props.content_type().as_ref().map(|s| s.as_str()),
            Some("application/cloudevents+json")
        );
        assert_eq!(*props.delivery_mode(), Some(2), "persistent messages");
        assert_eq!(std::str::from_utf8(&delivery.data).unwrap(), body);
        let event: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
        assert_eq!(event["id"], id.as_str());
        assert_eq!(event["type"], event_type.as_str());
        assert_eq!(event["specversion"], "1.0");
    }
}

#[tokio::test]
async fn the_demo_feed_reaches_a_consumer_with_routing_keys_ids_and_bodies() {
    let Some(url) = amqp_url() else { return };
    let project = project_copy();
    let exchange = format!("conflux.test.{}", uuid::Uuid::now_v7());
    amqp_demo_config(project.path(), &url, &exchange, "10s");
    let consumer = Consumer::bind(&url, &exchange).await;

    let config = load(project.path(), "config/demo.toml");
    let summary = pipeline::run(&config, None).await.unwrap();
    assert!(summary.events_delivered > 0);
    assert_eq!(summary.events_pending, 0);

    let rows = outbox_rows(&project.path().join(".conflux/demo.db")).await;
    assert_eq!(rows.len() as u64, summary.events_delivered);
    let deliveries = consumer.take(rows.len()).await;
    assert_deliveries_match(&deliveries, &rows);
    let keys: std::collections::BTreeSet<&str> =
        deliveries.iter().map(|d| d.routing_key.as_str()).collect();
    assert!(keys.contains("customer.profile.created"));

    // A re-run over unchanged input publishes nothing.
    let again = pipeline::run(&config, None).await.unwrap();
    assert_eq!(again.events_delivered, 0);
    assert!(consumer.take(0).await.is_empty());
    consumer.delete_exchange().await;
}

#[tokio::test]
async fn with_the_broker_unreachable_events_stay_and_a_later_run_delivers_each_exactly_once() {
    let Some(url) = amqp_url() else { return };
    let project = project_copy();
    let exchange = format!("conflux.test.{}", uuid::Uuid::now_v7());
    let dead = url.replace("127.0.0.1:5672", "127.0.0.1:1");
    assert_ne!(dead, url, "the test URL must name 127.0.0.1:5672");
    amqp_demo_config(project.path(), &dead, &exchange, "1s");
    let config = load(project.path(), "config/demo.toml");

    let pending = match pipeline::run(&config, None).await {
        Err(PipelineError::Undelivered {
            pending,
            destination,
            summary,
            ..
        }) => {
            assert!(
                !destination.contains("guest:guest"),
                "no password in {destination}"
            );
            assert_eq!(summary.events_delivered, 0);
            pending
        }
        other => panic!("expected undelivered events, got {other:?}"),
    };
    let store = pipeline::open_store(&config).await.unwrap();
    assert_eq!(store.pending_count().await.unwrap() as u64, pending);
    let rows = outbox_rows(&project.path().join(".conflux/demo.db")).await;
    assert_eq!(
        rows.len() as u64,
        pending,
        "every event of the run waits in the outbox"
    );

    // The broker is back: the next run delivers every waiting event, once.
    let consumer = Consumer::bind(&url, &exchange).await;
    amqp_demo_config_restore(project.path(), &dead, &url);
    let config = load(project.path(), "config/demo.toml");
    let summary = pipeline::run(&config, None).await.unwrap();
    assert_eq!(summary.events_delivered, pending);
    assert_eq!(summary.events_pending, 0);
    assert_eq!(
        summary.profiles_created + summary.profiles_updated + summary.profiles_merged,
        0,
        "nothing new was built"
    );
    let deliveries = consumer.take(rows.len()).await;
    assert_deliveries_match(&deliveries, &rows);

    let third = pipeline::run(&config, None).await.unwrap();
    assert_eq!(third.events_delivered, 0);
    assert!(
        consumer.take(0).await.is_empty(),
        "nothing is delivered twice"
    );
    assert_eq!(store.pending_count().await.unwrap(), 0);
    consumer.delete_exchange().await;
}

fn amqp_demo_config_restore(project: &Path, from: &str, to: &str) {
    let path = project.join("config/demo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

#[tokio::test]
async fn check_connections_reaches_the_broker_without_declaring_anything() {
    let Some(url) = amqp_url() else { return };
    let project = project_copy();
    let exchange = format!("conflux.test.{}", uuid::Uuid::now_v7());
    amqp_demo_config(project.path(), &url, &exchange, "10s");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_conflux"))
        .args([
            "validate",
            "--check-connections",
            "--config",
            "config/demo.toml",
        ])
        .current_dir(project.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ok     connector demo_sap:"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ok     feed amqp://") && l.ends_with("connected")),
        "{stdout}"
    );
    // The probe declared nothing: a passive declare of the exchange fails.
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(passive.is_err(), "the probe must not create the exchange");
}
