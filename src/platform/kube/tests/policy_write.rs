//! `meshid mtls` against an API server: server-side apply and one-shot lists.

use http::Method;
use serde_json::{json, Value};

use super::cluster::{namespace, pod, v1beta1_policy};
use crate::platform::kube::policy_write::{
    apply_namespace_mode, list_namespaces, list_peer_authentications, list_pods,
};
use crate::policy::{ApiVersion, MtlsMode};
use crate::test_helpers::kube_api::{self, MockApi, Reply};

const V1: &str = "/apis/security.istio.io/v1/";
const V1BETA1: &str = "/apis/security.istio.io/v1beta1/";

/// Answers a server-side apply with the patch body plus what the server adds.
fn applied(body: &Value) -> Reply {
    let mut object = body.clone();
    object["metadata"]["uid"] = json!("new-uid");
    object["metadata"]["resourceVersion"] = json!("900");
    object["metadata"]["creationTimestamp"] = json!("2024-06-01T00:00:00Z");
    Reply::ok(object)
}

fn empty_list(version: &str) -> Reply {
    Reply::ok(kube_api::list(
        &format!("security.istio.io/{version}"),
        "PeerAuthentication",
        "10",
        vec![],
    ))
}

#[tokio::test]
async fn set_mode_server_side_applies_the_default_policy() {
    let (client, api) = MockApi::start(|call| match call.method {
        Method::GET if call.path.starts_with(V1) => empty_list("v1"),
        Method::GET => empty_list("v1beta1"),
        _ => applied(&call.body),
    });
    let stored = apply_namespace_mode(&client, "shop", MtlsMode::Strict)
        .await
        .expect("applied");
    assert_eq!(stored.mode(), MtlsMode::Strict);
    assert_eq!(stored.metadata.uid.as_deref(), Some("new-uid"));

    let patches = api.calls_to(&Method::PATCH, "/");
    assert_eq!(patches.len(), 1);
    let patch = &patches[0];
    assert_eq!(
        patch.path,
        "/apis/security.istio.io/v1beta1/namespaces/shop/peerauthentications/default"
    );
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(patch.query("fieldManager"), Some("meshid"));
    assert_eq!(patch.query("force"), Some("true"));
    assert_eq!(
        patch.body,
        json!({
            "apiVersion": "security.istio.io/v1beta1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "shop"},
            "spec": {"mtls": {"mode": "STRICT"}},
        })
    );
    // The namespace's existing policies were read first, in that namespace only.
    let lists = api.calls_to(&Method::GET, "/apis/security.istio.io/");
    assert!(
        lists.iter().all(|c| c.path.contains("/namespaces/shop/")),
        "{lists:?}"
    );
}

#[tokio::test]
async fn set_mode_updates_the_namespace_policy_in_effect_instead_of_shadowing_it() {
    let (client, api) = MockApi::start(|call| match call.method {
        Method::GET if call.path.starts_with(V1) => Reply::status(404, "NotFound", "not served"),
        Method::GET => Reply::ok(kube_api::list(
            "security.istio.io/v1beta1",
            "PeerAuthentication",
            "10",
            vec![
                v1beta1_policy("shop", "shop-wide", "p1", "PERMISSIVE"),
                json!({
                    "apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
                    "metadata": {"name": "aaa-workload", "namespace": "shop", "uid": "p2",
                                 "creationTimestamp": "2020-01-01T00:00:00Z"},
                    "spec": {"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "DISABLE"}},
                }),
            ],
        )),
        _ => applied(&call.body),
    });
    apply_namespace_mode(&client, "shop", MtlsMode::Strict)
        .await
        .expect("applied");
    let patches = api.calls_to(&Method::PATCH, "/");
    assert_eq!(patches.len(), 1);
    assert!(
        patches[0].path.ends_with("/peerauthentications/shop-wide"),
        "{:?}",
        patches[0]
    );
    assert_eq!(patches[0].body["metadata"]["name"], "shop-wide");
}

#[tokio::test]
async fn set_mode_falls_back_to_v1_when_v1beta1_is_not_served() {
    let (client, api) = MockApi::start(|call| {
        if call.path.starts_with(V1BETA1) {
            return Reply::status(404, "NotFound", "not served");
        }
        match call.method {
            Method::GET => empty_list("v1"),
            _ => applied(&call.body),
        }
    });
    let stored = apply_namespace_mode(&client, "shop", MtlsMode::Permissive)
        .await
        .expect("applied under v1");
    assert_eq!(stored.api_version, ApiVersion::V1);
    let patches = api.calls_to(&Method::PATCH, "/");
    assert_eq!(patches.len(), 2, "v1beta1 tried first, then v1");
    assert_eq!(patches[1].body["apiVersion"], "security.istio.io/v1");
}

#[tokio::test]
async fn set_mode_reports_a_forbidden_write() {
    let (client, _api) = MockApi::start(|call| match call.method {
        Method::GET => empty_list("v1"),
        _ => Reply::status(
            403,
            "Forbidden",
            "peerauthentications is forbidden: User cannot patch",
        ),
    });
    let err = apply_namespace_mode(&client, "shop", MtlsMode::Strict)
        .await
        .expect_err("forbidden")
        .to_string();
    assert!(
        err.contains("shop/default") && err.contains("forbidden"),
        "{err}"
    );
}

#[tokio::test]
async fn one_shot_lists_for_status() {
    let (client, _api) = MockApi::start(|call| match call.path.as_str() {
        "/api/v1/pods" => Reply::ok(kube_api::list(
            "v1",
            "Pod",
            "5",
            vec![
                pod("shop", "web-2", "u2", "n1", None),
                pod("bank", "db", "u1", "n1", Some("db")),
            ],
        )),
        "/api/v1/namespaces" => Reply::ok(kube_api::list(
            "v1",
            "Namespace",
            "5",
            vec![namespace("shop"), namespace("bank")],
        )),
        p if p.starts_with(V1) => Reply::status(404, "NotFound", "not served"),
        _ => Reply::ok(kube_api::list(
            "security.istio.io/v1beta1",
            "PeerAuthentication",
            "5",
            vec![
                v1beta1_policy("shop", "default", "p1", "STRICT"),
                v1beta1_policy("shop", "typo", "p2", "STRICTT"),
            ],
        )),
    });
    let pods = list_pods(&client).await.expect("pods");
    let names: Vec<_> = pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    assert_eq!(names, ["bank/db", "shop/web-2"]);
    assert_eq!(pods[1].service_account, "default");
    let namespaces = list_namespaces(&client).await.expect("namespaces");
    assert_eq!(
        namespaces
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        ["bank", "shop"]
    );
    let policies = list_peer_authentications(&client).await.expect("policies");
    assert_eq!(policies.len(), 1, "the STRICTT one is skipped");
    assert_eq!(policies[0].mode(), MtlsMode::Strict);
}
