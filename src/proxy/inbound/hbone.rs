//! The inbound side of HBONE: mTLS connections from peer proxies on port
//! [`PORT`](crate::proxy::hbone::PORT), each carrying HTTP/2 `CONNECT`
//! tunnels to this pod's ports.
//!
//! Per connection: the TLS handshake requires a client certificate in our
//! trust domain (whatever the modes: a tunnel is always mTLS) and ALPN
//! `h2`; then each `CONNECT` stream is checked ([`check_target`]), judged by
//! the mode of its destination port with the connection's verified
//! identity, and answered `200` once the application accepted the
//! connection, then relayed as any inbound connection (counted, logged,
//! closed by a mode change that no longer allows it).
//!
//! Rules enforced (SECURITY.md, "HBONE"): a tunnel reaches only this pod's
//! own addresses (never loopback, never another host: a peer cannot use
//! us as a relay) and never the proxy's own ports; a peer without a
//! verified identity gets no tunnel; answers: `400` for a request that is
//! not `CONNECT IP:PORT`, `401` for a target that is not ours or a mode
//! that refuses, `503` when the application does not accept. A connection
//! whose peer certificate a CRL comes to list gets no new tunnel (`401`) and
//! is closed, with its tunnels, after the mode-change drain period.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{principal, Inbound, InboundTarget, HANDSHAKE_TIMEOUT};
use crate::identity::{SpiffeId, TrustDomain};
use crate::proxy::accept::{serve, Listening};
use crate::proxy::enforce::{decide, ConnKind};
use crate::proxy::hbone::stream::TunnelStream;
use crate::proxy::hbone::{
    ALPN, CONNECTION_WINDOW, MAX_FRAME, MAX_TUNNELS, STREAM_WINDOW, TLS_BUFFER_LIMIT,
};
use crate::proxy::tls::{
    peer_cert_key, peer_spiffe_id, server_config, CertStore, ClientAuth, PeerCertKey, ProxyTlsError,
};
use crate::proxy::transport::TlsTransport;

/// Why a tunnel's target is refused, with the HTTP status answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not `CONNECT` with an `IP:PORT` authority: `400`.
    #[error("not a CONNECT to IP:PORT ({0})")]
    Malformed(String),
    /// An address that is not this pod's, or a proxy port: `401`.
    #[error("{0} is not a port of this pod")]
    NotOurs(SocketAddr),
}

impl TargetError {
    /// The HTTP status answered.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::Malformed(_) => http::StatusCode::BAD_REQUEST,
            Self::NotOurs(_) => http::StatusCode::UNAUTHORIZED,
        }
    }
}

/// The destination a tunnel request names, if this pod may be reached
/// there: `CONNECT` to `IP:PORT` where IP is one of this network
/// namespace's addresses other than loopback (`is_local`) and PORT none of
/// `proxy_ports`.
pub fn check_target(
    method: &http::Method,
    authority: Option<&str>,
    proxy_ports: &[u16],
    is_local: impl Fn(IpAddr) -> bool,
) -> Result<SocketAddr, TargetError> {
    if method != http::Method::CONNECT {
        return Err(TargetError::Malformed(format!("method {method}")));
    }
    let authority = authority.ok_or_else(|| TargetError::Malformed("no :authority".into()))?;
    let target: SocketAddr = authority
        .parse()
        .map_err(|_| TargetError::Malformed(format!(":authority {authority:?}")))?;
    if target.ip().is_loopback()
        || target.ip().is_unspecified()
        || target.port() == 0
        || proxy_ports.contains(&target.port())
        || !is_local(target.ip())
    {
        return Err(TargetError::NotOurs(target));
    }
    Ok(target)
}

