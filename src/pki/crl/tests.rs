use rcgen::{
    CertificateParams, CertificateRevocationListParams, DnType, KeyIdMethod, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use time::Duration;

use super::*;
use crate::pki::fixtures::{now, TestCa};

fn leaf(ca: &TestCa, serial: &[u8]) -> TestCa {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "leaf");
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.not_before = now() - Duration::days(1);
    params.not_after = now() + Duration::days(1);
    ca.issue(params)
}

fn crl_params(serials: &[&[u8]]) -> CertificateRevocationListParams {
    CertificateRevocationListParams {
        this_update: now(),
        next_update: now() + Duration::hours(6),
        crl_number: SerialNumber::from(7u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from_slice(serial),
                revocation_time: now(),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
}

/// A CRL listing `serials`, signed by `ca` (its own params and key).
fn crl_by(ca: &TestCa, serials: &[&[u8]]) -> Vec<u8> {
    let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
    crl_params(serials)
        .signed_by(&issuer)
        .unwrap()
        .der()
        .to_vec()
}

#[test]
fn a_good_crl_verifies_and_its_serials_are_found() {
    let ca = TestCa::root(TestCa::params("ca"));
    let (revoked, kept) = (leaf(&ca, &[0x11, 0x22]), leaf(&ca, &[0x33]));
    let der = crl_by(&ca, &[&[0x11, 0x22], &[0x44]]);

    let crl = verify_crl(&der, ca.cert.der()).unwrap();
    assert_eq!(crl.der(), der.as_slice());
    assert_eq!(crl.serials(), &[vec![0x11, 0x22], vec![0x44]]);
    assert_eq!(crl.this_update(), now());
    assert_eq!(crl.next_update(), Some(now() + Duration::hours(6)));
    assert_eq!(crl.number_u64(), Some(7));
    assert_eq!(crl.number_hex().as_deref(), Some("07"));

    let set = RevokedSet::from_crls([&crl]);
    assert_eq!(set.len(), 2);
    assert!(set.contains_cert(revoked.cert.der()));
    assert!(!set.contains_cert(kept.cert.der()));
    let (issuer, serial) = issuer_and_serial(revoked.cert.der()).unwrap();
    assert!(set.contains(&issuer, &serial));
    assert_eq!(serial_hex(&serial), "1122");
}

#[test]
fn the_same_serial_under_another_issuer_is_not_revoked() {
    let (a, b) = (
        TestCa::root(TestCa::params("a")),
        TestCa::root(TestCa::params("b")),
    );
    let crl = verify_crl(&crl_by(&a, &[&[0x42]]), a.cert.der()).unwrap();
    let set = RevokedSet::from_crls([&crl]);
    assert!(set.contains_cert(leaf(&a, &[0x42]).cert.der()));
    assert!(!set.contains_cert(leaf(&b, &[0x42]).cert.der()));
}

#[test]
fn a_crl_signed_by_another_key_is_refused() {
    let ca = TestCa::root(TestCa::params("ca"));
    // Same name and parameters, another key: a forger who knows the CA's name.
    let forger = TestCa::root(TestCa::params("ca"));
    let err = verify_crl(&crl_by(&forger, &[&[1]]), ca.cert.der()).unwrap_err();
    assert!(matches!(err, CrlError::BadSignature { .. }), "{err}");
    assert!(err.to_string().contains("does not verify with the key of"));
}

#[test]
fn a_crl_of_another_issuer_is_refused_naming_both() {
    let ca = TestCa::root(TestCa::params("ca"));
    let other = TestCa::root(TestCa::params("other"));
    let err = verify_crl(&crl_by(&other, &[&[1]]), ca.cert.der()).unwrap_err();
    assert!(matches!(err, CrlError::WrongIssuer { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("CN=other") && text.contains("CN=ca"),
        "{text}"
    );
}

#[test]
fn a_ca_without_crl_sign_is_refused() {
    let ca = TestCa::root(TestCa::params("ca"));
    // The same key and name, certified for keyCertSign only.
    let mut params = TestCa::params("ca");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let no_crl_sign = params.self_signed(&ca.key).unwrap();
    let der = crl_by(&ca, &[&[1]]);
    assert!(verify_crl(&der, ca.cert.der()).is_ok());
    let err = verify_crl(&der, no_crl_sign.der()).unwrap_err();
    assert!(matches!(err, CrlError::NotCrlSigner { .. }), "{err}");
}

#[test]
fn a_leaf_certificate_cannot_sign_crls() {
    let ca = TestCa::root(TestCa::params("ca"));
    // Signer certificate with the CA's name and key, but CA:FALSE.
    let mut params = TestCa::params("ca");
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![];
    let not_ca = params.self_signed(&ca.key).unwrap();
    let err = verify_crl(&crl_by(&ca, &[&[1]]), not_ca.der()).unwrap_err();
    assert!(matches!(err, CrlError::NotCa { .. }), "{err}");
}

#[test]
fn serials_compare_without_leading_zeros() {
    assert_eq!(serial_key(&[0, 0, 0x80, 1]), vec![0x80, 1]);
    assert_eq!(serial_key(&[0x80, 1]), vec![0x80, 1]);
    assert_eq!(serial_key(&[0, 0]), vec![0]);
    assert_eq!(serial_hex(&[0, 0x0a, 0xff]), "0aff");

    // A serial with the high bit set is DER-encoded with a 0x00 in front.
    let ca = TestCa::root(TestCa::params("ca"));
    let revoked = leaf(&ca, &[0x80, 0x01]);
    let crl = verify_crl(&crl_by(&ca, &[&[0x80, 0x01]]), ca.cert.der()).unwrap();
    assert_eq!(crl.serials(), &[vec![0x80, 0x01]]);
    let set = RevokedSet::from_crls([&crl]);
    assert!(set.contains_cert(revoked.cert.der()));
    let issuer = crl.issuer_raw();
    assert!(set.contains(issuer, &[0x80, 0x01]));
    assert!(set.contains(issuer, &[0x00, 0x80, 0x01]));
    assert!(!set.contains(issuer, &[0x01]));
}

#[test]
fn garbage_is_refused_with_a_clear_error() {
    let ca = TestCa::root(TestCa::params("ca"));
    let err = verify_crl(b"not a crl", ca.cert.der()).unwrap_err();
    assert!(matches!(err, CrlError::Unparseable { .. }), "{err}");
    assert!(err.to_string().starts_with("the CRL does not parse"));

    let mut trailing = crl_by(&ca, &[]);
    trailing.push(0);
    let err = verify_crl(&trailing, ca.cert.der()).unwrap_err();
    assert_eq!(
        err,
        CrlError::Unparseable {
            reason: "1 trailing bytes".into()
        }
    );

    let err = verify_crl(&crl_by(&ca, &[]), b"junk").unwrap_err();
    assert!(matches!(err, CrlError::IssuerUnparseable { .. }), "{err}");
}

#[test]
fn pem_round_trips_and_refuses_other_blocks() {
    let ca = TestCa::root(TestCa::params("ca"));
    let crls = vec![crl_by(&ca, &[&[1]]), crl_by(&ca, &[&[2], &[3]])];
    let text = crls_to_pem(&crls);
    assert_eq!(text.matches("-----BEGIN X509 CRL-----").count(), 2);
    assert_eq!(parse_pem_crls(&text).unwrap(), crls);
    assert_eq!(parse_pem_crls("").unwrap(), Vec::<Vec<u8>>::new());

    let mixed = format!("{text}{}", ca.cert_pem());
    assert_eq!(
        parse_pem_crls(&mixed).unwrap_err(),
        CrlError::UnexpectedBlock {
            index: 3,
            label: "CERTIFICATE".into()
        }
    );
    let garbage = pem::encode(CRL_PEM_LABEL, &[0x30, 0x03, 0x02, 0x01, 0x00]);
    let err = parse_pem_crls(&garbage).unwrap_err();
    assert!(err.to_string().contains("PEM block #1"), "{err}");
}

#[test]
fn an_empty_set_finds_nothing() {
    let ca = TestCa::root(TestCa::params("ca"));
    let set = RevokedSet::default();
    assert!(set.is_empty());
    assert!(!set.contains_cert(leaf(&ca, &[1]).cert.der()));
    assert!(!set.contains_cert(b"junk"));
}

#[test]
fn the_fast_walk_reads_what_the_full_parser_reads() {
    let ca = TestCa::root(TestCa::params("ca"));
    for serial in [&[0x01][..], &[0x80, 0x01], &[0x7f; 20]] {
        let cert = leaf(&ca, serial);
        let (_, parsed) = X509Certificate::from_der(cert.cert.der()).unwrap();
        let (issuer, raw_serial) = issuer_and_serial_raw(cert.cert.der()).unwrap();
        assert_eq!(issuer, parsed.issuer().as_raw());
        assert_eq!(raw_serial, parsed.raw_serial());
    }
    assert_eq!(issuer_and_serial_raw(b"junk"), None);
    assert_eq!(issuer_and_serial_raw(&[0x30, 0x02, 0x30, 0x00]), None);
}
