//! The outbound side of HBONE: mTLS connections to peer proxies, shared by
//! the tunnels to each peer and kept while they are used.
//!
//! A peer is a pod address with the identity its proxy must prove; its
//! connections are opened on demand (one at a time per peer: tunnels that
//! arrive meanwhile wait for it and share it), carry up to
//! [`MAX_TUNNELS`] tunnels each, get no new tunnel after [`MAX_AGE`], and
//! are closed once they have carried none for [`IDLE_RELEASE`].
//!
//! Rules enforced: a pooled connection was authenticated exactly as a
//! direct one (the peer proved exactly the expected identity, by a
//! certificate chaining to our bundle when the connection was made), and
//! connections are keyed by that identity, so a tunnel never rides on a
//! connection to another identity. A peer without an HBONE port
//! (connection refused, or no `h2` in ALPN) is reported as [`HboneError::NoHbone`]:
//! the caller may then use direct mTLS, never plaintext. A connection whose
//! peer certificate a CRL comes to list is closed at once, its tunnels with
//! it, and leaves the pool ([`HbonePool::close_revoked`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::stream::TunnelStream;
use super::{
    ALPN, CONNECTION_WINDOW, IDLE_RELEASE, MAX_AGE, MAX_FRAME, MAX_TUNNELS, NO_HBONE_MEMORY,
    STREAM_WINDOW, TLS_BUFFER_LIMIT,
};
use crate::identity::SpiffeId;
use crate::pki::crl::{serial_hex, RevokedSet};
use crate::proxy::metrics::ProxyMetrics;
use crate::proxy::outbound::UPSTREAM_TIMEOUT;
use crate::proxy::tls::{
    client_config, peer_cert_key, server_name_for, CertStore, PeerCertKey, PeerExpectation,
};
use crate::proxy::transport::TlsTransport;

/// How often idle and aged connections are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Why no tunnel was opened.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    /// The peer has no HBONE port: direct mTLS may be used instead.
    #[error("the peer does not speak HBONE: {0}")]
    NoHbone(String),
    /// Connecting, or authenticating the peer, failed (`outcome` is the
    /// metrics label: `upstream_unreachable`, `upstream_refused`).
    #[error("{error}")]
    Connect {
        /// The metrics outcome.
        outcome: &'static str,
        /// What failed.
        error: String,
    },
    /// The peer's proxy refused the tunnel.
    #[error("the peer's proxy refused the tunnel: {0}")]
    Refused(String),
}

/// A tunnel to a peer: its byte stream, and its place on the connection
/// (given back when dropped).
#[derive(Debug)]
pub struct Tunnel {
    /// The tunnel's bytes.
    pub stream: TunnelStream,
    _slot: Slot,
}

/// The outbound HBONE connections of one proxy.
pub struct HbonePool {
    store: Arc<CertStore>,
    port: u16,
    metrics: ProxyMetrics,
    peers: Mutex<HashMap<(IpAddr, SpiffeId), Arc<Peer>>>,
    no_hbone: Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for HbonePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HbonePool")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

struct Peer {
    connector: TlsConnector,
    conns: Mutex<Vec<Conn>>,
    /// Held while a connection to this peer is being opened.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct Conn {
    send: SendRequest<Bytes>,
    created: Instant,
    tunnels: Arc<AtomicUsize>,
    last_used: Arc<Mutex<Instant>>,
    closed: Arc<AtomicBool>,
    /// The (issuer, serial) of the peer's leaf certificate.
    peer_cert: Option<PeerCertKey>,
    /// Ends the connection's task, closing the connection and its tunnels.
    cancel: CancellationToken,
}

/// A tunnel's place on a connection.
#[derive(Debug)]
struct Slot {
    tunnels: Arc<AtomicUsize>,
    last_used: Arc<Mutex<Instant>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.tunnels.fetch_sub(1, Ordering::Relaxed);
        *lock(&self.last_used) = Instant::now();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Conn {
    fn usable(&self, now: Instant) -> bool {
        !self.closed.load(Ordering::Relaxed)
            && now.duration_since(self.created) < MAX_AGE
            && self.tunnels.load(Ordering::Relaxed) < MAX_TUNNELS as usize
    }

    fn take_slot(&self) -> Slot {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_used) = Instant::now();
        Slot {
            tunnels: self.tunnels.clone(),
            last_used: self.last_used.clone(),
        }
    }

