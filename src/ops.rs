//! The daemon's operations endpoints over HTTP/1: `/healthz`, `/readyz` and `/metrics`.
//!
//! [`router`] builds the axum [`Router`]; [`serve`] runs it on a bound listener until the
//! daemon's stop signal. `/healthz` answers `200 ok` while the process serves at all;
//! `/readyz` answers 200 only when the store answers a trivial query and, with an AMQP feed,
//! the broker accepts a connection (503 with the reason otherwise); `/metrics` is the Prometheus text exposition of [`crate::metrics`].

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::sink::amqp::AmqpSink;
use crate::store::Store;

/// The content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct OpsState {
    store: Arc<dyn Store>,
    metrics: PrometheusHandle,
    bus: Option<Arc<AmqpSink>>,
}

/// The endpoints, answering from `store`, `metrics` and, when the feed is AMQP, `bus`.
pub fn router(
    store: Arc<dyn Store>,
    metrics: PrometheusHandle,
    bus: Option<Arc<AmqpSink>>,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState {
            store,
            metrics,
            bus,
        })
}

/// Serves [`router`] on `listener` until `stop` turns true (or its sender is dropped).
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    metrics: PrometheusHandle,
    bus: Option<Arc<AmqpSink>>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(store, metrics, bus))
        .with_graceful_shutdown(async move {
            // An error means the sender is gone, which is a stop too.
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<OpsState>) -> (StatusCode, String) {
    if let Err(error) = state.store.pending_count().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {error}"),
        );
    }
    if let Some(bus) = &state.bus
        && let Err(error) = bus.probe().await
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {error}"),
        );
    }
    (StatusCode::OK, "ready".into())
}

async fn render_metrics(State(state): State<OpsState>) -> impl IntoResponse {
    // Summaries age out their old samples only on upkeep; a scrape is a natural moment.
    state.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        state.metrics.render(),
    )
}

/// A minimal HTTP/1.1 client for tests of the endpoints (here and in the daemon).
#[cfg(test)]
pub(crate) async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    async fn started(store: SqliteStore) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(
            listener,
            Arc::new(store),
            crate::metrics::install(),
            None,
            stopped,
        ));
        (addr, stop)
    }

    #[tokio::test]
    async fn readiness_fails_while_the_broker_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ops.db")).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stopped) = watch::channel(false);
        let bus = AmqpSink::new(
            "amqp://guest:s3cret-pw@127.0.0.1:1/%2f".into(),
            "conflux.customers".into(),
        )
        .with_connect_timeout(std::time::Duration::from_secs(2));
        tokio::spawn(serve(
            listener,
            Arc::new(store),
            crate::metrics::install(),
            Some(Arc::new(bus)),
            stopped,
        ));
        let (status, body) = http_get(addr, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert!(
            body.starts_with("not ready: cannot reach amqp://guest:***@127.0.0.1:1"),
            "{body}"
        );
        assert!(!body.contains("s3cret-pw"));
    }

    #[tokio::test]
    async fn endpoints_answer_health_readiness_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ops.db")).await.unwrap();
        let (addr, stop) = started(store.clone()).await;
        crate::metrics::register_job("ops-test");

        assert_eq!(http_get(addr, "/healthz").await, (200, "ok".into()));
        assert_eq!(http_get(addr, "/readyz").await, (200, "ready".into()));
        let (status, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("conflux_records_read_total{job=\"ops-test\"} 0"),
            "{body}"
        );
        assert_eq!(http_get(addr, "/nothing").await.0, 404);

        store.pool().close().await;
        assert_eq!(
            http_get(addr, "/readyz").await,
            (
                503,
                "not ready: store: attempted to acquire a connection on a closed pool".into()
            )
        );
        assert_eq!(http_get(addr, "/healthz").await, (200, "ok".into()));
        stop.send_replace(true);
    }

    #[tokio::test]
    async fn the_server_stops_on_the_stop_signal() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ops.db")).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(
            listener,
            Arc::new(store),
            crate::metrics::install(),
            None,
            stopped,
        ));
        stop.send_replace(true);
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .unwrap();
        assert!(outcome.unwrap().is_ok());
    }
}
