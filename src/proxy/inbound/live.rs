//! The registry of live inbound connections: what each one is, the mode it
//! lives under, the peer's certificate, and how to close it, so that a mode
//! change ([`on_mode_change`]) or a revocation reaches the connections
//! already accepted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::pki::crl::{serial_hex, RevokedSet};
use crate::policy::MtlsMode;
use crate::proxy::enforce::{on_mode_change, ConnKind, OnModeChange};
use crate::proxy::metrics::ProxyMetrics;
use crate::proxy::tls::PeerCertKey;

/// One live connection.
#[derive(Debug)]
struct Live {
    kind: ConnKind,
    mode: MtlsMode,
    port: u16,
    peer: SocketAddr,
    /// The (issuer, serial) of the peer's verified leaf certificate (mTLS).
    peer_cert: Option<PeerCertKey>,
    cancel: CancellationToken,
    closing: bool,
}

/// Live inbound connections of one listener.
#[derive(Debug, Default)]
pub(crate) struct LiveConns {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Live>>,
}

/// A connection's place in the registry; leaves it on drop.
#[derive(Debug)]
pub(crate) struct Registration {
    id: u64,
    live: Arc<LiveConns>,
}

impl Registration {
    /// The connection's id in the registry.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut conns = self
            .live
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        conns.remove(&self.id);
        // A map does not shrink by itself: after a burst of 10,000
        // connections it would keep ~2 MB of empty buckets.
        let len = conns.len();
        if conns.capacity() > 256 && len * 8 < conns.capacity() {
            conns.shrink_to(len * 2);
        }
    }
}

impl LiveConns {
    /// Records a connection of `kind`, accepted under `mode` for the
    /// application `port`, from a peer whose leaf certificate is `peer_cert`
    /// (mTLS), closed through `cancel`.
    pub(crate) fn register(
        self: &Arc<Self>,
        kind: ConnKind,
        mode: MtlsMode,
        port: u16,
        peer: SocketAddr,
        peer_cert: Option<PeerCertKey>,
        cancel: CancellationToken,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let live = Live {
            kind,
            mode,
            port,
            peer,
            peer_cert,
            cancel,
            closing: false,
        };
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, live);
        Registration {
            id,
            live: self.clone(),
        }
    }

    /// How many connections are live.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Applies the modes now in force (`mode_for(port)`) to every live
    /// connection (`only` = `None`) or to one: those the new mode no longer
    /// allows are closed after `drain`; those that AUDIT would flag are
    /// logged and counted once. Must be called from within a tokio runtime
    /// (a non-zero drain spawns a timer).
    pub(crate) fn apply_modes(
        &self,
        only: Option<u64>,
        mode_for: &dyn Fn(u16) -> MtlsMode,
        drain: Duration,
        metrics: &ProxyMetrics,
    ) {
        let mut to_close = Vec::new();
        {
            let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, live) in conns.iter_mut() {
                if only.is_some_and(|only| only != *id) || live.closing {
                    continue;
                }
                let new_mode = mode_for(live.port);
                if new_mode == live.mode {
                    continue;
                }
                match on_mode_change(&live.kind, live.mode, new_mode) {
                    OnModeChange::Continue => live.mode = new_mode,
                    OnModeChange::ContinueAudited => {
                        tracing::warn!(peer = %live.peer, kind = live.kind.as_str(), mode = %new_mode,
                            "AUDIT: STRICT would refuse this live connection");
                        metrics
                            .would_refuse
                            .with_label_values(&[live.kind.as_str()])
                            .inc();
                        live.mode = new_mode;
                    }
                    OnModeChange::CloseAfterDrain { reason } => {
                        tracing::info!(peer = %live.peer, kind = live.kind.as_str(), from = %live.mode,
                            to = %new_mode, %reason, ?drain, "mode change: closing a live connection after the drain period");
                        live.closing = true;
                        to_close.push(live.cancel.clone());
                    }
                }
            }
        }
        for cancel in to_close {
            metrics.closed_on_mode_change.inc();
            close_after(cancel, drain);
        }
    }

    /// Closes, after `drain`, every live connection (`only` = `None`) or
    /// one whose peer's leaf certificate `revoked` lists. Rule: a revoked
    /// peer keeps no connection open past the drain period; its new
    /// handshakes are already refused by the verifier. Must be called from
    /// within a tokio runtime (a non-zero drain spawns a timer).
    pub(crate) fn close_revoked(&self, only: Option<u64>, revoked: &RevokedSet, drain: Duration) {
        if revoked.is_empty() {
            return;
        }
        let mut to_close = Vec::new();
        {
            let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, live) in conns.iter_mut() {
                if only.is_some_and(|only| only != *id) || live.closing {
                    continue;
                }
                let Some((issuer, serial)) = &live.peer_cert else {
                    continue;
                };
                if revoked.contains(issuer, serial) {
                    tracing::warn!(peer = %live.peer, kind = live.kind.as_str(), serial = %serial_hex(serial),
                        ?drain, "the peer's certificate is revoked: closing a live connection after the drain period");
                    live.closing = true;
                    to_close.push(live.cancel.clone());
                }
            }
        }
        for cancel in to_close {
            close_after(cancel, drain);
        }
    }
}

