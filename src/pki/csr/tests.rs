use rcgen::{CertificateParams, KeyPair, SanType};

use super::*;
use crate::pki::der::tlv;
use crate::pki::fixtures::{id, raw_csr, rsa_2048};
use crate::pki::key::{csr_pem, KeyAlgorithm, PrivateKey};

fn me() -> SpiffeId {
    id("a", "x")
}

/// A CSR from rcgen with `params` (subject emptied unless set), signed by `key`.
fn csr_with(key: &KeyPair, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(me().to_string().try_into().unwrap())];
    edit(&mut params);
    params.serialize_request(key).unwrap().der().to_vec()
}

fn p256() -> KeyPair {
    KeyPair::generate().unwrap()
}

#[test]
fn accepts_every_supported_key_in_pem_and_der() {
    let keys = [
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        PrivateKey::generate(KeyAlgorithm::EcdsaP384).unwrap(),
        rsa_2048().clone_key(),
    ];
    let kinds = [
        PublicKeyKind::EcdsaP256,
        PublicKeyKind::EcdsaP384,
        PublicKeyKind::Rsa { bits: 2048 },
    ];
    for (key, kind) in keys.iter().zip(kinds) {
        let pem_text = csr_pem(key, &me()).unwrap();
        let validated = validate_csr(pem_text.as_bytes(), &me()).unwrap();
        assert_eq!(validated.kind(), kind);
        assert_eq!(validated.public_key_der(), key.public_key_der());
        assert_eq!(validated.public_key_sha256_hex().len(), 64);
        let der = pem::parse_blocks(&pem_text).unwrap().remove(0).der;
        assert_eq!(validate_csr(&der, &me()).unwrap(), validated);
    }
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    assert_eq!(
        validate_csr(&csr_with(&ed, |_| {}), &me()).unwrap().kind(),
        PublicKeyKind::Ed25519
    );
}

#[test]
fn accepts_no_san_legacy_label_and_ignores_the_subject() {
    let key = p256();
    let der = csr_with(&key, |p| {
        p.subject_alt_names.clear();
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            "spiffe://cluster.local/ns/b/sa/y",
        );
    });
    assert!(validate_csr(&der, &me()).is_ok());
    let legacy = pem::encode("NEW CERTIFICATE REQUEST", &der);
    assert!(validate_csr(legacy.as_bytes(), &me()).is_ok());
}

#[test]
fn refuses_malformed_pem() {
    let cases: &[&[u8]] = &[
        b"-----BEGIN CERTIFICATE REQUEST-----\n!!!not base64!!!\n-----END CERTIFICATE REQUEST-----\n",
        b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE-----\n",
    ];
    for input in cases {
        assert!(
            matches!(validate_csr(input, &me()), Err(CsrError::Pem(_))),
            "{input:?}"
        );
    }
    let cert = pem::encode("CERTIFICATE", &[0x30, 0x00]);
    let err = validate_csr(cert.as_bytes(), &me()).unwrap_err();
    assert_eq!(
        err,
        CsrError::WrongPemBlocks {
            found: vec!["CERTIFICATE".into()]
        }
    );
    assert_eq!(validate_csr(b"hello", &me()), Err(CsrError::NotPemOrDer));
    assert_eq!(validate_csr(b"", &me()), Err(CsrError::NotPemOrDer));
    let garbage = pem::encode("CERTIFICATE REQUEST", &[0x30, 0x03, 0x02, 0x01, 0x00]);
    assert!(matches!(
        validate_csr(garbage.as_bytes(), &me()),
        Err(CsrError::Malformed { .. })
    ));
}

#[test]
fn refuses_a_signature_that_does_not_verify() {
    let mut der = csr_with(&p256(), |_| {});
    let last = der.len() - 1;
    der[last] ^= 0x01;
    assert_eq!(validate_csr(&der, &me()), Err(CsrError::BadSignature));
}

