//! The authorities over Secret `istio-ca-secret` of the fake API server
//! (stateful: resourceVersions, `409` on a stale replace), as two CA
//! replicas see it; the 409 race itself against the scripted mock.

use std::time::Duration as StdDuration;

use base64::Engine as _;
use http::Method;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::ca::authorities::{
    AuthoritySource, AuthorityState, FirstAuthority, RotationConfig, RotationError,
};
use crate::ca::kube::root_configmap::{ROOT_CERT_KEY, ROOT_CONFIGMAP};
use crate::test_helpers::kube_api::{
    Call, FakeApi, MockApi, Reply, CONFIGMAPS, NAMESPACES, SECRETS,
};
use crate::time::SystemClock;

const NS: &str = "meshid-system";
const ROOT_PATH: &str = "/api/v1/namespaces/meshid-system/secrets/istio-ca-secret";

fn client(api: &FakeApi) -> ::kube::Client {
    let url = format!("http://{}", api.addr).parse().unwrap();
    ::kube::Client::try_from(::kube::Config::new(url)).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(value: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str().unwrap())
        .unwrap()
}

fn clock() -> SharedClock {
    Arc::new(SystemClock)
}

fn first() -> FirstAuthority {
    Box::new(|| {
        Authority::create_rotation_root(
            "first",
            &AuthorityConfig::default(),
            time::Duration::days(30),
            &SystemClock,
        )
        .map(|a| (a, AuthoritySource::SelfSigned))
        .map_err(|e| RotationError::Authority {
            id: "first".into(),
            source: Box::new(e),
        })
    })
}

/// One CA replica: its own client to the shared API server.
async fn replica(api: &FakeApi) -> Arc<Authorities> {
    Authorities::open(
        Arc::new(KubeSecretStore::new(client(api), NS)),
        RotationConfig::default(),
        AuthorityConfig::default(),
        clock(),
        first(),
    )
    .await
    .unwrap()
}

/// `istio-ca-secret` as `load_ca` leaves it: Istio's layout of the root.
fn istio_ca_secret(api: &FakeApi) {
    api.put(
        &SECRETS,
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SELF_SIGNED_SECRET, "namespace": NS},
            "type": SELF_SIGNED_SECRET_TYPE,
            "data": {
                "ca-cert.pem": b64(b"root certificate"),
                "ca-key.pem": b64(b"root key"),
                "root-cert.pem": b64(b"root certificate"),
            },
        }),
    );
}

fn stored_document(api: &FakeApi) -> Value {
    let secret = api.get(&SECRETS, NS, SELF_SIGNED_SECRET).unwrap();
    serde_json::from_slice(&unb64(&secret["data"][STATE_KEY])).unwrap()
}

/// Polls `check` every 50 ms for up to 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn the_state_is_saved_beside_the_root_and_loads_back_the_same() {
    let api = FakeApi::start();
    istio_ca_secret(&api);
    let a = replica(&api).await;
    let prepared = a.prepare().await.unwrap();

    let store = KubeSecretStore::new(client(&api), NS);
    let loaded = store.load().await.unwrap().unwrap();
    assert_eq!(loaded.generation, 2);
    let ids: Vec<(&str, AuthorityState)> = loaded
        .authorities
        .iter()
        .map(|s| (s.id.as_str(), s.state))
        .collect();
    let snapshot = a.current();
    let prepared_id = snapshot.prepared().unwrap().id.clone();
    assert!(prepared.contains(&prepared_id));
    assert!(ids.contains(&(snapshot.active_entry().id.as_str(), AuthorityState::Active)));
    assert!(ids.contains(&(prepared_id.as_str(), AuthorityState::Prepared)));

    // Istio's keys of the Secret are left as they were.
    let secret = api.get(&SECRETS, NS, SELF_SIGNED_SECRET).unwrap();
    assert_eq!(unb64(&secret["data"]["ca-key.pem"]), b"root key");
    assert_eq!(unb64(&secret["data"]["ca-cert.pem"]), b"root certificate");
    assert_eq!(secret["type"], SELF_SIGNED_SECRET_TYPE);
    assert_eq!(stored_document(&api)["generation"], 2);
    assert_eq!(
        store.name(),
        "Secret meshid-system/istio-ca-secret key authorities.json"
    );
}

