use std::io;
use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, ServerConfig};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use super::*;
use crate::pki::authority::{Authority, AuthorityConfig, CA_CERT_FILE, CA_KEY_FILE};
use crate::pki::key::KeyAlgorithm;
use crate::pki::template::LeafRequest;
use crate::time::{system_clock, Clock, SystemClock, TestClock};

const TTL: Duration = Duration::hours(1);

/// A real meshid authority in a temporary directory.
struct Ca {
    dir: tempfile::TempDir,
    authority: Authority,
    td: TrustDomain,
}

impl Ca {
    fn new(trust_domain: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new(trust_domain).unwrap();
        let cfg = AuthorityConfig {
            trust_domain: td.clone(),
            ..AuthorityConfig::default()
        };
        let authority =
            Authority::load_or_create_self_signed(dir.path(), &cfg, &SystemClock).unwrap();
        Self { dir, authority, td }
    }

    fn id(&self, sa: &str) -> SpiffeId {
        SpiffeId::for_service_account(&self.td, "shop", sa).unwrap()
    }

    /// An SVID for `ns/shop/sa/<sa>`, issued by the real signing code.
    fn issue(&self, sa: &str) -> SvidMaterial {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let request = LeafRequest::workload(self.id(sa), TTL);
        let issued = self
            .authority
            .sign_leaf(&key.public_key_der(), &request, &SystemClock)
            .unwrap();
        SvidMaterial {
            chain: vec![CertificateDer::from(issued.der)],
            key,
            bundle: self.authority.roots_der(),
            crls: Vec::new(),
        }
    }

    /// A certificate the real CA would never sign, signed with its key by rcgen.
    fn odd(
        &self,
        uris: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> SvidMaterial {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap();
        let ca_key = KeyPair::from_pem(&read(CA_KEY_FILE)).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&read(CA_CERT_FILE), ca_key).unwrap();
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let subject_key = KeyPair::try_from(key.secret_pkcs8_der()).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&subject_key, &issuer).unwrap();
        SvidMaterial {
            chain: vec![cert.der().clone()],
            key,
            bundle: self.authority.roots_der(),
            crls: Vec::new(),
        }
    }

    fn odd_now(&self, uris: &[&str]) -> SvidMaterial {
        let now = OffsetDateTime::now_utc();
        self.odd(uris, now - Duration::minutes(1), now + TTL)
    }

    fn store(&self, sa: &str) -> Arc<CertStore> {
        CertStore::new(self.id(sa), self.issue(sa), system_clock()).unwrap()
    }
}

fn inbound(store: &Arc<CertStore>, client_auth: ClientAuth) -> Arc<ServerConfig> {
    server_config(store.clone(), TrustDomain::default(), client_auth).unwrap()
}

fn outbound(store: &Arc<CertStore>, expected: PeerExpectation) -> Arc<ClientConfig> {
    client_config(store.clone(), expected).unwrap()
}

/// A client that verifies the server as ours does but presents `cert` (or nothing).
fn raw_client(server_store: &Arc<CertStore>, cert: Option<SvidMaterial>) -> Arc<ClientConfig> {
    raw_client_with(server_store, cert, rustls::DEFAULT_VERSIONS)
}

fn raw_client_with(
    server_store: &Arc<CertStore>,
    cert: Option<SvidMaterial>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let verifier = SpiffeServerCertVerifier::new(
        server_store.clone(),
        PeerExpectation::AnyInTrustDomain(TrustDomain::default()),
    );
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
    Arc::new(match cert {
        None => builder.with_no_client_auth(),
        Some(m) => {
            let key =
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(m.key.secret_pkcs8_der().to_vec()));
            builder.with_client_auth_cert(m.chain, key).unwrap()
        }
    })
}

struct Pair {
    server: server::TlsStream<DuplexStream>,
    client: client::TlsStream<DuplexStream>,
}

