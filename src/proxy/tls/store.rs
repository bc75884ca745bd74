//! The current SVID and trust bundle, swapped on rotation.

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use time::OffsetDateTime;

use super::{check_material, unix_time, ProxyTlsError, SvidMaterial, Trust, VerifiedSvid};
use crate::identity::SpiffeId;
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
        Ok(Arc::new(Self {
            identity,
            clock,
            current: RwLock::new(Arc::new(checked)),
        }))
    }

    /// Replaces our SVID and the trust bundle, after [`check_material`]
    /// (our key, our identity, chains to the new bundle, valid now). On an
    /// error the current SVID stays in place. Use it for a root rotation too:
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
    pub fn swap_bundle(&self, bundle: Vec<CertificateDer<'static>>) -> Result<(), ProxyTlsError> {
        let trust = Trust::new(bundle)?;
        let current = self.current();
        if let Some((leaf, intermediates)) = current.certified.cert.split_first() {
            let now = unix_time(self.clock.now());
            let untrusted = |source| ProxyTlsError::Untrusted {
                what: "our current certificate",
                source,
            };
            trust
                .verify_client(leaf, intermediates, now)
                .map_err(untrusted)?;
            trust
                .verify_server(leaf, intermediates, now)
                .map_err(untrusted)?;
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
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
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
