//! `meshid mtls set-mode|status --platform kube` against the API server.

use axum::http::Method;
use meshid::test_helpers::{run_kube, TestEnv};
use serde_json::json;

use super::{namespace, pod, seed_cluster};
use crate::support::bin;
use meshid::test_helpers::kube_api::{FakeApi, NAMESPACES, PEER_AUTHENTICATIONS, PODS};

#[test]
fn mtls_set_mode_on_kube_applies_and_status_reads_the_cluster() {
    let api = FakeApi::start();
    seed_cluster(&api);
    api.put(&NAMESPACES, namespace("bank"));
    api.put(
        &PODS,
        pod("shop", "cart", "uid-cart", "cart", "node-a", &[]),
    );
    api.put(
        &PEER_AUTHENTICATIONS,
        json!({
            "metadata": {"name": "broken", "namespace": "bank"},
            "spec": {"mtls": {"mode": "STRICTT"}},
        }),
    );
    let env = TestEnv::new();
    let kubeconfig = api.kubeconfig(env.dir.path());

    let out = run_kube(
        bin(),
        &kubeconfig,
        &["mtls", "set-mode", "-n", "shop", "STRICT"],
    );
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "set-mode failed: {stderr}");
    assert!(stdout.contains("STRICT"), "{stdout}");

    // One server-side apply, field manager meshid, to the namespace's `default` policy.
    let path = "/apis/security.istio.io/v1beta1/namespaces/shop/peerauthentications/default";
    let patches = api.calls_to(&Method::PATCH, path);
    assert_eq!(patches.len(), 1, "{:?}", api.calls());
    let patch = &patches[0];
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(patch.query("fieldManager"), Some("meshid"));
    assert_eq!(patch.query("force"), Some("true"));
    assert_eq!(patch.body["spec"]["mtls"]["mode"], "STRICT");
    let stored = api.get(&PEER_AUTHENTICATIONS, "shop", "default").unwrap();
    assert_eq!(stored["spec"]["mtls"]["mode"], "STRICT");
    // security.istio.io/v1 is not served here: read, answered 404, and skipped.
    assert!(!api
        .calls_to(&Method::GET, "/apis/security.istio.io/v1/")
        .is_empty());

    let out = run_kube(bin(), &kubeconfig, &["mtls", "status", "-n", "shop"]);
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "status failed: {stderr}");
    let row = stdout
        .lines()
        .find(|l| l.split_whitespace().take(2).eq(["shop", "cart"]))
        .unwrap_or_else(|| panic!("no row for shop/cart in:\n{stdout}"));
    assert!(row.contains("STRICT"), "{row}");
    assert!(
        row.contains("shop/default"),
        "the source is the namespace policy: {row}"
    );
    assert!(
        stderr.contains("bank/broken"),
        "the invalid policy is named in a warning: {stderr}"
    );
    api.assert_all_served();
}

fn texts(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
