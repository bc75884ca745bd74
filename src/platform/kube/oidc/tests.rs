//! OIDC discovery + JWKS against a mock API server answering like a real one
//! (kind: discovery names `https://<node ip>:6443/openid/v1/jwks`), with
//! tokens signed by local issuers and an injected clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures::future::join_all;
use http::Method;
use jsonwebtoken::jwk::JwkSet;
use serde_json::json;
use time::macros::datetime;
use zeroize::Zeroizing;

use super::discovery::{DISCOVERY_PATH, STANDARD_JWKS_PATH};
use super::*;
use crate::platform::local::{TokenIssuer, TokenRequest, LOCAL_ISSUER};
use crate::platform::VerifyFuture;
use crate::test_helpers::kube_api::{refusal_reason, unavailable_message, MockApi, Reply};
use crate::time::{Clock as _, TestClock};

const T0: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);

/// What the mock API server serves; tests change it while it runs.
#[derive(Clone)]
struct Cluster {
    down: Arc<AtomicBool>,
    /// Accept requests and never finish the answer (a hung API server).
    hung: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<tokio::sync::mpsc::Sender<serde_json::Value>>>>,
    issuer: Arc<Mutex<String>>,
    jwks: Arc<Mutex<JwkSet>>,
}

impl Cluster {
    fn new(jwks: JwkSet) -> Self {
        Self {
            down: Arc::new(AtomicBool::new(false)),
            hung: Arc::new(AtomicBool::new(false)),
            held: Arc::new(Mutex::new(Vec::new())),
            issuer: Arc::new(Mutex::new(LOCAL_ISSUER.to_owned())),
            jwks: Arc::new(Mutex::new(jwks)),
        }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn set_jwks(&self, jwks: JwkSet) {
        *self.jwks.lock().unwrap() = jwks;
    }

    fn answer(&self, path: &str) -> Reply {
        if self.down.load(Ordering::SeqCst) {
            return Reply::Unreachable;
        }
        if self.hung.load(Ordering::SeqCst) {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            self.held.lock().unwrap().push(tx);
            return Reply::Stream(rx);
        }
        match path {
            DISCOVERY_PATH => Reply::ok(json!({
                "issuer": *self.issuer.lock().unwrap(),
                "jwks_uri": "https://172.18.0.2:6443/openid/v1/jwks",
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256", "RS256"],
            })),
            STANDARD_JWKS_PATH => {
                Reply::ok(serde_json::to_value(&*self.jwks.lock().unwrap()).unwrap())
            }
            other => Reply::status(
                404,
                "NotFound",
                &format!("the server could not find {other}"),
            ),
        }
    }
}

struct Fixture {
    oidc: OidcJwks,
    api: MockApi,
    cluster: Cluster,
    clock: TestClock,
    issuer: TokenIssuer,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self::with_config(OidcJwksConfig::default())
    }

    fn with_config(config: OidcJwksConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::load_or_create(dir.path()).unwrap();
        let cluster = Cluster::new(issuer.jwks());
        let served = cluster.clone();
        let (client, api) = MockApi::start(move |call| served.answer(&call.path));
        let clock = TestClock::new(T0);
        let oidc = OidcJwks::new(client, config, Arc::new(clock.clone()));
        Self {
            oidc,
            api,
            cluster,
            clock,
            issuer,
            _dir: dir,
        }
    }

    fn jwks_calls(&self) -> usize {
        self.api.calls_to(&Method::GET, STANDARD_JWKS_PATH).len()
    }
}

fn audiences() -> Vec<String> {
    vec!["istio-ca".to_owned()]
}

fn token_from(issuer: &TokenIssuer, aud: &str, now: OffsetDateTime) -> Zeroizing<String> {
    let req = TokenRequest {
        namespace: "shop".into(),
        service_account: "web".into(),
        pod: Some(("web-0".into(), "pod-uid-1".into())),
        node: Some(("node-a".into(), Some("node-uid-1".into()))),
        audiences: vec![aud.to_owned()],
        ttl: Duration::hours(1),
    };
    issuer.issue(&req, now).unwrap()
}

/// `token` with its header replaced by one naming `kid` (the signature no
/// longer verifies: a forger's token).
fn with_kid(token: &str, kid: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "kid": kid}).to_string());
    let rest = token.split_once('.').unwrap().1;
    format!("{header}.{rest}")
}

#[tokio::test]
async fn discovered_keys_verify_a_valid_token() {
    let f = Fixture::new();
    let token = token_from(&f.issuer, "istio-ca", T0);
    let aud = audiences();
    // Through the Platform trait's boxed future: the future is Send.
    let verifying: VerifyFuture<'_> = Box::pin(f.oidc.verify(&token, &aud));
    let got = verifying.await.unwrap();
    assert_eq!(got.issuer, LOCAL_ISSUER);
    assert_eq!(
        (got.namespace.as_str(), got.service_account.as_str()),
        ("shop", "web")
    );
    assert_eq!(got.pod_uid.as_deref(), Some("pod-uid-1"));
    assert_eq!(got.expires_at, T0 + Duration::hours(1));
    let paths: Vec<String> = f.api.calls().into_iter().map(|c| c.path).collect();
    assert_eq!(paths, [DISCOVERY_PATH, STANDARD_JWKS_PATH]);
    assert_eq!(f.oidc.issuer().as_deref(), Some(LOCAL_ISSUER));
    // Cached: a second token costs the API server nothing.
    f.oidc.verify(&token, &audiences()).await.unwrap();
    assert_eq!(f.api.calls().len(), 2);
}