#[test]
fn refuses_rsa_1024_naming_the_key() {
    use rsa::pkcs8::EncodePublicKey as _;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
    let spki = key.to_public_key().to_public_key_der().unwrap();
    // sha256WithRSAEncryption, with a real PKCS#1 v1.5 signature.
    let alg = tlv(
        der::SEQUENCE,
        &der::cat(&[
            &tlv(
                der::OID,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b],
            ),
            &tlv(der::NULL, &[]),
        ]),
    );
    let sign = |info: &[u8]| {
        let digest = ring::digest::digest(&ring::digest::SHA256, info);
        let mut digest_info = vec![
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ];
        digest_info.extend_from_slice(digest.as_ref());
        key.sign(rsa::Pkcs1v15Sign::new_unprefixed(), &digest_info)
            .unwrap()
    };
    let csr = raw_csr(spki.as_bytes(), &alg, &sign);
    let err = validate_csr(&csr, &me()).unwrap_err();
    assert!(
        matches!(&err, CsrError::UnsupportedKey { key } if key.starts_with("RSA-1024")),
        "{err}"
    );
    assert!(err.to_string().contains("RSA-1024"));
}

#[test]
fn refuses_unsupported_curves_naming_them() {
    let ecdsa_sha256 = tlv(
        der::SEQUENCE,
        &tlv(der::OID, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
    );
    for (curve, point_len, name) in [
        (&[0x2b, 0x81, 0x04, 0x00, 0x0a][..], 64, "secp256k1"),
        (&[0x2b, 0x81, 0x04, 0x00, 0x23][..], 132, "P-521"),
    ] {
        let alg = tlv(
            der::SEQUENCE,
            &der::cat(&[
                &tlv(der::OID, der::OID_EC_PUBLIC_KEY),
                &tlv(der::OID, curve),
            ]),
        );
        let mut point = vec![0u8, 0x04];
        point.extend(std::iter::repeat_n(0x11, point_len));
        let spki = tlv(
            der::SEQUENCE,
            &der::cat(&[&alg, &tlv(der::BIT_STRING, &point)]),
        );
        // ring cannot sign on these curves; the key is refused before the
        // signature is looked at, so any signature bytes do.
        let csr = raw_csr(&spki, &ecdsa_sha256, &|_| vec![0x30, 0x00]);
        let err = validate_csr(&csr, &me()).unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
        assert!(matches!(err, CsrError::UnsupportedKey { .. }));
    }
}

#[test]
fn refuses_a_request_for_a_ca_certificate() {
    let der = csr_with(&p256(), |p| {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
    });
    assert_eq!(validate_csr(&der, &me()), Err(CsrError::RequestsCa));
}

#[test]
fn refuses_key_cert_sign_and_crl_sign() {
    for (usage, name) in [
        (rcgen::KeyUsagePurpose::KeyCertSign, "keyCertSign"),
        (rcgen::KeyUsagePurpose::CrlSign, "cRLSign"),
    ] {
        let der = csr_with(&p256(), |p| {
            p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, usage]
        });
        assert_eq!(
            validate_csr(&der, &me()),
            Err(CsrError::RequestsCertSign { usage: name })
        );
    }
}

#[test]
fn refuses_a_san_for_another_identity_naming_both() {
    let other = id("b", "y");
    let der = csr_with(&p256(), |p| {
        p.subject_alt_names = vec![SanType::URI(other.to_string().try_into().unwrap())]
    });
    let err = validate_csr(&der, &me()).unwrap_err();
    assert!(
        matches!(&err, CsrError::SanMismatch { requested, caller } if *requested == other.to_string() && *caller == me())
    );
    assert_eq!(
        err.to_string(),
        "CSR asks for spiffe://cluster.local/ns/b/sa/y but the caller is spiffe://cluster.local/ns/a/sa/x"
    );
}

#[test]
fn refuses_two_uri_sans() {
    let der = csr_with(&p256(), |p| {
        p.subject_alt_names
            .push(SanType::URI(id("b", "y").to_string().try_into().unwrap()))
    });
    let err = validate_csr(&der, &me()).unwrap_err();
    assert!(
        matches!(&err, CsrError::SeveralUris { uris } if uris.len() == 2),
        "{err}"
    );
    assert!(err.to_string().contains("spiffe://cluster.local/ns/b/sa/y"));
}

