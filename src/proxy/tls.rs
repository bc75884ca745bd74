//! rustls configurations for SPIFFE mTLS between proxies, with certificates
//! hot-swapped on rotation.
//!
//! - [`SvidMaterial`] is what the node agent delivers (SDS `default` and
//!   `ROOTCA`); [`check_material`] checks it before anything uses it.
//! - [`CertStore`] holds the current SVID and trust bundle; it answers rustls
//!   for our certificate on both sides and feeds the verifiers their bundle.
//!   [`CertStore::swap`] changes both for new handshakes only.
//! - [`server_config`] (inbound) and [`client_config`] (outbound) build the
//!   rustls configurations around a store.
//! - [`peer_spiffe_id`] reads the verified peer identity off a finished connection.
//!
//! Rules enforced (X.509-SVID, SPIFFE X.509-SVID specification section 5):
//! - a peer certificate must chain to the CURRENT trust bundle (webpki, with
//!   the clientAuth or serverAuth usage and the validity period checked) and
//!   carry exactly one URI SAN, a SPIFFE ID: in our trust domain (inbound) or
//!   the expected identity (outbound);
//! - peers are authenticated by SPIFFE ID, never by DNS name;
//! - a certificate of ours is only used after it is checked: it carries our
//!   public key, exactly our identity, chains to the bundle, and is valid now;
//! - sessions are never resumed: a resumed session would skip the checks
//!   above (and outlive a certificate or a root removed from the bundle);
//! - a peer whose leaf certificate is listed by a CRL is refused. A CRL is
//!   believed only once it verified ([`verify_crl`](crate::pki::crl::verify_crl))
//!   against a root of the bundle or an intermediate of our own chain; a CRL
//!   that verifies against none refuses the whole material. The check per
//!   handshake is a hash lookup; CRL signatures are verified once, on arrival.
//!   Our own certificate being revoked does not stop the proxy (the agent
//!   replaces it at once): it is logged.
//!
//! All time checks use the store's injected [`Clock`](crate::time::Clock).

use std::sync::Arc;

use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::identity::{IdentityError, SpiffeId, TrustDomain};
use crate::pki::bundle::{parse_pem_certs, BundleError};
use crate::pki::crl::{issuer_and_serial, issuer_and_serial_raw, serial_hex, verify_crl};
use crate::pki::crl::{CrlError, RevokedSet, VerifiedCrl};
use crate::pki::key::{KeyError, PrivateKey};

mod store;
mod verify;

pub use store::CertStore;
pub use verify::{
    client_config, server_config, server_name_for, SpiffeClientCertVerifier,
    SpiffeServerCertVerifier,
};

