//! `load_ca` against the mock API server: Secrets shaped like the real API's
//! (base64 `data`, `metadata.resourceVersion`), `Status` errors with their
//! `reason`, and an API server that is down.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use http::Method;
use serde_json::{json, Value};
use x509_parser::prelude::FromDer as _;

use super::*;
use crate::pki::key::PrivateKey;
use crate::test_helpers::kube_api::{Call, MockApi, Reply};
use crate::time::SystemClock;

const NS: &str = "meshid-system";
const PLUGIN_PATH: &str = "/api/v1/namespaces/meshid-system/secrets/cacerts";
const ROOT_PATH: &str = "/api/v1/namespaces/meshid-system/secrets/istio-ca-secret";
const SECRETS_PATH: &str = "/api/v1/namespaces/meshid-system/secrets";

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
        deadline: Duration::from_secs(5),
    }
}

async fn load(client: &::kube::Client) -> Result<LoadedCa, CaSecretError> {
    load_with(client, &fast_retry(), &CancellationToken::new()).await
}

async fn load_with(
    client: &::kube::Client,
    retry: &RetryPolicy,
    cancel: &CancellationToken,
) -> Result<LoadedCa, CaSecretError> {
    load_ca(
        client,
        NS,
        &AuthorityConfig::default(),
        &SystemClock,
        retry,
        cancel,
    )
    .await
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(value: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str().expect("base64 string"))
        .expect("valid base64")
}

/// A Secret as the API server returns it.
fn secret_json(name: &str, type_: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String(b64(v.as_bytes()))))
        .collect();
    json!({
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": format!("uid-{name}"),
            "resourceVersion": "1001",
            "creationTimestamp": "2026-11-22T10:00:00Z",
        },
        "type": type_,
        "data": data,
    })
}

/// What the API server answers to a create: the object with server fields.
fn created(body: &Value) -> Value {
    let mut object = body.clone();
    object["kind"] = json!("Secret");
    object["apiVersion"] = json!("v1");
    object["metadata"]["uid"] = json!("uid-created");
    object["metadata"]["resourceVersion"] = json!("2002");
    object["metadata"]["creationTimestamp"] = json!("2026-11-22T10:00:00Z");
    object
}

fn not_found(name: &str) -> Reply {
    Reply::status(404, "NotFound", &format!("secrets \"{name}\" not found"))
}

fn new_root_pem() -> crate::pki::authority::SelfSignedPem {
    Authority::create_self_signed_pem("test", &AuthorityConfig::default(), &SystemClock)
        .expect("root")
        .1
}

fn root_secret(pem: &crate::pki::authority::SelfSignedPem) -> Value {
    secret_json(
        SELF_SIGNED_SECRET,
        SELF_SIGNED_SECRET_TYPE,
        &[
            ("ca-cert.pem", &pem.cert_pem),
            ("ca-key.pem", &pem.key_pem),
            ("cert-chain.pem", ""),
            ("key.pem", ""),
            ("root-cert.pem", &pem.cert_pem),
        ],
    )
}

/// An API server with no CA Secret at all that stores what is created.
fn empty_cluster(call: &Call, stored: &mut Option<Value>) -> Reply {
    match (&call.method, call.path.as_str()) {
        (&Method::GET, PLUGIN_PATH) => not_found(PLUGIN_SECRET),
        (&Method::GET, ROOT_PATH) => match stored {
            Some(secret) => Reply::ok(secret.clone()),
            None => not_found(SELF_SIGNED_SECRET),
        },
        (&Method::POST, SECRETS_PATH) => {
            let object = created(&call.body);
            *stored = Some(object.clone());
            Reply::Json(http::StatusCode::CREATED, object)
        }
        other => panic!("unexpected request {other:?}"),
    }
}

fn cert_spki(pem: &str) -> Vec<u8> {
    let der = crate::pki::bundle::parse_pem_certs(pem).expect("cert")[0].to_vec();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).expect("parse");
    cert.public_key().raw.to_vec()
}