/// Cancels `cancel` after `drain` (at once when zero).
fn close_after(cancel: CancellationToken, drain: Duration) {
    if drain.is_zero() {
        cancel.cancel();
    } else {
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(drain) => cancel.cancel(),
                () = cancel.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> ProxyMetrics {
        ProxyMetrics::register(&prometheus::Registry::new()).unwrap()
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    /// After a burst of connections closes, the registry's memory goes too.
    #[test]
    fn the_registry_shrinks_after_a_burst() {
        let live = Arc::new(LiveConns::default());
        let burst: Vec<Registration> = (0..10_000)
            .map(|_| {
                let kind = ConnKind::Plaintext;
                live.register(
                    kind,
                    MtlsMode::Permissive,
                    80,
                    peer(),
                    None,
                    CancellationToken::new(),
                )
            })
            .collect();
        let _kept = live.register(
            ConnKind::Plaintext,
            MtlsMode::Permissive,
            80,
            peer(),
            None,
            CancellationToken::new(),
        );
        drop(burst);
        let conns = live.conns.lock().unwrap();
        assert_eq!(conns.len(), 1);
        assert!(conns.capacity() <= 256, "capacity {}", conns.capacity());
    }

    #[tokio::test]
    async fn switch_to_strict_closes_plaintext_and_keeps_mtls() {
        let live = Arc::new(LiveConns::default());
        let (plain, mtls) = (CancellationToken::new(), CancellationToken::new());
        let _a = live.register(
            ConnKind::Plaintext,
            MtlsMode::Permissive,
            80,
            peer(),
            None,
            plain.clone(),
        );
        let id = crate::identity::SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
        let _b = live.register(
            ConnKind::Mtls { peer: id },
            MtlsMode::Permissive,
            80,
            peer(),
            None,
            mtls.clone(),
        );
        let m = metrics();
        live.apply_modes(None, &|_| MtlsMode::Strict, Duration::ZERO, &m);
        assert!(plain.is_cancelled());
        assert!(!mtls.is_cancelled());
        assert_eq!(m.closed_on_mode_change.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_period_delays_the_close() {
        let live = Arc::new(LiveConns::default());
        let plain = CancellationToken::new();
        let _a = live.register(
            ConnKind::Plaintext,
            MtlsMode::Audit,
            80,
            peer(),
            None,
            plain.clone(),
        );
        live.apply_modes(
            None,
            &|_| MtlsMode::Strict,
            Duration::from_millis(300),
            &metrics(),
        );
        tokio::time::sleep(Duration::from_millis(299)).await;
        assert!(
            !plain.is_cancelled(),
            "closed before the drain period ended"
        );
        tokio::time::timeout(Duration::from_millis(2), plain.cancelled())
            .await
            .expect("closed when the drain period ends");
    }

    #[tokio::test]
    async fn other_ports_and_dropped_connections_are_left_alone() {
        let live = Arc::new(LiveConns::default());
        let plain = CancellationToken::new();
        let reg = live.register(
            ConnKind::Plaintext,
            MtlsMode::Permissive,
            80,
            peer(),
            None,
            plain.clone(),
        );
        let mode_for = |port| {
            if port == 80 {
                MtlsMode::Permissive
            } else {
                MtlsMode::Strict
            }
        };
        live.apply_modes(None, &mode_for, Duration::ZERO, &metrics());
        assert!(!plain.is_cancelled());
        drop(reg);
        assert_eq!(live.len(), 0);
    }

    /// Only the connections of the revoked peer close, and only after the drain.
    #[tokio::test(start_paused = true)]
    async fn a_revocation_closes_only_the_revoked_peers_connections_after_the_drain() {
        let live = Arc::new(LiveConns::default());
        let id = crate::identity::SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
        let issuer = b"issuer".to_vec();
        let (revoked, other, plain) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let mtls = || ConnKind::Mtls { peer: id.clone() };
        let _a = live.register(
            mtls(),
            MtlsMode::Strict,
            80,
            peer(),
            Some((issuer.clone(), vec![0x80, 1])),
            revoked.clone(),
        );
        let _b = live.register(
            mtls(),
            MtlsMode::Strict,
            80,
            peer(),
            Some((issuer.clone(), vec![0x02])),
            other.clone(),
        );
        let _c = live.register(
            ConnKind::Plaintext,
            MtlsMode::Permissive,
            80,
            peer(),
            None,
            plain.clone(),
        );
        let mut set = RevokedSet::new();
        // The CRL's form carries the DER sign byte; the lookup strips it.
        set.insert(&issuer, &[0x00, 0x80, 0x01]);
        set.insert(b"another issuer", &[0x02]);
        live.close_revoked(None, &set, Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(499)).await;
        assert!(!revoked.is_cancelled(), "closed before the drain ended");
        tokio::time::timeout(Duration::from_millis(2), revoked.cancelled())
            .await
            .expect("closed when the drain ends");
        assert!(!other.is_cancelled());
        assert!(!plain.is_cancelled());
    }

    #[tokio::test]
    async fn an_empty_revoked_set_closes_nothing() {
        let live = Arc::new(LiveConns::default());
        let cancel = CancellationToken::new();
        let _a = live.register(
            ConnKind::Plaintext,
            MtlsMode::Strict,
            80,
            peer(),
            Some((b"i".to_vec(), vec![1])),
            cancel.clone(),
        );
        live.close_revoked(None, &RevokedSet::new(), Duration::ZERO);
        assert!(!cancel.is_cancelled());
    }
}
