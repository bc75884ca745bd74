use std::os::unix::fs::PermissionsExt as _;

use rcgen::{CertificateParams, DnType, IsCa};
use tempfile::TempDir;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;

use super::*;
use crate::pki::csr::validate_csr;
use crate::pki::fixtures::{clock, id, now, rsa_2048, TestCa};
use crate::pki::key::csr_pem;
use crate::time::TestClock;
use std::fs;

fn cfg() -> AuthorityConfig {
    AuthorityConfig::default()
}

fn spki_of(der: &[u8]) -> Vec<u8> {
    X509Certificate::from_der(der)
        .unwrap()
        .1
        .public_key()
        .raw
        .to_vec()
}

fn write(dir: &Path, name: &str, contents: &str) {
    fs::write(dir.join(name), contents).unwrap();
}

fn leaf_for(authority: &Authority, clock: &dyn Clock) -> IssuedCert {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let req = LeafRequest::workload(id("a", "x"), Duration::hours(24));
    authority
        .sign_leaf(&key.public_key_der(), &req, clock)
        .unwrap()
}

#[test]
fn authority_is_shareable_across_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Authority>();
}

#[test]
fn first_start_creates_a_root_and_later_starts_load_it() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let clock = clock();
    let first = Authority::load_or_create_self_signed(&data, &cfg(), &clock).unwrap();
    let key_mode = fs::metadata(data.join(CA_KEY_FILE))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    let cert_mode = fs::metadata(data.join(CA_CERT_FILE))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!((key_mode, cert_mode), (0o600, 0o644));
    assert!(first.chain_pem().is_empty());
    assert_eq!(first.roots_pem().len(), 1);
    assert_eq!(first.signer_not_after(), first.root_not_after());
    assert!(!format!("{first:?}").contains("PRIVATE"));

    clock.advance(Duration::days(30));
    let second = Authority::load_or_create_self_signed(&data, &cfg(), &clock).unwrap();
    assert_eq!(second.root_bundle_pem(), first.root_bundle_pem());
    let issued = leaf_for(&second, &clock);
    let root_spki = spki_of(&first.roots_der()[0]);
    validate::check_leaf(&issued.der, &id("a", "x"), &root_spki).unwrap();
}

#[test]
fn the_self_signed_root_follows_the_profile() {
    let dir = TempDir::new().unwrap();
    let authority = Authority::load_or_create_self_signed(dir.path(), &cfg(), &clock()).unwrap();
    let der = &authority.roots_der()[0];
    let (_, root) = X509Certificate::from_der(der).unwrap();
    assert_eq!(root.subject().to_string(), "O=cluster.local");
    assert!(root.is_ca());
    let ku = root.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    assert!(root.extensions().iter().any(|e| matches!(
        e.parsed_extension(),
        x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(_)
    )));
    assert_eq!(
        root.validity().not_after.to_datetime(),
        now() + ROOT_VALIDITY
    );
    assert!(root.raw_serial().len() <= 20 && root.raw_serial()[0] & 0x80 == 0);
    assert_eq!(authority.root_not_after(), now() + ROOT_VALIDITY);
}

#[test]
fn p384_roots_are_selectable() {
    let dir = TempDir::new().unwrap();
    let cfg = AuthorityConfig {
        key_algorithm: KeyAlgorithm::EcdsaP384,
        ..cfg()
    };
    let authority = Authority::load_or_create_self_signed(dir.path(), &cfg, &clock()).unwrap();
    let key =
        PrivateKey::from_pem(&fs::read_to_string(dir.path().join(CA_KEY_FILE)).unwrap()).unwrap();
    assert_eq!(key.algorithm(), KeyAlgorithm::EcdsaP384);
    leaf_for(&authority, &clock());
}