#[tokio::test]
async fn no_secret_creates_istio_ca_secret_whose_key_matches_its_root() {
    let mut stored = None;
    let (client, api) = MockApi::start(move |call| empty_cluster(call, &mut stored));
    let loaded = load(&client).await.expect("loaded");
    assert_eq!(loaded.source, CaSource::SelfSignedCreated);

    let posts = api.calls_to(&Method::POST, SECRETS_PATH);
    assert_eq!(posts.len(), 1);
    let body = &posts[0].body;
    assert_eq!(body["metadata"]["name"], SELF_SIGNED_SECRET);
    assert_eq!(body["type"], SELF_SIGNED_SECRET_TYPE);
    let data = body["data"].as_object().expect("data");
    let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "key.pem",
            "root-cert.pem"
        ])
    );
    let cert_pem = String::from_utf8(unb64(&data["ca-cert.pem"])).expect("utf-8");
    let key_pem = String::from_utf8(unb64(&data["ca-key.pem"])).expect("utf-8");
    assert_eq!(unb64(&data["root-cert.pem"]), cert_pem.as_bytes());
    assert!(unb64(&data["cert-chain.pem"]).is_empty());
    let key = PrivateKey::from_pem(&key_pem).expect("key");
    assert_eq!(key.public_key_der(), cert_spki(&cert_pem));
    assert_eq!(
        loaded.authority.roots_der()[0].to_vec(),
        crate::pki::bundle::parse_pem_certs(&cert_pem).expect("cert")[0].to_vec()
    );
}

#[tokio::test]
async fn two_replicas_racing_end_up_with_the_one_root_that_was_stored() {
    // Both replicas' GETs arrive before either create (the race); the first
    // create wins with 201, the second gets 409 AlreadyExists.
    let stored: Arc<Mutex<Option<Value>>> = Arc::default();
    let seen = stored.clone();
    let mut root_gets = 0;
    let (client, api) = MockApi::start(move |call| {
        let mut stored = seen.lock().expect("lock");
        match (&call.method, call.path.as_str()) {
            (&Method::GET, ROOT_PATH) => {
                root_gets += 1;
                match (&*stored, root_gets <= 2) {
                    (Some(secret), false) => Reply::ok(secret.clone()),
                    _ => not_found(SELF_SIGNED_SECRET),
                }
            }
            (&Method::POST, SECRETS_PATH) if stored.is_some() => Reply::status(
                409,
                "AlreadyExists",
                "secrets \"istio-ca-secret\" already exists",
            ),
            _ => empty_cluster(call, &mut stored),
        }
    });
    let (a, b) = tokio::join!(load(&client), load(&client));
    let (a, b) = (a.expect("replica a"), b.expect("replica b"));
    let mut sources = [a.source, b.source];
    sources.sort_by_key(|s| *s == CaSource::SelfSignedLoaded);
    assert_eq!(
        sources,
        [CaSource::SelfSignedCreated, CaSource::SelfSignedLoaded]
    );
    assert_eq!(a.authority.roots_der(), b.authority.roots_der());
    let winner = stored.lock().expect("lock").clone().expect("stored");
    let winner_pem = String::from_utf8(unb64(&winner["data"]["ca-cert.pem"])).expect("utf-8");
    assert_eq!(
        a.authority.roots_der()[0].to_vec(),
        crate::pki::bundle::parse_pem_certs(&winner_pem).expect("cert")[0].to_vec()
    );
    assert_eq!(api.calls_to(&Method::POST, SECRETS_PATH).len(), 2);
}

#[tokio::test]
async fn an_existing_root_secret_is_loaded_and_nothing_is_created() {
    let pem = new_root_pem();
    let secret = root_secret(&pem);
    let (client, api) = MockApi::start(move |call| match call.path.as_str() {
        PLUGIN_PATH => not_found(PLUGIN_SECRET),
        ROOT_PATH => Reply::ok(secret.clone()),
        other => panic!("unexpected request to {other}"),
    });
    let loaded = load(&client).await.expect("loaded");
    assert_eq!(loaded.source, CaSource::SelfSignedLoaded);
    assert_eq!(
        loaded.authority.root_bundle_pem().trim(),
        pem.cert_pem.trim()
    );
    assert!(api.calls_to(&Method::POST, "/").is_empty());
}

/// A plug-in `cacerts` Secret: a root used directly as the signing CA,
/// optionally with another root's key or without some entries.
fn cacerts(signing: &crate::pki::authority::SelfSignedPem, key: &str, skip: &str) -> Value {
    let entries = [
        ("ca-cert.pem", signing.cert_pem.as_str()),
        ("ca-key.pem", key),
        ("cert-chain.pem", ""),
        ("root-cert.pem", signing.cert_pem.as_str()),
    ];
    let kept: Vec<(&str, &str)> = entries.into_iter().filter(|(k, _)| *k != skip).collect();
    secret_json(PLUGIN_SECRET, "Opaque", &kept)
}

fn plugin_cluster(secret: Value) -> (::kube::Client, MockApi) {
    MockApi::start(move |call| match call.path.as_str() {
        PLUGIN_PATH => Reply::ok(secret.clone()),
        other => panic!("the plug-in CA must be used alone, got a request to {other}"),
    })
}

