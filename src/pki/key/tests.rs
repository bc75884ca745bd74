use super::*;
use crate::pki::csr::validate_csr;
use crate::pki::der::{read_tlv, tlv};
use crate::pki::fixtures::{id, rsa_2048};

#[test]
fn debug_never_shows_key_material() {
    #[derive(Debug)]
    #[allow(dead_code)]
    struct Holder {
        key: PrivateKey,
    }
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let printed = format!(
        "{key:?} {:#?}",
        Holder {
            key: key.clone_key()
        }
    );
    assert!(printed.starts_with("PrivateKey([redacted])"));
    let pem = key.secret_pkcs8_pem();
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(
            !printed.contains(&line[..16]),
            "base64 key material in {printed}"
        );
    }
    let hex = crate::pki::csr::hex(key.secret_pkcs8_der());
    assert!(!printed.contains(&hex[hex.len() - 32..]));
}

#[test]
fn algorithm_names_round_trip_and_unknown_names_list_the_accepted_ones() {
    for alg in KeyAlgorithm::ALL {
        assert_eq!(alg.to_string().parse::<KeyAlgorithm>().unwrap(), alg);
    }
    assert_eq!(KeyAlgorithm::default(), KeyAlgorithm::EcdsaP256);
    let err = "ed25519".parse::<KeyAlgorithm>().unwrap_err().to_string();
    assert!(
        err.contains("\"ed25519\"") && err.contains("ecdsa-p256") && err.contains("rsa-4096"),
        "{err}"
    );
}

#[test]
fn generated_ec_keys_round_trip_through_pem() {
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
        let key = PrivateKey::generate(alg).unwrap();
        assert_eq!(key.algorithm(), alg);
        let loaded = PrivateKey::from_pem(&key.secret_pkcs8_pem()).unwrap();
        assert_eq!(loaded.public_key_der(), key.public_key_der());
        assert_eq!(loaded.secret_pkcs8_der(), key.secret_pkcs8_der());
        let from_der = PrivateKey::from_pkcs8_der(key.secret_pkcs8_der()).unwrap();
        assert_eq!(from_der.algorithm(), alg);
    }
}

#[test]
fn rsa_keys_are_generated_and_load_from_pkcs1() {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::pkcs8::DecodePrivateKey as _;
    let key = rsa_2048();
    assert_eq!(key.algorithm(), KeyAlgorithm::Rsa2048);
    let rsa_key = rsa::RsaPrivateKey::from_pkcs8_der(key.secret_pkcs8_der()).unwrap();
    let pkcs1 = rsa_key.to_pkcs1_der().unwrap();
    let pem_text = pem::encode("RSA PRIVATE KEY", pkcs1.as_bytes());
    let loaded = PrivateKey::from_pem(&pem_text).unwrap();
    assert_eq!(loaded.algorithm(), KeyAlgorithm::Rsa2048);
    assert_eq!(loaded.public_key_der(), key.public_key_der());
}

/// Turns ring's PKCS#8 EC key into a SEC1 `ECPrivateKey`, with or without `[0]` curve.
fn sec1_from_pkcs8(pkcs8: &[u8], curve: Option<&[u8]>) -> Vec<u8> {
    let (outer, _) = der::expect(pkcs8, der::SEQUENCE).unwrap();
    let (_, rest) = der::expect(outer, der::INTEGER).unwrap();
    let (_, rest) = der::expect(rest, der::SEQUENCE).unwrap();
    let (inner, _) = der::expect(rest, der::OCTET_STRING).unwrap();
    let (ec, _) = der::expect(inner, der::SEQUENCE).unwrap();
    let (_, rest) = der::expect(ec, der::INTEGER).unwrap();
    let (secret, rest) = der::expect(rest, der::OCTET_STRING).unwrap();
    let mut parts = vec![tlv(der::INTEGER, &[1]), tlv(der::OCTET_STRING, secret)];
    if let Some(curve) = curve {
        parts.push(tlv(der::CONTEXT_0, &tlv(der::OID, curve)));
    }
    let mut rest = rest;
    while let Some((tag, content, next)) = read_tlv(rest) {
        if tag == 0xa1 {
            parts.push(tlv(tag, content));
        }
        rest = next;
    }
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    tlv(der::SEQUENCE, &der::cat(&refs))
}

#[test]
fn sec1_ec_keys_load_as_istio_cacerts_write_them() {
    for (alg, curve) in [
        (KeyAlgorithm::EcdsaP256, der::OID_P256),
        (KeyAlgorithm::EcdsaP384, der::OID_P384),
    ] {
        let key = PrivateKey::generate(alg).unwrap();
        let sec1 = sec1_from_pkcs8(key.secret_pkcs8_der(), Some(curve));
        let loaded = PrivateKey::from_pem(&pem::encode("EC PRIVATE KEY", &sec1)).unwrap();
        assert_eq!(loaded.algorithm(), alg);
        assert_eq!(loaded.public_key_der(), key.public_key_der());
    }
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let no_curve = sec1_from_pkcs8(key.secret_pkcs8_der(), None);
    let err = PrivateKey::from_pem(&pem::encode("EC PRIVATE KEY", &no_curve)).unwrap_err();
    assert!(err.to_string().contains("no curve parameters"), "{err}");
}

#[test]
fn pem_without_exactly_one_key_is_refused() {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let two = format!(
        "{}{}",
        key.secret_pkcs8_pem().as_str(),
        key.secret_pkcs8_pem().as_str()
    );
    assert!(matches!(
        PrivateKey::from_pem(&two),
        Err(KeyError::SeveralKeys { count: 2 })
    ));
    let cert_only = pem::encode("CERTIFICATE", &[1, 2, 3]);
    let err = PrivateKey::from_pem(&cert_only).unwrap_err();
    assert!(matches!(&err, KeyError::NoKey { found } if found == &["CERTIFICATE".to_owned()]));
    let encrypted = pem::encode("ENCRYPTED PRIVATE KEY", &[1, 2, 3]);
    assert!(PrivateKey::from_pem(&encrypted)
        .unwrap_err()
        .to_string()
        .contains("encrypted keys are not supported"));
    let garbage = pem::encode("PRIVATE KEY", &[0x30, 0x03, 0x02, 0x01, 0x00]);
    assert!(matches!(
        PrivateKey::from_pem(&garbage),
        Err(KeyError::Malformed {
            format: "PKCS#8",
            ..
        })
    ));
}

#[test]
fn ed25519_keys_are_not_signing_keys_here() {
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let err = PrivateKey::from_pkcs8_der(ed.serialized_der()).unwrap_err();
    assert!(
        matches!(&err, KeyError::Unsupported { what } if what == "Ed25519"),
        "{err}"
    );
}

#[test]
fn csr_carries_the_identity_as_its_only_uri_san() {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let me = id("default", "frontend");
    let csr = csr_pem(&key, &me).unwrap();
    assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    let validated = validate_csr(csr.as_bytes(), &me).unwrap();
    assert_eq!(validated.public_key_der(), key.public_key_der());
    assert!(validate_csr(csr.as_bytes(), &id("default", "other")).is_err());
}
