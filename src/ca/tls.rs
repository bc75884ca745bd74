//! The CA's TLS: its own serving certificate (issued by its own authority,
//! renewed at half its life and swapped in for new handshakes), the rustls
//! server configuration (TLS 1.2 and 1.3, ALPN `h2`, optional client
//! certificates verified against our roots), and the accepted connection type
//! that carries the peer's address and verified chain into each request.
//!
//! Rule enforced: a client certificate is only ever seen by the CA after
//! rustls verified its chain to one of our roots, for client authentication.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use rustls::crypto::ring as ring_provider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::server::TlsStream;

use crate::audit::{AuditLog, AuditRecord, Outcome};
use crate::ca::authorities::Authorities;
use crate::identity::{IdentityError, SpiffeId, TrustDomain};
use crate::pki::authority::{Authority, AuthorityError};
use crate::pki::bundle::parse_pem_certs;
use crate::pki::key::{KeyAlgorithm, KeyError, PrivateKey};
use crate::pki::template::LeafRequest;
use crate::time::Clock;

/// Namespace and service account of the CA's own identity.
pub const CA_NAMESPACE: &str = "meshid-system";
/// Service account of the CA's own identity.
pub const CA_SERVICE_ACCOUNT: &str = "meshid-ca";

/// Why the serving TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Generating the serving key failed.
    #[error("generating the serving key: {0}")]
    Key(#[from] KeyError),
    /// Signing the serving certificate failed.
    #[error("issuing the serving certificate: {0}")]
    Sign(#[from] AuthorityError),
    /// The CA identity could not be formed.
    #[error("CA identity: {0}")]
    Identity(#[from] IdentityError),
    /// rustls refused the key or configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    /// The serving certificate could not be audited.
    #[error("auditing the serving certificate: {0}")]
    Audit(#[from] crate::audit::AuditError),
}

/// What goes on the serving certificate.
#[derive(Debug, Clone)]
pub struct ServingIdentity {
    /// Our trust domain (the certificate's URI SAN is the CA's SPIFFE ID in it).
    pub trust_domain: TrustDomain,
    /// DNS SANs, checked by clients such as ztunnel against their CA address.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ips: Vec<std::net::IpAddr>,
    /// Lifetime.
    pub ttl: std::time::Duration,
}

/// The current serving certificate, swapped on renewal; new handshakes pick
/// up the new one, established connections keep theirs.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
    /// notBefore and notAfter of the current certificate.
    validity: RwLock<(time::OffsetDateTime, time::OffsetDateTime)>,
    /// The id of the authority that signed it.
    issuer: RwLock<String>,
}

impl ServingCert {
    /// Issues the first serving certificate.
    pub async fn issue(
        authority: &Authority,
        identity: &ServingIdentity,
        clock: &dyn Clock,
        audit: &AuditLog,
    ) -> Result<Arc<Self>, TlsError> {
        let (key, validity) = issue_certified_key(authority, identity, clock, audit).await?;
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(key)),
            validity: RwLock::new(validity),
            issuer: RwLock::new(authority.id().to_owned()),
        }))
    }

    /// Replaces the serving certificate with a fresh one.
    pub async fn renew(
        &self,
        authority: &Authority,
        identity: &ServingIdentity,
        clock: &dyn Clock,
        audit: &AuditLog,
    ) -> Result<(), TlsError> {
        let (key, validity) = issue_certified_key(authority, identity, clock, audit).await?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        *self.validity.write().unwrap_or_else(|e| e.into_inner()) = validity;
        *self.issuer.write().unwrap_or_else(|e| e.into_inner()) = authority.id().to_owned();
        Ok(())
    }

    /// The id of the authority that signed the current certificate.
    pub fn issuer_id(&self) -> String {
        self.issuer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// notBefore and notAfter of the current certificate.
    pub fn validity(&self) -> (time::OffsetDateTime, time::OffsetDateTime) {
        *self.validity.read().unwrap_or_else(|e| e.into_inner())
    }

    /// When the current certificate expires.
    pub fn not_after(&self) -> time::OffsetDateTime {
        self.validity().1
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

async fn issue_certified_key(
    authority: &Authority,
    identity: &ServingIdentity,
    clock: &dyn Clock,
    audit: &AuditLog,
) -> Result<(CertifiedKey, (time::OffsetDateTime, time::OffsetDateTime)), TlsError> {
    let id =
        SpiffeId::for_service_account(&identity.trust_domain, CA_NAMESPACE, CA_SERVICE_ACCOUNT)?;
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)?;
    let request = LeafRequest {
        id: id.clone(),
        ttl: time::Duration::try_from(identity.ttl).unwrap_or(time::Duration::DAY),
        dns_names: identity.dns_names.clone(),
        ip_addresses: identity.ips.clone(),
    };
    let signed = authority.sign_leaf(&key.public_key_der(), &request, clock)?;

    // Our own certificate is audited like any other.
    let mut record = AuditRecord::new(clock.now(), Outcome::Issued);
    record.caller = Some(format!("{id} (CA serving certificate)"));
    record.requested_identity = Some(id.to_string());
    record.granted_identity = Some(id.to_string());
    record.namespace = Some(CA_NAMESPACE.to_owned());
    record.service_account = Some(CA_SERVICE_ACCOUNT.to_owned());
    record.serial = Some(signed.serial_hex.clone());
    record.public_key_sha256 = Some(signed.public_key_sha256_hex.clone());
    record.not_before = Some(signed.not_before);
    record.not_after = Some(signed.not_after);
    record.granted_ttl_secs = i64::try_from(identity.ttl.as_secs()).ok();
    audit.record(record).await?;

    let mut chain = vec![CertificateDer::from(signed.der.clone())];
    for pem in authority.chain_pem() {
        chain.extend(parse_pem_certs(&pem).map_err(|e| TlsError::Verifier(e.to_string()))?);
    }
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.secret_pkcs8_der().to_vec()));
    let signing_key = ring_provider::sign::any_supported_type(&der)?;
    Ok((
        CertifiedKey::new(chain, signing_key),
        (signed.not_before, signed.not_after),
    ))
}

