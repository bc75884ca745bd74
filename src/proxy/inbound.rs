//! The inbound listener: connections from other workloads (or anyone) to
//! our workload, decided by the port's mTLS mode and forwarded to the
//! application on localhost.
//!
//! Per connection: peek at the first bytes ([`peek_first_bytes`], at most
//! [`SNIFF_WAIT`]), take the mode in force for the application's port,
//! [`decide`]; refuse, pass the bytes through untouched, or terminate TLS
//! (client certificate required in STRICT, optional otherwise) and decide
//! again on what the handshake showed; then copy bytes both ways.
//!
//! Server-first protocols (the client waits for the server to speak, e.g.
//! SMTP or MySQL): a client that sends nothing within [`SNIFF_WAIT`] is
//! treated as plaintext, so it reaches the application after that wait in
//! PERMISSIVE, AUDIT and DISABLE, and is refused in STRICT.
//!
//! Rules enforced: STRICT forwards nothing but verified mTLS; the verified
//! peer identity is logged (info) and counted for each connection; a refusal
//! is logged with the peer address and counted; AUDIT logs and counts what
//! STRICT would refuse. A mode change applies to new connections at once and
//! to live ones through [`on_mode_change`](crate::proxy::enforce::on_mode_change):
//! those it no longer allows are closed after the drain period (default
//! [`DEFAULT_MODE_CHANGE_DRAIN`](crate::proxy::enforce::DEFAULT_MODE_CHANGE_DRAIN),
//! zero, like ztunnel). A revocation likewise: new handshakes of the revoked
//! peer are refused by the verifier, and its live connections are closed
//! after the same drain period.

pub mod hbone;
mod live;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use self::live::LiveConns;
use crate::identity::TrustDomain;
use crate::pki::crl::RevokedSet;
use crate::policy::MtlsMode;
use crate::proxy::accept::{serve, Listening};
use crate::proxy::capture::original_dst::original_dst;
use crate::proxy::enforce::{decide, Action, ConnKind, Decision};
use crate::proxy::metrics::ProxyMetrics;
use crate::proxy::policy_watch::ProxyPolicy;
use crate::proxy::sniff::{peek_first_bytes, Sniffed};
use crate::proxy::tls::{
    peer_cert_key, peer_spiffe_id, server_config, CertStore, ClientAuth, PeerCertKey, ProxyTlsError,
};
use crate::proxy::transport::TlsTransport;
use crate::shutdown::Shutdown;

