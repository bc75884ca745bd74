//! The HTTP transport of the fake API server: a stateful Kubernetes API
//! server on 127.0.0.1, for the real `meshid` binary to reach through a
//! kubeconfig (`server: http://127.0.0.1:PORT`, no auth).
//!
//! Serves what meshid uses and nothing more, with JSON shaped like the real
//! API's: list (`{"kind": "PodList", "metadata": {"resourceVersion"}, "items"}`,
//! items without kind/apiVersion, `fieldSelector` and `labelSelector`
//! honoured), watch (`?watch=true&resourceVersion=N`: newline-delimited
//! events after N, kept open and fed live; no bookmarks), get (`404
//! NotFound` Status), create (`201`; `409 AlreadyExists`), replace (`409
//! Conflict` on a stale resourceVersion), server-side apply (`PATCH` with
//! `application/apply-patch+yaml`, whose body kube sends as JSON: create or
//! merge) and TokenReview (answered from tokens the test registers). The
//! resources are in [`store::SERVED`]; anything else, `security.istio.io/v1`
//! included, is `404`.
//!
//! It runs on its own tokio runtime and thread, so a test may block (on a
//! child process's first line) while it serves. Every request is recorded.

mod store;
mod token_review;
mod watch;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub use self::store::{
    Resource, CONFIGMAPS, LEASES, MUTATING_WEBHOOK_CONFIGURATIONS, NAMESPACES,
    PEER_AUTHENTICATIONS, PODS, SECRETS,
};
use self::store::{Selector, Store, WriteError, SERVED};
use self::token_review::token_review;
pub use self::token_review::TokenIdentity;
use self::watch::watch_response;
use super::Call;

/// State shared by the server's handlers and the test.
#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    /// The newest resourceVersion, so open watches wake up on a change.
    changed: tokio::sync::watch::Sender<u64>,
    tokens: Mutex<HashMap<String, TokenIdentity>>,
    /// Resources whose list and watch answer `503`.
    failing: Mutex<HashSet<&'static str>>,
    requests: Mutex<Vec<Call>>,
    /// Service-account issuer discovery: `(issuer, JWKS)`; unset answers 404.
    oidc: Mutex<Option<(String, Value)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The running fake API server; stops (every open watch included) on drop.
#[derive(Debug)]
pub struct FakeApi {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeApi {
    /// Serves on a free port of 127.0.0.1.
    pub fn start() -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap())
    }

    /// Serves on `addr` (a port reserved earlier).
    pub fn start_at(addr: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed: tokio::sync::watch::Sender::new(0),
            tokens: Mutex::new(HashMap::new()),
            failing: Mutex::new(HashSet::new()),
            requests: Mutex::new(Vec::new()),
            oidc: Mutex::new(None),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// Writes a kubeconfig pointing at this server (plain HTTP, no user) to `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        kubeconfig(dir, self.addr)
    }

    /// Creates or replaces `object` as another client would (no checks).
    pub fn put(&self, r: &'static Resource, object: Value) -> Value {
        self.mutate(|store| store.put(r, object))
    }

    pub fn delete(&self, r: &'static Resource, namespace: &str, name: &str) {
        self.mutate(|store| store.delete(r, namespace, name));
    }

    pub fn get(&self, r: &'static Resource, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.shared.store).get(r, namespace, name)
    }

    /// TokenReview authenticates `token` as `identity`; any other token is refused.
    /// Serves service-account issuer discovery as the API server does:
    /// `/.well-known/openid-configuration` naming `issuer` and a `jwks_uri` on
    /// the standard path, and `/openid/v1/jwks` with `jwks`.
    pub fn set_oidc(&self, issuer: &str, jwks: Value) {
        *lock(&self.shared.oidc) = Some((issuer.to_owned(), jwks));
    }

    pub fn add_token(&self, token: &str, identity: TokenIdentity) {
        lock(&self.shared.tokens).insert(token.to_owned(), identity);
    }

    /// While `failing`, lists and watches of `r` answer `503 ServiceUnavailable`.
    pub fn set_failing(&self, r: &'static Resource, failing: bool) {
        let mut set = lock(&self.shared.failing);
        if failing {
            set.insert(r.plural);
        } else {
            set.remove(r.plural);
        }
    }

    /// Every request so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared.requests).clone()
    }

    /// Panics on any request the fake could not serve (unknown path, method
    /// or selector: meshid asked for something this fake, written from the
    /// API's documentation, does not know), except `security.istio.io/v1`,
    /// which it does not serve on purpose.
    pub fn assert_all_served(&self) {
        let unserved: Vec<Call> = self
            .calls()
            .into_iter()
            .filter(|r| !r.served && !r.path.starts_with("/apis/security.istio.io/v1/"))
            .collect();
        assert!(
            unserved.is_empty(),
            "requests the fake API cannot serve: {unserved:?}"
        );
    }

    /// The requests with `method` whose path starts with `prefix`.
    pub fn calls_to(&self, method: &Method, prefix: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|r| r.method == *method && r.path.starts_with(prefix))
            .collect()
    }

    fn mutate<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        mutate(&self.shared, f)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A kubeconfig for `server` at `addr`, written to `dir/kubeconfig`.
pub fn kubeconfig(dir: &Path, addr: SocketAddr) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: nobody\n    namespace: default\n\
         current-context: fake\nusers:\n- name: nobody\n  user: {{}}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Applies a write and wakes the watches.
fn mutate<T>(shared: &Shared, f: impl FnOnce(&mut Store) -> T) -> T {
    let (out, rv) = {
        let mut store = lock(&shared.store);
        let out = f(&mut store);
        (out, store.resource_version())
    };
    shared.changed.send_replace(rv);
    out
}