#[test]
fn refuses_dns_ip_and_email_sans() {
    let cases = [
        (
            SanType::DnsName("evil.example".try_into().unwrap()),
            "DNS",
            "evil.example",
        ),
        (SanType::IpAddress([10, 0, 0, 1].into()), "IP", "10.0.0.1"),
        (
            SanType::Rfc822Name("a@example.org".try_into().unwrap()),
            "email",
            "a@example.org",
        ),
    ];
    for (san, kind, value) in cases {
        let der = csr_with(&p256(), |p| p.subject_alt_names.push(san));
        let err = validate_csr(&der, &me()).unwrap_err();
        assert_eq!(
            err,
            CsrError::ForbiddenSan {
                kind,
                value: value.into()
            }
        );
    }
}

#[test]
fn grants_only_the_dns_names_configured_for_the_identity() {
    let allowed = vec![
        "meshid-injector.meshid-system.svc".to_owned(),
        "meshid-injector.meshid-system.svc.cluster.local".to_owned(),
    ];
    let dns = |name: &str| SanType::DnsName(name.try_into().unwrap());
    // Granted: a configured name (any case), reported as configured, once.
    let der = csr_with(&p256(), |p| {
        p.subject_alt_names
            .push(dns("Meshid-Injector.meshid-system.svc"));
        p.subject_alt_names
            .push(dns("meshid-injector.meshid-system.svc"));
    });
    let ok = validate_csr_with_dns(&der, &me(), &allowed).unwrap();
    assert_eq!(ok.dns_names(), ["meshid-injector.meshid-system.svc"]);
    // Try to break it: another name, a wildcard covering the name, a suffix
    // of it, an IP beside an allowed name.
    for bad in [
        "kubernetes.default.svc",
        "*.meshid-system.svc",
        "evil-meshid-injector.meshid-system.svc",
        "meshid-injector.meshid-system",
    ] {
        let der = csr_with(&p256(), |p| p.subject_alt_names.push(dns(bad)));
        let err = validate_csr_with_dns(&der, &me(), &allowed).unwrap_err();
        assert!(
            matches!(&err, CsrError::DnsNameNotAllowed { name, .. } if name == bad),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains(bad), "{err}");
        assert!(
            err.to_string()
                .contains("meshid-injector.meshid-system.svc"),
            "{err}"
        );
    }
    let der = csr_with(&p256(), |p| {
        p.subject_alt_names
            .push(dns("meshid-injector.meshid-system.svc"));
        p.subject_alt_names
            .push(SanType::IpAddress([10, 0, 0, 1].into()));
    });
    assert!(matches!(
        validate_csr_with_dns(&der, &me(), &allowed),
        Err(CsrError::ForbiddenSan { kind: "IP", .. })
    ));
    // The same CSR without the name configured: refused as before.
    let der = csr_with(&p256(), |p| {
        p.subject_alt_names
            .push(dns("meshid-injector.meshid-system.svc"))
    });
    assert!(matches!(
        validate_csr(&der, &me()),
        Err(CsrError::ForbiddenSan { kind: "DNS", .. })
    ));
}

#[test]
fn refuses_oversized_input_before_parsing() {
    let huge = vec![b'A'; 1024 * 1024];
    assert_eq!(
        validate_csr(&huge, &me()),
        Err(CsrError::TooLarge {
            size: 1024 * 1024,
            max: MAX_CSR_BYTES
        })
    );
}

#[test]
fn refuses_der_with_trailing_bytes() {
    let mut der = csr_with(&p256(), |_| {});
    der.extend_from_slice(&[0, 0, 0]);
    assert_eq!(
        validate_csr(&der, &me()),
        Err(CsrError::TrailingData { bytes: 3 })
    );
}

#[test]
fn refuses_sha1_signatures() {
    // sha1WithRSAEncryption on an RSA-2048 key: refused by name, before any verification.
    let alg = tlv(
        der::SEQUENCE,
        &der::cat(&[
            &tlv(
                der::OID,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05],
            ),
            &tlv(der::NULL, &[]),
        ]),
    );
    let csr = raw_csr(&rsa_2048().public_key_der(), &alg, &|_| vec![0; 256]);
    let err = validate_csr(&csr, &me()).unwrap_err();
    assert!(matches!(
        err,
        CsrError::UnsupportedSignatureAlgorithm { .. }
    ));
    assert!(err.to_string().contains("SHA-1"), "{err}");
}