    fn revoked_by(&self, revoked: &RevokedSet) -> bool {
        self.peer_cert
            .as_ref()
            .is_some_and(|(issuer, serial)| revoked.contains(issuer, serial))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.cancel.cancel();
    }

    fn state(&self) -> ConnState {
        ConnState {
            closed: self.closed.load(Ordering::Relaxed),
            tunnels: self.tunnels.load(Ordering::Relaxed),
            created: self.created,
            last_used: *lock(&self.last_used),
        }
    }
}

/// What the sweep looks at in a connection.
#[derive(Debug, Clone, Copy)]
struct ConnState {
    closed: bool,
    tunnels: usize,
    created: Instant,
    last_used: Instant,
}

/// Which of one peer's connections the sweep keeps: every one carrying
/// tunnels, and at most one without, if that one is alive, used within
/// [`IDLE_RELEASE`] and younger than [`MAX_AGE`] (a burst of tunnels opens
/// several connections; once it is over one is enough).
fn to_keep(conns: &[ConnState], now: Instant) -> Vec<bool> {
    let mut spare_kept = false;
    conns
        .iter()
        .map(|c| {
            if c.closed {
                return false;
            }
            if c.tunnels > 0 {
                return true;
            }
            let fresh = now.duration_since(c.last_used) < IDLE_RELEASE
                && now.duration_since(c.created) < MAX_AGE;
            fresh && !std::mem::replace(&mut spare_kept, true)
        })
        .collect()
}

impl HbonePool {
    /// A pool connecting to peers' `port` with our SVID from `store`; its
    /// sweeper runs until the pool is dropped.
    pub fn new(store: Arc<CertStore>, port: u16, metrics: ProxyMetrics) -> Arc<Self> {
        let pool = Arc::new(Self {
            store,
            port,
            metrics,
            peers: Mutex::new(HashMap::new()),
            no_hbone: Mutex::new(HashMap::new()),
        });
        let revocations = pool.store.revocations();
        tokio::spawn(sweep(Arc::downgrade(&pool), revocations));
        pool
    }

    /// Opens a tunnel to `dst` through the proxy of the pod that owns it,
    /// which must prove exactly `expected`.
    pub async fn open(&self, dst: SocketAddr, expected: &SpiffeId) -> Result<Tunnel, HboneError> {
        let ip = dst.ip();
        if let Some(until) = lock(&self.no_hbone).get(&ip) {
            if Instant::now() < *until {
                return Err(HboneError::NoHbone(
                    "its HBONE port refused a connection recently".to_owned(),
                ));
            }
        }
        let peer = self.peer(ip, expected)?;
        // A connection that died between its pick and its use is dropped and
        // another is tried; a fresh one failing is an answer.
        for _ in 0..3 {
            let (conn, slot) = self.conn_for(&peer, ip).await?;
            let request = http::Request::builder()
                .method(http::Method::CONNECT)
                .uri(dst.to_string())
                .body(())
                .map_err(|e| HboneError::Refused(e.to_string()))?;
            let mut send = conn.send.clone();
            let sent = async {
                send = send.ready().await?;
                let (response, stream) = send.send_request(request, false)?;
                Ok::<_, h2::Error>((response.await?, stream))
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, sent).await {
                Ok(Ok((response, send))) => {
                    if response.status() != http::StatusCode::OK {
                        return Err(HboneError::Refused(format!("HTTP {}", response.status())));
                    }
                    return Ok(Tunnel {
                        stream: TunnelStream::new(send, response.into_body()),
                        _slot: slot,
                    });
                }
                Ok(Err(e)) if e.is_remote() && e.reason().is_some() && !e.is_go_away() => {
                    return Err(HboneError::Refused(e.to_string()));
                }
                Ok(Err(e)) => {
                    tracing::debug!(upstream = %dst, error = %e, "HBONE connection failed; trying another");
                    conn.closed.store(true, Ordering::Relaxed);
                }
                Err(_) => {
                    return Err(HboneError::Connect {
                        outcome: "upstream_unreachable",
                        error: "the HBONE tunnel was not answered in time".to_owned(),
                    })
                }
            }
        }
        Err(HboneError::Connect {
            outcome: "upstream_unreachable",
            error: "HBONE connections to the peer kept closing".to_owned(),
        })
    }

