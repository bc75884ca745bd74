//! A fake cluster behind [`MockApi`]: collections of objects answered as the
//! real API server answers them — lists with `metadata.resourceVersion`,
//! watches from a resourceVersion replaying later events, `410 Gone` for a
//! watch from a compacted version, `404` for a resource not served, and no
//! answer at all while "down".

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::test_helpers::kube_api::{self, Call, MockApi, Reply};

pub(super) const PODS: &str = "/api/v1/pods";
pub(super) const NAMESPACES: &str = "/api/v1/namespaces";
pub(super) const PA_V1: &str = "/apis/security.istio.io/v1/peerauthentications";
pub(super) const PA_V1BETA1: &str = "/apis/security.istio.io/v1beta1/peerauthentications";

#[derive(Default)]
struct Collection {
    api_version: &'static str,
    kind: &'static str,
    items: Vec<Value>,
    /// `(resourceVersion, event)`, for watches that resume from a version.
    history: Vec<(u64, Value)>,
    /// Watches from a version below this get `410 Gone`.
    compacted_below: u64,
    watchers: Vec<mpsc::Sender<Value>>,
    /// Answer `404` (the resource is not served).
    missing: bool,
    /// Answer nothing (transport error) for this collection only.
    unreachable: bool,
}

#[derive(Default)]
struct State {
    /// etcd's revision: one counter for every collection.
    revision: u64,
    down: bool,
    collections: BTreeMap<&'static str, Collection>,
}

/// A fake cluster; clones share it.
#[derive(Clone)]
pub(super) struct FakeCluster {
    state: Arc<Mutex<State>>,
}

impl FakeCluster {
    /// A cluster serving pods, namespaces and both PeerAuthentication versions, all empty.
    pub(super) fn new() -> Self {
        let mut state = State {
            revision: 100,
            ..State::default()
        };
        for (path, api_version, kind) in [
            (PODS, "v1", "Pod"),
            (NAMESPACES, "v1", "Namespace"),
            (PA_V1, "security.istio.io/v1", "PeerAuthentication"),
            (
                PA_V1BETA1,
                "security.istio.io/v1beta1",
                "PeerAuthentication",
            ),
        ] {
            state.collections.insert(
                path,
                Collection {
                    api_version,
                    kind,
                    ..Collection::default()
                },
            );
        }
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Starts a mock API server answering from this cluster.
    pub(super) fn serve(&self) -> (::kube::Client, MockApi) {
        let cluster = self.clone();
        MockApi::start(move |call| cluster.with(|state| route(state, call)))
    }

    /// Creates or replaces an object (by namespace and name) and tells the watches.
    pub(super) fn apply(&self, path: &'static str, mut object: Value) {
        self.with(|state| {
            state.revision += 1;
            let revision = state.revision;
            object["metadata"]["resourceVersion"] = json!(revision.to_string());
            let c = collection(state, path);
            let kind = match c.items.iter().position(|o| same(o, &object)) {
                Some(i) => {
                    c.items[i] = object.clone();
                    "MODIFIED"
                }
                None => {
                    c.items.push(object.clone());
                    "ADDED"
                }
            };
            publish(c, revision, kube_api::event(kind, object));
        });
    }

    /// Deletes `namespace/name` and tells the watches.
    pub(super) fn delete(&self, path: &'static str, namespace: Option<&str>, name: &str) {
        self.with(|state| {
            state.revision += 1;
            let revision = state.revision;
            let c = collection(state, path);
            let probe = json!({"metadata": {"namespace": namespace, "name": name}});
            let Some(i) = c.items.iter().position(|o| same(o, &probe)) else {
                panic!("no {name} in {path}");
            };
            let mut object = c.items.remove(i);
            object["metadata"]["resourceVersion"] = json!(revision.to_string());
            publish(c, revision, kube_api::event("DELETED", object));
        });
    }

    /// Replaces every object without any watch event (changes a watch missed).
    pub(super) fn replace_silently(&self, path: &'static str, objects: Vec<Value>) {
        self.with(|state| {
            state.revision += 1;
            let revision = state.revision.to_string();
            collection(state, path).items = objects
                .into_iter()
                .map(|mut o| {
                    o["metadata"]["resourceVersion"] = json!(revision);
                    o
                })
                .collect();
        });
    }

    /// Compacts history: open watches end with a `410 Gone` ERROR event, and
    /// a watch resuming from any version seen so far gets one too.
    pub(super) fn expire_watches(&self, path: &'static str) {
        self.with(|state| {
            let revision = state.revision;
            let c = collection(state, path);
            c.compacted_below = revision + 1;
            c.history.clear();
            for watcher in c.watchers.drain(..) {
                let _ = watcher.try_send(kube_api::gone_event());
            }
        });
    }

    /// Takes the whole API server down (open watches break) or back up.
    pub(super) fn set_down(&self, down: bool) {
        self.with(|state| {
            state.down = down;
            if down {
                for c in state.collections.values_mut() {
                    c.watchers.clear();
                }
            }
        });
    }

    /// Makes one collection answer nothing (or answer again).
    pub(super) fn set_unreachable(&self, path: &'static str, unreachable: bool) {
        self.with(|state| {
            let c = collection(state, path);
            c.unreachable = unreachable;
            if unreachable {
                c.watchers.clear();
            }
        });
    }

    /// Makes a resource unserved (`404`), as a cluster without that CRD version.
    pub(super) fn set_missing(&self, path: &'static str) {
        self.with(|state| collection(state, path).missing = true);
    }

    /// How many watches on `path` are open.
    pub(super) fn open_watches(&self, path: &'static str) -> usize {
        self.with(|state| {
            let c = collection(state, path);
            c.watchers.retain(|w| !w.is_closed());
            c.watchers.len()
        })
    }
}

fn collection<'a>(state: &'a mut State, path: &str) -> &'a mut Collection {
    state
        .collections
        .get_mut(path)
        .unwrap_or_else(|| panic!("the fake cluster has no {path}"))
}

