//! `meshid ca --platform kube`: its root in a Secret, root ConfigMaps by the
//! Lease holder, readiness from the informers, tokens by TokenReview.

use std::time::Duration;

use axum::http::Method;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use meshid::audit::Outcome;
use meshid::test_helpers::{free_port, key_and_csr, request, CaProcess, TestEnv};
use serde_json::json;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

use super::{eventually, namespace, seed_cluster, service_account_jwt};
use crate::support::{audit_rows, bin, http_get, last_refusal};
use meshid::test_helpers::kube_api::{
    kubeconfig, FakeApi, TokenIdentity, CONFIGMAPS, LEASES, NAMESPACES, PODS, SECRETS,
};

const SECRETS_PATH: &str = "/api/v1/namespaces/meshid-system/secrets";
const ROOT_CM: &str = "istio-ca-root-cert";

fn der(pem: &str) -> Vec<Vec<u8>> {
    meshid::pki::bundle::parse_pem_certs(pem)
        .unwrap()
        .into_iter()
        .map(|c| c.as_ref().to_vec())
        .collect()
}

/// The root certificate (DER) stored in Secret `meshid-system/istio-ca-secret`.
fn secret_root(api: &FakeApi) -> Vec<u8> {
    let secret = api
        .get(&SECRETS, "meshid-system", "istio-ca-secret")
        .expect("Secret istio-ca-secret exists");
    let pem = STANDARD
        .decode(secret["data"]["ca-cert.pem"].as_str().unwrap())
        .unwrap();
    der(std::str::from_utf8(&pem).unwrap()).remove(0)
}

/// The root ConfigMap's bundle (DER) in `ns`, if present and PEM.
fn configmap_root(api: &FakeApi, ns: &str) -> Option<Vec<Vec<u8>>> {
    let cm = api.get(&CONFIGMAPS, ns, ROOT_CM)?;
    let pem = cm["data"]["root-cert.pem"].as_str()?;
    let certs = meshid::pki::bundle::parse_pem_certs(pem).ok()?;
    Some(certs.into_iter().map(|c| c.as_ref().to_vec()).collect())
}

fn ready(ca: &CaProcess) -> bool {
    http_get(ca.metrics_addr, "/readyz").0 == 200
}

