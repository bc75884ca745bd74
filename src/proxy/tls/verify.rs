//! The SPIFFE peer verifiers and the rustls configurations built on them.
//!
//! Both verifiers are installed through rustls's `danger` APIs (custom
//! verifiers), because rustls's own would check a DNS name that an
//! X.509-SVID does not carry. They do the rest of the job webpki's verifiers
//! do, by calling webpki, and add the SPIFFE ID checks.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::NoServerSessionStorage;
use rustls::time_provider::TimeProvider;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};

use super::{spiffe_id_of, unix_time, CertStore, ClientAuth, PeerExpectation, ProxyTlsError};
use crate::identity::TrustDomain;
use crate::time::SharedClock;

/// Verifies inbound clients. Rule: the client certificate chains to the
/// store's CURRENT bundle for clientAuth and is valid now (webpki), and
/// carries exactly one URI SAN, a SPIFFE ID in `trust_domain`.
#[derive(Debug)]
pub struct SpiffeClientCertVerifier {
    store: Arc<CertStore>,
    trust_domain: TrustDomain,
    client_auth: ClientAuth,
    provider: Arc<CryptoProvider>,
}

impl SpiffeClientCertVerifier {
    /// A verifier for clients in `trust_domain`, against `store`'s bundle.
    pub fn new(store: Arc<CertStore>, trust_domain: TrustDomain, client_auth: ClientAuth) -> Self {
        Self {
            store,
            trust_domain,
            client_auth,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

/// The handshake-signature half of a rustls verifier, the same in both
/// directions: the signature made with the peer's key is checked by rustls
/// with ring's algorithms (`self.provider`). Only the certificate checks
/// differ between client and server, and they are written out in each impl.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

impl ClientCertVerifier for SpiffeClientCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.client_auth == ClientAuth::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a proxy has exactly one certificate to offer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.store
            .trust()
            .verify_client(end_entity, intermediates, now)?;
        let peer = spiffe_id_of(end_entity).map_err(ProxyTlsError::into_rustls)?;
        PeerExpectation::AnyInTrustDomain(self.trust_domain.clone())
            .check(&peer)
            .map_err(ProxyTlsError::into_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Verifies upstream servers. Rule: the server certificate chains to the
/// store's CURRENT bundle for serverAuth and is valid now (webpki), and
/// carries exactly one URI SAN, a SPIFFE ID matching the expectation.
#[derive(Debug)]
pub struct SpiffeServerCertVerifier {
    store: Arc<CertStore>,
    expected: PeerExpectation,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerCertVerifier {
    /// A verifier for servers matching `expected`, against `store`'s bundle.
    pub fn new(store: Arc<CertStore>, expected: PeerExpectation) -> Self {
        Self {
            store,
            expected,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ServerCertVerifier for SpiffeServerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The server name is deliberately ignored: SPIFFE authenticates a
        // peer by its ID (the URI SAN checked below), not by host name; an
        // X.509-SVID carries no DNS name, and the address we dialled says
        // nothing about who answers.
        self.store
            .trust()
            .verify_server(end_entity, intermediates, now)?;
        let peer = spiffe_id_of(end_entity).map_err(ProxyTlsError::into_rustls)?;
        self.expected
            .check(&peer)
            .map_err(ProxyTlsError::into_rustls)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// rustls reads time through the store's clock, so that tests can move it.
#[derive(Debug)]
struct ClockTime(SharedClock);

impl TimeProvider for ClockTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(unix_time(self.0.now()))
    }
}

/// The inbound (server) configuration: TLS 1.3 and 1.2, our SVID from
/// `store`, clients verified by [`SpiffeClientCertVerifier`] against the
/// store's current bundle and `trust_domain`; a client certificate required
/// or optional as `client_auth` says (STRICT: required). No ALPN: the proxy
/// forwards whatever the client speaks. No session resumption (see the
/// module documentation). Build one per [`ClientAuth`] and reuse it: the
/// store's swaps reach it without rebuilding.
pub fn server_config(
    store: Arc<CertStore>,
    trust_domain: TrustDomain,
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, ProxyTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let time = Arc::new(ClockTime(store.clock().clone()));
    let verifier = SpiffeClientCertVerifier::new(store.clone(), trust_domain, client_auth);
    let mut config = ServerConfig::builder_with_details(provider, time)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(ProxyTlsError::Config)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(store);
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The outbound (client) configuration: TLS 1.3 only, our SVID from `store`
/// as the client certificate, the server verified by
/// [`SpiffeServerCertVerifier`] against the store's current bundle and
/// `expected`, whatever server name the connection is made with (see
/// [`server_name_for`]). No ALPN, no session resumption.
pub fn client_config(
    store: Arc<CertStore>,
    expected: PeerExpectation,
) -> Result<Arc<ClientConfig>, ProxyTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let time = Arc::new(ClockTime(store.clock().clone()));
    let verifier = SpiffeServerCertVerifier::new(store.clone(), expected);
    let mut config = ClientConfig::builder_with_details(provider, time)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ProxyTlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(store);
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The server name to connect to an upstream with: its IP address. rustls
/// needs one, [`SpiffeServerCertVerifier`] ignores it, and an IP address
/// sends no SNI, so no host name leaks.
pub fn server_name_for(upstream: IpAddr) -> ServerName<'static> {
    ServerName::IpAddress(upstream.into())
}