/// How long a new connection may take to send its first bytes before it is
/// classified as plaintext (see the module documentation).
pub const SNIFF_WAIT: Duration = Duration::from_secs(1);

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting to the application may take.
pub const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One inbound route: where we listen, where the application is.
/// Where an inbound listener forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundTarget {
    /// A route's application address (`--inbound LISTEN=APP`).
    App(SocketAddr),
    /// Capture (`--capture`): each connection's original destination, whose
    /// port also selects the mTLS mode (PeerAuthentication's `portLevelMtls`
    /// then names the application's real ports). Connections whose original
    /// destination is one of `capture_ports` are refused.
    OriginalDst {
        /// The proxy's capture ports.
        capture_ports: Vec<u16>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundRoute {
    /// The proxy's listening address.
    pub listen: SocketAddr,
    /// The application's address (on localhost); its port selects the
    /// port-level mode.
    pub app: SocketAddr,
}

/// The inbound side of a proxy, ready to serve a bound listener.
pub struct Inbound {
    target: InboundTarget,
    strict: TlsAcceptor,
    permissive: TlsAcceptor,
    policy: watch::Receiver<Option<ProxyPolicy>>,
    revocations: watch::Receiver<Arc<RevokedSet>>,
    metrics: ProxyMetrics,
    live: Arc<LiveConns>,
    drain: Duration,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("target", &self.target)
            .field("drain", &self.drain)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// An inbound side forwarding to `app`, with our SVID from `store`,
    /// peers accepted from `trust_domain`, modes from `policy`, live
    /// connections closed `drain` after a mode change disallows them.
    pub fn new(
        target: InboundTarget,
        store: Arc<CertStore>,
        trust_domain: TrustDomain,
        policy: watch::Receiver<Option<ProxyPolicy>>,
        metrics: ProxyMetrics,
        drain: Duration,
    ) -> Result<Self, ProxyTlsError> {
        let acceptor =
            |auth| server_config(store.clone(), trust_domain.clone(), auth).map(TlsAcceptor::from);
        Ok(Self {
            target,
            strict: acceptor(ClientAuth::Required)?,
            permissive: acceptor(ClientAuth::Optional)?,
            policy,
            revocations: store.revocations(),
            metrics,
            live: Arc::new(LiveConns::default()),
            drain,
        })
    }

    /// Serves `listener` until `shutdown`; applies each policy change to the
    /// live connections. Connections are tracked by `shutdown` and cut
    /// [`CONNECTION_GRACE`](crate::shutdown::CONNECTION_GRACE) after it triggers.
    pub async fn run(self: Arc<Self>, listening: Listening) {
        self.run_all(vec![listening]).await;
    }

    /// As [`Self::run`] on several listeners at once (capture's IPv4 and
    /// IPv6 sockets), following the policy once for all of them.
    pub async fn run_all(self: Arc<Self>, listenings: Vec<Listening>) {
        let this = self;
        let Some(first) = listenings.first() else {
            return;
        };
        let shutdown = first.shutdown.clone();
        shutdown.spawn(this.clone().follow_policy(shutdown.clone()));
        let serving = listenings.into_iter().map(|listening| {
            let this = this.clone();
            serve(listening, "inbound", move |stream, peer, stop| {
                let this = this.clone();
                async move { this.handle(stream, peer, stop).await }
            })
        });
        futures::future::join_all(serving).await;
    }

    /// Re-evaluates live connections whenever the policy or the revoked
    /// certificates change.
    async fn follow_policy(self: Arc<Self>, shutdown: Shutdown) {
        let mut rx = self.policy.clone();
        let mut revocations = self.revocations.clone();
        let mut watching_revocations = true;
        loop {
            tokio::select! {
                () = shutdown.triggered() => return,
                changed = rx.changed() => if changed.is_err() { return },
                changed = revocations.changed(), if watching_revocations => {
                    match changed {
                        Ok(()) => {
                            let revoked = revocations.borrow_and_update().clone();
                            self.live.close_revoked(None, &revoked, self.drain);
                        }
                        // The store is gone: nothing will change any more.
                        Err(_) => watching_revocations = false,
                    }
                    continue;
                }
            }
            let policy = rx.borrow_and_update().clone();
            if let Some(policy) = policy {
                let mode_for = |port| policy.mode_for_port(port);
                self.live
                    .apply_modes(None, &mode_for, self.drain, &self.metrics);
            }
        }
    }

    /// The mode in force now for the application's port; `None` before the
    /// first policy (the proxy does not serve before it, so never in practice).
    fn mode_now(&self, port: u16) -> Option<MtlsMode> {
        self.policy.borrow().as_ref().map(|p| p.mode_for_port(port))
    }

    /// Where this connection goes: the route's application, or (captured)
    /// the original destination, which is the application's real port.
    fn app_for(&self, stream: &TcpStream, peer: SocketAddr) -> Option<SocketAddr> {
        match &self.target {
            InboundTarget::App(app) => Some(*app),
            InboundTarget::OriginalDst { capture_ports } => {
                match original_dst(stream, capture_ports) {
                    Ok(dst) => Some(dst),
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "inbound connection refused");
                        self.metrics.connection("inbound", "NONE", "refused", "");
                        None
                    }
                }
            }
        }
    }

    async fn handle(&self, stream: TcpStream, peer: SocketAddr, stop: CancellationToken) {
        let Some(app) = self.app_for(&stream, peer) else {
            return;
        };
        let kind = match peek_first_bytes(&stream, SNIFF_WAIT).await {
            Ok(Sniffed::Tls) => ConnKind::TlsClientHello,
            Ok(_) => ConnKind::Plaintext,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "inbound connection failed before its first bytes");
                return;
            }
        };
        let Some(mode) = self.mode_now(app.port()) else {
            tracing::warn!(%peer, "inbound connection refused: no mTLS policy from the agent yet");
            self.metrics.connection("inbound", "NONE", "refused", "");
            return;
        };
        let first = decide(mode, &kind);
        self.note_audit(&first, mode, &kind, peer);
        match first.action {
            Action::Refuse => self.refuse(&first, mode, &kind, peer, ""),
            Action::PassThrough | Action::Forward => {
                self.forward(stream, app, (kind, mode, first), (peer, None), stop)
                    .await;
            }
            Action::TerminateTls { client_auth } => {
                let acceptor = match client_auth {
                    ClientAuth::Required => &self.strict,
                    ClientAuth::Optional => &self.permissive,
                };
                let tls = match tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    acceptor.accept(TlsTransport::new(stream)),
                )
                .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return self.handshake_failed(mode, peer, &e.to_string()),
                    Err(_) => return self.handshake_failed(mode, peer, "timed out"),
                };
                let kind = match peer_spiffe_id(tls.get_ref().1) {
                    Ok(Some(id)) => ConnKind::Mtls { peer: id },
                    Ok(None) => ConnKind::TlsWithoutClientCert,
                    Err(e) => return self.handshake_failed(mode, peer, &e.to_string()),
                };
                let peer_cert = peer_cert_key(tls.get_ref().1);
                let second = decide(mode, &kind);
                self.note_audit(&second, mode, &kind, peer);
                let principal = principal(&kind);
                if second.allow() {
                    self.forward(tls, app, (kind, mode, second), (peer, peer_cert), stop)
                        .await;
                } else {
                    self.refuse(&second, mode, &kind, peer, &principal);
                }
            }
        }
    }

    fn note_audit(&self, decision: &Decision, mode: MtlsMode, kind: &ConnKind, peer: SocketAddr) {
        if decision.would_refuse_in_strict {
            tracing::warn!(%peer, %mode, kind = kind.as_str(), reason = %decision.reason,
                "AUDIT: STRICT would refuse this connection");
            self.metrics
                .would_refuse
                .with_label_values(&[kind.as_str()])
                .inc();
        }
    }

    fn refuse(
        &self,
        decision: &Decision,
        mode: MtlsMode,
        kind: &ConnKind,
        peer: SocketAddr,
        principal: &str,
    ) {
        tracing::warn!(%peer, %mode, kind = kind.as_str(), source_principal = principal,
            reason = %decision.reason, "inbound connection refused");
        self.metrics
            .connection("inbound", mode.as_str(), "refused", principal);
    }

    fn handshake_failed(&self, mode: MtlsMode, peer: SocketAddr, error: &str) {
        tracing::warn!(%peer, %mode, %error, "inbound TLS handshake failed; connection refused");
        self.metrics
            .connection("inbound", mode.as_str(), "handshake_failed", "");
    }

    /// Connects to the application, then relays (see [`Self::relay`]).
    /// `peer` is the client's address and its leaf certificate's key (mTLS).
    async fn forward<S>(
        &self,
        client: S,
        app_addr: SocketAddr,
        judged: (ConnKind, MtlsMode, Decision),
        peer: (SocketAddr, Option<PeerCertKey>),
        stop: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let principal = principal(&judged.0);
        if let Some(app) = self.open_app(app_addr, judged.1, peer.0, &principal).await {
            self.relay(client, app, judged, peer, stop).await;
        }
    }

    /// A connection to the application at `app_addr`; `None` (logged and
    /// counted) when it cannot be reached.
    async fn open_app(
        &self,
        app_addr: SocketAddr,
        mode: MtlsMode,
        peer: SocketAddr,
        principal: &str,
    ) -> Option<TcpStream> {
        let connect = tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(app_addr));
        match connect.await {
            Ok(Ok(app)) => {
                let _ = app.set_nodelay(true);
                Some(app)
            }
            Ok(Err(e)) => {
                self.app_unreachable(app_addr, mode, peer, principal, &e.to_string());
                None
            }
            Err(_) => {
                self.app_unreachable(app_addr, mode, peer, principal, "timed out");
                None
            }
        }
    }

    /// Registers the connection, re-checks it against the mode and the
    /// revoked certificates in force now (a change may have landed while it
    /// was being decided), and copies bytes both ways until either side
    /// ends or the connection is closed by a mode change, a revocation or
    /// shutdown.
    async fn relay<S>(
        &self,
        mut client: S,
        mut app: TcpStream,
        (kind, mode, decision): (ConnKind, MtlsMode, Decision),
        (peer, peer_cert): (SocketAddr, Option<PeerCertKey>),
        stop: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let principal = principal(&kind);
        let port = app.peer_addr().map_or(0, |a| a.port());
        let reg = self
            .live
            .register(kind.clone(), mode, port, peer, peer_cert, stop.clone());
        let revoked = self.revocations.borrow().clone();
        self.live
            .close_revoked(Some(reg.id()), &revoked, self.drain);
        let policy = self.policy.clone();
        let mode_for = |p| {
            policy
                .borrow()
                .as_ref()
                .map_or(mode, |policy| policy.mode_for_port(p))
        };
        self.live
            .apply_modes(Some(reg.id()), &mode_for, self.drain, &self.metrics);
        tracing::info!(%peer, source_principal = %principal, %mode, kind = kind.as_str(), app_port = port,
            reason = %decision.reason, "inbound connection accepted");
        self.metrics
            .connection("inbound", mode.as_str(), "allowed", &principal);
        self.metrics.open_connections.inc();
        tokio::select! {
            copied = crate::proxy::copy::copy_bidirectional(&mut client, &mut app) => match copied {
                Ok((up, down)) => tracing::debug!(%peer, up, down, "inbound connection closed"),
                Err(e) => tracing::debug!(%peer, error = %e, "inbound connection ended with an error"),
            },
            () = stop.cancelled() => tracing::info!(%peer, source_principal = %principal, "inbound connection closed by the proxy"),
        }
        self.metrics.open_connections.dec();
        drop(reg);
    }

    fn app_unreachable(
        &self,
        app: SocketAddr,
        mode: MtlsMode,
        peer: SocketAddr,
        principal: &str,
        error: &str,
    ) {
        tracing::warn!(%peer, %app, %error, "the application is unreachable; inbound connection closed");
        self.metrics
            .connection("inbound", mode.as_str(), "app_unreachable", principal);
    }
}

/// The verified source principal of a connection, `""` when none.
fn principal(kind: &ConnKind) -> String {
    match kind {
        ConnKind::Mtls { peer } => peer.to_string(),
        _ => String::new(),
    }
}
