//! Plug-in CA tests: a root and intermediates minted with rcgen, written in
//! Istio `cacerts` or cert-manager layout, then broken one rule at a time.

use super::*;
use std::fs;

/// root → intermediate (the signing CA).
struct Pki {
    root: TestCa,
    intermediate: TestCa,
}

fn pki() -> Pki {
    let root = TestCa::root(TestCa::params("test root"));
    let intermediate = root.issue(TestCa::params("test intermediate"));
    Pki { root, intermediate }
}

/// Writes Istio `cacerts` files (no `cert-chain.pem` when `chain` is empty).
fn istio_dir(signing: &TestCa, chain: &[&TestCa], roots: &[&TestCa]) -> TempDir {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "ca-cert.pem", &signing.cert_pem());
    write(dir.path(), "ca-key.pem", &signing.key_pem());
    if !chain.is_empty() {
        let pems: Vec<String> = chain.iter().map(|c| c.cert_pem()).collect();
        write(dir.path(), "cert-chain.pem", &bundle::concat_pem(&pems));
    }
    let pems: Vec<String> = roots.iter().map(|c| c.cert_pem()).collect();
    write(dir.path(), "root-cert.pem", &bundle::concat_pem(&pems));
    dir
}

fn load(dir: &TempDir) -> Result<Authority, AuthorityError> {
    Authority::load_plugin(dir.path(), &cfg(), &clock())
}

#[test]
fn istio_cacerts_load_and_sign_leaves_that_chain_to_the_root() {
    let p = pki();
    let other_root = TestCa::root(TestCa::params("another root"));
    // cert-chain.pem repeats the signing certificate and the root, as Istio's tooling writes it.
    let dir = istio_dir(
        &p.intermediate,
        &[&p.intermediate, &p.root],
        &[&other_root, &p.root],
    );
    let authority = load(&dir).unwrap();
    assert_eq!(
        authority.chain_pem(),
        vec![p.intermediate.cert_pem().replace("\r\n", "\n")]
    );
    assert_eq!(authority.roots_pem().len(), 2);
    assert_eq!(authority.signer_not_after(), now() + Duration::days(365));
    let issued = leaf_for(&authority, &clock());
    let int_spki = rcgen::PublicKeyData::subject_public_key_info(&p.intermediate.key);
    validate::check_leaf(&issued.der, &id("a", "x"), &int_spki).unwrap();
    let (_, leaf) = X509Certificate::from_der(&issued.der).unwrap();
    let (_, int) = X509Certificate::from_der(p.intermediate.cert.der()).unwrap();
    assert_eq!(leaf.issuer().as_raw(), int.subject().as_raw());
}

#[test]
fn cert_manager_layout_with_two_intermediates_loads() {
    let root = TestCa::root(TestCa::params("cm root"));
    let upper = root.issue(TestCa::params("cm upper"));
    let signing = upper.issue(TestCa::params("cm signing"));
    let dir = TempDir::new().unwrap();
    write(
        dir.path(),
        "tls.crt",
        &bundle::concat_pem(&[signing.cert_pem(), upper.cert_pem()]),
    );
    write(dir.path(), "tls.key", &signing.key_pem());
    write(dir.path(), "ca.crt", &root.cert_pem());
    let authority = load(&dir).unwrap();
    assert_eq!(authority.chain_pem().len(), 2);
    assert!(authority.chain_pem()[0].contains(signing.cert_pem().lines().nth(1).unwrap()));
    leaf_for(&authority, &clock());
}

#[test]
fn a_root_used_directly_as_plugin_has_an_empty_chain_and_rsa_keys_work() {
    let key = rcgen::KeyPair::try_from(rsa_2048().secret_pkcs8_der()).unwrap();
    let params = TestCa::params("rsa root");
    let cert = params.self_signed(&key).unwrap();
    let root = TestCa { key, params, cert };
    let dir = istio_dir(&root, &[], &[&root]);
    let authority = load(&dir).unwrap();
    assert!(authority.chain_pem().is_empty());
    leaf_for(&authority, &clock());
}

#[test]
fn an_empty_cert_chain_file_means_no_intermediates() {
    let p = pki();
    let dir = istio_dir(&p.root, &[], &[&p.root]);
    write(dir.path(), "cert-chain.pem", "");
    let authority = load(&dir).unwrap();
    assert!(authority.chain_pem().is_empty());
}

