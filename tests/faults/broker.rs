//! RabbitMQ stopped (`rabbitmqctl stop_app`) in the middle of publishing and started again:
//! the relay reconnects with backoff and every event of the outbox reaches the consumer's
//! durable queue; none is lost (a message the broker took but never confirmed may arrive
//! twice, with the same message id).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use conflux::pipeline;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use crate::common::{amqp_url, load, project_copy};
use crate::{SERIAL, write_bulk_shop_export};

fn rabbitmqctl(action: &str) {
    let output = Command::new("rabbitmqctl")
        .arg(action)
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl {action}: {e}"));
    assert!(
        output.status.success(),
        "rabbitmqctl {action}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Declares the exchange and a durable queue bound to every profile event; returns the
/// queue's message count.
async fn declare(url: &str, exchange: &str, queue: &str) -> Option<u32> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .ok()?;
    let channel = connection.create_channel().await.ok()?;
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
        .ok()?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "customer.profile.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .ok()?;
    let _ = connection.close(0, "".into()).await;
    Some(declared.message_count())
}

/// Drains the queue: the message id of every message, in arrival order; deletes the queue.
async fn drain(url: &str, queue: &str) -> Vec<String> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut ids = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let id = message.delivery.properties.message_id().clone().unwrap();
        ids.push(id.as_str().to_string());
    }
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ids
}

async fn outbox_ids(db: &Path) -> (Vec<String>, i64) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM outbox ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    (ids, pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_mid_publish_loses_no_event() {
    let Some(url) = amqp_url() else { return };
    let _serial = SERIAL.lock().await;
    let suffix = std::process::id();
    let exchange = format!("conflux.faults.{suffix}");
    let queue = format!("conflux.faults.consumer.{suffix}");
    declare(&url, &exchange, &queue).await.unwrap();

    let project = project_copy();
    write_bulk_shop_export(project.path(), 20_000);
    let path = project.path().join("config/demo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let file_feed = "[feed]\nsink = \"file\"\npath = \".conflux/feed.ndjson\"\n";
    assert!(text.contains(file_feed), "demo.toml's [feed] block changed");
    let amqp_feed = format!(
        "[feed]\nsink = \"amqp\"\nretry_budget = \"120s\"\namqp = {{ url = \"{url}\", exchange = \"{exchange}\" }}\n"
    );
    std::fs::write(&path, text.replace(file_feed, &amqp_feed)).unwrap();
    let config = load(project.path(), "config/demo.toml");

    let run = tokio::spawn(async move { pipeline::run(&config, None).await });

    // Stop the broker once a good part of the feed is out, but not all of it.
    let started = Instant::now();
    let mut seen = 0;
    while seen < 2_000 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "publishing never started"
        );
        assert!(
            !run.is_finished(),
            "the run ended before the broker could be stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = declare(&url, &exchange, &queue).await.unwrap_or(0);
    }
    rabbitmqctl("stop_app");
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbitmqctl("start_app");

    let summary = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the run finishes after the broker is back")
        .unwrap()
        .expect("the relay reconnects and delivers everything");
    let (outbox, pending) = outbox_ids(&project.path().join(".conflux/demo.db")).await;
    assert_eq!(pending, 0);
    assert_eq!(summary.events_delivered, outbox.len() as u64);
    assert!(outbox.len() > 20_000, "{}", outbox.len());

    // Wait for the broker to have every message routed, then compare ids.
    let mut received = Vec::new();
    for _ in 0..100 {
        if declare(&url, &exchange, &queue).await.unwrap_or(0) as usize >= outbox.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    received.extend(drain(&url, &queue).await);
    let unique: BTreeSet<&String> = received.iter().collect();
    let expected: BTreeSet<&String> = outbox.iter().collect();
    let missing: Vec<_> = expected.difference(&unique).take(5).collect();
    assert!(missing.is_empty(), "lost events, e.g. {missing:?}");
    assert_eq!(unique, expected, "only the outbox's events arrive");
    eprintln!(
        "broker restart: {} events, {} messages received ({} redelivered)",
        outbox.len(),
        received.len(),
        received.len() - unique.len()
    );
}