#[tokio::test]
async fn without_the_secret_it_is_created_holding_the_state_only() {
    // A plug-in CA keeps its root in cacerts: nothing made istio-ca-secret.
    let api = FakeApi::start();
    let store = KubeSecretStore::new(client(&api), NS);
    assert!(store.load().await.unwrap().is_none());
    let a = replica(&api).await;
    let secret = api.get(&SECRETS, NS, SELF_SIGNED_SECRET).unwrap();
    let keys: Vec<&String> = secret["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, [STATE_KEY]);
    assert_eq!(
        store.load().await.unwrap().unwrap().authorities[0].id,
        a.current().active_entry().id
    );
}

#[tokio::test]
async fn a_secret_without_the_state_key_loads_as_nothing_stored() {
    let api = FakeApi::start();
    istio_ca_secret(&api);
    let store = KubeSecretStore::new(client(&api), NS);
    assert!(store.load().await.unwrap().is_none());
}

#[tokio::test]
async fn a_save_not_based_on_the_stored_generation_is_a_conflict() {
    let api = FakeApi::start();
    istio_ca_secret(&api);
    replica(&api).await;
    let store = KubeSecretStore::new(client(&api), NS);
    let mut state = store.load().await.unwrap().unwrap();
    assert_eq!(state.generation, 1);

    // The same generation again (a replica that did not see the last change).
    let err = store.save(&state).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                found: 1,
                expected: 0,
                ..
            }
        ),
        "{err:?}"
    );
    // A generation skipped.
    state.generation = 3;
    let err = store.save(&state).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                found: 1,
                expected: 2,
                ..
            }
        ),
        "{err:?}"
    );
    // Nothing was written by either.
    assert_eq!(stored_document(&api)["generation"], 1);
    // The next one is taken.
    state.generation = 2;
    store.save(&state).await.unwrap();
    assert_eq!(stored_document(&api)["generation"], 2);
}

/// The state document of generation `generation` (one authority).
fn document(generation: u64) -> Vec<u8> {
    let authority = Authority::create_rotation_root(
        "doc",
        &AuthorityConfig::default(),
        time::Duration::days(30),
        &SystemClock,
    )
    .unwrap();
    let pem = authority.to_pem();
    let state = StoredState {
        format: crate::ca::authorities::state::FORMAT,
        generation,
        authorities: vec![crate::ca::authorities::StoredAuthority {
            id: authority.id().to_owned(),
            state: AuthorityState::Active,
            tainted: false,
            source: AuthoritySource::SelfSigned,
            key_pem: pem.key_pem,
            cert_pem: pem.cert_pem,
            chain_pem: pem.chain_pem,
            roots_pem: pem.roots_pem,
            not_after: authority.signer_not_after(),
        }],
        revocations: Vec::new(),
    };
    state.to_json().to_vec()
}

#[tokio::test]
async fn a_replace_refused_with_409_is_a_conflict_naming_the_new_generation() {
    // Another replica replaced the Secret between our GET and our PUT: the
    // generation checked locally was right, the resourceVersion was not.
    let (one, two) = (b64(&document(1)), b64(&document(2)));
    let mut gets = 0;
    let (client, api) = MockApi::start(move |call: &Call| {
        assert_eq!(call.path, ROOT_PATH);
        match call.method {
            Method::GET => {
                gets += 1;
                let (doc, rv) = if gets == 1 { (&one, "5") } else { (&two, "6") };
                Reply::ok(json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": SELF_SIGNED_SECRET, "namespace": NS, "resourceVersion": rv},
                    "data": {STATE_KEY: doc},
                }))
            }
            Method::PUT => Reply::status(
                409,
                "Conflict",
                "Operation cannot be fulfilled on secrets \"istio-ca-secret\": the object has been modified",
            ),
            ref other => panic!("unexpected {other}"),
        }
    });
    let store = KubeSecretStore::new(client, NS);
    let mut state = StoredState::from_json("test", &document(1)).unwrap();
    state.generation = 2;
    let err = store.save(&state).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                found: 2,
                expected: 1,
                ..
            }
        ),
        "{err:?}"
    );
    let puts = api.calls_to(&Method::PUT, ROOT_PATH);
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].body["metadata"]["resourceVersion"], "5");
}