/// Why a certificate, key, bundle or peer was refused, or a configuration
/// could not be built. Each variant says what to look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyTlsError {
    /// The certificate chain has no certificate.
    #[error("the certificate chain is empty")]
    EmptyChain,
    /// The trust bundle has no certificate.
    #[error("the trust bundle is empty")]
    EmptyBundle,
    /// A certificate does not parse.
    #[error("{what} does not parse as an X.509 certificate: {reason}")]
    Unparseable {
        /// Which certificate: "leaf certificate", "peer certificate", …
        what: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// PEM text (certificate chain or bundle) could not be read.
    #[error("reading the {what} PEM: {source}")]
    Pem {
        /// "certificate chain" or "trust bundle".
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: BundleError,
    },
    /// The private key could not be read.
    #[error("reading the private key: {0}")]
    KeyPem(#[source] KeyError),
    /// The leaf certificate does not carry our private key's public key.
    #[error("the certificate's public key does not match our private key")]
    KeyMismatch,
    /// Not exactly one URI SAN.
    #[error("certificate has {count} URI SANs; an X.509-SVID has exactly one")]
    UriSanCount {
        /// How many there are.
        count: usize,
    },
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("certificate URI SAN {uri:?} is not a SPIFFE ID: {source}")]
    NotSpiffeId {
        /// The URI in the certificate.
        uri: String,
        /// What is wrong with it.
        #[source]
        source: IdentityError,
    },
    /// The certificate is for another identity than the one required.
    #[error("certificate is for {found}, expected {expected}")]
    WrongIdentity {
        /// The identity required.
        expected: SpiffeId,
        /// The identity in the certificate.
        found: SpiffeId,
    },
    /// The certificate's identity is outside the required trust domain.
    #[error("certificate is for {found}, which is not in trust domain {expected}")]
    ForeignTrustDomain {
        /// The trust domain required.
        expected: TrustDomain,
        /// The identity in the certificate.
        found: SpiffeId,
    },
    /// The certificate is expired or not yet valid.
    #[error("certificate is not valid at {now}: valid from {not_before} to {not_after}")]
    NotValidNow {
        /// When checked.
        now: OffsetDateTime,
        /// The certificate's notBefore.
        not_before: OffsetDateTime,
        /// The certificate's notAfter.
        not_after: OffsetDateTime,
    },
    /// The certificate does not chain to the trust bundle (webpki's reason).
    #[error("{what} does not chain to the trust bundle: {source}")]
    Untrusted {
        /// Which certificate.
        what: &'static str,
        /// webpki's reason, through rustls (unknown issuer, expired, bad usage…).
        #[source]
        source: rustls::Error,
    },
    /// The trust bundle cannot be used as trust anchors.
    #[error("the trust bundle cannot be used: {reason}")]
    BadBundle {
        /// Which certificate and why, or the verifier builder's complaint.
        reason: String,
    },
    /// rustls refused our key or a configuration.
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    /// CRL PEM text could not be read.
    #[error("reading the CRLs: {0}")]
    CrlPem(#[source] CrlError),
    /// A CRL verifies against no root of the bundle and no intermediate of our chain.
    #[error(
        "CRL #{index} (issuer \"{issuer}\") verifies against no root of the trust bundle \
         and no intermediate of our certificate chain: {source}"
    )]
    UnverifiedCrl {
        /// 1-based position of the CRL in the material.
        index: usize,
        /// The issuer the CRL names ("?" when it does not parse).
        issuer: String,
        /// Why it did not verify (against the certificate of that name
        /// when there is one).
        #[source]
        source: CrlError,
    },
}

impl ProxyTlsError {
    /// As a rustls certificate error, so that rustls aborts the handshake and
    /// the reason travels with the error (`CertificateError::Other`).
    pub(crate) fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(self),
        )))
    }
}

/// Whether the inbound handshake requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAuth {
    /// STRICT: a client without a certificate is refused in the handshake.
    Required,
    /// PERMISSIVE and AUDIT: a client may send none; a certificate that is
    /// sent is verified all the same, and a bad one fails the handshake.
    Optional,
}

/// Which server identity an outbound connection accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerExpectation {
    /// Exactly this SPIFFE ID.
    Exactly(SpiffeId),
    /// Any SPIFFE ID in this trust domain.
    AnyInTrustDomain(TrustDomain),
}

impl PeerExpectation {
    /// Checks a peer's (already chain-verified) identity against the expectation.
    pub fn check(&self, found: &SpiffeId) -> Result<(), ProxyTlsError> {
        match self {
            Self::Exactly(expected) if expected == found => Ok(()),
            Self::Exactly(expected) => Err(ProxyTlsError::WrongIdentity {
                expected: expected.clone(),
                found: found.clone(),
            }),
            Self::AnyInTrustDomain(td) if found.is_member_of(td) => Ok(()),
            Self::AnyInTrustDomain(td) => Err(ProxyTlsError::ForeignTrustDomain {
                expected: td.clone(),
                found: found.clone(),
            }),
        }
    }
}

/// An SVID as delivered by the node agent: not yet checked. No `Clone` (it
/// holds a private key); `Debug` never shows the key.
#[derive(Debug)]
pub struct SvidMaterial {
    /// Our certificate first, then the intermediates (a root at the end is harmless).
    pub chain: Vec<CertificateDer<'static>>,
    /// Our private key.
    pub key: PrivateKey,
    /// The trust bundle: the roots that peers' certificates must chain to.
    pub bundle: Vec<CertificateDer<'static>>,
    /// CRLs, DER. Each must verify against a root of `bundle` or an
    /// intermediate of `chain`. Empty: nothing is revoked.
    pub crls: Vec<Vec<u8>>,
}

impl SvidMaterial {
    /// Reads the material from PEM, as SDS delivers it (`default`: chain and
    /// key; `ROOTCA`: bundle).
    pub fn from_pem(
        chain_pem: &str,
        key_pem: &str,
        bundle_pem: &str,
    ) -> Result<Self, ProxyTlsError> {
        let pem = |what| move |source| ProxyTlsError::Pem { what, source };
        Ok(Self {
            chain: parse_pem_certs(chain_pem).map_err(pem("certificate chain"))?,
            key: PrivateKey::from_pem(key_pem).map_err(ProxyTlsError::KeyPem)?,
            bundle: parse_pem_certs(bundle_pem).map_err(pem("trust bundle"))?,
            crls: Vec::new(),
        })
    }
}

