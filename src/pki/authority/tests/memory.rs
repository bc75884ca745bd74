//! In-memory CA files (the data of a Kubernetes Secret): the same checks as
//! on disk, errors naming the Secret key, and no key material in `Debug`.

use super::*;

const CACERTS: &str = "Secret meshid-system/cacerts";

fn memory<T: AsRef<str>>(label: &str, entries: &[(&str, T)]) -> MemoryFiles {
    let mut files = MemoryFiles::new(label);
    for (name, text) in entries {
        files.insert(*name, text.as_ref().as_bytes().to_vec());
    }
    files
}

#[test]
fn a_root_made_in_memory_loads_back_from_its_pem_and_signs() {
    let label = "Secret meshid-system/istio-ca-secret";
    let (made, pem) = Authority::create_self_signed_pem(label, &cfg(), &clock()).unwrap();
    let files = memory(
        label,
        &[
            (CA_KEY_FILE, pem.key_pem.as_str()),
            (CA_CERT_FILE, pem.cert_pem.as_str()),
        ],
    );
    let loaded = Authority::from_self_signed_files(&files, &cfg(), &clock()).unwrap();
    assert_eq!(loaded.roots_der(), made.roots_der());
    let key = PrivateKey::from_pem(&pem.key_pem).unwrap();
    assert_eq!(key.public_key_der(), spki_of(&made.roots_der()[0]));
    let issued = leaf_for(&loaded, &clock());
    validate::check_leaf(&issued.der, &id("a", "x"), &spki_of(&made.roots_der()[0])).unwrap();
}

#[test]
fn in_memory_key_material_never_prints() {
    // Rule: private keys never appear in Debug output.
    let (authority, pem) = Authority::create_self_signed_pem("s", &cfg(), &clock()).unwrap();
    let files = memory("s", &[(CA_KEY_FILE, pem.key_pem.as_str())]);
    let body = pem.key_pem.lines().nth(1).unwrap().to_owned();
    for printed in [
        format!("{pem:?}"),
        format!("{files:?}"),
        format!("{authority:?}"),
    ] {
        assert!(
            !printed.contains("PRIVATE") && !printed.contains(&body),
            "{printed}"
        );
    }
    assert!(format!("{files:?}").contains(CA_KEY_FILE));
}

#[test]
fn in_memory_self_signed_root_without_its_key_names_the_missing_key() {
    let (_, pem) = Authority::create_self_signed_pem("s", &cfg(), &clock()).unwrap();
    let files = memory(
        "Secret meshid-system/istio-ca-secret",
        &[(CA_CERT_FILE, pem.cert_pem.as_str())],
    );
    let err = Authority::from_self_signed_files(&files, &cfg(), &clock()).unwrap_err();
    assert!(
        matches!(&err, AuthorityError::MissingFile { path, .. } if path.ends_with(CA_KEY_FILE)),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("Secret meshid-system/istio-ca-secret key ca-key.pem"),
        "{err}"
    );
}

#[test]
fn in_memory_plugin_with_a_foreign_key_is_refused_naming_the_secret_keys() {
    let root = TestCa::root(TestCa::params("test root"));
    let signing = root.issue(TestCa::params("test intermediate"));
    let files = memory(
        CACERTS,
        &[
            ("ca-cert.pem", &signing.cert_pem()),
            ("ca-key.pem", &root.key_pem()),
            ("cert-chain.pem", &signing.cert_pem()),
            ("root-cert.pem", &root.cert_pem()),
        ],
    );
    let err = Authority::load_plugin_files(&files, &cfg(), &clock()).unwrap_err();
    assert!(
        matches!(&err, AuthorityError::KeyMismatch { key, .. } if key.ends_with("ca-key.pem")),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("Secret meshid-system/cacerts key ca-key.pem"),
        "{err}"
    );
}

#[test]
fn in_memory_plugin_loads_and_a_missing_root_file_is_named() {
    let root = TestCa::root(TestCa::params("test root"));
    let signing = root.issue(TestCa::params("test intermediate"));
    let mut entries = vec![
        ("ca-cert.pem", signing.cert_pem()),
        ("ca-key.pem", signing.key_pem()),
        ("root-cert.pem", root.cert_pem()),
    ];
    let files = memory(CACERTS, &entries);
    let authority = Authority::load_plugin_files(&files, &cfg(), &clock()).unwrap();
    assert_eq!(authority.chain_pem().len(), 1);
    leaf_for(&authority, &clock());

    entries.pop();
    let files = memory(CACERTS, &entries);
    let err = Authority::load_plugin_files(&files, &cfg(), &clock()).unwrap_err();
    assert!(
        err.to_string()
            .contains("Secret meshid-system/cacerts key root-cert.pem is missing"),
        "{err}"
    );
}

#[test]
fn an_empty_secret_holds_no_plugin_ca() {
    let err =
        Authority::load_plugin_files(&MemoryFiles::new(CACERTS), &cfg(), &clock()).unwrap_err();
    assert!(
        matches!(&err, AuthorityError::NoPluginFiles { store } if store == CACERTS),
        "{err}"
    );
}
