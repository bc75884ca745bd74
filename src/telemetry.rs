//! Logs and the operational HTTP endpoints every component serves:
//! Prometheus `/metrics`, `/healthz` (the process is alive) and `/readyz`
//! (it can do its job now).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::shutdown::Shutdown;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber (`RUST_LOG` overrides `default_filter`).
/// Calling it twice is harmless.
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Answers `/readyz`.
pub type ReadinessCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// The router with `/metrics`, `/healthz` and `/readyz`.
pub fn router(registry: Registry, ready: ReadinessCheck) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { render_metrics(&registry) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
}

fn render_metrics(registry: &Registry) -> impl IntoResponse {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_owned())],
            format!("encoding metrics failed: {e}\n").into_bytes(),
        ),
    }
}

/// Binds `addr` and serves the operational endpoints until shutdown.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    ready: ReadinessCheck,
    shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    serve_with(addr, registry, ready, Router::new(), shutdown).await
}

/// As [`serve`], with `extra` routes of the component beside them.
pub async fn serve_with(
    addr: SocketAddr,
    registry: Registry,
    ready: ReadinessCheck,
    extra: Router,
    shutdown: Shutdown,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(registry, ready).merge(extra);
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.triggered().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    Ok(local)
}
