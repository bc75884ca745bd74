//! The agent refuses CA answers that do not check out.

use super::*;
use crate::pki::authority::{Authority, AuthorityConfig};
use crate::pki::key::{KeyAlgorithm, PrivateKey};
use crate::pki::template::LeafRequest;
use crate::time::SystemClock;

fn authority(dir: &std::path::Path) -> Authority {
    Authority::load_or_create_self_signed(dir, &AuthorityConfig::default(), &SystemClock).unwrap()
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/ns/default/sa/{sa}")).unwrap()
}

fn answer(ca: &Authority, key: &PrivateKey, who: &SpiffeId) -> Vec<String> {
    let leaf = ca
        .sign_leaf(
            &key.public_key_der(),
            &LeafRequest::workload(who.clone(), time::Duration::hours(1)),
            &SystemClock,
        )
        .unwrap();
    let mut chain = vec![leaf.pem];
    chain.extend(ca.chain_pem());
    chain.push(ca.root_bundle_pem());
    chain
}

#[test]
fn a_good_answer_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path());
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let checked = check_answer(
        &answer(&ca, &key, &id("web")),
        &id("web"),
        &key.public_key_der(),
    )
    .unwrap();
    assert_eq!(checked.chain_der.len(), 1);
    assert_eq!(checked.roots_pem, ca.root_bundle_pem());
    assert!(checked.not_after > checked.not_before);
}

#[test]
fn a_leaf_for_another_identity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path());
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let err = check_answer(
        &answer(&ca, &key, &id("db")),
        &id("web"),
        &key.public_key_der(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("not spiffe://cluster.local/ns/default/sa/web"),
        "{err}"
    );
}

#[test]
fn a_leaf_for_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path());
    let ours = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let theirs = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let err = check_answer(
        &answer(&ca, &theirs, &id("web")),
        &id("web"),
        &ours.public_key_der(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("key"), "{err}");
}

#[test]
fn a_leaf_not_signed_by_the_bundle_is_refused() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ca, other) = (authority(a.path()), authority(b.path()));
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let mut chain = answer(&other, &key, &id("web"));
    *chain.last_mut().unwrap() = ca.root_bundle_pem();
    let err = check_answer(&chain, &id("web"), &key.public_key_der()).unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
}

#[test]
fn short_or_garbled_answers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path());
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let chain = answer(&ca, &key, &id("web"));
    assert!(check_answer(&chain[..1], &id("web"), &key.public_key_der()).is_err());
    assert!(check_answer(&[], &id("web"), &key.public_key_der()).is_err());
    let garbled = vec!["nonsense".to_owned(), ca.root_bundle_pem()];
    assert!(check_answer(&garbled, &id("web"), &key.public_key_der()).is_err());
}