#[test]
fn counts_rsa_modulus_bits_exactly() {
    assert_eq!(rsa_modulus_bits(&[0x00, 0x80, 0x00]), 16);
    assert_eq!(rsa_modulus_bits(&[0x01, 0x00]), 9);
    assert_eq!(rsa_modulus_bits(&[0x00]), 0);
}

/// AlgorithmIdentifier for ecdsa-with-SHA512 (1.2.840.10045.4.3.4) or,
/// with `last = 2`, ecdsa-with-SHA256.
fn ecdsa_alg(last: u8) -> Vec<u8> {
    tlv(
        der::SEQUENCE,
        &tlv(der::OID, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, last]),
    )
}

/// A P-256 signing key and its SPKI DER.
fn p256_signer() -> (p256::ecdsa::SigningKey, Vec<u8>) {
    use p256::pkcs8::DecodePrivateKey;
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let signer = p256::ecdsa::SigningKey::from_pkcs8_der(key.secret_pkcs8_der()).unwrap();
    (signer, key.public_key_der())
}

fn sign_prehash(
    signer: &p256::ecdsa::SigningKey,
    digest: &'static ring::digest::Algorithm,
    info: &[u8],
) -> Vec<u8> {
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    let d = ring::digest::digest(digest, info);
    let sig: p256::ecdsa::Signature = signer.sign_prehash(d.as_ref()).unwrap();
    sig.to_der().as_bytes().to_vec()
}

#[test]
fn accepts_ecdsa_with_sha512_and_verifies_it() {
    let (signer, spki) = p256_signer();
    let csr = raw_csr(&spki, &ecdsa_alg(4), &|info| {
        sign_prehash(&signer, &ring::digest::SHA512, info)
    });
    assert!(validate_csr(&csr, &me()).is_ok());
    // Signed over SHA-256 but labelled SHA-512: the signature does not verify.
    let mislabelled = raw_csr(&spki, &ecdsa_alg(4), &|info| {
        sign_prehash(&signer, &ring::digest::SHA256, info)
    });
    assert_eq!(
        validate_csr(&mislabelled, &me()).unwrap_err(),
        CsrError::BadSignature
    );
}

#[test]
fn refuses_a_correctly_signed_key_in_non_minimal_der() {
    // The attack: the SPKI's outer length in long form (0x81 0x59 for 0x59),
    // correctly self-signed. It used to pass, be signed, fail the post-sign
    // check and answer INTERNAL: now it never reaches the signer.
    let (signer, spki) = p256_signer();
    assert_eq!(spki[1], 0x59);
    let mut padded = vec![spki[0], 0x81];
    padded.extend_from_slice(&spki[1..]);
    let csr = raw_csr(&padded, &ecdsa_alg(2), &|info| {
        sign_prehash(&signer, &ring::digest::SHA256, info)
    });
    assert_eq!(
        validate_csr(&csr, &me()).unwrap_err(),
        CsrError::NonCanonicalKey
    );
    // The same key, canonical: accepted.
    let csr = raw_csr(&spki, &ecdsa_alg(2), &|info| {
        sign_prehash(&signer, &ring::digest::SHA256, info)
    });
    assert!(validate_csr(&csr, &me()).is_ok());
}

#[test]
fn canonical_der_refuses_padded_integers_and_lengths() {
    assert!(der::is_canonical(&[0x30, 0x03, 0x02, 0x01, 0x05], false));
    // 0x00 0x05: a leading zero the integer does not need.
    assert!(!der::is_canonical(
        &[0x30, 0x04, 0x02, 0x02, 0x00, 0x05],
        false
    ));
    // 0x00 0x80: needed (positive 128).
    assert!(der::is_canonical(&[0x02, 0x02, 0x00, 0x80], false));
    // Long-form length for a short value.
    assert!(!der::is_canonical(&[0x04, 0x81, 0x01, 0x00], false));
    // A PKCS#1 key inside a BIT STRING is checked too.
    let inner_bad = [0x03, 0x06, 0x00, 0x30, 0x03, 0x02, 0x81, 0x01];
    assert!(!der::is_canonical(&inner_bad, true));
    assert!(
        der::is_canonical(&inner_bad, false),
        "an EC point is not DER"
    );
}