    /// The peer entry of (`ip`, `expected`), created with its connector.
    fn peer(&self, ip: IpAddr, expected: &SpiffeId) -> Result<Arc<Peer>, HboneError> {
        let mut peers = lock(&self.peers);
        if let Some(peer) = peers.get(&(ip, expected.clone())) {
            return Ok(peer.clone());
        }
        let config = client_config(
            self.store.clone(),
            PeerExpectation::Exactly(expected.clone()),
        )
        .map_err(|e| HboneError::Connect {
            outcome: "refused",
            error: e.to_string(),
        })?;
        let mut config = (*config).clone();
        config.alpn_protocols = vec![ALPN.to_vec()];
        let peer = Arc::new(Peer {
            connector: TlsConnector::from(Arc::new(config)),
            conns: Mutex::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(()),
        });
        peers.insert((ip, expected.clone()), peer.clone());
        Ok(peer)
    }

    /// A connection to `peer` with room for a tunnel: a pooled one, or a new one.
    async fn conn_for(&self, peer: &Peer, ip: IpAddr) -> Result<(Conn, Slot), HboneError> {
        if let Some(found) = pick(peer) {
            return Ok(found);
        }
        let _connecting = peer.connecting.lock().await;
        if let Some(found) = pick(peer) {
            return Ok(found);
        }
        let conn = self.connect(peer, ip).await?;
        let slot = conn.take_slot();
        lock(&peer.conns).push(conn.clone());
        Ok((conn, slot))
    }

    async fn connect(&self, peer: &Peer, ip: IpAddr) -> Result<Conn, HboneError> {
        let addr = SocketAddr::new(ip, self.port);
        let tcp = match tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(self.no_hbone(ip, format!("{addr}: {e}")));
            }
            Ok(Err(e)) => return Err(unreachable(format!("{addr}: {e}"))),
            Err(_) => return Err(unreachable(format!("{addr}: timed out"))),
        };
        let _ = tcp.set_nodelay(true);
        let handshake = peer
            .connector
            .connect(server_name_for(ip), TlsTransport::new(tcp));
        let tls = match tokio::time::timeout(UPSTREAM_TIMEOUT, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                return Err(HboneError::Connect {
                    outcome: "upstream_refused",
                    error: e.to_string(),
                })
            }
            Err(_) => return Err(unreachable(format!("{addr}: TLS handshake timed out"))),
        };
        let mut tls = tls;
        tls.get_mut().1.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
            return Err(self.no_hbone(ip, format!("{addr} did not negotiate h2")));
        }
        let peer_cert = peer_cert_key(tls.get_ref().1);
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| unreachable(format!("{addr}: HTTP/2 handshake: {e}")))?;
        let now = Instant::now();
        let conn = Conn {
            send,
            created: now,
            tunnels: Arc::new(AtomicUsize::new(0)),
            last_used: Arc::new(Mutex::new(now)),
            closed: Arc::new(AtomicBool::new(false)),
            peer_cert,
            cancel: CancellationToken::new(),
        };
        let (closed, metrics) = (conn.closed.clone(), self.metrics.clone());
        metrics
            .hbone_connections
            .with_label_values(&["outbound"])
            .inc();
        metrics.hbone_open.inc();
        let cancel = conn.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => if let Err(e) = ended {
                    tracing::debug!(upstream = %addr, error = %e, "HBONE connection ended with an error");
                },
                // Dropping the connection closes it and resets its tunnels.
                () = cancel.cancelled() => {}
            }
            closed.store(true, Ordering::Relaxed);
            metrics.hbone_open.dec();
        });
        // Revoked between the handshake and now: never pooled.
        if conn.revoked_by(&self.store.revoked()) {
            conn.close();
            return Err(HboneError::Connect {
                outcome: "upstream_refused",
                error: format!("{addr}: the peer's certificate is revoked"),
            });
        }
        Ok(conn)
    }

    fn no_hbone(&self, ip: IpAddr, why: String) -> HboneError {
        lock(&self.no_hbone).insert(ip, Instant::now() + NO_HBONE_MEMORY);
        HboneError::NoHbone(why)
    }

    /// Closes every pooled connection whose peer's leaf certificate
    /// `revoked` lists, its tunnels with it (no drain: the peer is no longer
    /// who it proved to be), and takes it out of the pool.
    pub(crate) fn close_revoked(&self, revoked: &RevokedSet) {
        if revoked.is_empty() {
            return;
        }
        let peers = lock(&self.peers);
        for ((ip, identity), peer) in peers.iter() {
            lock(&peer.conns).retain(|conn| {
                if !conn.revoked_by(revoked) {
                    return true;
                }
                let serial = conn
                    .peer_cert
                    .as_ref()
                    .map(|(_, serial)| serial_hex(serial))
                    .unwrap_or_default();
                tracing::warn!(upstream = %ip, upstream_identity = %identity, %serial,
                    tunnels = conn.tunnels.load(Ordering::Relaxed),
                    "the peer's certificate is revoked: closing its HBONE connection");
                conn.close();
                false
            });
        }
    }

    /// Applies [`to_keep`] to every peer's connections; forgets peers
    /// without any.
    fn sweep_once(&self, now: Instant) {
        let mut peers = lock(&self.peers);
        peers.retain(|_, peer| {
            let mut conns = lock(&peer.conns);
            let states: Vec<ConnState> = conns.iter().map(Conn::state).collect();
            let mut keep = to_keep(&states, now).into_iter();
            conns.retain(|_| keep.next().unwrap_or(false));
            !conns.is_empty()
        });
        lock(&self.no_hbone).retain(|_, until| *until > now);
    }

    /// Open connections in the pool (tests).
    pub fn connections(&self) -> usize {
        lock(&self.peers)
            .values()
            .map(|p| lock(&p.conns).len())
            .sum()
    }
}