#[tokio::test]
async fn expired_token_is_refused() {
    let f = Fixture::new();
    let token = token_from(&f.issuer, "istio-ca", T0);
    f.clock.advance(Duration::hours(1) + DEFAULT_LEEWAY);
    let why = refusal_reason(f.oidc.verify(&token, &audiences()).await.unwrap_err());
    assert!(why.contains("expired"), "{why}");
}

#[tokio::test]
async fn token_for_another_audience_is_refused() {
    let f = Fixture::new();
    let token = token_from(&f.issuer, "vault", T0);
    let why = refusal_reason(f.oidc.verify(&token, &audiences()).await.unwrap_err());
    assert!(why.contains("audience"), "{why}");
}

#[tokio::test]
async fn token_from_another_issuer_is_refused() {
    let f = Fixture::new();
    // Same keys, but the API server announces another issuer.
    *f.cluster.issuer.lock().unwrap() = "https://oidc.other-cluster.example".into();
    let token = token_from(&f.issuer, "istio-ca", T0);
    let why = refusal_reason(f.oidc.verify(&token, &audiences()).await.unwrap_err());
    assert!(why.contains("issuer"), "{why}");
}

#[tokio::test]
async fn unknown_kid_refetches_once_and_accepts_a_rotated_key() {
    let f = Fixture::new();
    f.oidc.load().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rotated = TokenIssuer::load_or_create(dir.path()).unwrap();
    let mut both = f.issuer.jwks();
    both.keys.extend(rotated.jwks().keys);
    f.cluster.set_jwks(both);
    f.clock.advance(Duration::seconds(31));
    let token = token_from(&rotated, "istio-ca", f.clock.now());
    let got = f.oidc.verify(&token, &audiences()).await.unwrap();
    assert_eq!(got.service_account, "web");
    assert_eq!(f.jwks_calls(), 2);
    // The old key still verifies, from the cache.
    let old = token_from(&f.issuer, "istio-ca", f.clock.now());
    f.oidc.verify(&old, &audiences()).await.unwrap();
    assert_eq!(f.jwks_calls(), 2);
}

#[tokio::test]
async fn flood_of_unknown_kids_triggers_one_refetch_per_interval() {
    let f = Fixture::new();
    f.oidc.load().await.unwrap();
    f.clock.advance(Duration::seconds(31));
    let real = token_from(&f.issuer, "istio-ca", f.clock.now());
    let forged: Vec<String> = (0..64)
        .map(|i| with_kid(&real, &format!("random-{i}")))
        .collect();
    let aud = audiences();
    let results = join_all(forged.iter().map(|t| f.oidc.verify(t, &aud))).await;
    for result in results {
        let why = refusal_reason(result.unwrap_err());
        assert!(why.contains("not in the issuer's JWKS"), "{why}");
    }
    assert_eq!(f.jwks_calls(), 2, "one load, one refetch");
    // Within the interval: no more fetches, however many new kids.
    f.clock.advance(Duration::seconds(29));
    for t in &forged {
        refusal_reason(f.oidc.verify(t, &audiences()).await.unwrap_err());
    }
    assert_eq!(f.jwks_calls(), 2);
    // After it: one more.
    f.clock.advance(Duration::seconds(2));
    refusal_reason(f.oidc.verify(&forged[0], &audiences()).await.unwrap_err());
    assert_eq!(f.jwks_calls(), 3);
}

#[tokio::test]
async fn api_server_down_at_start_is_unavailable_until_it_comes_back() {
    let f = Fixture::new();
    f.cluster.set_down(true);
    assert!(f.oidc.load().await.is_err());
    assert!(!f.oidc.is_loaded());
    let token = token_from(&f.issuer, "istio-ca", T0);
    let message = unavailable_message(f.oidc.verify(&token, &audiences()).await.unwrap_err());
    assert!(message.contains("unreachable"), "{message}");
    // Within the retry interval the API server is not asked again.
    let asked = f.api.calls().len();
    for _ in 0..10 {
        unavailable_message(f.oidc.verify(&token, &audiences()).await.unwrap_err());
    }
    assert_eq!(f.api.calls().len(), asked);
    f.cluster.set_down(false);
    f.clock.advance(Duration::seconds(5));
    f.oidc.verify(&token, &audiences()).await.unwrap();
    assert!(f.oidc.is_loaded());
}

