//! The current SVID, trust bundle and revoked certificates, swapped on
//! rotation; a change of the revoked set is published to whoever closes
//! live connections ([`CertStore::revocations`]).

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::{
    check_material, unix_time, warn_if_revoked, ProxyTlsError, SvidMaterial, Trust, VerifiedSvid,
};
use crate::identity::SpiffeId;
use crate::pki::crl::RevokedSet;
use crate::time::SharedClock;

/// Our current SVID and trust bundle, shared by every TLS configuration of
/// the proxy. rustls asks it for our certificate at each handshake (it is
/// both [`ResolvesServerCert`] and [`ResolvesClientCert`]); the verifiers ask
/// it for the current bundle.
///
/// Rule enforced: whatever it holds passed [`check_material`] for the
/// store's identity, fixed at construction. A swap changes what new
/// handshakes get; an established connection keeps the certificate it was
/// made with (rustls holds its own reference).
pub struct CertStore {
    identity: SpiffeId,
    clock: SharedClock,
    current: RwLock<Arc<VerifiedSvid>>,
    /// The revoked set in force, sent again each time it changes.
    revocations: watch::Sender<Arc<RevokedSet>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key: whose certificate it is and until when.
        f.debug_struct("CertStore")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// A store for `identity` (ours, for the life of the proxy), holding
    /// `material` once it passed [`check_material`] at `clock`'s now.
    pub fn new(
        identity: SpiffeId,
        material: SvidMaterial,
        clock: SharedClock,
    ) -> Result<Arc<Self>, ProxyTlsError> {
        let checked = check_material(&material, &identity, clock.now())?;
        let (revocations, _) = watch::channel(checked.trust.revoked().clone());
        Ok(Arc::new(Self {
            identity,
            clock,
            current: RwLock::new(Arc::new(checked)),
            revocations,
        }))
    }

    /// Replaces our SVID, the trust bundle and the CRLs, after
    /// [`check_material`] (our key, our identity, chains to the new bundle,
    /// valid now, every CRL verifies). On an error the current SVID, bundle
    /// and CRLs stay in place. Use it for a root rotation too:
    /// the new certificate and the bundle that trusts it arrive together.
    pub fn swap(&self, new: SvidMaterial) -> Result<(), ProxyTlsError> {
        let checked = check_material(&new, &self.identity, self.clock.now())?;
        self.replace(checked);
        Ok(())
    }

    /// Replaces the trust bundle only (SDS `ROOTCA` changed alone). Refused,
    /// the current bundle kept, if our own certificate does not chain to the
    /// new bundle: peers using that bundle would refuse us. For a root
    /// rotation, either deliver a bundle holding both roots, or use [`swap`](Self::swap).
    /// The current CRLs are kept when they still verify against the new
    /// bundle (or our chain), dropped when their authority left it.
    pub fn swap_bundle(&self, bundle: Vec<CertificateDer<'static>>) -> Result<(), ProxyTlsError> {
        let current = self.current();
        let chain = &current.certified.cert;
        let intermediates = chain.get(1..).unwrap_or_default();
        let trust = current.trust.rebundled(bundle, intermediates)?;
        if let Some(leaf) = chain.first() {
            let now = unix_time(self.clock.now());
            let untrusted = |source| ProxyTlsError::Untrusted {
                what: "our current certificate",
                source,
            };
            trust
                .chain_client(leaf, intermediates, now)
                .map_err(untrusted)?;
            trust
                .chain_server(leaf, intermediates, now)
                .map_err(untrusted)?;
            warn_if_revoked(&trust, leaf, &self.identity);
        }
        self.replace(VerifiedSvid {
            trust,
            ..(*current).clone()
        });
        Ok(())
    }

    /// Our identity.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// When the current certificate expires: the proxy keeps serving it
    /// until then when the node agent is away.
    pub fn not_after(&self) -> OffsetDateTime {
        self.current().not_after
    }

    /// The current certificate chain, leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current().certified.cert.clone()
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> Vec<CertificateDer<'static>> {
        self.current().trust.bundle().to_vec()
    }

    /// The revoked certificates in force now.
    pub fn revoked(&self) -> Arc<RevokedSet> {
        self.current().trust.revoked().clone()
    }

    /// A receiver of the revoked set, marked changed each time a swap
    /// changes it: live connections to or from a peer it now lists are
    /// closed by whoever holds them (handshakes already refuse the peer).
    pub fn revocations(&self) -> watch::Receiver<Arc<RevokedSet>> {
        self.revocations.subscribe()
    }

    /// The clock every check of this store's configurations uses.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    pub(super) fn trust(&self) -> Arc<Trust> {
        self.current().trust.clone()
    }

    fn current(&self) -> Arc<VerifiedSvid> {
        // The lock only guards an Arc swap: a poisoned lock still holds a
        // complete, checked value.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn replace(&self, new: VerifiedSvid) {
        let revoked = new.trust.revoked().clone();
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        *current = Arc::new(new);
        // Under the lock, so that two swaps publish in the order they landed.
        self.revocations.send_if_modified(|published| {
            let changed = **published != *revoked;
            if changed {
                tracing::info!(revoked = revoked.len(), "the revoked certificates changed");
                *published = revoked;
            }
            changed
        });
    }

    fn certified_key(&self) -> Arc<CertifiedKey> {
        self.current().certified.clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