/// Whether `ip` is an address of this network namespace: binding it works
/// only then.
pub fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The server configuration of HBONE connections: a client certificate in
/// `trust_domain` required, ALPN `h2` only.
pub fn hbone_acceptor(
    store: Arc<CertStore>,
    trust_domain: TrustDomain,
) -> Result<TlsAcceptor, ProxyTlsError> {
    let config = server_config(store, trust_domain, ClientAuth::Required)?;
    let mut config = (*config).clone();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl Inbound {
    /// Serves HBONE on `listening` until shutdown, with `acceptor`
    /// ([`hbone_acceptor`]); `proxy_ports` are never tunnel targets.
    pub async fn run_hbone(
        self: Arc<Self>,
        listening: Listening,
        acceptor: TlsAcceptor,
        proxy_ports: Vec<u16>,
    ) {
        let proxy_ports: Arc<[u16]> = proxy_ports.into();
        serve(listening, "inbound", move |stream, peer, stop| {
            let (this, acceptor, ports) = (self.clone(), acceptor.clone(), proxy_ports.clone());
            async move {
                this.hbone_connection(stream, peer, acceptor, ports, stop)
                    .await
            }
        })
        .await;
    }

    async fn hbone_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        acceptor: TlsAcceptor,
        proxy_ports: Arc<[u16]>,
        stop: CancellationToken,
    ) {
        let handshake = acceptor.accept(TlsTransport::new(stream));
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return self.hbone_refused(peer, &e.to_string()),
            Err(_) => return self.hbone_refused(peer, "TLS handshake timed out"),
        };
        let mut tls = tls;
        tls.get_mut().1.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        let identity = match peer_spiffe_id(tls.get_ref().1) {
            Ok(Some(id)) => id,
            Ok(None) => return self.hbone_refused(peer, "no client certificate"),
            Err(e) => return self.hbone_refused(peer, &e.to_string()),
        };
        let peer_cert = peer_cert_key(tls.get_ref().1);
        let handshake = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_concurrent_streams(MAX_TUNNELS)
            .handshake::<_, Bytes>(tls);
        let mut connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => return self.hbone_refused(peer, &format!("HTTP/2 handshake: {e}")),
            Err(_) => return self.hbone_refused(peer, "HTTP/2 handshake timed out"),
        };
        tracing::debug!(%peer, source_principal = %identity, "HBONE connection accepted");
        self.metrics
            .hbone_connections
            .with_label_values(&["inbound"])
            .inc();
        self.metrics.hbone_open.inc();
        // Set once the peer's certificate is revoked: no new tunnel, and the
        // connection (its tunnels with it) closes after the drain.
        let mut revoked = false;
        let until_revoked =
            crate::proxy::tls::until_revoked(self.revocations.clone(), peer_cert.clone());
        tokio::pin!(until_revoked);
        loop {
            let accepted = tokio::select! {
                accepted = connection.accept() => accepted,
                () = stop.cancelled() => break,
                () = &mut until_revoked, if !revoked => {
                    revoked = true;
                    tracing::warn!(%peer, source_principal = %identity, drain = ?self.drain,
                        "the peer's certificate is revoked: closing its HBONE connection after the drain period");
                    let (stop, drain) = (stop.clone(), self.drain);
                    tokio::spawn(async move {
                        tokio::select! {
                            () = tokio::time::sleep(drain) => stop.cancel(),
                            () = stop.cancelled() => {}
                        }
                    });
                    continue;
                }
            };
            match accepted {
                Some(Ok((_, mut respond))) if revoked => {
                    tracing::warn!(%peer, source_principal = %identity, "HBONE tunnel refused: the peer's certificate is revoked");
                    self.metrics
                        .connection("inbound", "NONE", "refused", &identity.to_string());
                    let response = http::Response::builder()
                        .status(http::StatusCode::UNAUTHORIZED)
                        .body(());
                    if let Ok(response) = response {
                        let _ = respond.send_response(response, true);
                    }
                }
                Some(Ok((request, respond))) => {
                    let (this, identity, ports) =
                        (self.clone(), identity.clone(), proxy_ports.clone());
                    let (stop, peer_cert) = (stop.child_token(), peer_cert.clone());
                    tokio::spawn(async move {
                        this.tunnel(request, respond, (identity, peer_cert), peer, &ports, stop)
                            .await;
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "HBONE connection ended with an error");
                    break;
                }
                None => break,
            }
        }
        self.metrics.hbone_open.dec();
    }

    /// One tunnel: check, judge, connect to the application, answer, relay.
    /// `identity` is the connection's verified peer and its certificate's key.
    async fn tunnel(
        &self,
        request: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        (identity, peer_cert): (SpiffeId, Option<PeerCertKey>),
        peer: SocketAddr,
        proxy_ports: &[u16],
        stop: CancellationToken,
    ) {
        let mut refuse = |status: http::StatusCode| {
            let response = http::Response::builder().status(status).body(());
            if let Ok(response) = response {
                let _ = respond.send_response(response, true);
            }
        };
        let capture_ports: &[u16] = match &self.target {
            InboundTarget::OriginalDst { capture_ports } => capture_ports,
            InboundTarget::App(_) => &[],
        };
        let ports: Vec<u16> = proxy_ports.iter().chain(capture_ports).copied().collect();
        let authority = request.uri().authority().map(|a| a.as_str());
        let target = match check_target(request.method(), authority, &ports, is_local_address) {
            Ok(target) => target,
            Err(e) => {
                tracing::warn!(%peer, source_principal = %identity, error = %e, "HBONE tunnel refused");
                self.metrics
                    .connection("inbound", "NONE", "refused", &identity.to_string());
                return refuse(e.status());
            }
        };
        let Some(mode) = self.mode_now(target.port()) else {
            tracing::warn!(%peer, "HBONE tunnel refused: no mTLS policy from the agent yet");
            self.metrics.connection("inbound", "NONE", "refused", "");
            return refuse(http::StatusCode::SERVICE_UNAVAILABLE);
        };
        let kind = ConnKind::Mtls { peer: identity };
        let decision = decide(mode, &kind);
        self.note_audit(&decision, mode, &kind, peer);
        if !decision.allow() {
            self.refuse(&decision, mode, &kind, peer, &principal(&kind));
            return refuse(http::StatusCode::UNAUTHORIZED);
        }
        let Some(app) = self.open_app(target, mode, peer, &principal(&kind)).await else {
            return refuse(http::StatusCode::SERVICE_UNAVAILABLE);
        };
        let send = match respond.send_response(http::Response::new(()), false) {
            Ok(send) => send,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "HBONE tunnel closed before it was answered");
                return;
            }
        };
        let tunnel = TunnelStream::new(send, request.into_body());
        self.relay(tunnel, app, (kind, mode, decision), (peer, peer_cert), stop)
            .await;
    }

    fn hbone_refused(&self, peer: SocketAddr, error: &str) {
        tracing::warn!(%peer, %error, "HBONE connection refused");
        self.metrics
            .connection("inbound", "STRICT", "handshake_failed", "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(ip: IpAddr) -> bool {
        ip == "10.0.0.5".parse::<IpAddr>().unwrap()
    }

    #[test]
    fn a_connect_to_one_of_our_ports_is_accepted() {
        let target = check_target(
            &http::Method::CONNECT,
            Some("10.0.0.5:8080"),
            &[15008],
            ours,
        );
        assert_eq!(target.unwrap(), "10.0.0.5:8080".parse().unwrap());
    }

    #[test]
    fn a_relay_to_another_host_is_refused() {
        let err =
            check_target(&http::Method::CONNECT, Some("10.0.0.9:8080"), &[], ours).unwrap_err();
        assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn loopback_and_proxy_ports_are_never_targets() {
        let all = |_| true;
        for authority in ["127.0.0.1:8080", "[::1]:8080", "0.0.0.0:8080", "10.0.0.5:0"] {
            let err = check_target(&http::Method::CONNECT, Some(authority), &[], all).unwrap_err();
            assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED, "{authority}");
        }
        let err = check_target(
            &http::Method::CONNECT,
            Some("10.0.0.5:15020"),
            &[15020],
            ours,
        )
        .unwrap_err();
        assert!(matches!(err, TargetError::NotOurs(_)));
    }

    #[test]
    fn anything_but_connect_to_ip_port_is_malformed() {
        let all = |_| true;
        let get = check_target(&http::Method::GET, Some("10.0.0.5:80"), &[], all).unwrap_err();
        assert_eq!(get.status(), http::StatusCode::BAD_REQUEST);
        for authority in [None, Some("backend.default:80"), Some("10.0.0.5")] {
            let err = check_target(&http::Method::CONNECT, authority, &[], all).unwrap_err();
            assert_eq!(err.status(), http::StatusCode::BAD_REQUEST, "{authority:?}");
        }
    }

    #[test]
    fn loopback_is_local_and_a_foreign_address_is_not() {
        assert!(is_local_address("127.0.0.1".parse().unwrap()));
        assert!(!is_local_address("192.0.2.77".parse().unwrap()));
    }
}