fn same(a: &Value, b: &Value) -> bool {
    a["metadata"]["name"] == b["metadata"]["name"]
        && a["metadata"]["namespace"] == b["metadata"]["namespace"]
}

fn publish(c: &mut Collection, revision: u64, event: Value) {
    c.history.push((revision, event.clone()));
    c.watchers.retain(|w| w.try_send(event.clone()).is_ok());
}

fn route(state: &mut State, call: &Call) -> Reply {
    if state.down {
        return Reply::Unreachable;
    }
    let Some(c) = state.collections.get_mut(call.path.as_str()) else {
        return Reply::status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    if c.unreachable {
        return Reply::Unreachable;
    }
    if c.missing {
        return Reply::status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    if call.method != http::Method::GET {
        return Reply::status(405, "MethodNotAllowed", "not supported by the fake cluster");
    }
    if !call.is_watch() {
        return Reply::ok(kube_api::list(
            c.api_version,
            c.kind,
            &state.revision.to_string(),
            c.items.clone(),
        ));
    }
    let from: u64 = call
        .query("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::channel(256);
    if from < c.compacted_below {
        let _ = tx.try_send(kube_api::gone_event());
        return Reply::Stream(rx);
    }
    for (_, event) in c.history.iter().filter(|(rv, _)| *rv > from) {
        let _ = tx.try_send(event.clone());
    }
    c.watchers.push(tx);
    Reply::Stream(rx)
}

/// A pod as the API server returns it.
pub(super) fn pod(namespace: &str, name: &str, uid: &str, node: &str, sa: Option<&str>) -> Value {
    let mut spec = json!({"nodeName": node, "containers": [{"name": "app", "image": "app:1"}]});
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    json!({
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid,
            "creationTimestamp": "2024-05-01T10:00:00Z",
            "labels": {"app": name},
        },
        "spec": spec,
        "status": {"phase": "Running"},
    })
}

/// A namespace as the API server returns it.
pub(super) fn namespace(name: &str) -> Value {
    json!({"metadata": {"name": name, "uid": format!("ns-{name}")}})
}

/// A namespace-wide PeerAuthentication as the API server returns it.
pub(super) fn policy(
    api_version: &str,
    namespace: &str,
    name: &str,
    uid: &str,
    mode: &str,
) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": "PeerAuthentication",
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid,
            "creationTimestamp": "2024-05-01T10:00:00Z", "generation": 1,
        },
        "spec": {"mtls": {"mode": mode}},
    })
}

/// A namespace-wide `security.istio.io/v1` PeerAuthentication.
pub(super) fn v1_policy(namespace: &str, name: &str, uid: &str, mode: &str) -> Value {
    policy("security.istio.io/v1", namespace, name, uid, mode)
}

/// A namespace-wide `security.istio.io/v1beta1` PeerAuthentication.
pub(super) fn v1beta1_policy(namespace: &str, name: &str, uid: &str, mode: &str) -> Value {
    policy("security.istio.io/v1beta1", namespace, name, uid, mode)
}

/// Polls `condition` every 10 ms for up to 20 s.
pub(super) async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