/// Where a request goes: a collection (`name` None) or one object.
#[derive(Debug)]
struct Target {
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
}

/// `/api/v1/...` or `/apis/<group>/<version>/...` → a served resource.
fn route(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return None,
    };
    let resource = SERVED
        .into_iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)?;
    if namespace.is_some() && !resource.namespaced {
        return None;
    }
    Some(Target {
        resource,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    })
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let recorded = Call::new(&parts, &bytes);
    let (response, served) = respond(&shared, &recorded);
    lock(&shared.requests).push(Call { served, ..recorded });
    response
}

/// The answer, and whether the request was one the fake serves.
fn respond(shared: &Arc<Shared>, r: &Call) -> (Response, bool) {
    if r.method == Method::POST && r.path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        return (token_review(shared, r.body.clone()), true);
    }
    if r.method == Method::GET
        && matches!(
            r.path.as_str(),
            "/.well-known/openid-configuration" | "/openid/v1/jwks"
        )
    {
        let Some((issuer, jwks)) = lock(&shared.oidc).clone() else {
            return (
                status(404, "NotFound", "issuer discovery is not served"),
                false,
            );
        };
        let body = if r.path == "/openid/v1/jwks" {
            jwks
        } else {
            // The API server's own answer names its external address; the
            // standard path is what meshid fetches through its client.
            json!({
                "issuer": issuer,
                "jwks_uri": "https://172.18.0.2:6443/openid/v1/jwks",
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            })
        };
        return (json_response(200, body), true);
    }
    let Some(target) = route(&r.path) else {
        let answer = status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        return (answer, false);
    };
    let resource = target.resource;
    let namespace = target.namespace.clone().unwrap_or_default();
    let answer = match (&r.method, target.name.as_deref()) {
        (&Method::GET, None) => {
            if lock(&shared.failing).contains(resource.plural) {
                let answer = status(
                    503,
                    "ServiceUnavailable",
                    "the fake API server is refusing this",
                );
                return (answer, true);
            }
            let selector = match Selector::parse(r.query("fieldSelector"), r.query("labelSelector"))
            {
                Ok(s) => s,
                Err(e) => return (status(400, "BadRequest", &e), false),
            };
            if r.is_watch() {
                let from = r.query("resourceVersion").and_then(|v| v.parse().ok());
                watch_response(shared.clone(), resource, target.namespace, selector, from)
            } else {
                list(shared, resource, target.namespace.as_deref(), &selector)
            }
        }
        (&Method::GET, Some(name)) => match lock(&shared.store).get(resource, &namespace, name) {
            Some(object) => json_response(200, object),
            None => not_found(resource, name),
        },
        (&Method::POST, None) => {
            let result = mutate(shared, |s| s.create(resource, &namespace, r.body.clone()));
            write_result(result, resource, "", 201)
        }
        (&Method::PUT, Some(name)) => {
            let result = mutate(shared, |s| {
                s.replace(resource, &namespace, name, r.body.clone())
            });
            write_result(result, resource, name, 200)
        }
        (&Method::PATCH, Some(name))
            if r.content_type.as_deref() == Some("application/apply-patch+yaml") =>
        {
            let (object, created) = mutate(shared, |s| {
                s.apply(resource, &namespace, name, r.body.clone())
            });
            json_response(if created { 201 } else { 200 }, object)
        }
        (&Method::PATCH, Some(name))
            if r.content_type.as_deref() == Some("application/merge-patch+json") =>
        {
            let result = mutate(shared, |s| {
                s.merge_patch(resource, &namespace, name, r.body.clone())
            });
            write_result(result, resource, name, 200)
        }
        _ => {
            let answer = status(
                405,
                "MethodNotAllowed",
                "the fake API server does not serve this",
            );
            return (answer, false);
        }
    };
    (answer, true)
}

fn list(
    shared: &Shared,
    resource: &'static Resource,
    namespace: Option<&str>,
    selector: &Selector,
) -> Response {
    let store = lock(&shared.store);
    // As the real API: list items carry neither kind nor apiVersion.
    let items: Vec<Value> = store
        .list(resource, namespace, selector)
        .into_iter()
        .map(|mut item| {
            if let Some(map) = item.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    let version = store.resource_version().to_string();
    json_response(
        200,
        super::list(&resource.api_version(), resource.kind, &version, items),
    )
}

fn write_result(
    result: Result<Value, WriteError>,
    resource: &'static Resource,
    name: &str,
    ok: u16,
) -> Response {
    let what = format!("{}.{} {name:?}", resource.plural, resource.group);
    match result {
        Ok(object) => json_response(ok, object),
        Err(WriteError::AlreadyExists) => status(409, "AlreadyExists", &format!("{what} already exists")),
        Err(WriteError::NotFound) => not_found(resource, name),
        Err(WriteError::Conflict { stored, sent }) => status(
            409,
            "Conflict",
            &format!("Operation cannot be fulfilled on {what}: the object has been modified; please apply your changes to the latest version and try again (stored {stored}, sent {sent})"),
        ),
        Err(WriteError::Invalid(message)) => status(422, "Invalid", &message),
    }
}

fn not_found(resource: &'static Resource, name: &str) -> Response {
    status(
        404,
        "NotFound",
        &format!("{}.{} {name:?} not found", resource.plural, resource.group),
    )
}

/// A `Status` answer, as every API error is.
fn status(code: u16, reason: &str, message: &str) -> Response {
    json_response(code, super::status(code, reason, message))
}

fn json_response(code: u16, value: Value) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&value).unwrap_or_default();
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
