//! `--platform kube` end to end: the real `meshid` binary (CA, agent,
//! `meshid mtls`) as processes, reaching a fake Kubernetes API server on
//! 127.0.0.1 (`meshid::test_helpers::kube_api::FakeApi`) through a kubeconfig file, over a real socket.
//!
//! What these prove that the in-process mock tests cannot: that kube's client
//! is built from a kubeconfig, that every request meshid makes is one an API
//! server answers (paths, verbs, selectors, content types), and that the
//! binaries wire the backend up as the README says.

mod agent;
mod ca;
mod mtls;
mod rotation;
mod schedule;

use std::future::Future;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use meshid::test_helpers::kube_api::{FakeApi, NAMESPACES, PODS};

/// Waits until `check` holds, polling every 100 ms; panics after `timeout`
/// naming `what`.
pub(crate) async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "gave up after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Like [`eventually`], for an async attempt that yields a value once it succeeds.
pub(crate) async fn until_some<T, F, Fut>(what: &str, timeout: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A service-account JWT as the kubelet projects it, for `sub`, unsigned:
/// meshid reads its claims, the (fake) TokenReview decides. `nonce` makes
/// tokens for the same subject differ.
pub(crate) fn service_account_jwt(sub: &str, nonce: &str) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let header = json!({"alg": "RS256", "kid": "fake-key"});
    let claims = json!({
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": sub,
        "aud": ["istio-ca"],
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": nonce,
    });
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!(
        "{}.{}.{}",
        part(&header),
        part(&claims),
        URL_SAFE_NO_PAD.encode(b"not-a-signature")
    )
}

pub(crate) fn namespace(name: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

/// A Running pod with `annotations`.
pub(crate) fn pod(
    ns: &str,
    name: &str,
    uid: &str,
    sa: &str,
    node: &str,
    annotations: &[(&str, &str)],
) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": {"app": name}, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "serviceAccountName": sa,
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
        },
        "status": {"phase": "Running"},
    })
}

/// Namespaces `default`, `meshid-system`, `shop`, and the Running pod
/// `default/web` (uid `uid-web`, node `node-a`, service account `web`).
pub(crate) fn seed_cluster(api: &FakeApi) {
    for ns in ["default", "meshid-system", "shop"] {
        api.put(&NAMESPACES, namespace(ns));
    }
    api.put(
        &PODS,
        pod("default", "web", "uid-web", "web", "node-a", &[]),
    );
}
