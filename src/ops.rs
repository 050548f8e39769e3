//! The daemon's operations endpoints over HTTP/1: `/healthz`, `/readyz` and `/metrics`.
//!
//! [`router`] builds the axum [`Router`]; [`serve`] runs it on a bound listener until the
//! daemon's stop signal. `/healthz` answers `200 ok` while the process serves at all;
//! `/readyz` answers 200 only when the store answers a trivial query (503 with the reason
//! otherwise); `/metrics` is the Prometheus text exposition of [`crate::metrics`].

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::store::Store;

/// The content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct OpsState {
    store: Arc<dyn Store>,
    metrics: PrometheusHandle,
}

/// The endpoints, answering from `store` and `metrics`.
pub fn router(store: Arc<dyn Store>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState { store, metrics })
}

/// Serves [`router`] on `listener` until `stop` turns true (or its sender is dropped).
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    metrics: PrometheusHandle,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(store, metrics))
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
    match state.store.pending_count().await {
        Ok(_) => (StatusCode::OK, "ready".into()),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {error}"),
        ),
    }
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
            stopped,
        ));
        (addr, stop)
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
            stopped,
        ));
        stop.send_replace(true);
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .unwrap();
        assert!(outcome.unwrap().is_ok());
    }
}