#[test]
fn leaves_take_only_the_public_key_from_the_csr() {
    let dir = TempDir::new().unwrap();
    let authority = Authority::load_or_create_self_signed(dir.path(), &cfg(), &clock()).unwrap();
    // A CSR with a subject and extra wishes that validation tolerates.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "admin");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
    let csr = params.serialize_request(&key).unwrap();
    let validated = validate_csr(csr.der(), &id("a", "x")).unwrap();
    let req = LeafRequest::workload(id("a", "x"), Duration::hours(24));
    let issued = authority
        .sign_leaf(validated.public_key_der(), &req, &clock())
        .unwrap();
    let (_, leaf) = X509Certificate::from_der(&issued.der).unwrap();
    assert_eq!(leaf.subject().iter_rdn().count(), 0);
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
    assert!(leaf.subject_alternative_name().unwrap().unwrap().critical);
    assert_eq!(
        issued.public_key_sha256_hex,
        validated.public_key_sha256_hex()
    );
    assert_eq!(issued.serial_hex, crate::pki::csr::hex(leaf.raw_serial()));
    assert_eq!(issued.not_before, now() - DEFAULT_CLOCK_SKEW);
    assert_eq!(issued.not_after, now() + Duration::hours(24));
    assert!(issued.pem.starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn rsa_leaves_get_key_encipherment_and_short_ttls_a_small_backdate() {
    let dir = TempDir::new().unwrap();
    let authority = Authority::load_or_create_self_signed(dir.path(), &cfg(), &clock()).unwrap();
    let csr = csr_pem(rsa_2048(), &id("a", "x")).unwrap();
    let validated = validate_csr(csr.as_bytes(), &id("a", "x")).unwrap();
    let req = LeafRequest::workload(id("a", "x"), Duration::seconds(100));
    let issued = authority
        .sign_leaf(validated.public_key_der(), &req, &clock())
        .unwrap();
    let (_, leaf) = X509Certificate::from_der(&issued.der).unwrap();
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert_eq!(issued.not_before, now() - Duration::seconds(10));
}

#[test]
fn refuses_to_certify_a_weak_key() {
    use rsa::pkcs8::EncodePublicKey as _;
    let dir = TempDir::new().unwrap();
    let authority = Authority::load_or_create_self_signed(dir.path(), &cfg(), &clock()).unwrap();
    let weak = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
    let spki = weak.to_public_key().to_public_key_der().unwrap();
    let req = LeafRequest::workload(id("a", "x"), Duration::hours(1));
    let err = authority
        .sign_leaf(spki.as_bytes(), &req, &clock())
        .unwrap_err();
    assert!(
        matches!(err, AuthorityError::UnsupportedPublicKey { .. }),
        "{err}"
    );
}

#[test]
fn half_written_state_is_an_error_naming_the_file() {
    let dir = TempDir::new().unwrap();
    Authority::load_or_create_self_signed(dir.path(), &cfg(), &clock()).unwrap();
    fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
    let err = Authority::load_or_create_self_signed(dir.path(), &cfg(), &clock()).unwrap_err();
    assert!(
        matches!(&err, AuthorityError::HalfWritten { missing, .. } if missing.ends_with(CA_CERT_FILE))
    );
    assert!(err.to_string().contains("ca-cert.pem"), "{err}");

    let dir = TempDir::new().unwrap();
    Authority::load_or_create_self_signed(dir.path(), &cfg(), &clock()).unwrap();
    fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
    let err = Authority::load_or_create_self_signed(dir.path(), &cfg(), &clock()).unwrap_err();
    assert!(
        matches!(&err, AuthorityError::HalfWritten { missing, .. } if missing.ends_with(CA_KEY_FILE))
    );
}

#[test]
fn self_signed_key_from_another_ca_is_refused() {
    let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    Authority::load_or_create_self_signed(a.path(), &cfg(), &clock()).unwrap();
    Authority::load_or_create_self_signed(b.path(), &cfg(), &clock()).unwrap();
    fs::copy(b.path().join(CA_KEY_FILE), a.path().join(CA_KEY_FILE)).unwrap();
    let err = Authority::load_or_create_self_signed(a.path(), &cfg(), &clock()).unwrap_err();
    assert!(matches!(err, AuthorityError::KeyMismatch { .. }), "{err}");
}

#[test]
fn an_expired_self_signed_root_stops_start_up() {
    let dir = TempDir::new().unwrap();
    Authority::load_or_create_self_signed(dir.path(), &cfg(), &clock()).unwrap();
    let later = TestClock::new(now() + ROOT_VALIDITY + Duration::days(1));
    let err = Authority::load_or_create_self_signed(dir.path(), &cfg(), &later).unwrap_err();
    assert!(matches!(err, AuthorityError::Expired { .. }), "{err}");
}

mod memory;
mod plugin;
