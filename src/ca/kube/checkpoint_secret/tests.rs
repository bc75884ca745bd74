//! `load_or_create` against the mock API server: Secrets shaped like the
//! real API's (base64 `data`, `metadata.resourceVersion`) and `Status`
//! errors with their `reason`.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use http::Method;
use serde_json::{json, Value};

use super::*;
use crate::test_helpers::kube_api::{Call, MockApi, Reply};

const NS: &str = "meshid-system";
const ORIGIN: &str = "cluster.local/meshid-audit";
const KEY_PATH: &str = "/api/v1/namespaces/meshid-system/secrets/meshid-audit-checkpoint-key";
const SECRETS_PATH: &str = "/api/v1/namespaces/meshid-system/secrets";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(value: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str().expect("base64 string"))
        .expect("valid base64")
}

/// The Secret as the API server returns it, with these data entries.
fn secret_json(data: &[(&str, &[u8])]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String(b64(v))))
        .collect();
    json!({
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {
            "name": CHECKPOINT_SECRET,
            "namespace": NS,
            "uid": "uid-checkpoint",
            "resourceVersion": "1001",
            "creationTimestamp": "2026-11-22T10:00:00Z",
        },
        "type": "Opaque",
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

fn not_found() -> Reply {
    Reply::status(
        404,
        "NotFound",
        "secrets \"meshid-audit-checkpoint-key\" not found",
    )
}

fn already_exists() -> Reply {
    Reply::status(
        409,
        "AlreadyExists",
        "secrets \"meshid-audit-checkpoint-key\" already exists",
    )
}

/// An API server without the Secret that stores what is created (and
/// answers 409 to a second create).
fn cluster(call: &Call, stored: &mut Option<Value>) -> Reply {
    match (&call.method, call.path.as_str()) {
        (&Method::GET, KEY_PATH) => match stored {
            Some(secret) => Reply::ok(secret.clone()),
            None => not_found(),
        },
        (&Method::POST, SECRETS_PATH) if stored.is_some() => already_exists(),
        (&Method::POST, SECRETS_PATH) => {
            let object = created(&call.body);
            *stored = Some(object.clone());
            Reply::Json(http::StatusCode::CREATED, object)
        }
        other => panic!("unexpected request {other:?}"),
    }
}

#[tokio::test]
async fn an_absent_secret_is_created_and_then_read_back_as_the_same_key() {
    let mut stored = None;
    let (client, api) = MockApi::start(move |call| cluster(call, &mut stored));
    let first = load_or_create(&client, NS, ORIGIN).await.expect("created");

    let posts = api.calls_to(&Method::POST, SECRETS_PATH);
    assert_eq!(posts.len(), 1);
    let body = &posts[0].body;
    assert_eq!(body["metadata"]["name"], CHECKPOINT_SECRET);
    assert_eq!(body["metadata"]["labels"][NAME_LABEL.0], NAME_LABEL.1);
    assert_eq!(body["type"], "Opaque");
    let data = body["data"].as_object().expect("data");
    assert_eq!(data.keys().collect::<Vec<_>>(), [KEY_ENTRY]);
    let sent = NoteSigner::from_pkcs8(ORIGIN, &unb64(&data[KEY_ENTRY])).expect("a PKCS#8 key");
    assert_eq!(sent.verifier_key(), first.verifier_key());

    let again = load_or_create(&client, NS, ORIGIN).await.expect("loaded");
    assert_eq!(again.verifier_key(), first.verifier_key());
    assert_eq!(api.calls_to(&Method::POST, SECRETS_PATH).len(), 1);
    assert!(first
        .verifier_key()
        .starts_with("cluster.local/meshid-audit+"));
}

#[tokio::test]
async fn an_existing_key_is_loaded_and_nothing_is_created() {
    let pkcs8 = NoteSigner::generate_pkcs8().expect("key");
    let want = NoteSigner::from_pkcs8(ORIGIN, &pkcs8).expect("signer");
    let secret = secret_json(&[(KEY_ENTRY, &pkcs8)]);
    let (client, api) = MockApi::start(move |call| match call.path.as_str() {
        KEY_PATH => Reply::ok(secret.clone()),
        other => panic!("unexpected request to {other}"),
    });
    let signer = load_or_create(&client, NS, ORIGIN).await.expect("loaded");
    assert_eq!(signer.verifier_key(), want.verifier_key());
    assert!(api.calls_to(&Method::POST, "/").is_empty());
}

#[tokio::test]
async fn two_replicas_racing_end_up_with_the_one_key_that_was_stored() {
    // Both GETs arrive before either create (the race); the first create
    // wins with 201, the second gets 409 AlreadyExists and reads the winner's.
    let stored: Arc<Mutex<Option<Value>>> = Arc::default();
    let seen = stored.clone();
    let mut gets = 0;
    let (client, api) = MockApi::start(move |call| {
        let mut stored = seen.lock().expect("lock");
        if call.method == Method::GET {
            gets += 1;
            if gets <= 2 {
                return not_found();
            }
        }
        cluster(call, &mut stored)
    });
    let (a, b) = tokio::join!(
        load_or_create(&client, NS, ORIGIN),
        load_or_create(&client, NS, ORIGIN)
    );
    let (a, b) = (a.expect("replica a"), b.expect("replica b"));
    assert_eq!(a.verifier_key(), b.verifier_key());
    let winner = stored.lock().expect("lock").clone().expect("stored");
    let winner = NoteSigner::from_pkcs8(ORIGIN, &unb64(&winner["data"][KEY_ENTRY])).expect("key");
    assert_eq!(a.verifier_key(), winner.verifier_key());
    assert_eq!(api.calls_to(&Method::POST, SECRETS_PATH).len(), 2);
}

#[tokio::test]
async fn a_secret_with_a_garbage_key_is_refused_naming_the_secret_not_the_bytes() {
    let garbage = b"sixteen-garbage!";
    let secret = secret_json(&[(KEY_ENTRY, garbage)]);
    let (client, api) = MockApi::start(move |call| match call.path.as_str() {
        KEY_PATH => Reply::ok(secret.clone()),
        other => panic!("unexpected request to {other}"),
    });
    let err = load_or_create(&client, NS, ORIGIN)
        .await
        .expect_err("garbage");
    assert!(
        matches!(&err, CheckpointSecretError::Invalid { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("Secret meshid-system/meshid-audit-checkpoint-key")
            && msg.contains("key.pk8 is not an Ed25519 PKCS#8 private key"),
        "{msg}"
    );
    for shown in [msg, format!("{err:?}")] {
        assert!(!shown.contains("sixteen-garbage"), "{shown}");
        assert!(!shown.contains(&b64(garbage)), "{shown}");
    }
    assert!(
        api.calls_to(&Method::POST, "/").is_empty(),
        "never replaced"
    );
}

#[tokio::test]
async fn a_secret_without_key_pk8_is_refused_naming_the_missing_data_key() {
    let secret = secret_json(&[("other", b"x")]);
    let (client, _api) = MockApi::start(move |_| Reply::ok(secret.clone()));
    let err = load_or_create(&client, NS, ORIGIN)
        .await
        .expect_err("missing");
    assert!(
        err.to_string().contains(
            "Secret meshid-system/meshid-audit-checkpoint-key: it has no data key key.pk8"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_origin_that_cannot_name_a_key_fails_before_anything_is_created() {
    let mut stored = None;
    let (client, api) = MockApi::start(move |call| cluster(call, &mut stored));
    let err = load_or_create(&client, NS, "has space")
        .await
        .expect_err("bad origin");
    assert!(matches!(err, CheckpointSecretError::Origin(_)), "{err}");
    assert!(api.calls_to(&Method::POST, "/").is_empty());
}

#[tokio::test]
async fn forbidden_names_the_missing_rbac_permission() {
    let (client, _api) = MockApi::start(|call| {
        match call.method {
        Method::GET => not_found(),
        _ => Reply::status(
            403,
            "Forbidden",
            "secrets is forbidden: User \"system:serviceaccount:meshid-system:meshid-ca\" \
             cannot create resource \"secrets\" in API group \"\" in the namespace \"meshid-system\"",
        ),
    }
    });
    let err = load_or_create(&client, NS, ORIGIN)
        .await
        .expect_err("forbidden");
    assert!(
        matches!(
            &err,
            CheckpointSecretError::Forbidden { verb: "create", .. }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("verb \"create\" on resource \"secrets\""),
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
            1 => Reply::Unreachable,
            2 => Reply::status(503, "ServiceUnavailable", "etcd leader changed"),
            _ => cluster(call, &mut stored),
        }
    });
    let retry = RetryPolicy {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
        deadline: Duration::from_secs(5),
    };
    load_or_create_retrying(&client, NS, ORIGIN, &retry, &CancellationToken::new())
        .await
        .expect("loaded after retries");
    assert_eq!(api.calls_to(&Method::GET, KEY_PATH).len(), 3);
    assert_eq!(api.calls_to(&Method::POST, SECRETS_PATH).len(), 1);
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
    let err = load_or_create_retrying(&client, NS, ORIGIN, &retry, &cancel)
        .await
        .expect_err("cancelled");
    assert!(matches!(err, CheckpointSecretError::Cancelled), "{err}");
}
