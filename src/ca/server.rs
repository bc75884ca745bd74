//! Building and running the CA: bind the gRPC port (TLS) and the metrics
//! port, issue the serving certificate, accept connections with bounded
//! handshakes, renew the serving certificate before it expires, and stop
//! cleanly on shutdown.
//!
//! Rule enforced: a connection costs nothing unbounded — the TLS handshake
//! and the client's first bytes each have a deadline, connections are capped,
//! and requests beyond the concurrency bound are refused, not queued.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::ca::config::{CaConfig, ConfigError};
use crate::ca::issuer::{CaDeps, Issuer};
use crate::ca::service::CaService;
use crate::ca::tls::{server_config, CaTlsStream, ServingCert, ServingIdentity, TlsError};
use crate::h2_authority::AuthorityRepair;
use crate::shutdown::Shutdown;
use crate::telemetry;
use crate::time::{jitter, refresh_at, until, Backoff};

/// Why the CA could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source} (is another meshid running?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A started CA.
#[derive(Debug)]
pub struct CaServer {
    /// The gRPC (TLS) address actually bound.
    pub addr: SocketAddr,
    /// The metrics address actually bound, if any.
    pub metrics_addr: Option<SocketAddr>,
}

impl CaServer {
    /// Binds everything and starts serving in tasks tracked by `shutdown`.
    /// Returns once the CA is ready to answer.
    pub async fn start(
        config: CaConfig,
        deps: CaDeps,
        registry: Registry,
        shutdown: Shutdown,
    ) -> Result<Self, ServerError> {
        config.validate()?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;

        let identity = ServingIdentity {
            trust_domain: config.trust_domain.clone(),
            dns_names: config.serving_dns_names.clone(),
            ips: config.serving_ips.clone(),
            ttl: config.serving_cert_ttl,
        };
        let active = deps.authorities.current().active().clone();
        let serving =
            ServingCert::issue(&active, &identity, deps.clock.as_ref(), &deps.audit).await?;
        let tls = server_config(serving.clone(), deps.authorities.clone())?;
        deps.metrics
            .root_expiry
            .set(active.root_not_after().unix_timestamp() as f64);
        if let Err(e) = crate::ca::metrics::register_audit(&registry, deps.audit.stats()) {
            // Observability only: the CA works without these counters.
            tracing::warn!(error = %e, "audit group-commit metrics not registered");
        }

        let metrics_addr = match config.metrics_listen {
            Some(maddr) => {
                let ready_shutdown = shutdown.clone();
                let platform = deps.platform.clone();
                let audit = deps.audit.clone();
                // Ready only while the audit store can take records: a CA
                // whose every answer would be UNAVAILABLE takes no traffic.
                let ready: telemetry::ReadinessCheck = Arc::new(move || {
                    !ready_shutdown.is_triggered() && platform.is_ready() && audit.healthy().is_ok()
                });
                let bound = telemetry::serve_with(
                    maddr,
                    registry,
                    ready,
                    deps.http.clone(),
                    shutdown.clone(),
                )
                .await
                .map_err(|source| ServerError::Bind {
                    addr: maddr,
                    source,
                })?;
                Some(bound)
            }
            None => None,
        };

        let issuer = Arc::new(Issuer::new(&config, deps.clone()));
        let trust =
            crate::ca::trust_service::TrustStream::new(deps.authorities.clone()).into_server();
        let (conn_tx, conn_rx) =
            mpsc::channel::<Result<AuthorityRepair<CaTlsStream>, std::io::Error>>(256);
        shutdown.spawn(accept_loop(
            listener,
            TlsAcceptor::from(tls),
            conn_tx,
            Arc::new(Semaphore::new(config.max_connections)),
            config.handshake_timeout,
            shutdown.clone(),
        ));
        shutdown.spawn(renew_loop(serving, identity, deps, shutdown.clone()));

        let service = CaService::new(issuer).into_server();
        shutdown.spawn_server(
            "CA gRPC",
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .timeout(Duration::from_secs(30))
                .add_service(service)
                .add_service(trust)
                .serve_with_incoming_shutdown(
                    ReceiverStream::new(conn_rx),
                    shutdown.triggered_owned(),
                ),
        );
        tracing::info!(%addr, ?metrics_addr, "CA serving IstioCertificateService over TLS");
        Ok(Self { addr, metrics_addr })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    conns: mpsc::Sender<Result<AuthorityRepair<CaTlsStream>, std::io::Error>>,
    limit: Arc<Semaphore>,
    deadline: Duration,
    shutdown: Shutdown,
) {
    loop {
        let permit = tokio::select! {
            _ = shutdown.triggered() => return,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, remote) = tokio::select! {
            _ = shutdown.triggered() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let conns = conns.clone();
        tokio::spawn(async move {
            match handshake(acceptor, tcp, remote, deadline, permit).await {
                Ok(stream) => {
                    // Any :authority a gRPC client sends is served (see h2_authority).
                    let _ = conns.send(Ok(AuthorityRepair::new(stream))).await;
                }
                Err(reason) => {
                    tracing::debug!(%remote, %reason, "connection dropped before any request")
                }
            }
        });
    }
}

/// TLS handshake, then the client's first bytes, each within `deadline`.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    deadline: Duration,
    permit: OwnedSemaphorePermit,
) -> Result<CaTlsStream, String> {
    let mut tls = tokio::time::timeout(deadline, acceptor.accept(tcp))
        .await
        .map_err(|_| format!("no TLS handshake within {deadline:?}"))?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let mut first = vec![0u8; 64];
    let n = tokio::time::timeout(deadline, tls.read(&mut first))
        .await
        .map_err(|_| format!("no request within {deadline:?} of the handshake"))?
        .map_err(|e| format!("read failed: {e}"))?;
    if n == 0 {
        return Err("closed after the handshake".to_owned());
    }
    first.truncate(n);
    Ok(CaTlsStream::new(tls, remote, first, permit))
}

/// How the serving certificate is renewed: at half its lifetime from
/// notBefore ± 5 % (the rule the agent follows for workloads), and after a
/// failure with backoff while the current one is still valid.
const SERVING_REFRESH: f64 = 0.5;
const SERVING_JITTER: f64 = 0.05;
const SERVING_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// Renews the serving certificate (see [`SERVING_REFRESH`]) until `shutdown`.
async fn renew_loop(
    serving: Arc<ServingCert>,
    identity: ServingIdentity,
    deps: CaDeps,
    shutdown: Shutdown,
) {
    let next_renewal = || {
        let (not_before, not_after) = serving.validity();
        let spread = SERVING_JITTER * (2.0 * jitter() - 1.0);
        let at = refresh_at(not_before, not_after, SERVING_REFRESH, spread);
        until(at, deps.clock.now()).max(Duration::from_secs(1))
    };
    let mut wait = next_renewal();
    let mut failures: u32 = 0;
    let mut changes = deps.authorities.subscribe();
    loop {
        let deadline = tokio::time::Instant::now() + wait;
        tokio::select! {
            _ = shutdown.triggered() => return,
            _ = tokio::time::sleep_until(deadline) => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                // A new active authority: our certificate moves to it at
                // once, before the old one can be revoked under it.
                let active = changes.borrow_and_update().active().clone();
                deps.metrics
                    .root_expiry
                    .set(active.root_not_after().unix_timestamp() as f64);
                if active.id() == serving.issuer_id() {
                    wait = deadline.saturating_duration_since(tokio::time::Instant::now());
                    continue;
                }
            }
        }
        let active = deps.authorities.current().active().clone();
        match serving
            .renew(&active, &identity, deps.clock.as_ref(), &deps.audit)
            .await
        {
            Ok(()) => {
                failures = 0;
                wait = next_renewal();
                tracing::info!(not_after = %serving.not_after(), renew_in = ?wait, "serving certificate renewed");
            }
            Err(e) => {
                wait = SERVING_BACKOFF.jittered(failures);
                failures = failures.saturating_add(1);
                tracing::error!(error = %e, retry_in = ?wait, "serving certificate renewal failed; the current one stays in use");
            }
        }
    }
}
