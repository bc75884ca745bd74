//! TokenReview against a mock API server answering like the real one: the
//! request's `spec` echoed back with a `status` (`user.extra` included).

use http::Method;
use serde_json::{json, Value};
use time::Duration;

use super::*;
use crate::platform::local::{TokenIssuer, TokenRequest, LOCAL_ISSUER};
use crate::platform::VerifyFuture;
use crate::test_helpers::kube_api::{refusal_reason, unavailable_message, Call, MockApi, Reply};

const PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const SA_USER: &str = "system:serviceaccount:shop:web";

fn audiences() -> Vec<String> {
    vec!["istio-ca".to_owned()]
}

/// A real ES256 token for shop/web bound to pod web-0, valid for an hour.
fn token() -> (Zeroizing<String>, OffsetDateTime) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::load_or_create(dir.path()).unwrap();
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let req = TokenRequest {
        namespace: "shop".into(),
        service_account: "web".into(),
        pod: Some(("web-0".into(), "pod-uid-1".into())),
        node: Some(("node-a".into(), Some("node-uid-1".into()))),
        audiences: audiences(),
        ttl: Duration::hours(1),
    };
    (issuer.issue(&req, now).unwrap(), now + Duration::hours(1))
}

/// A TokenReview answer as the API server writes it: the request echoed,
/// `metadata.creationTimestamp: null`, and `status`.
fn answer(call: &Call, status: Value) -> Reply {
    Reply::Json(
        http::StatusCode::CREATED,
        json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": call.body["spec"].clone(),
            "status": status,
        }),
    )
}

/// The status of an authenticated, pod-bound service-account token.
fn authenticated(username: &str, granted: &[&str]) -> Value {
    json!({
        "authenticated": true,
        "user": {
            "username": username,
            "uid": "0d6f3c2e-sa-uid",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
            "extra": {
                "authentication.kubernetes.io/credential-id": ["JTI=7a0c5e1e-0f0e-4bb4-9f5e-2a3c1d7e9b11"],
                "authentication.kubernetes.io/node-name": ["node-a"],
                "authentication.kubernetes.io/node-uid": ["node-uid-1"],
                "authentication.kubernetes.io/pod-name": ["web-0"],
                "authentication.kubernetes.io/pod-uid": ["pod-uid-1"]
            }
        },
        "audiences": granted,
    })
}

/// Starts a mock that answers every TokenReview with `status`.
fn reviewing(status: Value) -> (TokenReviewer, MockApi) {
    let (client, api) = MockApi::start(move |call| answer(call, status.clone()));
    (TokenReviewer::new(client), api)
}

#[tokio::test]
async fn authenticated_review_yields_pod_and_node_from_user_extra() {
    let (reviewer, _api) = reviewing(authenticated(SA_USER, &["istio-ca"]));
    let (token, exp) = token();
    let aud = audiences();
    // Through the Platform trait's boxed future: the future is Send.
    let verifying: VerifyFuture<'_> = Box::pin(reviewer.verify(&token, &aud));
    let got = verifying.await.unwrap();
    assert_eq!(
        got,
        VerifiedToken {
            issuer: LOCAL_ISSUER.to_owned(),
            namespace: "shop".into(),
            service_account: "web".into(),
            audiences: audiences(),
            pod_name: Some("web-0".into()),
            pod_uid: Some("pod-uid-1".into()),
            node_name: Some("node-a".into()),
            node_uid: Some("node-uid-1".into()),
            expires_at: exp,
        }
    );
}

