//! Outbound connections the capture rules redirected: each goes to its
//! original destination, with mTLS when a meshed pod owns it.
//!
//! Rules enforced (SECURITY.md, "Capture"):
//! - a destination a meshed pod owns gets mTLS, and its proxy must prove
//!   exactly that pod's identity; if it cannot (or presents another), the
//!   connection fails — never a plaintext fallback to a meshed destination;
//! - a destination no meshed pod owns (an unmeshed pod, or nothing the
//!   agent knows) is passed through in plaintext, and counted;
//! - when the agent cannot say who owns a destination, the connection is
//!   refused rather than guessed;
//! - a connection to a capture port itself is refused (no loops);
//! - a connection whose upstream's certificate a CRL comes to list is cut
//!   (direct mTLS here; HBONE connections by their [`HbonePool`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{connect_mtls, copy_both_ways, revoked_upstream, upstream_identity, UPSTREAM_TIMEOUT};
use crate::identity::SpiffeId;
use crate::proxy::accept::{serve, Listening};
use crate::proxy::capture::original_dst::original_dst;
use crate::proxy::destinations::{Destinations, Owner};
use crate::proxy::hbone::pool::{HboneError, HbonePool};
use crate::proxy::metrics::ProxyMetrics;
use crate::proxy::tls::{client_config, CertStore, PeerExpectation, ProxyTlsError};

/// Connectors kept, one per destination identity; past it they are rebuilt.
const MAX_CONNECTORS: usize = 1024;

/// The outbound capture listener.
pub struct CapturedOutbound {
    store: Arc<CertStore>,
    destinations: Arc<Destinations>,
    capture_ports: Vec<u16>,
    connectors: Mutex<HashMap<SpiffeId, TlsConnector>>,
    hbone: Option<Arc<HbonePool>>,
    source: String,
    metrics: ProxyMetrics,
}

impl std::fmt::Debug for CapturedOutbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturedOutbound")
            .field("capture_ports", &self.capture_ports)
            .finish_non_exhaustive()
    }
}

impl CapturedOutbound {
    /// A listener that asks `destinations` who owns each destination, and
    /// tunnels to meshed ones over `hbone` when given (direct mTLS when not,
    /// or when the peer has no HBONE port).
    pub fn new(
        store: Arc<CertStore>,
        destinations: Arc<Destinations>,
        capture_ports: Vec<u16>,
        hbone: Option<Arc<HbonePool>>,
        metrics: ProxyMetrics,
    ) -> Self {
        Self {
            source: store.identity().to_string(),
            store,
            destinations,
            capture_ports,
            connectors: Mutex::new(HashMap::new()),
            hbone,
            metrics,
        }
    }

    /// Serves on each listener (capture's IPv4 and IPv6 sockets) until shutdown.
    pub async fn run(self, listenings: Vec<Listening>) {
        let this = Arc::new(self);
        let serving = listenings.into_iter().map(|listening| {
            let this = this.clone();
            serve(listening, "outbound", move |stream, peer, _stop| {
                let this = this.clone();
                async move { this.handle(stream, peer).await }
            })
        });
        futures::future::join_all(serving).await;
    }

    /// A client verifying exactly `identity` (built once per identity).
    fn connector_for(&self, identity: &SpiffeId) -> Result<TlsConnector, ProxyTlsError> {
        let mut connectors = self
            .connectors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(connector) = connectors.get(identity) {
            return Ok(connector.clone());
        }
        if connectors.len() >= MAX_CONNECTORS {
            connectors.clear();
        }
        let config = client_config(
            self.store.clone(),
            PeerExpectation::Exactly(identity.clone()),
        )?;
        let connector = TlsConnector::from(config);
        connectors.insert(identity.clone(), connector.clone());
        Ok(connector)
    }

    async fn handle(&self, app: TcpStream, peer: SocketAddr) {
        let dst = match original_dst(&app, &self.capture_ports) {
            Ok(dst) => dst,
            Err(e) => return self.refused(peer, None, "refused", &e.to_string()),
        };
        // Boxed, as the direct mTLS path below: an async fn's state is as
        // large as its largest await, and it is held for the connection's
        // whole life; a lookup or a handshake must not make every idle
        // connection pay for them.
        let owner = match Box::pin(self.destinations.lookup(dst.ip())).await {
            Ok(owner) => owner,
            Err(e) => return self.refused(peer, Some(dst), "lookup_failed", &e.to_string()),
        };
        match owner {
            Owner::Meshed { identity, pod } => self.mtls(app, peer, dst, &identity, &pod).await,
            Owner::Unmeshed { pod } => self.plaintext(app, peer, dst, &pod).await,
            Owner::Unknown => self.plaintext(app, peer, dst, "").await,
        }
    }