/// A trust bundle ready for verification: the roots, the webpki client
/// verifier built from them, and the revoked certificates of the verified
/// CRLs; rebuilt whenever the bundle or the CRLs change.
#[derive(Debug)]
pub(crate) struct Trust {
    bundle: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    client: Arc<dyn ClientCertVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
    crls: Vec<VerifiedCrl>,
    revoked: Arc<RevokedSet>,
}

impl Trust {
    /// A bundle and CRLs. Rule: every CRL verifies against a root of
    /// `bundle` or one of `intermediates` (our own chain, which chains to
    /// the bundle); the first that does not refuses the whole.
    pub(crate) fn with_crls(
        bundle: Vec<CertificateDer<'static>>,
        crls: &[Vec<u8>],
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Arc<Self>, ProxyTlsError> {
        let verified = crls
            .iter()
            .enumerate()
            .map(|(i, crl)| verify_one_crl(i + 1, crl, &bundle, intermediates))
            .collect::<Result<Vec<_>, _>>()?;
        Self::build(bundle, verified)
    }

    fn build(
        bundle: Vec<CertificateDer<'static>>,
        crls: Vec<VerifiedCrl>,
    ) -> Result<Arc<Self>, ProxyTlsError> {
        if bundle.is_empty() {
            return Err(ProxyTlsError::EmptyBundle);
        }
        let mut roots = RootCertStore::empty();
        for (index, cert) in bundle.iter().enumerate() {
            roots
                .add(cert.clone())
                .map_err(|e| ProxyTlsError::BadBundle {
                    reason: format!("certificate #{}: {e}", index + 1),
                })?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
            .build()
            .map_err(|e| ProxyTlsError::BadBundle {
                reason: e.to_string(),
            })?;
        let revoked = Arc::new(RevokedSet::from_crls(&crls));
        Ok(Arc::new(Self {
            bundle,
            roots,
            client,
            algorithms,
            crls,
            revoked,
        }))
    }

    /// The same CRLs over another bundle: those that no longer verify
    /// against it (their authority left the bundle, so its certificates
    /// fail chain verification anyway) are dropped.
    pub(crate) fn rebundled(
        &self,
        bundle: Vec<CertificateDer<'static>>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Arc<Self>, ProxyTlsError> {
        let kept = self
            .crls
            .iter()
            .enumerate()
            .filter_map(|(i, crl)| verify_one_crl(i + 1, crl.der(), &bundle, intermediates).ok())
            .collect();
        Self::build(bundle, kept)
    }

    /// The bundle, as given.
    pub(crate) fn bundle(&self) -> &[CertificateDer<'static>] {
        &self.bundle
    }

    /// The revoked certificates.
    pub(crate) fn revoked(&self) -> &Arc<RevokedSet> {
        &self.revoked
    }

    /// webpki: `leaf` chains to a root through `intermediates`, is valid at
    /// `now`, and may be used for clientAuth; and it is not revoked.
    pub(crate) fn verify_client(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        self.chain_client(leaf, intermediates, now)?;
        self.check_not_revoked(leaf)
    }

    /// webpki: `leaf` chains to a root through `intermediates`, is valid at
    /// `now`, and may be used for serverAuth; and it is not revoked.
    /// Deliberately no host-name check: SPIFFE peers are authenticated by
    /// the URI SAN, checked by the caller.
    pub(crate) fn verify_server(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        self.chain_server(leaf, intermediates, now)?;
        self.check_not_revoked(leaf)
    }

    fn chain_client(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        self.client
            .verify_client_cert(leaf, intermediates, now)
            .map(|_| ())
    }

    fn chain_server(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let parsed = ParsedCertificate::try_from(leaf)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )
    }

    /// Rule: a leaf listed by a verified CRL is refused. A hash lookup on
    /// the leaf's issuer name and serial (read by a DER walk, no parse).
    fn check_not_revoked(&self, leaf: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if self.revoked.is_empty() {
            return Ok(());
        }
        match issuer_and_serial_raw(leaf) {
            Some((issuer, serial)) if self.revoked.contains(issuer, serial) => {
                let peer = spiffe_id_of(leaf).map_or_else(|_| "?".to_owned(), |id| id.to_string());
                tracing::warn!(%peer, serial = %serial_hex(serial), issuer = %name_of(issuer),
                    "peer certificate refused: it is revoked");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Revoked,
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Verifies CRL #`index` against the roots of `bundle`, then `intermediates`.
fn verify_one_crl(
    index: usize,
    crl: &[u8],
    bundle: &[CertificateDer<'_>],
    intermediates: &[CertificateDer<'_>],
) -> Result<VerifiedCrl, ProxyTlsError> {
    let mut named: Option<CrlError> = None;
    let mut last: Option<CrlError> = None;
    for candidate in bundle.iter().chain(intermediates) {
        match verify_crl(crl, candidate) {
            Ok(verified) => return Ok(verified),
            // Not this certificate's CRL: keep looking.
            Err(e @ CrlError::WrongIssuer { .. }) => last = Some(e),
            // The certificate of that name refused it: the reason to report.
            Err(e) => named = Some(e),
        }
    }
    let issuer = crl_issuer_name(crl);
    if named.is_none() && last.is_some() {
        // No certificate of its issuer's name here: the CRL of an
        // intermediate authority (plug-in CA) that our own chain does not
        // hold. The agent checked its signature against that authority's
        // certificate (agent::trust) and is trusted with the bundle itself;
        // its entries only match certificates of that issuer.
        tracing::debug!(%issuer, "CRL of an authority outside the bundle and our chain: taken as the agent checked it");
        return crate::pki::crl::read_crl_verified_elsewhere(crl).map_err(|source| {
            ProxyTlsError::UnverifiedCrl {
                index,
                issuer: issuer.clone(),
                source,
            }
        });
    }
    let source = named.or(last).unwrap_or_else(|| CrlError::WrongIssuer {
        crl_issuer: issuer.clone(),
        cert_subject: "(no certificate)".to_owned(),
    });
    Err(ProxyTlsError::UnverifiedCrl {
        index,
        issuer,
        source,
    })
}

fn crl_issuer_name(crl: &[u8]) -> String {
    use x509_parser::revocation_list::CertificateRevocationList;
    CertificateRevocationList::from_der(crl)
        .map_or_else(|_| "?".to_owned(), |(_, crl)| crl.issuer().to_string())
}

/// A DER Name, printed (for logs).
fn name_of(raw: &[u8]) -> String {
    x509_parser::x509::X509Name::from_der(raw)
        .map_or_else(|_| "?".to_owned(), |(_, name)| name.to_string())
}

/// The (issuer name DER, serial key) of the leaf a finished handshake's
/// peer presented, to match later CRLs against; `None` without one.
pub(crate) fn peer_cert_key(conn: &rustls::CommonState) -> Option<PeerCertKey> {
    let leaf = conn.peer_certificates()?.first()?;
    issuer_and_serial(leaf)
}

/// A peer leaf certificate's (issuer name DER, serial key).
pub(crate) type PeerCertKey = (Vec<u8>, Vec<u8>);

/// Resolves once `key` is revoked in the set `revocations` carries (at
/// once if it already is); never when `key` is `None` or the store is gone.
pub(crate) async fn until_revoked(
    mut revocations: tokio::sync::watch::Receiver<Arc<RevokedSet>>,
    key: Option<PeerCertKey>,
) {
    let Some((issuer, serial)) = key else {
        return std::future::pending().await;
    };
    loop {
        if revocations.borrow_and_update().contains(&issuer, &serial) {
            return;
        }
        if revocations.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// An SVID that passed [`check_material`], ready to be served. `Debug`
/// shows whose it is and until when, never the key.
#[derive(Clone)]
pub struct VerifiedSvid {
    identity: SpiffeId,
    not_after: OffsetDateTime,
    certified: Arc<CertifiedKey>,
    trust: Arc<Trust>,
}

impl std::fmt::Debug for VerifiedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedSvid")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl VerifiedSvid {
    /// The identity in the certificate (the one that was expected).
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// When the certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}

/// Checks an SVID of ours before use. Rule: the leaf carries `material.key`'s
/// public key, exactly one URI SAN which is `expected`, is valid at `now`,
/// and chains to `material.bundle` through the rest of `material.chain` for
/// both clientAuth and serverAuth (webpki), since the proxy uses it for both;
/// every CRL of `material.crls` verifies against a root of the bundle or an
/// intermediate of the chain. Our leaf being revoked is logged, not refused:
/// the proxy keeps serving until the agent delivers the replacement.
pub fn check_material(
    material: &SvidMaterial,
    expected: &SpiffeId,
    now: OffsetDateTime,
) -> Result<VerifiedSvid, ProxyTlsError> {
    let (leaf, intermediates) = material
        .chain
        .split_first()
        .ok_or(ProxyTlsError::EmptyChain)?;
    let cert = parse(leaf, "leaf certificate")?;
    if cert.public_key().raw != material.key.public_key_der().as_slice() {
        return Err(ProxyTlsError::KeyMismatch);
    }
    let found = spiffe_id_in(&cert)?;
    PeerExpectation::Exactly(expected.clone()).check(&found)?;
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if now < not_before || now > not_after {
        return Err(ProxyTlsError::NotValidNow {
            now,
            not_before,
            not_after,
        });
    }

    // Both usages: the proxy serves inbound and originates outbound with it.
    let trust = Trust::with_crls(material.bundle.clone(), &material.crls, intermediates)?;
    let at = unix_time(now);
    let untrusted = |source| ProxyTlsError::Untrusted {
        what: "our certificate",
        source,
    };
    trust
        .chain_client(leaf, intermediates, at)
        .map_err(untrusted)?;
    trust
        .chain_server(leaf, intermediates, at)
        .map_err(untrusted)?;
    warn_if_revoked(&trust, leaf, &found);

    // Borrowed: no copy of the secret outside its zeroizing owner.
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(material.key.secret_pkcs8_der()));
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(ProxyTlsError::Config)?;
    let certified = CertifiedKey::new(material.chain.clone(), signing_key);
    Ok(VerifiedSvid {
        identity: found,
        not_after,
        certified: Arc::new(certified),
        trust,
    })
}

/// Logs (warn) when our own certificate is listed by the CRLs of `trust`.
pub(crate) fn warn_if_revoked(trust: &Trust, leaf: &CertificateDer<'_>, identity: &SpiffeId) {
    if let Some((issuer, serial)) = issuer_and_serial_raw(leaf) {
        if trust.revoked().contains(issuer, serial) {
            tracing::warn!(%identity, serial = %serial_hex(serial), issuer = %name_of(issuer),
                "our own certificate is revoked; it stays in use until the agent delivers its replacement (peers will refuse it)");
        }
    }
}

/// The SPIFFE ID of a certificate. Rule: exactly one URI SAN, which parses
/// as a SPIFFE ID. Checks nothing else: verify the chain first.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, ProxyTlsError> {
    spiffe_id_in(&parse(cert, "peer certificate")?)
}

/// The verified SPIFFE ID of the peer of a finished handshake (server or
/// client side: pass `&conn` of a `rustls::ServerConnection` or
/// `ClientConnection`, or `tls_stream.get_ref().1`). `None` when the peer
/// sent no certificate (an inbound client under [`ClientAuth::Optional`]).
///
/// Only meaningful on connections built from [`server_config`] or
/// [`client_config`]: their verifiers already refused any certificate
/// without exactly one SPIFFE ID.
pub fn peer_spiffe_id(conn: &rustls::CommonState) -> Result<Option<SpiffeId>, ProxyTlsError> {
    match conn.peer_certificates().and_then(|chain| chain.first()) {
        Some(leaf) => spiffe_id_of(leaf).map(Some),
        None => Ok(None),
    }
}

fn parse<'a>(der: &'a [u8], what: &'static str) -> Result<X509Certificate<'a>, ProxyTlsError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(ProxyTlsError::Unparseable {
            what,
            reason: format!("{} trailing bytes", rest.len()),
        }),
        Err(e) => Err(ProxyTlsError::Unparseable {
            what,
            reason: e.to_string(),
        }),
    }
}

fn spiffe_id_in(cert: &X509Certificate<'_>) -> Result<SpiffeId, ProxyTlsError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| ProxyTlsError::Unparseable {
            what: "certificate SubjectAltName",
            reason: e.to_string(),
        })?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] => SpiffeId::parse(uri).map_err(|source| ProxyTlsError::NotSpiffeId {
            uri: (*uri).to_owned(),
            source,
        }),
        _ => Err(ProxyTlsError::UriSanCount { count: uris.len() }),
    }
}

/// `now` as rustls counts time (seconds since the epoch; before it, the epoch).
pub(crate) fn unix_time(now: OffsetDateTime) -> UnixTime {
    let secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests;