/// The rustls server configuration: TLS 1.2 + 1.3, ALPN h2, client
/// certificates optional but verified, when sent, to the roots of the
/// authorities' current bundle (a rotation changes them while running).
pub fn server_config(
    serving: Arc<ServingCert>,
    authorities: Arc<Authorities>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(ring_provider::default_provider());
    let verifier = Arc::new(BundleClientVerifier::new(authorities)?);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Verifies client certificates against the current bundle: webpki's
/// verifier, rebuilt when the snapshot's roots change.
#[derive(Debug)]
struct BundleClientVerifier {
    authorities: Arc<Authorities>,
    current: RwLock<(Vec<CertificateDer<'static>>, Arc<dyn ClientCertVerifier>)>,
}

impl BundleClientVerifier {
    fn new(authorities: Arc<Authorities>) -> Result<Self, TlsError> {
        let roots = authorities.current().roots_der().to_vec();
        let verifier = webpki_verifier(&roots)?;
        Ok(Self {
            authorities,
            current: RwLock::new((roots, verifier)),
        })
    }

    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        let snapshot = self.authorities.current();
        {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            if current.0 == snapshot.roots_der() {
                return current.1.clone();
            }
        }
        let roots = snapshot.roots_der().to_vec();
        match webpki_verifier(&roots) {
            Ok(verifier) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                    (roots, verifier.clone());
                verifier
            }
            Err(e) => {
                tracing::error!(error = %e, "the new trust bundle cannot verify client certificates; keeping the previous one");
                self.current
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .1
                    .clone()
            }
        }
    }
}

fn webpki_verifier(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(store),
        Arc::new(ring_provider::default_provider()),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))
}

impl ClientCertVerifier for BundleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // No hints: a client picks its certificate by itself.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.verifier()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

/// Per-connection facts handed to every request on it.
#[derive(Debug, Clone)]
pub struct CaConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The client's certificate chain, verified by rustls (None if it sent none).
    pub client_chain: Option<Vec<CertificateDer<'static>>>,
}

/// An accepted, handshaken TLS connection.
#[derive(Debug)]
pub struct CaTlsStream {
    inner: TlsStream<TcpStream>,
    info: CaConnInfo,
    /// Bytes already read from the client (to bound a silent client), replayed first.
    prefix: Vec<u8>,
    prefix_pos: usize,
    /// Held for the life of the connection: the connection cap.
    _slot: OwnedSemaphorePermit,
}

impl CaTlsStream {
    /// Wraps a completed handshake and the first bytes already read from it.
    pub fn new(
        inner: TlsStream<TcpStream>,
        remote: SocketAddr,
        prefix: Vec<u8>,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        let client_chain = inner
            .get_ref()
            .1
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect());
        Self {
            inner,
            info: CaConnInfo {
                remote,
                client_chain,
            },
            prefix,
            prefix_pos: 0,
            _slot: slot,
        }
    }
}

impl tonic::transport::server::Connected for CaTlsStream {
    type ConnectInfo = CaConnInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for CaTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.prefix_pos < this.prefix.len() {
            let rest = &this.prefix[this.prefix_pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.prefix_pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CaTlsStream {
    crate::io_delegate::delegate_async_write!(inner);
}
