//! A plug-in CA (`--plugin-ca-dir`) changed while the CA runs: a new CA
//! whose key does not match its certificate, then one whose chain does not
//! verify to its root, are refused and named by `meshid ca authority list`
//! while the current authority keeps signing; a good one becomes the
//! prepared authority, and once activated new leaves chain to it.
//!
//! The directory is laid out as the kubelet mounts a Secret: each file a
//! symbolic link through `..data` to a versioned directory, and every
//! change one rename of `..data`, so the CA never reads half of a change.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use x509_parser::prelude::FromDer as _;

use super::*;

const FILES: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "cert-chain.pem",
    "root-cert.pem",
];

/// A CA certificate's parameters: `name`, allowed to sign certificates and
/// CRLs, valid from an hour ago for `days`.
fn ca_params(name: &str, days: i64) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    params
}

/// A self-signed root: its parameters (to sign with), key and PEM.
struct Root {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn root(name: &str) -> Root {
    let params = ca_params(name, 30);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Root { params, key, pem }
}

/// An intermediate signing CA under `issuer`: its key and PEM.
fn intermediate(name: &str, issuer: &Root) -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let issuer = Issuer::from_params(&issuer.params, &issuer.key);
    let cert = ca_params(name, 20).signed_by(&key, &issuer).unwrap();
    (key, cert.pem())
}

/// The Istio `cacerts` files of a plug-in CA.
struct PluginFiles {
    ca_cert: String,
    ca_key: String,
    cert_chain: String,
    root_cert: String,
}

impl PluginFiles {
    /// A good plug-in CA: intermediate `name` under a new root.
    fn good(name: &str) -> Self {
        let root = root(&format!("{name} root"));
        let (key, cert) = intermediate(name, &root);
        Self {
            cert_chain: format!("{cert}{}", root.pem),
            ca_cert: cert,
            ca_key: key.serialize_pem(),
            root_cert: root.pem,
        }
    }

    fn contents(&self) -> [(&str, &str); 4] {
        [
            ("ca-cert.pem", &self.ca_cert),
            ("ca-key.pem", &self.ca_key),
            ("cert-chain.pem", &self.cert_chain),
            ("root-cert.pem", &self.root_cert),
        ]
    }
}

/// Puts `files` in `dir` at once, as the kubelet updates a Secret volume:
/// a new versioned directory, then `..data` renamed to point at it.
fn publish(dir: &Path, version: usize, files: &PluginFiles) {
    let versioned = format!("..v{version}");
    std::fs::create_dir(dir.join(&versioned)).unwrap();
    for (name, text) in files.contents() {
        std::fs::write(dir.join(&versioned).join(name), text).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&versioned, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in FILES {
        let link = dir.join(name);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), link).unwrap();
        }
    }
}