#[tokio::test]
async fn a_cacerts_secret_is_used_as_the_plugin_ca() {
    let pem = new_root_pem();
    let (client, _api) = plugin_cluster(cacerts(&pem, &pem.key_pem, ""));
    let loaded = load(&client).await.expect("loaded");
    assert_eq!(loaded.source, CaSource::PluginSecret);
    assert_eq!(
        loaded.authority.root_bundle_pem().trim(),
        pem.cert_pem.trim()
    );
}

#[tokio::test]
async fn a_cacerts_key_that_does_not_match_refuses_start_naming_ca_key_pem() {
    let (pem, other) = (new_root_pem(), new_root_pem());
    let (client, api) = plugin_cluster(cacerts(&pem, &other.key_pem, ""));
    let err = load(&client).await.expect_err("mismatch");
    assert!(
        matches!(
            &err,
            CaSecretError::Authority(AuthorityError::KeyMismatch { .. })
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("Secret meshid-system/cacerts key ca-key.pem"),
        "{err}"
    );
    assert_eq!(api.calls().len(), 1, "a bad cacerts is not retried");
}

#[tokio::test]
async fn a_cacerts_without_root_cert_pem_refuses_start_naming_it() {
    let pem = new_root_pem();
    let (client, _api) = plugin_cluster(cacerts(&pem, &pem.key_pem, "root-cert.pem"));
    let err = load(&client).await.expect_err("missing");
    assert!(
        err.to_string()
            .contains("Secret meshid-system/cacerts key root-cert.pem is missing"),
        "{err}"
    );
}

#[tokio::test]
async fn an_api_server_down_at_start_is_retried_until_it_answers() {
    let mut stored = None;
    let mut requests = 0;
    let (client, api) = MockApi::start(move |call| {
        requests += 1;
        match requests {
            1 | 2 => Reply::Unreachable,
            3 => Reply::status(503, "ServiceUnavailable", "etcd leader changed"),
            _ => empty_cluster(call, &mut stored),
        }
    });
    let loaded = load(&client).await.expect("loaded after retries");
    assert_eq!(loaded.source, CaSource::SelfSignedCreated);
    assert_eq!(api.calls_to(&Method::GET, PLUGIN_PATH).len(), 4);
}

#[tokio::test]
async fn an_api_server_that_stays_down_fails_at_the_deadline_with_the_last_error() {
    let (client, api) = MockApi::start(|_| Reply::Unreachable);
    let retry = RetryPolicy {
        deadline: Duration::from_millis(30),
        ..fast_retry()
    };
    let err = load_with(&client, &retry, &CancellationToken::new())
        .await
        .expect_err("down");
    let CaSecretError::Unavailable { attempts, last, .. } = &err else {
        panic!("expected Unavailable, got {err}");
    };
    assert!(*attempts >= 2, "{err}");
    assert!(
        matches!(**last, CaSecretError::Api { verb: "get", .. }),
        "{err}"
    );
    assert_eq!(api.calls().len() as u32, *attempts);
}

#[tokio::test]
async fn cancellation_stops_the_retries() {
    let (client, _api) = MockApi::start(|_| Reply::Unreachable);
    let cancel = CancellationToken::new();
    cancel.cancel();
    let retry = RetryPolicy {
        initial_backoff: Duration::from_secs(3600),
        max_backoff: Duration::from_secs(3600),
        deadline: Duration::from_secs(7200),
    };
    let err = load_with(&client, &retry, &cancel)
        .await
        .expect_err("cancelled");
    assert!(matches!(err, CaSecretError::Cancelled), "{err}");
}

#[tokio::test]
async fn forbidden_names_the_missing_rbac_permission() {
    let (client, api) = MockApi::start(|call| {
        match call.method {
        Method::GET if call.path == PLUGIN_PATH => not_found(PLUGIN_SECRET),
        Method::GET => not_found(SELF_SIGNED_SECRET),
        _ => Reply::status(
            403,
            "Forbidden",
            "secrets is forbidden: User \"system:serviceaccount:meshid-system:meshid-ca\" \
             cannot create resource \"secrets\" in API group \"\" in the namespace \"meshid-system\"",
        ),
    }
    });
    let err = load(&client).await.expect_err("forbidden");
    assert!(
        matches!(
            &err,
            CaSecretError::Forbidden {
                verb: "create",
                name: SELF_SIGNED_SECRET,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("create secrets in namespace meshid-system")
            && msg.contains("verb \"create\" on resource \"secrets\""),
        "{msg}"
    );
    assert_eq!(
        api.calls_to(&Method::POST, SECRETS_PATH).len(),
        1,
        "not retried"
    );
}