#[tokio::test]
async fn cached_keys_keep_verifying_while_the_api_server_is_down() {
    let f = Fixture::new();
    f.oidc.load().await.unwrap();
    f.cluster.set_down(true);
    // Past max_key_age: the refetch fails, the cached keys stay.
    f.clock.advance(Duration::hours(1));
    let token = token_from(&f.issuer, "istio-ca", f.clock.now());
    f.oidc.verify(&token, &audiences()).await.unwrap();
    assert_eq!(f.api.calls_to(&Method::GET, DISCOVERY_PATH).len(), 2);
    // A kid we do not know may be a rotation we cannot see: retryable.
    f.clock.advance(Duration::seconds(31));
    let message = unavailable_message(
        f.oidc
            .verify(&with_kid(&token, "new-key"), &audiences())
            .await
            .unwrap_err(),
    );
    assert!(message.contains("new-key"), "{message}");
    f.oidc.verify(&token, &audiences()).await.unwrap();
}

#[tokio::test]
async fn a_hung_refetch_of_stale_keys_stalls_no_other_caller() {
    let timeout = StdDuration::from_millis(300);
    let f = Fixture::with_config(OidcJwksConfig {
        request_timeout: timeout,
        ..OidcJwksConfig::default()
    });
    f.oidc.load().await.unwrap();
    f.cluster.hung.store(true, Ordering::SeqCst);
    f.clock.advance(Duration::hours(1));
    let token = token_from(&f.issuer, "istio-ca", f.clock.now());
    let aud = audiences();
    // The first caller takes the gate and waits on the hung API server…
    let fetching = f.oidc.verify(&token, &aud);
    // …the second finds the gate taken and verifies with the cached keys.
    let other = async {
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        let got = f.oidc.verify(&token, &aud).await;
        (got, started.elapsed())
    };
    let (first, (second, waited)) = tokio::join!(fetching, other);
    first.unwrap();
    second.unwrap();
    assert!(waited < timeout / 2, "waited {waited:?} behind the refetch");
    assert_eq!(f.api.calls_to(&Method::GET, DISCOVERY_PATH).len(), 2);
}

#[tokio::test]
async fn stale_keys_are_refetched_so_a_withdrawn_key_stops_verifying() {
    let f = Fixture::new();
    f.oidc.load().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let other = TokenIssuer::load_or_create(dir.path()).unwrap();
    f.cluster.set_jwks(other.jwks());
    f.clock.advance(Duration::hours(1));
    let token = token_from(&f.issuer, "istio-ca", f.clock.now());
    let why = refusal_reason(f.oidc.verify(&token, &audiences()).await.unwrap_err());
    assert!(why.contains("not in the issuer's JWKS"), "{why}");
}

#[tokio::test]
async fn missing_rbac_for_discovery_is_unavailable_and_named() {
    let (client, _api) = MockApi::start(|_| {
        Reply::status(403, "Forbidden", "forbidden: User \"system:serviceaccount:meshid:ca\" cannot get path \"/.well-known/openid-configuration\"")
    });
    let oidc = OidcJwks::new(
        client,
        OidcJwksConfig::default(),
        Arc::new(TestClock::new(T0)),
    );
    let message = unavailable_message(oidc.verify("a.b.c", &audiences()).await.unwrap_err());
    assert!(
        message.contains("system:service-account-issuer-discovery"),
        "{message}"
    );
}

#[tokio::test]
async fn jwks_uri_off_the_api_server_is_never_fetched() {
    let (client, api) = MockApi::start(|call| match call.path.as_str() {
        DISCOVERY_PATH => {
            Reply::ok(json!({"issuer": LOCAL_ISSUER, "jwks_uri": "https://attacker.example/keys"}))
        }
        _ => Reply::ok(json!({"keys": []})),
    });
    let oidc = OidcJwks::new(
        client,
        OidcJwksConfig::default(),
        Arc::new(TestClock::new(T0)),
    );
    let err = oidc.load().await.unwrap_err();
    assert!(matches!(err, PlatformError::Jwks { .. }), "{err:?}");
    let paths: Vec<String> = api.calls().into_iter().map(|c| c.path).collect();
    assert_eq!(paths, [DISCOVERY_PATH]);
}

#[tokio::test]
async fn jwks_without_a_usable_key_is_a_failed_fetch() {
    let f = Fixture::new();
    let oct: JwkSet =
        serde_json::from_value(json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}))
            .unwrap();
    f.cluster.set_jwks(oct);
    let err = f.oidc.load().await.unwrap_err();
    assert!(err.to_string().contains("no RS256 or ES256 key"), "{err}");
    assert!(!f.oidc.is_loaded());
}

#[test]
fn rate_limit_depends_on_the_last_outcome() {
    let config = OidcJwksConfig::default();
    assert!(may_fetch(None, &config, T0));
    let ok = Some(Attempt { at: T0, ok: true });
    assert!(!may_fetch(ok, &config, T0 + Duration::seconds(29)));
    assert!(may_fetch(ok, &config, T0 + Duration::seconds(30)));
    let failed = Some(Attempt { at: T0, ok: false });
    assert!(!may_fetch(failed, &config, T0 + Duration::seconds(4)));
    assert!(may_fetch(failed, &config, T0 + Duration::seconds(5)));
}