#[test]
fn a_key_that_does_not_match_is_refused_naming_both_files() {
    let p = pki();
    let dir = istio_dir(&p.intermediate, &[&p.intermediate], &[&p.root]);
    write(dir.path(), "ca-key.pem", &p.root.key_pem());
    let err = load(&dir).unwrap_err();
    assert!(matches!(err, AuthorityError::KeyMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("ca-key.pem") && msg.contains("ca-cert.pem"),
        "{msg}"
    );
}

#[test]
fn a_certificate_that_is_not_a_ca_is_refused() {
    let p = pki();
    let mut params = TestCa::params("not a ca");
    params.is_ca = IsCa::ExplicitNoCa;
    let leaf = p.root.issue(params);
    let err = load(&istio_dir(&leaf, &[], &[&p.root])).unwrap_err();
    assert!(
        matches!(&err, AuthorityError::NotCa { path, .. } if path.ends_with("ca-cert.pem")),
        "{err}"
    );

    let mut params = TestCa::params("no cert sign");
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let ca = p.root.issue(params);
    let err = load(&istio_dir(&ca, &[], &[&p.root])).unwrap_err();
    assert!(err.to_string().contains("keyCertSign"), "{err}");
}

#[test]
fn a_chain_that_does_not_reach_root_cert_pem_is_refused() {
    let p = pki();
    let other_root = TestCa::root(TestCa::params("another root"));
    let err = load(&istio_dir(
        &p.intermediate,
        &[&p.intermediate],
        &[&other_root],
    ))
    .unwrap_err();
    assert!(matches!(err, AuthorityError::ChainBroken { .. }), "{err}");
    assert!(err.to_string().contains("root-cert.pem"), "{err}");

    // Same issuer name, different key: found by name, refused by signature.
    let impostor = TestCa::root(TestCa::params("test root"));
    let err = load(&istio_dir(&p.intermediate, &[], &[&impostor])).unwrap_err();
    assert!(err.to_string().contains("does not verify"), "{err}");
}

#[test]
fn an_expired_intermediate_is_refused() {
    let root = TestCa::root(TestCa::params("root"));
    let mut params = TestCa::params("expired intermediate");
    params.not_after = now() - Duration::days(1);
    let expired = root.issue(params);
    let err = load(&istio_dir(&expired, &[], &[&root])).unwrap_err();
    assert!(
        matches!(&err, AuthorityError::Expired { path, .. } if path.ends_with("ca-cert.pem")),
        "{err}"
    );

    let mut params = TestCa::params("future intermediate");
    params.not_before = now() + Duration::days(1);
    let future = root.issue(params);
    let err = load(&istio_dir(&future, &[], &[&root])).unwrap_err();
    assert!(matches!(err, AuthorityError::NotYetValid { .. }), "{err}");
}

#[test]
fn missing_files_are_named() {
    let p = pki();
    let dir = istio_dir(&p.intermediate, &[], &[&p.root]);
    fs::remove_file(dir.path().join("root-cert.pem")).unwrap();
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(&err, AuthorityError::MissingFile { path, .. } if path.ends_with("root-cert.pem")),
        "{err}"
    );

    let empty = TempDir::new().unwrap();
    assert!(matches!(
        load(&empty),
        Err(AuthorityError::NoPluginFiles { .. })
    ));
}

#[test]
fn roots_must_be_self_signed() {
    let p = pki();
    let err = load(&istio_dir(&p.intermediate, &[], &[&p.intermediate])).unwrap_err();
    assert!(
        matches!(&err, AuthorityError::RootNotSelfSigned { path, .. } if path.ends_with("root-cert.pem")),
        "{err}"
    );
}

#[test]
fn path_length_constraints_are_enforced() {
    let mut params = TestCa::params("strict root");
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let root = TestCa::root(params);
    let upper = root.issue(TestCa::params("upper"));
    let signing = upper.issue(TestCa::params("signing"));
    let err = load(&istio_dir(&signing, &[&upper], &[&root])).unwrap_err();
    assert!(
        matches!(
            err,
            AuthorityError::PathLenExceeded {
                limit: 0,
                below: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn an_issuer_name_rcgen_cannot_reproduce_stops_start_up() {
    let root = TestCa::root(TestCa::params("root"));
    // Two OU attributes: rcgen keeps one value per attribute type when it
    // re-reads the name, so leaves would name a different issuer.
    let mut params = TestCa::params("two OUs");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "a");
    params
        .distinguished_name
        .push(DnType::CustomDnType(vec![2, 5, 4, 11]), "b");
    let signing = root.issue(params);
    let err = load(&istio_dir(&signing, &[], &[&root])).unwrap_err();
    assert!(matches!(err, AuthorityError::Unusable { .. }), "{err}");
}

#[test]
fn leaves_never_outlive_the_signing_certificate() {
    let root = TestCa::root(TestCa::params("root"));
    let mut params = TestCa::params("short intermediate");
    params.not_after = now() + Duration::hours(2);
    let signing = root.issue(params);
    let authority = load(&istio_dir(&signing, &[], &[&root])).unwrap();
    let issued = leaf_for(&authority, &clock());
    assert_eq!(issued.not_after, now() + Duration::hours(2));
}