fn lease_holder(api: &FakeApi) -> Option<String> {
    let lease = api.get(&LEASES, "meshid-system", "meshid-ca-root-cert")?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn ca_on_kube_creates_one_root_secret_and_issues_after_tokenreview() {
    let api = FakeApi::start();
    seed_cluster(&api);
    api.set_failing(&PODS, true);
    let env = TestEnv::new();
    let kubeconfig = api.kubeconfig(env.dir.path());
    let ca = CaProcess::spawn_kube(bin(), &env, &kubeconfig, "ca-0", &[]).unwrap();

    // Not ready while the API server refuses to list pods: kube's client
    // retries a 503 three times, then the watcher backs off and relists.
    eventually(
        "a pod relist after refusals",
        Duration::from_secs(20),
        || api.calls_to(&Method::GET, "/api/v1/pods").len() >= 5,
    )
    .await;
    assert_eq!(
        http_get(ca.metrics_addr, "/readyz").0,
        503,
        "ready before the pods synced"
    );
    api.set_failing(&PODS, false);
    eventually(
        "/readyz 200 once the informers synced",
        Duration::from_secs(30),
        || ready(&ca),
    )
    .await;

    // One CA Secret created, holding the root the CA serves, and one
    // holding the audit log's checkpoint key.
    let creates = secret_creates(&api, "istio-ca-secret");
    assert_eq!(creates.len(), 1, "one Secret create");
    assert_eq!(
        secret_creates(&api, "meshid-audit-checkpoint-key").len(),
        1,
        "one checkpoint key Secret"
    );
    let secret = api
        .get(&SECRETS, "meshid-system", "istio-ca-secret")
        .unwrap();
    assert_eq!(secret["type"], "istio.io/ca-root");
    assert!(secret["data"]["ca-key.pem"]
        .as_str()
        .is_some_and(|k| !k.is_empty()));
    let root = secret_root(&api);
    assert_eq!(
        der(&env.root_pem()),
        vec![root.clone()],
        "DATA_DIR/root-cert.pem is the Secret's root"
    );

    // The root ConfigMap in every namespace, then in a new one, and repaired.
    let everywhere = |namespaces: &[&str]| {
        namespaces
            .iter()
            .all(|ns| configmap_root(&api, ns) == Some(vec![root.clone()]))
    };
    eventually(
        "root ConfigMaps in every namespace",
        Duration::from_secs(20),
        || everywhere(&["default", "meshid-system", "shop"]),
    )
    .await;
    api.put(&NAMESPACES, namespace("late"));
    api.delete(&CONFIGMAPS, "shop", ROOT_CM);
    let mut edited = api.get(&CONFIGMAPS, "default", ROOT_CM).unwrap();
    edited["data"]["root-cert.pem"] = json!("edited by hand");
    api.put(&CONFIGMAPS, edited);
    eventually(
        "ConfigMaps created, recreated and repaired",
        Duration::from_secs(20),
        || everywhere(&["default", "meshid-system", "shop", "late"]),
    )
    .await;
    let cm = api.get(&CONFIGMAPS, "late", ROOT_CM).unwrap();
    assert_eq!(cm["metadata"]["labels"]["istio.io/config"], "true");

    // A token TokenReview authenticates as default/web, bound to pod web.
    let web = service_account_jwt("system:serviceaccount:default:web", "web-1");
    api.add_token(
        &web,
        TokenIdentity::service_account("default", "web").bound_to("web", "uid-web", "node-a"),
    );
    let id = env.id("default", "web");
    let (_key, csr) = key_and_csr(&id);
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    let chain = client
        .create_certificate(request(&csr, 3600, Some(&web), None))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert!(chain.len() >= 2);
    assert_eq!(
        der(chain.last().unwrap()),
        vec![root.clone()],
        "the chain ends in the Secret's root"
    );
    let leaf = der(&chain[0]).remove(0);
    let (_, leaf) = parse_x509_certificate(&leaf).unwrap();
    let (_, root_cert) = parse_x509_certificate(&root).unwrap();
    leaf.verify_signature(Some(root_cert.public_key()))
        .expect("the leaf is signed by the Secret's root");
    let uris: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, ["spiffe://cluster.local/ns/default/sa/web"]);
    let reviews = api.calls_to(&Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews");
    assert_eq!(reviews.len(), 1, "one TokenReview per request");
    assert_eq!(reviews[0].body["spec"]["audiences"], json!(["istio-ca"]));

    // A token TokenReview refuses.
    let unknown = service_account_jwt("system:serviceaccount:default:web", "forged");
    let err = client
        .create_certificate(request(&csr, 3600, Some(&unknown), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // A token TokenReview accepts, bound to a pod uid that is no longer web's.
    let stale = service_account_jwt("system:serviceaccount:default:web", "old-pod");
    api.add_token(
        &stale,
        TokenIdentity::service_account("default", "web").bound_to("web", "uid-old-web", "node-a"),
    );
    let err = client
        .create_certificate(request(&csr, 3600, Some(&stale), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("uid-old-web"), "{}", err.message());

    // Audited: one issued to web, two refused; `meshid audit list` shows them.
    let rows = audit_rows(&env);
    let web_id = id.to_string();
    let issued = rows
        .iter()
        .filter(|r| r.outcome == Outcome::Issued && r.granted_identity.as_deref() == Some(&web_id));
    assert_eq!(issued.count(), 1, "{rows:?}");
    assert_eq!(
        rows.iter()
            .filter(|r| r.outcome == Outcome::Refused)
            .count(),
        2,
        "{rows:?}"
    );
    let out = std::process::Command::new(bin())
        .args(["audit", "list", "--data-dir"])
        .arg(&env.data_dir)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains(&web_id), "{table}");
    assert!(table.contains("uid-old-web"), "{table}");
    assert!(table.contains("token lookup failed"), "{table}");
    api.assert_all_served();
}

#[tokio::test]
async fn second_ca_replica_loads_the_same_root() {
    let api = FakeApi::start();
    seed_cluster(&api);
    let first_env = TestEnv::new();
    let kubeconfig = api.kubeconfig(first_env.dir.path());
    let mut first = CaProcess::spawn_kube(bin(), &first_env, &kubeconfig, "ca-0", &[]).unwrap();
    eventually("ca-0 holds the Lease", Duration::from_secs(20), || {
        lease_holder(&api).as_deref() == Some("ca-0")
    })
    .await;

    let second_env = TestEnv::new();
    let second = CaProcess::spawn_kube(bin(), &second_env, &kubeconfig, "ca-1", &[]).unwrap();
    assert_eq!(
        api.calls_to(&Method::POST, SECRETS_PATH).len(),
        2,
        "the second replica created no Secret (the first: the CA's and the checkpoint key's)"
    );
    // Both replicas sign the audit log's checkpoints with the key in the Secret.
    let vkey = |env: &TestEnv| {
        std::fs::read_to_string(env.data_dir.join("audit-checkpoint.vkey")).unwrap()
    };
    assert_eq!(vkey(&first_env), vkey(&second_env));
    assert_eq!(der(&first_env.root_pem()), der(&second_env.root_pem()));
    assert_eq!(der(&second_env.root_pem()), vec![secret_root(&api)]);
    eventually(
        "ca-1 sees the Lease held by ca-0",
        Duration::from_secs(20),
        || second.log_text().contains("lease held by another replica"),
    )
    .await;
    assert_eq!(lease_holder(&api).as_deref(), Some("ca-0"), "one holder");

    // ca-0 releases the Lease as it stops; ca-1 takes it over.
    assert!(first.terminate().unwrap().success());
    eventually("ca-1 holds the Lease", Duration::from_secs(20), || {
        lease_holder(&api).as_deref() == Some("ca-1")
    })
    .await;
    // ...and keeps the root ConfigMaps from then on.
    api.delete(&CONFIGMAPS, "shop", ROOT_CM);
    let root = secret_root(&api);
    eventually(
        "ca-1 recreates shop's root ConfigMap",
        Duration::from_secs(20),
        || configmap_root(&api, "shop") == Some(vec![root.clone()]),
    )
    .await;
    api.assert_all_served();
}

#[tokio::test]
async fn api_server_down_at_start_then_up() {
    let addr = free_port().unwrap();
    let env = TestEnv::new();
    let kubeconfig = kubeconfig(env.dir.path(), addr);
    let log = env.dir.path().join("ca-ca-0.log");
    let (started_tx, started) = std::sync::mpsc::channel();
    let spawned = {
        let kubeconfig = kubeconfig.clone();
        // The CA prints its address only once it has its root from the cluster.
        std::thread::spawn(move || {
            let ca = CaProcess::spawn_kube(bin(), &env, &kubeconfig, "ca-0", &[]);
            let _ = started_tx.send(());
            (env, ca.map_err(|e| e.to_string()))
        })
    };
    eventually(
        "the CA retrying while the API server is down",
        Duration::from_secs(20),
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("retrying")),
    )
    .await;
    assert!(
        started.try_recv().is_err(),
        "the CA started without its root"
    );

    let api = FakeApi::start_at(addr);
    seed_cluster(&api);
    eventually("the CA started", Duration::from_secs(60), || {
        started.try_recv().is_ok()
    })
    .await;
    let (env, ca) = spawned.join().unwrap();
    let ca = ca.unwrap();
    eventually("/readyz 200", Duration::from_secs(60), || ready(&ca)).await;
    assert_eq!(der(&env.root_pem()), vec![secret_root(&api)]);
    api.assert_all_served();
}

#[tokio::test]
async fn ca_stays_ready_on_its_caches_when_the_api_server_goes_away() {
    let api = FakeApi::start();
    seed_cluster(&api);
    let env = TestEnv::new();
    let kubeconfig = api.kubeconfig(env.dir.path());
    let ca = CaProcess::spawn_kube(bin(), &env, &kubeconfig, "ca-0", &[]).unwrap();
    eventually("/readyz 200", Duration::from_secs(30), || ready(&ca)).await;
    api.assert_all_served();

    drop(api);
    eventually("the pod watch failing", Duration::from_secs(30), || {
        ca.log_text()
            .lines()
            .any(|l| l.contains("watch failed; serving from the cache") && l.contains("pods"))
    })
    .await;
    assert_eq!(
        http_get(ca.metrics_addr, "/readyz").0,
        200,
        "ready on its caches"
    );

    // Without TokenReview no token can be checked: no certificate, the
    // caller is told to retry (UNAVAILABLE, not UNAUTHENTICATED), and the
    // audit record says why.
    let web = service_account_jwt("system:serviceaccount:default:web", "web-1");
    let (_key, csr) = key_and_csr(&env.id("default", "web"));
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    let err = client
        .create_certificate(request(&csr, 3600, Some(&web), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let refusal = last_refusal(&env);
    let reason = refusal.reason.unwrap_or_default();
    assert!(
        reason.contains("TokenReview: the API server is unreachable"),
        "{reason}"
    );
}

/// `--token-verification jwks`: tokens are verified against the keys the API
/// server publishes for its service-account issuer (OIDC discovery + JWKS),
/// with no TokenReview at all; a token bound to a pod that no longer exists
/// (same name, other uid) is refused by the pod cache.
#[tokio::test]
async fn ca_on_kube_with_jwks_verifies_tokens_locally_and_checks_the_bound_pod() {
    let api = FakeApi::start();
    seed_cluster(&api);
    let env = TestEnv::new();
    // The local issuer stands in for the API server's signing key: its
    // tokens have the projected-token shape and its JWKS is what
    // `/openid/v1/jwks` serves.
    let jwks = serde_json::to_value(env.issuer().jwks()).unwrap();
    api.set_oidc(meshid::platform::local::LOCAL_ISSUER, jwks);
    let kubeconfig = api.kubeconfig(env.dir.path());
    let ca = CaProcess::spawn_kube(
        bin(),
        &env,
        &kubeconfig,
        "ca-0",
        &["--token-verification", "jwks"],
    )
    .unwrap();
    eventually("/readyz 200", Duration::from_secs(30), || ready(&ca)).await;

    let id = env.id("default", "web");
    let (_key, csr) = key_and_csr(&id);
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    let token = env.token("default", "web", Some(("web", "uid-web")), Some("node-a"));
    let chain = client
        .create_certificate(request(&csr, 3600, Some(&token), None))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert!(chain.len() >= 2, "{chain:?}");

    // Bound to a pod `web` that was deleted and recreated with another uid.
    let stale = env.token(
        "default",
        "web",
        Some(("web", "uid-old-web")),
        Some("node-a"),
    );
    let err = client
        .create_certificate(request(&csr, 3600, Some(&stale), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let reason = last_refusal(&env).reason.unwrap_or_default();
    assert!(reason.contains("uid-old-web"), "{reason}");

    // A token signed by some other key (not the API server's) is refused.
    let other = TestEnv::new();
    let forged = other.token("default", "web", Some(("web", "uid-web")), Some("node-a"));
    let err = client
        .create_certificate(request(&csr, 3600, Some(&forged), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    assert!(
        api.calls_to(&Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews")
            .is_empty(),
        "jwks mode makes no TokenReview"
    );
    assert!(!api.calls_to(&Method::GET, "/openid/v1/jwks").is_empty());
    api.assert_all_served();
}

/// The creates of Secret `name` the CA sent.
fn secret_creates(api: &FakeApi, name: &str) -> Vec<meshid::test_helpers::kube_api::Call> {
    api.calls_to(&Method::POST, SECRETS_PATH)
        .into_iter()
        .filter(|c| c.body["metadata"]["name"] == name)
        .collect()
}