#[tokio::test]
async fn a_first_save_racing_another_replica_is_a_conflict() {
    // Both replicas found no Secret; the other one created it first (409
    // AlreadyExists), holding generation 1.
    let one = b64(&document(1));
    let mut gets = 0;
    let (client, api) = MockApi::start(move |call: &Call| match call.method {
        Method::GET => {
            gets += 1;
            if gets == 1 {
                return Reply::status(404, "NotFound", "secrets \"istio-ca-secret\" not found");
            }
            Reply::ok(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": SELF_SIGNED_SECRET, "namespace": NS, "resourceVersion": "7"},
                "data": {STATE_KEY: one},
            }))
        }
        Method::POST => Reply::status(
            409,
            "AlreadyExists",
            "secrets \"istio-ca-secret\" already exists",
        ),
        ref other => panic!("unexpected {other}"),
    });
    let store = KubeSecretStore::new(client, NS);
    let state = StoredState::from_json("test", &document(1)).unwrap();
    let err = store.save(&state).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                found: 1,
                expected: 0,
                ..
            }
        ),
        "{err:?}"
    );
    let posts = api.calls_to(&Method::POST, "/api/v1/namespaces/meshid-system/secrets");
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].body["metadata"]["name"], SELF_SIGNED_SECRET);
}

#[tokio::test]
async fn a_corrupt_state_is_named_and_never_overwritten() {
    // Rule: a change is saved whole on top of the state it was based on; a
    // document that does not parse is not silently replaced.
    let api = FakeApi::start();
    api.put(
        &SECRETS,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": SELF_SIGNED_SECRET, "namespace": NS},
            "data": {STATE_KEY: b64(b"{not json")},
        }),
    );
    let store = KubeSecretStore::new(client(&api), NS);
    let err = store.load().await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err
        .to_string()
        .contains("Secret meshid-system/istio-ca-secret key authorities.json"));
    let state = StoredState::from_json("test", &document(1)).unwrap();
    assert!(store.save(&state).await.is_err());
    let secret = api.get(&SECRETS, NS, SELF_SIGNED_SECRET).unwrap();
    assert_eq!(unb64(&secret["data"][STATE_KEY]), b"{not json");
}

#[tokio::test]
async fn an_api_error_names_the_secret_and_never_the_keys() {
    let (client, _api) = MockApi::start(|_: &Call| {
        Reply::status(403, "Forbidden", "secrets \"istio-ca-secret\" is forbidden")
    });
    let store = KubeSecretStore::new(client, NS);
    let err = store.load().await.unwrap_err().to_string();
    assert!(
        err.contains("Secret meshid-system/istio-ca-secret"),
        "{err}"
    );
    assert!(err.contains("RBAC permission to get"), "{err}");
    assert!(!format!("{store:?}").contains("key_pem"));
}

#[tokio::test]
async fn a_prepare_through_one_replica_is_seen_by_the_other_after_refresh() {
    let api = FakeApi::start();
    istio_ca_secret(&api);
    let a = replica(&api).await;
    let b = replica(&api).await;
    assert_eq!(
        a.current().active_entry().id,
        b.current().active_entry().id,
        "the second replica loads the first one's state"
    );

    a.prepare().await.unwrap();
    assert!(b.current().prepared().is_none());
    assert!(b.refresh().await.unwrap());
    let prepared = a.current().prepared().unwrap().id.clone();
    assert_eq!(b.current().prepared().unwrap().id, prepared);
    assert_eq!(b.current().bundle_pem(), a.current().bundle_pem());
    assert!(!b.refresh().await.unwrap(), "nothing new the second time");

    // The other way round: B activates, A follows.
    b.activate(None).await.unwrap();
    assert!(a.refresh().await.unwrap());
    assert_eq!(a.current().active_entry().id, prepared);
    assert_eq!(a.current().generation(), 3);
}

#[tokio::test]
async fn a_replica_acting_on_a_stale_view_works_on_the_stored_state() {
    // B has not refreshed since A prepared: its own prepare is refused by
    // the stored state, not applied on top of its stale copy.
    let api = FakeApi::start();
    istio_ca_secret(&api);
    let a = replica(&api).await;
    let b = replica(&api).await;
    a.prepare().await.unwrap();
    let err = b.prepare().await.unwrap_err().to_string();
    assert!(err.contains("already prepared"), "{err}");
    assert_eq!(stored_document(&api)["generation"], 2);
}

