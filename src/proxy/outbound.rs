//! The outbound listeners: plaintext from our application, mTLS to an
//! upstream proxy.
//!
//! Each route listens on a local address; for each connection it connects to
//! the upstream, originates TLS 1.3 with our SVID as the client certificate
//! ([`client_config`]) and checks the upstream's SPIFFE ID, then copies bytes
//! both ways.
//!
//! Rules enforced: an upstream whose certificate does not chain to our trust
//! bundle, or does not carry the expected identity (exactly the configured
//! SPIFFE ID, or any in our trust domain when none is configured), gets no
//! byte of the application's: the handshake fails, the application's
//! connection is closed, and the refusal is logged and counted. An upstream
//! whose certificate a CRL comes to list while the connection lives is cut
//! at once ([`revoked_upstream`]).
//!
//! [`captured`] is the same for connections the capture rules redirect, to
//! each one's original destination.

pub mod captured;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::identity::SpiffeId;
use crate::proxy::accept::{serve, Listening};
use crate::proxy::metrics::ProxyMetrics;
use crate::proxy::tls::{
    client_config, peer_cert_key, server_name_for, until_revoked, CertStore, PeerExpectation,
    ProxyTlsError,
};
use crate::proxy::transport::TlsTransport;

/// An outbound mTLS stream to an upstream proxy.
pub type MtlsStream = tokio_rustls::client::TlsStream<TlsTransport>;

/// Connects to `upstream` and originates mTLS with `connector`, whose
/// verifier checks the upstream's identity; on failure, the outcome label
/// (`upstream_unreachable`, `upstream_refused`) and the error.
pub async fn connect_mtls(
    connector: &TlsConnector,
    upstream: SocketAddr,
) -> Result<MtlsStream, (&'static str, String)> {
    let connecting = async {
        let tcp = TcpStream::connect(upstream)
            .await
            .map_err(|e| ("upstream_unreachable", e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(server_name_for(upstream.ip()), TlsTransport::new(tcp))
            .await
            .map_err(|e| ("upstream_refused", e.to_string()))
    };
    match tokio::time::timeout(UPSTREAM_TIMEOUT, connecting).await {
        Ok(result) => result,
        Err(_) => Err(("upstream_unreachable", "timed out".to_owned())),
    }
}

/// The SPIFFE ID the upstream presented (verified by the handshake).
pub fn upstream_identity(tls: &MtlsStream) -> String {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| crate::proxy::tls::spiffe_id_of(leaf).ok())
        .map(|id| id.to_string())
        .unwrap_or_default()
}

/// Resolves once the certificate `tls`'s upstream presented is revoked by
/// `store`'s CRLs (at once if it already is). Rule: no connection to a
/// revoked upstream outlives the CRL that lists it; outbound there is no
/// drain period, the peer is no longer who it claimed to be.
pub fn revoked_upstream(
    store: &CertStore,
    tls: &MtlsStream,
) -> impl Future<Output = ()> + Send + 'static {
    until_revoked(store.revocations(), peer_cert_key(tls.get_ref().1))
}

/// Copies bytes between the application and the upstream until either
/// ends or `cut` resolves, counting the connection as open meanwhile.
pub async fn copy_both_ways<A, U>(
    mut app: A,
    mut upstream: U,
    peer: SocketAddr,
    metrics: &ProxyMetrics,
    cut: impl Future<Output = ()>,
) where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    metrics.open_connections.inc();
    tokio::select! {
        copied = crate::proxy::copy::copy_bidirectional(&mut app, &mut upstream) => match copied {
            Ok((up, down)) => tracing::debug!(%peer, up, down, "outbound connection closed"),
            Err(e) => tracing::debug!(%peer, error = %e, "outbound connection ended with an error"),
        },
        () = cut => tracing::warn!(%peer, "outbound connection closed by the proxy: the upstream's certificate is revoked"),
    }
    metrics.open_connections.dec();
}

/// How long connecting to the upstream (TCP and TLS) may take.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// One outbound route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRoute {
    /// Where our application connects (plaintext).
    pub listen: SocketAddr,
    /// The upstream proxy's inbound address.
    pub upstream: SocketAddr,
    /// The identity the upstream must prove; `None`: any in our trust domain.
    pub expected: Option<SpiffeId>,
}

/// One outbound route, ready to serve a bound listener.
pub struct Outbound {
    route: OutboundRoute,
    store: Arc<CertStore>,
    connector: TlsConnector,
    source: String,
    metrics: ProxyMetrics,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// An outbound route with our SVID and bundle from `store`.
    pub fn new(
        route: OutboundRoute,
        store: Arc<CertStore>,
        metrics: ProxyMetrics,
    ) -> Result<Self, ProxyTlsError> {
        let expected = match &route.expected {
            Some(id) => PeerExpectation::Exactly(id.clone()),
            None => PeerExpectation::AnyInTrustDomain(store.identity().trust_domain().clone()),
        };
        let source = store.identity().to_string();
        let connector = TlsConnector::from(client_config(store.clone(), expected)?);
        Ok(Self {
            route,
            store,
            connector,
            source,
            metrics,
        })
    }

    /// Serves `listener` until `shutdown`; connections are tracked by
    /// `shutdown` and cut [`CONNECTION_GRACE`](crate::shutdown::CONNECTION_GRACE)
    /// after it triggers.
    pub async fn run(self, listening: Listening) {
        let this = Arc::new(self);
        serve(listening, "outbound", move |stream, peer, _stop| {
            let this = this.clone();
            async move { this.handle(stream, peer).await }
        })
        .await;
    }

    async fn handle(&self, app: TcpStream, peer: SocketAddr) {
        let upstream = self.route.upstream;
        match connect_mtls(&self.connector, upstream).await {
            Ok(tls) => {
                tracing::info!(%peer, %upstream, upstream_identity = %upstream_identity(&tls),
                    "outbound mTLS connection established");
                self.metrics
                    .connection("outbound", "mtls", "allowed", &self.source);
                let cut = revoked_upstream(&self.store, &tls);
                copy_both_ways(app, tls, peer, &self.metrics, cut).await;
            }
            Err((outcome, error)) => self.failed(peer, outcome, &error),
        }
    }

    fn failed(&self, peer: SocketAddr, outcome: &str, error: &str) {
        let expected = self
            .route
            .expected
            .as_ref()
            .map_or_else(|| "any in the trust domain".to_owned(), ToString::to_string);
        tracing::warn!(%peer, upstream = %self.route.upstream, %expected, %error, outcome,
            "outbound connection refused: no verified mTLS to the upstream");
        self.metrics
            .connection("outbound", "mtls", outcome, &self.source);
    }
}
