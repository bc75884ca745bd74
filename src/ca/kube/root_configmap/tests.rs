//! The distributor against the mock API server: initial lists, then watch
//! events pushed by the test (newline-delimited JSON, as the API server
//! streams them), and the writes it makes in answer.

use std::sync::{Arc, Mutex};

use http::Method;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::*;
use crate::test_helpers::kube_api::{event, list, Call, MockApi, Reply};

const OLD: &str = "-----BEGIN CERTIFICATE-----\nb2xk\n-----END CERTIFICATE-----\n";
const NEW: &str = "-----BEGIN CERTIFICATE-----\nbmV3\n-----END CERTIFICATE-----\n";

fn namespace(name: &str, phase: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "10"},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": phase},
    })
}

fn configmap(ns: &str, root_cert: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ROOT_CONFIGMAP,
            "namespace": ns,
            "uid": format!("uid-cm-{ns}"),
            "resourceVersion": rv,
            "labels": {"istio.io/config": "true"},
        },
        "data": {"root-cert.pem": root_cert},
    })
}

/// Open watch streams, by resource, for the test to push events into.
type Watches = Arc<Mutex<Vec<(String, mpsc::Sender<Value>)>>>;

struct Harness {
    api: MockApi,
    watches: Watches,
    bundle: watch::Sender<String>,
    leader: watch::Sender<bool>,
    cancel: CancellationToken,
}

impl Harness {
    fn start(namespaces: Vec<Value>, configmaps: Vec<Value>, leader: bool) -> Self {
        let watches: Watches = Arc::default();
        let open = watches.clone();
        let (client, api) = MockApi::start(move |call: &Call| {
            let resource = if call.path.ends_with("/configmaps") {
                "configmaps"
            } else {
                "namespaces"
            };
            match call.method {
                Method::GET if call.is_watch() => {
                    let (tx, rx) = mpsc::channel(16);
                    open.lock().expect("lock").push((resource.to_owned(), tx));
                    Reply::Stream(rx)
                }
                Method::GET if resource == "configmaps" => {
                    assert_eq!(
                        call.query("fieldSelector"),
                        Some("metadata.name=istio-ca-root-cert")
                    );
                    Reply::ok(list("v1", "ConfigMap", "100", configmaps.clone()))
                }
                Method::GET => Reply::ok(list("v1", "Namespace", "100", namespaces.clone())),
                Method::POST => {
                    let mut object = call.body.clone();
                    object["metadata"]["resourceVersion"] = json!("200");
                    Reply::Json(http::StatusCode::CREATED, object)
                }
                Method::PUT => {
                    let mut object = call.body.clone();
                    object["metadata"]["resourceVersion"] = json!("400");
                    Reply::ok(object)
                }
                _ => panic!("unexpected request {call:?}"),
            }
        });
        let (bundle, bundle_rx) = watch::channel(OLD.to_owned());
        let (leader, leader_rx) = watch::channel(leader);
        let cancel = CancellationToken::new();
        let distributor = RootCertDistributor::new(client, bundle_rx, leader_rx);
        tokio::spawn(distributor.run(cancel.clone()));
        Self {
            api,
            watches,
            bundle,
            leader,
            cancel,
        }
    }

    /// Waits until `count` requests match, failing after a few seconds.
    async fn wait_for(&self, method: Method, prefix: &str, count: usize) -> Vec<Call> {
        for _ in 0..500 {
            let calls = self.api.calls_to(&method, prefix);
            if calls.len() >= count {
                return calls;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "expected {count} {method} to {prefix}, got {:#?}",
            self.api.calls()
        );
    }

    /// Pushes a watch event once the watch on `resource` is open.
    async fn push(&self, resource: &str, value: Value) {
        for _ in 0..500 {
            let tx = self
                .watches
                .lock()
                .expect("lock")
                .iter()
                .rev()
                .find(|(r, _)| r == resource)
                .map(|(_, tx)| tx.clone());
            if let Some(tx) = tx {
                tx.send(value).await.expect("watch open");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no watch on {resource} was opened");
    }

    /// Lets in-flight work settle, then checks that no write happened.
    async fn assert_no_writes(&self) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let writes: Vec<Call> = self
            .api
            .calls()
            .into_iter()
            .filter(|c| c.method != Method::GET)
            .collect();
        assert!(writes.is_empty(), "{writes:#?}");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn cm_path(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/configmaps")
}

#[tokio::test]
async fn each_live_namespace_gets_the_configmap_and_terminating_ones_are_skipped() {
    let h = Harness::start(
        vec![
            namespace("default", "Active"),
            namespace("shop", "Active"),
            namespace("leaving", "Terminating"),
        ],
        vec![],
        true,
    );
    let posts = h.wait_for(Method::POST, "/api/v1/namespaces/", 2).await;
    let mut targets: Vec<&str> = posts.iter().map(|c| c.path.as_str()).collect();
    targets.sort_unstable();
    assert_eq!(targets, [cm_path("default"), cm_path("shop")]);
    let body = &posts[0].body;
    assert_eq!(body["metadata"]["name"], ROOT_CONFIGMAP);
    assert_eq!(body["data"]["root-cert.pem"], OLD);
    assert_eq!(body["metadata"]["labels"]["istio.io/config"], "true");

    // A namespace created later gets one too.
    h.push("namespaces", event("ADDED", namespace("late", "Active")))
        .await;
    h.wait_for(Method::POST, &cm_path("late"), 1).await;
    assert!(h
        .api
        .calls_to(&Method::POST, &cm_path("leaving"))
        .is_empty());
}

#[tokio::test]
async fn an_edited_configmap_is_repaired_and_a_deleted_one_recreated() {
    let h = Harness::start(
        vec![namespace("shop", "Active")],
        vec![configmap("shop", OLD, "300")],
        true,
    );
    h.assert_no_writes().await;

    let mut edited = configmap("shop", "tampered", "301");
    edited["data"]["extra"] = json!("kept");
    h.push("configmaps", event("MODIFIED", edited)).await;
    let puts = h
        .wait_for(
            Method::PUT,
            &format!("{}/{ROOT_CONFIGMAP}", cm_path("shop")),
            1,
        )
        .await;
    let body = &puts[0].body;
    assert_eq!(body["metadata"]["resourceVersion"], "301");
    assert_eq!(body["data"]["root-cert.pem"], OLD);
    assert_eq!(body["data"]["extra"], "kept");

    h.push(
        "configmaps",
        event("DELETED", configmap("shop", OLD, "302")),
    )
    .await;
    h.wait_for(Method::POST, &cm_path("shop"), 1).await;
}

#[tokio::test]
async fn a_new_bundle_rewrites_every_configmap() {
    let h = Harness::start(
        vec![namespace("a", "Active"), namespace("b", "Active")],
        vec![configmap("a", OLD, "300"), configmap("b", OLD, "300")],
        true,
    );
    h.assert_no_writes().await;
    h.bundle.send_replace(NEW.to_owned());
    let puts = h.wait_for(Method::PUT, "/api/v1/namespaces/", 2).await;
    assert!(puts.iter().all(|c| c.body["data"]["root-cert.pem"] == NEW));
}

#[tokio::test]
async fn nothing_is_written_until_this_replica_leads() {
    let h = Harness::start(vec![namespace("shop", "Active")], vec![], false);
    h.wait_for(Method::GET, "/api/v1/configmaps", 1).await;
    h.assert_no_writes().await;
    h.leader.send_replace(true);
    h.wait_for(Method::POST, &cm_path("shop"), 1).await;
}