/// A failed connection: each side's error, if it had one.
#[derive(Debug)]
struct Refused {
    server: Option<io::Error>,
    client: Option<io::Error>,
}

impl Refused {
    fn server(&self) -> &io::Error {
        self.server
            .as_ref()
            .unwrap_or_else(|| panic!("the server did not refuse: {self:?}"))
    }

    fn client(&self) -> &io::Error {
        self.client
            .as_ref()
            .unwrap_or_else(|| panic!("the client did not refuse: {self:?}"))
    }
}

/// Handshakes over an in-memory pipe, then one round trip, so that a
/// refusal of the client certificate (which in TLS 1.3 comes after the
/// client's handshake is done) shows on both sides.
async fn connect(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Result<Pair, Refused> {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    // Deliberately not the peer's name: SPIFFE verification ignores it.
    let name = ServerName::try_from("not-the-peer.example").unwrap();
    let (accepted, connected) = tokio::join!(
        TlsAcceptor::from(server).accept(server_io),
        TlsConnector::from(client).connect(name, client_io),
    );
    match (accepted, connected) {
        (Ok(mut server), Ok(mut client)) => {
            round_trip(&mut server, &mut client).await?;
            Ok(Pair { server, client })
        }
        (server, client) => Err(Refused {
            server: server.err(),
            client: client.err(),
        }),
    }
}

async fn round_trip(
    server: &mut server::TlsStream<DuplexStream>,
    client: &mut client::TlsStream<DuplexStream>,
) -> Result<(), Refused> {
    let (s, c) = tokio::join!(
        async {
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf).await?;
            server.write_all(b"pong").await?;
            server.flush().await
        },
        async {
            client.write_all(b"ping").await?;
            client.flush().await?;
            let mut buf = [0u8; 4];
            client.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"pong");
            Ok::<_, io::Error>(())
        },
    );
    match (s, c) {
        (Ok(()), Ok(())) => Ok(()),
        (s, c) => Err(Refused {
            server: s.err(),
            client: c.err(),
        }),
    }
}

/// The rustls error inside a tokio-rustls I/O error.
fn rustls_error(e: &io::Error) -> &rustls::Error {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {e:?}"))
}