fn unreachable(error: String) -> HboneError {
    HboneError::Connect {
        outcome: "upstream_unreachable",
        error,
    }
}

/// A pooled connection of `peer` with room for one more tunnel.
fn pick(peer: &Peer) -> Option<(Conn, Slot)> {
    let now = Instant::now();
    let conns = lock(&peer.conns);
    let conn = conns.iter().find(|c| c.usable(now))?;
    let slot = conn.take_slot();
    Some((conn.clone(), slot))
}

/// Every [`SWEEP_EVERY`], and at each change of the revoked certificates.
async fn sweep(pool: Weak<HbonePool>, mut revocations: watch::Receiver<Arc<RevokedSet>>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    let mut watching = true;
    loop {
        let revoked = tokio::select! {
            _ = tick.tick() => None,
            changed = revocations.changed(), if watching => match changed {
                Ok(()) => Some(revocations.borrow_and_update().clone()),
                Err(_) => {
                    watching = false;
                    None
                }
            },
        };
        let Some(pool) = pool.upgrade() else { return };
        match revoked {
            Some(revoked) => pool.close_revoked(&revoked),
            None => pool.sweep_once(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(now: Instant, tunnels: usize, idle: u64, age: u64) -> ConnState {
        ConnState {
            closed: false,
            tunnels,
            created: now - Duration::from_secs(age),
            last_used: now - Duration::from_secs(idle),
        }
    }

    #[test]
    fn connections_with_tunnels_stay_and_one_spare_is_kept() {
        let now = Instant::now() + Duration::from_secs(3600);
        let conns = [
            conn(now, 3, 0, 10),
            conn(now, 0, 1, 10),
            conn(now, 0, 1, 10),
            conn(now, 100, 0, 10),
        ];
        assert_eq!(to_keep(&conns, now), [true, true, false, true]);
    }

    #[test]
    fn idle_aged_and_closed_connections_go() {
        let now = Instant::now() + Duration::from_secs(3600);
        let idle = conn(now, 0, IDLE_RELEASE.as_secs(), 100);
        let aged = conn(now, 0, 0, MAX_AGE.as_secs());
        let mut closed = conn(now, 5, 0, 1);
        closed.closed = true;
        // An aged connection still carrying tunnels stays until they end.
        let aged_busy = conn(now, 1, 0, MAX_AGE.as_secs() * 2);
        assert_eq!(
            to_keep(&[idle, aged, closed, aged_busy], now),
            [false, false, false, true]
        );
    }
}
