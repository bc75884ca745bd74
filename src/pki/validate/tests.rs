use rcgen::{
    CertificateParams, CustomExtension, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

use super::*;
use crate::pki::der::{self, tlv};
use crate::pki::fixtures::{id, now, TestCa};
use crate::pki::template::{leaf_params, LeafRequest};

fn me() -> SpiffeId {
    id("a", "x")
}

/// Signs a leaf built by the real template, after `edit`, and checks it.
fn check_with(edit: impl FnOnce(&mut CertificateParams)) -> Result<(), ValidateError> {
    let ca = TestCa::root(TestCa::params("validate root"));
    let req = LeafRequest::workload(me(), time::Duration::hours(1));
    let mut params = leaf_params(
        &req,
        false,
        now(),
        time::Duration::seconds(60),
        now() + time::Duration::days(1),
    )
    .unwrap();
    edit(&mut params);
    let key = KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_spki = rcgen::PublicKeyData::subject_public_key_info(&ca.key);
    check_leaf(cert.der(), &me(), &ca_spki)
}

#[test]
fn a_template_leaf_passes_every_check() {
    assert_eq!(check_with(|_| {}), Ok(()));
}

#[test]
fn each_profile_rule_fires() {
    type Edit = Box<dyn FnOnce(&mut CertificateParams)>;
    let cases: Vec<(Edit, ValidateError)> = vec![
        (
            Box::new(|p| p.subject_alt_names.clear()),
            ValidateError::MissingSan,
        ),
        (
            Box::new(|p| {
                p.subject_alt_names
                    .push(SanType::URI(id("b", "y").to_string().try_into().unwrap()))
            }),
            ValidateError::UriSanCount { count: 2 },
        ),
        (
            Box::new(|p| {
                p.subject_alt_names =
                    vec![SanType::URI(id("b", "y").to_string().try_into().unwrap())]
            }),
            ValidateError::WrongIdentity {
                found: id("b", "y").to_string(),
                expected: me(),
            },
        ),
        (
            Box::new(|p| p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained)),
            ValidateError::IsCa,
        ),
        (
            Box::new(|p| p.is_ca = IsCa::NoCa),
            ValidateError::MissingBasicConstraints,
        ),
        (
            Box::new(|p| p.key_usages.clear()),
            ValidateError::MissingKeyUsage,
        ),
        (
            Box::new(|p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]),
            ValidateError::NoDigitalSignature,
        ),
        (
            Box::new(|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign)),
            ValidateError::SigningUsage {
                usage: "keyCertSign",
            },
        ),
        (
            Box::new(|p| p.key_usages.push(KeyUsagePurpose::CrlSign)),
            ValidateError::SigningUsage { usage: "cRLSign" },
        ),
        (
            Box::new(|p| p.extended_key_usages.clear()),
            ValidateError::ExtendedKeyUsage {
                missing: "the extension",
            },
        ),
        (
            Box::new(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]),
            ValidateError::ExtendedKeyUsage {
                missing: "serverAuth",
            },
        ),
        (
            Box::new(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]),
            ValidateError::ExtendedKeyUsage {
                missing: "clientAuth",
            },
        ),
        (
            Box::new(|p| p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x7f; 21]))),
            ValidateError::Serial {
                problem: "longer than 20 octets",
            },
        ),
        (
            Box::new(|p| p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0]))),
            ValidateError::Serial { problem: "zero" },
        ),
        (
            Box::new(|p| p.use_authority_key_identifier_extension = false),
            ValidateError::MissingAki,
        ),
        (
            // rcgen writes the SKI together with BasicConstraints; write CA:FALSE by hand instead.
            Box::new(|p| {
                p.is_ca = IsCa::NoCa;
                p.custom_extensions = vec![CustomExtension::from_oid_content(
                    &[2, 5, 29, 19],
                    vec![0x30, 0x00],
                )];
            }),
            ValidateError::MissingSki,
        ),
        (
            // rcgen always marks KeyUsage critical; write a non-critical one by hand.
            Box::new(|p| {
                p.key_usages.clear();
                p.custom_extensions = vec![CustomExtension::from_oid_content(
                    &[2, 5, 29, 15],
                    vec![0x03, 0x02, 0x07, 0x80],
                )];
            }),
            ValidateError::KeyUsageNotCritical,
        ),
    ];
    for (edit, want) in cases {
        assert_eq!(check_with(edit), Err(want.clone()), "expected {want}");
    }
}

#[test]
fn empty_subject_requires_a_critical_san() {
    // rcgen always marks the SAN critical for an empty subject, so write a
    // non-critical one by hand.
    let names = tlv(der::SEQUENCE, &tlv(0x86, me().to_string().as_bytes()));
    let result = check_with(|p| {
        p.subject_alt_names.clear();
        p.custom_extensions = vec![CustomExtension::from_oid_content(&[2, 5, 29, 17], names)];
    });
    assert_eq!(result, Err(ValidateError::SanNotCritical));
    // With a subject, a non-critical SAN is fine.
    assert_eq!(
        check_with(|p| p.distinguished_name.push(rcgen::DnType::CommonName, "x")),
        Ok(())
    );
}

#[test]
fn a_signature_by_another_key_fails() {
    let ca = TestCa::root(TestCa::params("real"));
    let req = LeafRequest::workload(me(), time::Duration::hours(1));
    let params = leaf_params(
        &req,
        false,
        now(),
        time::Duration::ZERO,
        now() + time::Duration::days(1),
    )
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params
        .signed_by(&key, &rcgen::Issuer::from_params(&ca.params, &ca.key))
        .unwrap();
    let other = rcgen::PublicKeyData::subject_public_key_info(&KeyPair::generate().unwrap());
    assert_eq!(
        check_leaf(cert.der(), &me(), &other),
        Err(ValidateError::BadSignature)
    );
    assert_eq!(
        check_leaf(cert.der(), &me(), b"junk"),
        Err(ValidateError::BadIssuerKey)
    );
    assert!(matches!(
        check_leaf(&cert.der()[..40], &me(), &other),
        Err(ValidateError::Unparseable { .. })
    ));

    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let subject = x509_parser::parse_x509_certificate(ca.cert.der())
        .unwrap()
        .1
        .subject()
        .as_raw()
        .to_vec();
    assert_eq!(check_binding(cert.der(), &spki, &subject), Ok(()));
    assert_eq!(
        check_binding(cert.der(), &other, &subject),
        Err(ValidateError::WrongPublicKey)
    );
    assert_eq!(
        check_binding(cert.der(), &spki, b"\x30\x00"),
        Err(ValidateError::WrongIssuerName)
    );

    // The per-leaf check combines the profile and the binding.
    let facts = check_issued(cert.der(), &me(), &spki, &subject).unwrap();
    let parsed = x509_parser::parse_x509_certificate(cert.der()).unwrap().1;
    assert_eq!(facts.serial, parsed.raw_serial());
    assert_eq!(facts.not_after, parsed.validity().not_after.to_datetime());
    assert_eq!(facts.not_before, parsed.validity().not_before.to_datetime());
    assert_eq!(
        check_issued(cert.der(), &me(), &other, &subject),
        Err(ValidateError::WrongPublicKey)
    );
    assert_eq!(
        check_issued(cert.der(), &me(), &spki, b"\x30\x00"),
        Err(ValidateError::WrongIssuerName)
    );
    let someone_else = SpiffeId::parse("spiffe://cluster.local/ns/x/sa/y").unwrap();
    assert!(check_issued(cert.der(), &someone_else, &spki, &subject).is_err());
}