#[tokio::test]
async fn request_carries_the_token_and_our_audiences() {
    let (reviewer, api) = reviewing(authenticated(SA_USER, &["istio-ca"]));
    let (token, _) = token();
    reviewer.verify(&token, &audiences()).await.unwrap();
    let calls = api.calls_to(&Method::POST, PATH);
    assert_eq!(calls.len(), 1, "{:?}", api.calls());
    let call = &calls[0];
    assert_eq!(call.path, PATH);
    assert_eq!(call.content_type.as_deref(), Some("application/json"));
    assert_eq!(call.body["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(call.body["kind"], "TokenReview");
    assert_eq!(call.body["spec"]["token"], token.as_str());
    assert_eq!(call.body["spec"]["audiences"], json!(["istio-ca"]));
}

#[tokio::test]
async fn refusals_carry_the_api_servers_reason() {
    // The messages a real API server writes for an expired token, a token for
    // another audience and a token whose bound pod was deleted.
    for error in [
        "[invalid bearer token, service account token has expired]",
        "[invalid bearer token, token audiences [\"other\"] is invalid for the target audiences [\"istio-ca\"]]",
        "[invalid bearer token, service account token has been invalidated]",
    ] {
        let (reviewer, _api) = reviewing(json!({"user": {}, "error": error}));
        let (token, _) = token();
        let why = refusal_reason(reviewer.verify(&token, &audiences()).await.unwrap_err());
        assert!(why.contains(error), "{why}");
        assert!(!why.contains(token.as_str()), "the reason leaks the token");
    }
}

#[tokio::test]
async fn unauthenticated_review_without_error_is_refused() {
    let (reviewer, _api) = reviewing(json!({"authenticated": false, "user": {}}));
    let (token, _) = token();
    let why = refusal_reason(reviewer.verify(&token, &audiences()).await.unwrap_err());
    assert!(why.contains("not authenticated"), "{why}");
}

#[tokio::test]
async fn review_granting_another_audience_is_refused() {
    let (reviewer, _api) = reviewing(authenticated(SA_USER, &["vault"]));
    let (token, _) = token();
    let why = refusal_reason(reviewer.verify(&token, &audiences()).await.unwrap_err());
    assert!(why.contains("vault"), "{why}");
}

#[tokio::test]
async fn review_without_audiences_is_refused() {
    let mut status = authenticated(SA_USER, &[]);
    status.as_object_mut().unwrap().remove("audiences");
    let (reviewer, _api) = reviewing(status);
    let (token, _) = token();
    refusal_reason(reviewer.verify(&token, &audiences()).await.unwrap_err());
}

#[tokio::test]
async fn user_and_node_credentials_are_refused() {
    for username in [
        "kubernetes-admin",
        "system:node:node-a",
        "system:serviceaccount:shop",
    ] {
        let (reviewer, _api) = reviewing(authenticated(username, &["istio-ca"]));
        let (token, _) = token();
        let why = refusal_reason(reviewer.verify(&token, &audiences()).await.unwrap_err());
        assert!(why.contains("is not system:serviceaccount"), "{why}");
    }
}

#[tokio::test]
async fn payload_subject_must_match_the_reviewed_user() {
    let (reviewer, _api) = reviewing(authenticated(
        "system:serviceaccount:shop:db",
        &["istio-ca"],
    ));
    let (token, _) = token();
    let why = refusal_reason(reviewer.verify(&token, &audiences()).await.unwrap_err());
    assert!(why.contains("disagrees"), "{why}");
}

#[tokio::test]
async fn several_pod_names_are_refused_as_ambiguous() {
    let mut status = authenticated(SA_USER, &["istio-ca"]);
    status["user"]["extra"][POD_NAME_KEY] = json!(["web-0", "web-1"]);
    let (reviewer, _api) = reviewing(status);
    let (token, _) = token();
    let why = refusal_reason(reviewer.verify(&token, &audiences()).await.unwrap_err());
    assert!(why.contains(POD_NAME_KEY), "{why}");
}

#[tokio::test]
async fn api_server_down_is_unavailable() {
    let (client, _api) = MockApi::start(|_| Reply::Unreachable);
    let (token, _) = token();
    let message = unavailable_message(
        TokenReviewer::new(client)
            .verify(&token, &audiences())
            .await
            .unwrap_err(),
    );
    assert!(message.contains("unreachable"), "{message}");
}

#[tokio::test]
async fn forbidden_is_unavailable_naming_the_missing_rbac() {
    let (client, _api) = MockApi::start(|_| {
        Reply::status(
            403,
            "Forbidden",
            "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:meshid:ca\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope",
        )
    });
    let (token, _) = token();
    let message = unavailable_message(
        TokenReviewer::new(client)
            .verify(&token, &audiences())
            .await
            .unwrap_err(),
    );
    assert!(
        message.contains("RBAC `create` on `tokenreviews`"),
        "{message}"
    );
    assert!(message.contains("403"), "{message}");
}

#[tokio::test]
async fn throttling_and_server_errors_are_unavailable() {
    for (code, reason) in [
        (429, "TooManyRequests"),
        (500, "InternalError"),
        (503, "ServiceUnavailable"),
    ] {
        let (client, _api) = MockApi::start(move |_| Reply::status(code, reason, "try again"));
        let (token, _) = token();
        let message = unavailable_message(
            TokenReviewer::new(client)
                .verify(&token, &audiences())
                .await
                .unwrap_err(),
        );
        assert!(message.contains(&code.to_string()), "{message}");
    }
}

#[tokio::test]
async fn hung_api_server_is_unavailable_after_the_timeout() {
    // A 200 whose body never ends: the API server accepted and went silent.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut rx = Some(rx);
    let (client, _api) = MockApi::start(move |_| match rx.take() {
        Some(rx) => Reply::Stream(rx),
        None => Reply::Unreachable,
    });
    let (token, _) = token();
    let reviewer = TokenReviewer::new(client).with_request_timeout(StdDuration::from_millis(100));
    let message = unavailable_message(reviewer.verify(&token, &audiences()).await.unwrap_err());
    assert!(message.contains("no answer"), "{message}");
    drop(tx);
}

#[tokio::test]
async fn unusable_tokens_are_refused_without_asking_the_api_server() {
    let (reviewer, api) = reviewing(authenticated(SA_USER, &["istio-ca"]));
    let b64 = |v: Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap());
    let header = b64(json!({"alg": "RS256", "kid": "k"}));
    let no_exp = format!("{header}.{}.sig", b64(json!({"iss": "i", "sub": SA_USER})));
    let no_iss = format!(
        "{header}.{}.sig",
        b64(json!({"exp": 4_000_000_000u64, "sub": SA_USER}))
    );
    let oversized = "a".repeat(MAX_TOKEN_LEN + 1);
    for bad in [
        "",
        "opaque-static-token",
        "a.b",
        no_exp.as_str(),
        no_iss.as_str(),
        oversized.as_str(),
    ] {
        refusal_reason(reviewer.verify(bad, &audiences()).await.unwrap_err());
    }
    let (token, _) = token();
    let why = refusal_reason(reviewer.verify(&token, &[]).await.unwrap_err());
    assert!(why.contains("no accepted audience"), "{why}");
    assert!(api.calls().is_empty(), "{:?}", api.calls());
}