/// `meshid ca authority <args> --data-dir DATA_DIR`; (success, stdout, stderr).
fn authority(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(["ca", "authority"])
        .args(args)
        .arg("--data-dir")
        .arg(&env.data_dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `authority list -o json`: the (id, state) pairs, and stderr (where warnings go).
fn list(env: &TestEnv) -> (Vec<(String, String)>, String) {
    let (ok, out, err) = authority(env, &["list", "-o", "json"]);
    assert!(ok, "authority list: {err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pairs = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (pairs, err)
}

fn der(pem: &str) -> Vec<Vec<u8>> {
    meshid::pki::parse_pem_certs(pem)
        .unwrap()
        .into_iter()
        .map(|c| c.to_vec())
        .collect()
}

/// A certificate for `default/client` from the CA: its chain, as PEM blocks.
async fn issue(env: &TestEnv, ca: &CaProcess) -> Vec<String> {
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    let token = env.token(
        "default",
        "client",
        Some(("client-1", "uid-client-1")),
        Some("node-a"),
    );
    let (_key, csr) = meshid::test_helpers::key_and_csr(&env.id("default", "client"));
    client
        .create_certificate(meshid::test_helpers::request(&csr, 600, Some(&token), None))
        .await
        .unwrap()
        .into_inner()
        .cert_chain
}

/// Whether the leaf (first certificate of `chain_pem`) is signed by the key of `issuer_pem`.
fn leaf_signed_by(chain_pem: &str, issuer_pem: &str) -> bool {
    let leaf = der(chain_pem).remove(0);
    let issuer = der(issuer_pem).remove(0);
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(&leaf).unwrap();
    let (_, issuer) = x509_parser::certificate::X509Certificate::from_der(&issuer).unwrap();
    leaf.verify_signature(Some(issuer.public_key())).is_ok()
}

/// Waits until `list` warns with every one of `wanted`; checks that nothing
/// else changed (the first authority active, nothing prepared) and that
/// the warning came within 8 s of the change.
async fn refused_with(env: &TestEnv, active: &str, wanted: &[&str]) {
    let changed = Instant::now();
    eventually(&format!("a warning naming {wanted:?}"), async || {
        let (_, err) = list(env);
        wanted.iter().all(|w| err.contains(w))
    })
    .await;
    let took = changed.elapsed();
    let (authorities, err) = list(env);
    eprintln!("refused after {took:?}: {err}");
    assert!(took < Duration::from_secs(8), "named only after {took:?}");
    assert!(err.contains("WARNING: "), "{err}");
    assert!(err.contains("the current authority keeps signing"), "{err}");
    assert_eq!(
        authorities,
        vec![(active.to_owned(), "active".to_owned())],
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_plugin_ca_is_refused_when_bad_and_prepared_when_good() {
    let plugin = tempfile::tempdir().unwrap();
    let dir = plugin.path();
    let first = PluginFiles::good("plugin-one");
    publish(dir, 1, &first);
    let (env, ca) = env_and_ca_with(&["--plugin-ca-dir", dir.to_str().unwrap()]);
    let (authorities, err) = list(&env);
    assert_eq!(authorities.len(), 1, "{authorities:?}");
    assert!(!err.contains("WARNING"), "{err}");
    let active = authorities[0].0.clone();
    assert_eq!(authorities[0].1, "active");
    assert!(leaf_signed_by(&issue(&env, &ca).await[0], &first.ca_cert));

    // The CA does not make the next plug-in CA: its operator does.
    let (ok, _, err) = authority(&env, &["prepare"]);
    assert!(!ok, "prepare on a plug-in CA succeeded");
    assert!(
        err.contains("--plugin-ca-dir") && err.contains("prepared authority"),
        "names the plug-in directory route: {err}"
    );

    // (a) A key that does not belong to the certificate.
    let mut mismatched = PluginFiles::good("plugin-two");
    mismatched.ca_key = KeyPair::generate().unwrap().serialize_pem();
    publish(dir, 2, &mismatched);
    refused_with(
        &env,
        &active,
        &[
            "refused",
            "ca-key.pem",
            "does not belong to the certificate",
        ],
    )
    .await;

    // (b) An intermediate that does not chain to the root beside it.
    let elsewhere = root("plugin-three's real root");
    let (key, cert) = intermediate("plugin-three", &elsewhere);
    let stranger = root("plugin-three's stated root");
    let unchained = PluginFiles {
        cert_chain: format!("{cert}{}", stranger.pem),
        ca_cert: cert,
        ca_key: key.serialize_pem(),
        root_cert: stranger.pem,
    };
    publish(dir, 3, &unchained);
    refused_with(
        &env,
        &active,
        &["refused", "plugin-three", "does not chain to a root"],
    )
    .await;
    // The first plug-in CA still signs.
    let chain = issue(&env, &ca).await;
    assert!(leaf_signed_by(&chain[0], &first.ca_cert));
    assert_eq!(der(chain.last().unwrap()), der(&first.root_cert));

    // (c) A good one: the prepared authority, trusted at once, signing once activated.
    let next = PluginFiles::good("plugin-four");
    publish(dir, 4, &next);
    let changed = Instant::now();
    eventually("the new plug-in CA prepared", async || {
        list(&env).0.iter().any(|(_, state)| state == "prepared")
    })
    .await;
    eprintln!("prepared after {:?}", changed.elapsed());
    let (authorities, err) = list(&env);
    assert!(
        !err.contains("WARNING"),
        "the refusal is no longer shown: {err}"
    );
    assert!(authorities.contains(&(active.clone(), "active".to_owned())));
    let prepared = authorities
        .iter()
        .find(|(_, s)| s == "prepared")
        .unwrap()
        .0
        .clone();
    eventually("both roots in DATA_DIR/root-cert.pem", async || {
        der(&env.root_pem()).len() == 2
    })
    .await;

    let (ok, _, err) = authority(&env, &["activate"]);
    assert!(ok, "activate: {err}");
    let (authorities, _) = list(&env);
    assert!(
        authorities.contains(&(prepared, "active".to_owned()))
            && authorities.contains(&(active, "old".to_owned())),
        "{authorities:?}"
    );
    let chain = issue(&env, &ca).await;
    assert!(
        leaf_signed_by(&chain[0], &next.ca_cert),
        "a new leaf chains to the new intermediate"
    );
    assert_eq!(der(&chain[1]), der(&next.ca_cert), "and carries it");
    let bundle = der(chain.last().unwrap());
    assert!(
        bundle.contains(&der(&next.root_cert)[0]) && bundle.contains(&der(&first.root_cert)[0]),
        "the bundle holds the old and the new root"
    );
}
