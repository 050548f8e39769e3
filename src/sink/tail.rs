//! `conflux feed tail`: what consumers of the feed see. Binds a temporary queue (exclusive,
//! auto-deleted when the connection closes) to the feed's topic exchange and prints each
//! event body as one line as it arrives, so IT staff can check the feed without touching the
//! consumers' own queues. Messages are taken without acknowledgement: the temporary queue is
//! the tail's alone and nothing else reads it.

use std::io::Write;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use super::amqp::redact_url;

/// Every profile event type.
pub const ALL_EVENTS: &str = "customer.profile.*";

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("cannot reach {destination}: {reason}")]
    Unreachable { destination: String, reason: String },
    #[error("{destination}: {reason}")]
    Broker { destination: String, reason: String },
    #[error("cannot write the event: {0}")]
    Output(#[from] std::io::Error),
}

/// Binds a temporary queue to `exchange` with `binding` (a topic pattern), calls `ready`
/// with the queue's name once it is bound, then writes every message body to `out` as one
/// line until `limit` messages were written (forever when `None`). Returns how many were.
pub async fn tail(
    url: &str,
    exchange: &str,
    binding: &str,
    limit: Option<usize>,
    out: &mut (dyn Write + Send),
    ready: impl FnOnce(&str),
) -> Result<usize, TailError> {
    let destination = format!("{} exchange {exchange:?}", redact_url(url));
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password.to_string())
        .filter(|p| !p.is_empty());
    let scrub = |text: String| match &password {
        Some(p) => text.replace(p.as_str(), "***"),
        None => text,
    };
    let broker = |reason: String| TailError::Broker {
        destination: destination.clone(),
        reason: scrub(reason),
    };
    let connection = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| TailError::Unreachable {
        destination: destination.clone(),
        reason: "no connection within 10s".into(),
    })?
    .map_err(|e| TailError::Unreachable {
        destination: destination.clone(),
        reason: scrub(e.to_string()),
    })?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| broker(format!("cannot open a channel: {e}")))?;
    // Declared exactly as the sink declares it, so tailing before the first run works.
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
        .map_err(|e| broker(format!("cannot declare the topic exchange: {e}")))?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker(format!("cannot declare a temporary queue: {e}")))?
        .name()
        .clone();
    channel
        .queue_bind(
            queue.clone(),
            exchange.into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker(format!("cannot bind {binding:?}: {e}")))?;
    ready(queue.as_str());
    let mut written = 0;
    while limit.is_none_or(|limit| written < limit) {
        let got = channel
            .basic_get(queue.clone(), BasicGetOptions { no_ack: true })
            .await
            .map_err(|e| broker(format!("cannot read the temporary queue: {e}")))?;
        match got {
            Some(message) => {
                out.write_all(&message.delivery.data)?;
                out.write_all(b"\n")?;
                out.flush()?;
                written += 1;
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let _ = connection.close(200, "tail done".into()).await;
    Ok(written)
}
