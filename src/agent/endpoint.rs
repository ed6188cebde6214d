//! The agent's HTTP endpoint for operators: `GET /metrics` (OpenMetrics
//! text from [`crate::metrics`]), `GET /healthz` (the process is alive) and
//! `GET /readyz` (the agent samples and delivers). It is kept apart from
//! delivery so that a stuck backend never hides the metrics explaining it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::task::JoinHandle;

use crate::agent::metrics::Metrics;

/// The content type of `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound.
    #[error("failed to listen on {addr}: {error}; choose another address with --metrics-address")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        error: std::io::Error,
    },
}

#[derive(Clone)]
struct EndpointState {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

/// Binds `addr` (port 0 picks a free port) and serves the endpoint in a
/// background task until that task is aborted.
///
/// Returns the address actually bound and the serving task. `ready` is read
/// on every `/readyz` and `/metrics` request, so the agent flips it when it
/// starts and stops delivering.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
) -> Result<(SocketAddr, JoinHandle<()>), HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| HttpError::Bind { addr, error })?;
    let bound = listener.local_addr().map_err(|error| HttpError::Bind { addr, error })?;
    let router = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(EndpointState { metrics, ready });
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(address = %bound, error = %err, "the metrics endpoint stopped");
        }
    });
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    Ok((bound, task))
}

async fn metrics_page(State(state): State<EndpointState>) -> impl IntoResponse {
    state.metrics.set_ready(state.ready.load(Ordering::Relaxed));
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<EndpointState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(client: &reqwest::Client, url: String) -> (u16, Option<String>, String) {
        let response = client.get(url).send().await.expect("request to the test endpoint");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.text().await.expect("body of the test endpoint");
        (status, content_type, body)
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let metrics = Metrics::new();
        metrics.windows.inc();
        let ready = Arc::new(AtomicBool::new(false));
        let (addr, task) = serve(([127, 0, 0, 1], 0).into(), metrics, ready.clone())
            .await
            .expect("bind port 0");
        assert_ne!(addr.port(), 0);
        let client = reqwest::Client::new();

        let (status, content_type, body) = get(&client, format!("http://{addr}/metrics")).await;
        assert_eq!(status, 200);
        assert_eq!(content_type.as_deref(), Some(OPENMETRICS_CONTENT_TYPE));
        assert!(body.contains("taskprof_windows_total 1"), "{body}");
        assert!(body.contains("taskprof_ready 0"), "{body}");

        let (status, _, body) = get(&client, format!("http://{addr}/healthz")).await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        let (status, _, _) = get(&client, format!("http://{addr}/readyz")).await;
        assert_eq!(status, 503);

        ready.store(true, Ordering::Relaxed);
        let (status, _, _) = get(&client, format!("http://{addr}/readyz")).await;
        assert_eq!(status, 200);
        let (_, _, body) = get(&client, format!("http://{addr}/metrics")).await;
        assert!(body.contains("taskprof_ready 1"), "{body}");
        task.abort();
    }

    #[tokio::test]
    async fn a_taken_address_names_itself_and_the_flag() {
        let (addr, task) = serve(
            ([127, 0, 0, 1], 0).into(),
            Metrics::new(),
            Arc::new(AtomicBool::new(true)),
        )
        .await
        .expect("bind port 0");
        let err = serve(addr, Metrics::new(), Arc::new(AtomicBool::new(true)))
            .await
            .expect_err("the port is taken");
        let message = err.to_string();
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.contains("--metrics-address"), "{message}");
        task.abort();
    }
}