#[tokio::test]
async fn every_replica_follows_a_change_within_seconds() {
    let api = FakeApi::start();
    istio_ca_secret(&api);
    let a = replica(&api).await;
    let b = replica(&api).await;
    let shutdown = Shutdown::new();
    spawn_follow(b.clone(), &shutdown);
    a.prepare().await.unwrap();
    let want = a.current().prepared().unwrap().id.clone();
    eventually("the follower to see the prepared authority", || {
        b.current().prepared().map(|e| e.id.clone()) == Some(want.clone())
    })
    .await;
    shutdown.trigger();
}

fn namespace(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name},
        "status": {"phase": "Active"},
    })
}

fn configmap_roots(api: &FakeApi, ns: &str) -> Option<String> {
    let cm = api.get(&CONFIGMAPS, ns, ROOT_CONFIGMAP)?;
    cm["data"][ROOT_CERT_KEY].as_str().map(str::to_owned)
}

#[tokio::test]
async fn the_root_configmaps_follow_a_prepare_with_both_roots() {
    let api = FakeApi::start();
    istio_ca_secret(&api);
    api.put(&NAMESPACES, namespace("apps"));
    let a = replica(&api).await;
    let cancel = CancellationToken::new();
    let leader = watch::Sender::new(true);
    tokio::spawn(super::super::root_distribution::distribute(
        client(&api),
        a.subscribe(),
        leader.subscribe(),
        cancel.clone(),
    ));
    let one = a.current().bundle_pem().to_owned();
    eventually("the first bundle in the ConfigMap", || {
        configmap_roots(&api, "apps").as_deref() == Some(one.as_str())
    })
    .await;
    assert_eq!(one.matches("BEGIN CERTIFICATE").count(), 1);

    a.prepare().await.unwrap();
    let two = a.current().bundle_pem().to_owned();
    assert_eq!(two.matches("BEGIN CERTIFICATE").count(), 2);
    eventually("the bundle with the prepared root", || {
        configmap_roots(&api, "apps").as_deref() == Some(two.as_str())
    })
    .await;
    cancel.cancel();
}

/// A `cacerts` Secret holding `authority`'s root as the signing CA.
fn cacerts(api: &FakeApi, pem: &crate::pki::authority::SelfSignedPem) {
    api.put(
        &SECRETS,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": PLUGIN_SECRET, "namespace": NS},
            "type": "Opaque",
            "data": {
                "ca-cert.pem": b64(pem.cert_pem.as_bytes()),
                "ca-key.pem": b64(pem.key_pem.as_bytes()),
                "cert-chain.pem": "",
                "root-cert.pem": b64(pem.cert_pem.as_bytes()),
            },
        }),
    );
}

fn new_root() -> crate::pki::authority::SelfSignedPem {
    Authority::create_self_signed_pem("operator", &AuthorityConfig::default(), &SystemClock)
        .unwrap()
        .1
}

#[tokio::test]
async fn a_new_cacerts_becomes_the_prepared_authority_without_a_restart() {
    let api = FakeApi::start();
    istio_ca_secret(&api);
    let a = replica(&api).await;
    let shutdown = Shutdown::new();
    spawn_plugin_watch(
        client(&api),
        NS,
        a.clone(),
        AuthorityConfig::default(),
        clock(),
        &shutdown,
    );
    let pem = new_root();
    let want = Authority::from_self_signed_files(
        &{
            let mut files = crate::pki::authority::MemoryFiles::new("want");
            files.insert("ca-cert.pem", pem.cert_pem.clone().into_bytes());
            files.insert("ca-key.pem", pem.key_pem.as_bytes().to_vec());
            files
        },
        &AuthorityConfig::default(),
        &SystemClock,
    )
    .unwrap()
    .id()
    .to_owned();
    cacerts(&api, &pem);
    eventually("the plug-in CA to be prepared", || {
        a.current().prepared().map(|e| (e.id.clone(), e.source))
            == Some((want.clone(), AuthoritySource::PlugIn))
    })
    .await;
    assert_eq!(stored_document(&api)["generation"], 2);

    // A bad one (key of another root) is named; the prepared one stays.
    let other = new_root();
    let bad = crate::pki::authority::SelfSignedPem {
        key_pem: other.key_pem,
        cert_pem: new_root().cert_pem,
    };
    cacerts(&api, &bad);
    eventually("the refused plug-in CA to be named", || {
        a.current()
            .problems()
            .iter()
            .any(|p| p.contains("Secret meshid-system/cacerts"))
    })
    .await;
    assert_eq!(a.current().prepared().unwrap().id, want);
    assert_eq!(stored_document(&api)["generation"], 2);
    shutdown.trigger();
}
