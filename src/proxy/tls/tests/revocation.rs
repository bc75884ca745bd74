//! Revocation: CRLs delivered with the material, checked on arrival, and
//! enforced by both verifiers.

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};

use super::*;
use crate::pki::crl::issuer_and_serial;

impl Ca {
    /// A CRL of this CA listing the serials of `revoked` leaves, signed with
    /// the CA's key (by rcgen, as the CA does).
    fn crl(&self, revoked: &[&CertificateDer<'_>]) -> Vec<u8> {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap();
        let ca_key = KeyPair::from_pem(&read(CA_KEY_FILE)).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&read(CA_CERT_FILE), ca_key).unwrap();
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::hours(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|cert| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&issuer_and_serial(cert).unwrap().1),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&issuer).unwrap().der().to_vec()
    }

    /// A store for `sa` holding `crls`.
    fn store_with_crls(&self, sa: &str, crls: Vec<Vec<u8>>) -> Arc<CertStore> {
        let mut material = self.issue(sa);
        material.crls = crls;
        CertStore::new(self.id(sa), material, system_clock()).unwrap()
    }
}

fn store_of(ca: &Ca, sa: &str, material: SvidMaterial) -> Arc<CertStore> {
    CertStore::new(ca.id(sa), material, system_clock()).unwrap()
}

fn is_revoked(e: &io::Error) -> bool {
    matches!(
        rustls_error(e),
        rustls::Error::InvalidCertificate(CertificateError::Revoked)
    )
}

#[tokio::test]
async fn the_inbound_verifier_refuses_a_revoked_client_and_accepts_the_others() {
    let ca = Ca::new("cluster.local");
    let (revoked, kept) = (ca.issue("frontend"), ca.issue("other"));
    let backend = ca.store_with_crls("backend", vec![ca.crl(&[&revoked.chain[0]])]);
    assert_eq!(backend.revoked().len(), 1);
    let revoked = store_of(&ca, "frontend", revoked);
    let kept = store_of(&ca, "other", kept);

    for auth in [ClientAuth::Required, ClientAuth::Optional] {
        let refused = connect(
            inbound(&backend, auth),
            outbound(&revoked, PeerExpectation::Exactly(ca.id("backend"))),
        )
        .await
        .err()
        .expect("a revoked client must be refused");
        assert!(is_revoked(refused.server()), "{refused:?}");
    }
    let pair = connect(
        inbound(&backend, ClientAuth::Required),
        outbound(&kept, PeerExpectation::Exactly(ca.id("backend"))),
    )
    .await
    .unwrap();
    assert_eq!(
        peer_spiffe_id(pair.server.get_ref().1).unwrap(),
        Some(ca.id("other"))
    );
}

#[tokio::test]
async fn the_outbound_verifier_refuses_a_revoked_server() {
    let ca = Ca::new("cluster.local");
    let backend_material = ca.issue("backend");
    let crl = ca.crl(&[&backend_material.chain[0]]);
    let backend = store_of(&ca, "backend", backend_material);
    let frontend = ca.store_with_crls("frontend", vec![crl]);
    let refused = connect(
        inbound(&backend, ClientAuth::Required),
        outbound(&frontend, PeerExpectation::Exactly(ca.id("backend"))),
    )
    .await
    .err()
    .expect("a revoked server must be refused");
    assert!(is_revoked(refused.client()), "{refused:?}");

    // The same pair without the CRL connects.
    let frontend = ca.store("frontend");
    connect(
        inbound(&backend, ClientAuth::Required),
        outbound(&frontend, PeerExpectation::Exactly(ca.id("backend"))),
    )
    .await
    .unwrap();
}

#[test]
fn a_crl_in_our_authoritys_name_but_not_signed_by_its_key_refuses_the_material() {
    let ca = Ca::new("cluster.local");
    let stranger = Ca::new("cluster.local");
    let store = ca.store("backend");
    let victim = ca.issue("frontend");
    // The stranger's CA has the same name as ours: only the signature differs.
    let mut material = ca.issue("backend");
    material.crls = vec![stranger.crl(&[&victim.chain[0]])];
    let err = store.swap(material).unwrap_err();
    assert!(
        matches!(
            &err,
            ProxyTlsError::UnverifiedCrl {
                index: 1,
                source: CrlError::BadSignature { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("CRL #1"), "{err}");
    // The material was refused whole: nothing is revoked.
    assert!(store.revoked().is_empty());

    let mut material = ca.issue("backend");
    material.crls = vec![b"not a CRL".to_vec()];
    let err = store.swap(material).unwrap_err();
    assert!(
        matches!(
            &err,
            ProxyTlsError::UnverifiedCrl {
                source: CrlError::Unparseable { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn our_own_revoked_certificate_is_still_served() {
    let ca = Ca::new("cluster.local");
    let store = ca.store("backend");
    let mut material = ca.issue("backend");
    material.crls = vec![ca.crl(&[&material.chain[0]])];
    let leaf = material.chain[0].clone();
    store.swap(material).unwrap();
    assert_eq!(store.chain()[0], leaf);
    assert!(store.revoked().contains_cert(&leaf));
}

#[test]
fn a_swap_publishes_the_revoked_set_only_when_it_changes() {
    let ca = Ca::new("cluster.local");
    let store = ca.store("backend");
    let mut rx = store.revocations();
    assert!(rx.borrow_and_update().is_empty());
    let victim = ca.issue("frontend");
    let crl = ca.crl(&[&victim.chain[0]]);

    let mut material = ca.issue("backend");
    material.crls = vec![crl.clone()];
    store.swap(material).unwrap();
    assert!(rx.has_changed().unwrap());
    assert!(rx.borrow_and_update().contains_cert(&victim.chain[0]));

    // The same CRL again (a certificate renewal): no change to act on.
    let mut material = ca.issue("backend");
    material.crls = vec![crl];
    store.swap(material).unwrap();
    assert!(!rx.has_changed().unwrap());

    // swap_bundle keeps the CRLs that still verify against the new bundle.
    store.swap_bundle(ca.authority.roots_der()).unwrap();
    assert!(store.revoked().contains_cert(&victim.chain[0]));
    assert!(!rx.has_changed().unwrap());
}

#[test]
fn a_crl_of_an_authority_this_proxy_holds_no_certificate_of_is_taken_from_the_agent() {
    // An intermediate authority of a plug-in CA: its name is in neither the
    // bundle nor our chain; the agent checked its CRL.
    let ca = Ca::new("cluster.local");
    let intermediate = Ca::new("other.example");
    let store = ca.store("backend");
    let victim = intermediate.issue("frontend");
    let mut material = ca.issue("backend");
    material.crls = vec![intermediate.crl(&[&victim.chain[0]])];
    store.swap(material).unwrap();
    assert_eq!(store.revoked().len(), 1);
    assert!(store.revoked().contains_cert(&victim.chain[0]));
}