    async fn mtls(
        &self,
        app: TcpStream,
        peer: SocketAddr,
        dst: SocketAddr,
        expected: &SpiffeId,
        pod: &str,
    ) {
        if let Some(pool) = &self.hbone {
            match Box::pin(pool.open(dst, expected)).await {
                Ok(mut tunnel) => {
                    tracing::info!(%peer, upstream = %dst, %pod, upstream_identity = %expected,
                        "captured outbound connection tunnelled over HBONE");
                    self.metrics
                        .connection("outbound", "mtls", "allowed", &self.source);
                    // The pool closes the connection under the tunnel on a revocation.
                    let cut = std::future::pending();
                    return copy_both_ways(app, &mut tunnel.stream, peer, &self.metrics, cut).await;
                }
                Err(HboneError::NoHbone(why)) => {
                    tracing::debug!(%peer, upstream = %dst, %why, "no HBONE to the destination's proxy; direct mTLS");
                }
                Err(e) => {
                    let outcome = match &e {
                        HboneError::Connect { outcome, .. } => *outcome,
                        _ => "upstream_refused",
                    };
                    tracing::warn!(%peer, upstream = %dst, %pod, expected = %expected, error = %e, outcome,
                        "captured outbound connection refused: the destination is meshed and its proxy did not prove its identity or refused the tunnel; no plaintext fallback");
                    return self
                        .metrics
                        .connection("outbound", "mtls", outcome, &self.source);
                }
            }
        }
        Box::pin(self.direct_mtls(app, peer, dst, expected, pod)).await;
    }

    /// A connection with its own mTLS handshake (no HBONE to the peer).
    async fn direct_mtls(
        &self,
        app: TcpStream,
        peer: SocketAddr,
        dst: SocketAddr,
        expected: &SpiffeId,
        pod: &str,
    ) {
        let connector = match self.connector_for(expected) {
            Ok(connector) => connector,
            Err(e) => return self.refused(peer, Some(dst), "refused", &e.to_string()),
        };
        match connect_mtls(&connector, dst).await {
            Ok(tls) => {
                tracing::info!(%peer, upstream = %dst, %pod, upstream_identity = %upstream_identity(&tls),
                    "captured outbound mTLS connection established");
                self.metrics
                    .connection("outbound", "mtls", "allowed", &self.source);
                let cut = revoked_upstream(&self.store, &tls);
                copy_both_ways(app, tls, peer, &self.metrics, cut).await;
            }
            Err((outcome, error)) => {
                // The error of a refused handshake names the identity presented.
                tracing::warn!(%peer, upstream = %dst, %pod, expected = %expected, %error, outcome,
                    "captured outbound connection refused: the destination is meshed and its proxy did not prove its identity; no plaintext fallback");
                self.metrics
                    .connection("outbound", "mtls", outcome, &self.source);
            }
        }
    }

    async fn plaintext(&self, app: TcpStream, peer: SocketAddr, dst: SocketAddr, pod: &str) {
        let upstream = match tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(dst)).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(e)) => {
                return self.refused(peer, Some(dst), "upstream_unreachable", &e.to_string())
            }
            Err(_) => return self.refused(peer, Some(dst), "upstream_unreachable", "timed out"),
        };
        let _ = upstream.set_nodelay(true);
        tracing::debug!(%peer, upstream = %dst, pod, "captured outbound connection passed through in plaintext (destination not meshed)");
        self.metrics
            .connection("outbound", "plaintext", "passthrough", &self.source);
        let cut = std::future::pending();
        copy_both_ways(app, upstream, peer, &self.metrics, cut).await;
    }

    fn refused(&self, peer: SocketAddr, dst: Option<SocketAddr>, outcome: &str, error: &str) {
        tracing::warn!(%peer, upstream = ?dst, %error, outcome, "captured outbound connection refused");
        self.metrics
            .connection("outbound", "NONE", outcome, &self.source);
    }
}