/// Our refusal reason inside a handshake error.
fn refusal(e: &io::Error) -> &ProxyTlsError {
    match rustls_error(e) {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other
            .0
            .downcast_ref::<ProxyTlsError>()
            .unwrap_or_else(|| panic!("not ours: {other:?}")),
        other => panic!("expected our refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn mtls_between_two_workloads_succeeds_and_each_side_sees_the_other() {
    let ca = Ca::new("cluster.local");
    let (backend, frontend) = (ca.store("backend"), ca.store("frontend"));
    let server = inbound(&backend, ClientAuth::Required);
    let client = outbound(&frontend, PeerExpectation::Exactly(ca.id("backend")));
    let pair = connect(server, client).await.unwrap();
    let server_saw = peer_spiffe_id(pair.server.get_ref().1).unwrap();
    let client_saw = peer_spiffe_id(pair.client.get_ref().1).unwrap();
    assert_eq!(server_saw, Some(ca.id("frontend")));
    assert_eq!(client_saw, Some(ca.id("backend")));
    let version = pair.client.get_ref().1.protocol_version();
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(pair.server.get_ref().1.alpn_protocol(), None);
}

#[tokio::test]
async fn client_without_certificate_is_refused_when_required() {
    let ca = Ca::new("cluster.local");
    let backend = ca.store("backend");
    let refused = connect(
        inbound(&backend, ClientAuth::Required),
        raw_client(&backend, None),
    )
    .await
    .err()
    .expect("a certificate-less client must be refused");
    let err = refused.server();
    assert!(
        matches!(rustls_error(err), rustls::Error::NoCertificatesPresented),
        "{err:?}"
    );
}

#[tokio::test]
async fn client_without_certificate_passes_when_optional_with_no_peer_identity() {
    let ca = Ca::new("cluster.local");
    let backend = ca.store("backend");
    let pair = connect(
        inbound(&backend, ClientAuth::Optional),
        raw_client(&backend, None),
    )
    .await
    .unwrap();
    assert_eq!(peer_spiffe_id(pair.server.get_ref().1).unwrap(), None);
}

#[tokio::test]
async fn server_accepts_a_tls12_client_with_a_valid_svid() {
    let ca = Ca::new("cluster.local");
    let backend = ca.store("backend");
    let pair = connect(
        inbound(&backend, ClientAuth::Required),
        raw_client_with(
            &backend,
            Some(ca.issue("frontend")),
            &[&rustls::version::TLS12],
        ),
    )
    .await
    .unwrap();
    let version = pair.server.get_ref().1.protocol_version();
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(
        peer_spiffe_id(pair.server.get_ref().1).unwrap(),
        Some(ca.id("frontend"))
    );
}

/// Refused in both client-auth modes: a bad certificate is never tolerated.
/// Returns the server's errors.
async fn assert_client_refused(ca: &Ca, cert: impl Fn() -> SvidMaterial) -> Vec<io::Error> {
    let backend = ca.store("backend");
    let mut errors = Vec::new();
    for auth in [ClientAuth::Required, ClientAuth::Optional] {
        let result = connect(inbound(&backend, auth), raw_client(&backend, Some(cert()))).await;
        let mut refused = result
            .err()
            .expect("the client certificate must be refused");
        refused.server();
        errors.push(refused.server.take().unwrap());
    }
    errors
}

#[tokio::test]
async fn client_certificate_from_another_trust_domain_is_refused() {
    let ca = Ca::new("cluster.local");
    let errors =
        assert_client_refused(&ca, || ca.odd_now(&["spiffe://evil.example/ns/shop/sa/x"])).await;
    for err in errors {
        assert!(
            matches!(refusal(&err), ProxyTlsError::ForeignTrustDomain { expected, .. } if expected.as_str() == "cluster.local"),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn client_certificate_from_an_unknown_ca_is_refused() {
    let ca = Ca::new("cluster.local");
    // Another root with the same name (O=cluster.local): webpki finds it by
    // name, and the signature does not verify.
    let namesake = Ca::new("cluster.local");
    for err in assert_client_refused(&ca, || namesake.issue("frontend")).await {
        let e = rustls_error(&err);
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::BadSignature)
            ),
            "{e:?}"
        );
    }
    // A root nobody here knows, under another name.
    let stranger = Ca::new("stranger.example");
    for err in assert_client_refused(&ca, || stranger.issue("frontend")).await {
        let e = rustls_error(&err);
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let ca = Ca::new("cluster.local");
    let now = OffsetDateTime::now_utc();
    let uri = ca.id("frontend").to_string();
    let expired = || ca.odd(&[&uri], now - Duration::days(2), now - Duration::days(1));
    for err in assert_client_refused(&ca, expired).await {
        let e = rustls_error(&err);
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                )
            ),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn client_certificate_expired_by_the_injected_clock_is_refused() {
    let ca = Ca::new("cluster.local");
    let clock = TestClock::new(OffsetDateTime::now_utc());
    let backend = CertStore::new(
        ca.id("backend"),
        ca.issue("backend"),
        Arc::new(clock.clone()),
    )
    .unwrap();
    clock.advance(TTL + Duration::minutes(5));
    let server = inbound(&backend, ClientAuth::Required);
    let refused = connect(server, raw_client(&backend, Some(ca.issue("frontend"))))
        .await
        .err()
        .expect("expired by the server's clock");
    let e = rustls_error(refused.server());
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn client_certificate_with_two_uri_sans_is_refused() {
    let ca = Ca::new("cluster.local");
    let (a, b) = (ca.id("frontend").to_string(), ca.id("admin").to_string());
    for err in assert_client_refused(&ca, || ca.odd_now(&[&a, &b])).await {
        assert!(
            matches!(refusal(&err), ProxyTlsError::UriSanCount { count: 2 }),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn upstream_with_an_unexpected_identity_is_refused() {
    let ca = Ca::new("cluster.local");
    let (impostor, frontend) = (ca.store("impostor"), ca.store("frontend"));
    let client = outbound(&frontend, PeerExpectation::Exactly(ca.id("backend")));
    let refused = connect(inbound(&impostor, ClientAuth::Required), client)
        .await
        .err()
        .expect("the upstream is not the expected identity");
    let err = refused.client();
    assert!(
        matches!(refusal(err), ProxyTlsError::WrongIdentity { expected, found }
            if *expected == ca.id("backend") && *found == ca.id("impostor")),
        "{err:?}"
    );
}

#[tokio::test]
async fn any_in_trust_domain_accepts_ours_and_refuses_a_foreign_domain() {
    let ca = Ca::new("cluster.local");
    let frontend = ca.store("frontend");
    let any = PeerExpectation::AnyInTrustDomain(TrustDomain::default());
    let ours = ca.store("whatever");
    connect(
        inbound(&ours, ClientAuth::Required),
        outbound(&frontend, any.clone()),
    )
    .await
    .unwrap();

    // Same CA, same bundle, but an identity in another trust domain.
    let foreign_id = SpiffeId::parse("spiffe://evil.example/ns/shop/sa/backend").unwrap();
    let material = ca.odd_now(&[&foreign_id.to_string()]);
    let foreign = CertStore::new(foreign_id, material, system_clock()).unwrap();
    let refused = connect(
        inbound(&foreign, ClientAuth::Optional),
        outbound(&frontend, any),
    )
    .await
    .err()
    .expect("a foreign trust domain is refused");
    let err = refused.client();
    assert!(
        matches!(refusal(err), ProxyTlsError::ForeignTrustDomain { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn client_config_refuses_a_tls12_only_upstream() {
    let ca = Ca::new("cluster.local");
    let backend = ca.store("backend");
    let verifier = SpiffeClientCertVerifier::new(
        backend.clone(),
        TrustDomain::default(),
        ClientAuth::Required,
    );
    let tls12_only =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(backend);
    let config = outbound(
        &ca.store("frontend"),
        PeerExpectation::AnyInTrustDomain(TrustDomain::default()),
    );
    assert!(config.alpn_protocols.is_empty());
    let refused = connect(Arc::new(tls12_only), config)
        .await
        .err()
        .expect("TLS 1.3 only");
    let server_error = rustls_error(refused.server());
    assert!(
        matches!(server_error, rustls::Error::PeerIncompatible(_)),
        "{server_error:?}"
    );
}

#[test]
fn swap_refuses_another_identity_and_keeps_the_old_certificate() {
    let ca = Ca::new("cluster.local");
    let store = ca.store("backend");
    let before = store.chain();
    let err = store.swap(ca.issue("frontend")).unwrap_err();
    assert!(
        matches!(&err, ProxyTlsError::WrongIdentity { expected, found }
            if *expected == ca.id("backend") && *found == ca.id("frontend")),
        "{err:?}"
    );
    assert_eq!(store.chain(), before);
}

#[test]
fn swap_refuses_a_key_that_does_not_match_and_keeps_the_old_certificate() {
    let ca = Ca::new("cluster.local");
    let store = ca.store("backend");
    let before = store.chain();
    let mut material = ca.issue("backend");
    material.key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    assert!(matches!(
        store.swap(material),
        Err(ProxyTlsError::KeyMismatch)
    ));
    assert_eq!(store.chain(), before);
}

#[test]
fn swap_refuses_a_certificate_that_does_not_chain_to_its_bundle() {
    let (ca, stranger) = (Ca::new("cluster.local"), Ca::new("cluster.local"));
    let store = ca.store("backend");
    let mut material = stranger.issue("backend");
    material.bundle = ca.authority.roots_der();
    let err = store.swap(material).unwrap_err();
    assert!(matches!(err, ProxyTlsError::Untrusted { .. }), "{err:?}");
}

#[tokio::test]
async fn after_a_swap_new_handshakes_get_the_new_certificate_and_old_connections_go_on() {
    let ca = Ca::new("cluster.local");
    let (backend, frontend) = (ca.store("backend"), ca.store("frontend"));
    let server = inbound(&backend, ClientAuth::Required);
    let client = outbound(&frontend, PeerExpectation::Exactly(ca.id("backend")));
    let mut old = connect(server.clone(), client.clone()).await.unwrap();
    let old_leaf = backend.chain()[0].clone();

    let renewed = ca.issue("backend");
    let new_leaf = renewed.chain[0].clone();
    backend.swap(renewed).unwrap();
    assert_ne!(old_leaf, new_leaf);

    let new = connect(server, client).await.unwrap();
    let presented = |pair: &Pair| pair.client.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(presented(&new), new_leaf);
    assert_eq!(presented(&old), old_leaf);
    round_trip(&mut old.server, &mut old.client).await.unwrap();
}

#[tokio::test]
async fn a_swapped_bundle_is_used_by_the_next_handshake() {
    let (ca, other) = (Ca::new("cluster.local"), Ca::new("cluster.local"));
    let backend = ca.store("backend");
    let server = inbound(&backend, ClientAuth::Required);
    let from_other = || raw_client(&backend, Some(other.issue("frontend")));
    assert!(connect(server.clone(), from_other()).await.is_err());

    let mut both = ca.authority.roots_der();
    both.extend(other.authority.roots_der());
    backend.swap_bundle(both.clone()).unwrap();
    assert_eq!(backend.bundle(), both);
    let pair = connect(server, from_other()).await.unwrap();
    assert_eq!(
        peer_spiffe_id(pair.server.get_ref().1).unwrap(),
        Some(other.id("frontend"))
    );
}

#[test]
fn swap_bundle_refuses_a_bundle_that_does_not_trust_our_certificate() {
    let (ca, other) = (Ca::new("cluster.local"), Ca::new("cluster.local"));
    let store = ca.store("backend");
    let err = store.swap_bundle(other.authority.roots_der()).unwrap_err();
    assert!(matches!(err, ProxyTlsError::Untrusted { .. }), "{err:?}");
    assert_eq!(store.bundle(), ca.authority.roots_der());
    assert!(matches!(
        store.swap_bundle(Vec::new()),
        Err(ProxyTlsError::EmptyBundle)
    ));
}

#[test]
fn a_root_rotation_swaps_certificate_and_bundle_together() {
    let (old_ca, new_ca) = (Ca::new("cluster.local"), Ca::new("cluster.local"));
    let store = old_ca.store("backend");
    store.swap(new_ca.issue("backend")).unwrap();
    assert_eq!(store.bundle(), new_ca.authority.roots_der());
}

#[test]
fn check_material_refuses_expired_not_yet_valid_and_empty_inputs() {
    let ca = Ca::new("cluster.local");
    let id = ca.id("backend");
    let now = OffsetDateTime::now_utc();
    let later = check_material(&ca.issue("backend"), &id, now + TTL + Duration::minutes(1));
    assert!(
        matches!(later, Err(ProxyTlsError::NotValidNow { .. })),
        "{later:?}"
    );
    let earlier = check_material(&ca.issue("backend"), &id, now - Duration::hours(2));
    assert!(
        matches!(earlier, Err(ProxyTlsError::NotValidNow { .. })),
        "{earlier:?}"
    );

    let mut material = ca.issue("backend");
    material.chain.clear();
    assert!(matches!(
        check_material(&material, &id, now),
        Err(ProxyTlsError::EmptyChain)
    ));
    let mut material = ca.issue("backend");
    material.bundle.clear();
    assert!(matches!(
        check_material(&material, &id, now),
        Err(ProxyTlsError::EmptyBundle)
    ));

    let checked = check_material(&ca.issue("backend"), &id, now).unwrap();
    assert_eq!(checked.identity(), &id);
    assert!(checked.not_after() > now);
}

#[tokio::test]
async fn a_chain_ending_with_the_root_is_accepted_and_sessions_are_never_resumed() {
    let ca = Ca::new("cluster.local");
    let mut material = ca.issue("backend");
    material.chain.extend(ca.authority.roots_der());
    let backend = CertStore::new(ca.id("backend"), material, system_clock()).unwrap();
    let server = inbound(&backend, ClientAuth::Required);
    let client = outbound(
        &ca.store("frontend"),
        PeerExpectation::Exactly(ca.id("backend")),
    );
    for _ in 0..2 {
        let pair = connect(server.clone(), client.clone()).await.unwrap();
        let kind = pair.client.get_ref().1.handshake_kind();
        assert_eq!(kind, Some(rustls::HandshakeKind::Full));
    }
}

#[test]
fn a_store_cannot_start_with_an_expired_certificate() {
    let ca = Ca::new("cluster.local");
    let clock = TestClock::new(OffsetDateTime::now_utc() + Duration::days(1));
    let result = CertStore::new(ca.id("backend"), ca.issue("backend"), Arc::new(clock));
    assert!(matches!(result, Err(ProxyTlsError::NotValidNow { .. })));
}

#[test]
fn material_reads_from_sds_pem() {
    let ca = Ca::new("cluster.local");
    let m = ca.issue("backend");
    let chain_pem = crate::pki::bundle::cert_pem(&m.chain[0]);
    let material = SvidMaterial::from_pem(
        &chain_pem,
        &m.key.secret_pkcs8_pem(),
        &ca.authority.root_bundle_pem(),
    )
    .unwrap();
    let store = CertStore::new(ca.id("backend"), material, system_clock()).unwrap();
    assert_eq!(store.chain(), m.chain);
    assert_eq!(store.identity(), &ca.id("backend"));
    assert!(store.not_after() > SystemClock.now());

    let err = SvidMaterial::from_pem("", &m.key.secret_pkcs8_pem(), "").unwrap_err();
    assert!(
        matches!(
            err,
            ProxyTlsError::Pem {
                what: "certificate chain",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn debug_output_never_shows_key_material() {
    let ca = Ca::new("cluster.local");
    let material = ca.issue("backend");
    let secret_pem = material.key.secret_pkcs8_pem().to_string();
    let secret_body: String = secret_pem.lines().nth(1).unwrap().to_owned();
    let store = ca.store("backend");
    let checked = check_material(&material, &ca.id("backend"), OffsetDateTime::now_utc()).unwrap();
    for text in [
        format!("{material:?}"),
        format!("{store:?}"),
        format!("{checked:?}"),
    ] {
        assert!(!text.contains(&secret_body), "{text}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }
}

#[test]
fn spiffe_id_of_requires_a_spiffe_uri() {
    let ca = Ca::new("cluster.local");
    let m = ca.odd_now(&["https://backend.example/"]);
    assert!(matches!(
        spiffe_id_of(&m.chain[0]),
        Err(ProxyTlsError::NotSpiffeId { .. })
    ));
    let none = ca.odd_now(&[]);
    assert!(matches!(
        spiffe_id_of(&none.chain[0]),
        Err(ProxyTlsError::UriSanCount { count: 0 })
    ));
    assert!(matches!(
        spiffe_id_of(&CertificateDer::from(vec![1, 2, 3])),
        Err(ProxyTlsError::Unparseable { .. })
    ));
}

#[test]
fn server_name_for_an_ip_sends_no_host_name() {
    let name = server_name_for(std::net::Ipv4Addr::LOCALHOST.into());
    assert!(matches!(name, ServerName::IpAddress(_)));
}

mod revocation;
