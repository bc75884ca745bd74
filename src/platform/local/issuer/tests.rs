use std::os::unix::fs::PermissionsExt;

use serde_json::Value;
use time::macros::datetime;

use super::*;

const NOW: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);

fn request() -> TokenRequest {
    TokenRequest {
        namespace: "shop".into(),
        service_account: "web".into(),
        pod: Some(("web-1".into(), "pod-uid-1".into())),
        node: Some(("node-a".into(), None)),
        audiences: vec!["istio-ca".into()],
        ttl: time::Duration::hours(1),
    }
}

fn aud() -> Vec<String> {
    vec!["istio-ca".into()]
}

fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[test]
fn issued_token_verifies_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::load_or_create(dir.path()).unwrap();
    let token = issuer.issue(&request(), NOW).unwrap();
    let got = issuer.verifier().verify(&token, &aud(), NOW).unwrap();
    assert_eq!(got.issuer, LOCAL_ISSUER);
    assert_eq!(
        (got.namespace.as_str(), got.service_account.as_str()),
        ("shop", "web")
    );
    assert_eq!(got.pod_name.as_deref(), Some("web-1"));
    assert_eq!(got.pod_uid.as_deref(), Some("pod-uid-1"));
    assert_eq!(got.node_name.as_deref(), Some("node-a"));
    assert_eq!(got.node_uid, None);
    assert_eq!(got.expires_at, NOW + time::Duration::hours(1));
    // Expired an hour (plus leeway) later.
    assert!(issuer
        .verifier()
        .verify(&token, &aud(), NOW + time::Duration::minutes(61))
        .is_err());
}

#[test]
fn token_is_shaped_like_a_projected_kubernetes_token() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::load_or_create(dir.path()).unwrap();
    let token = issuer.issue(&request(), NOW).unwrap();
    assert!(!token.ends_with('\n') && !token.contains(char::is_whitespace));
    assert_eq!(token.split('.').count(), 3);
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        header,
        serde_json::json!({"alg": "ES256", "kid": issuer.kid()})
    );
    let claims = payload(&token);
    let keys: Vec<&str> = claims
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "aud",
            "exp",
            "iat",
            "iss",
            "jti",
            "kubernetes.io",
            "nbf",
            "sub"
        ]
    );
    assert_eq!(claims["aud"], serde_json::json!(["istio-ca"]));
    assert_eq!(claims["sub"], "system:serviceaccount:shop:web");
    assert_eq!(claims["iat"], claims["nbf"]);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
    let k = &claims["kubernetes.io"];
    assert_eq!(k["namespace"], "shop");
    assert_eq!(
        k["pod"],
        serde_json::json!({"name": "web-1", "uid": "pod-uid-1"})
    );
    assert_eq!(k["node"], serde_json::json!({"name": "node-a"}));
    assert_eq!(k["serviceaccount"]["name"], "web");
    let sa_uid = k["serviceaccount"]["uid"].as_str().unwrap();
    assert_eq!(sa_uid.len(), 36, "{sa_uid}");
    // Stable per service account, random per token.
    let again = payload(&issuer.issue(&request(), NOW).unwrap());
    assert_eq!(again["kubernetes.io"]["serviceaccount"]["uid"], sa_uid);
    assert_ne!(again["jti"], claims["jti"]);
}

#[test]
fn unbound_token_has_no_pod_or_node() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::load_or_create(dir.path()).unwrap();
    let req = TokenRequest {
        pod: None,
        node: Some(("node-a".into(), Some("node-uid".into()))),
        ..request()
    };
    let claims = payload(&issuer.issue(&req, NOW).unwrap());
    assert!(claims["kubernetes.io"].get("pod").is_none());
    assert_eq!(claims["kubernetes.io"]["node"]["uid"], "node-uid");
}

#[test]
fn verifier_from_the_jwks_file_alone_works() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::load_or_create(dir.path()).unwrap();
    let token = issuer.issue(&request(), NOW).unwrap();
    let jwks_only = tempfile::tempdir().unwrap();
    fs::copy(dir.path().join(JWKS_FILE), jwks_only.path().join(JWKS_FILE)).unwrap();
    let verifier = load_verifier(jwks_only.path()).unwrap();
    assert_eq!(verifier.issuer(), Some(LOCAL_ISSUER));
    verifier.verify(&token, &aud(), NOW).unwrap();
    let on_disk: JwkSet =
        serde_json::from_slice(&fs::read(dir.path().join(JWKS_FILE)).unwrap()).unwrap();
    assert_eq!(on_disk, issuer.jwks());
    assert!(!fs::read_to_string(dir.path().join(JWKS_FILE))
        .unwrap()
        .contains("\"d\""));
}

#[test]
fn load_verifier_reports_a_missing_or_broken_jwks() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        load_verifier(dir.path()),
        Err(IssuerError::Io { .. })
    ));
    fs::write(dir.path().join(JWKS_FILE), "{}").unwrap();
    assert!(matches!(
        load_verifier(dir.path()),
        Err(IssuerError::Key { .. })
    ));
    fs::write(
        dir.path().join(JWKS_FILE),
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#,
    )
    .unwrap();
    assert!(matches!(
        load_verifier(dir.path()),
        Err(IssuerError::Jwks { .. })
    ));
}

#[test]
fn private_key_is_0600_and_reused_on_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = TokenIssuer::load_or_create(dir.path()).unwrap();
    let key_path = dir.path().join(KEY_FILE);
    assert_eq!(
        fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pem = fs::read_to_string(&key_path).unwrap();
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----\n")
            && pem.ends_with("-----END PRIVATE KEY-----\n")
    );
    assert!(pem.lines().all(|l| l.len() <= 64));
    let second = TokenIssuer::load_or_create(dir.path()).unwrap();
    assert_eq!(first.kid(), second.kid());
    second
        .verifier()
        .verify(&first.issue(&request(), NOW).unwrap(), &aud(), NOW)
        .unwrap();
    // Only the key and the JWKS are left in the directory: no temporaries.
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [JWKS_FILE, KEY_FILE]);
}

#[test]
fn a_deleted_jwks_is_rewritten_from_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::load_or_create(dir.path()).unwrap();
    fs::remove_file(dir.path().join(JWKS_FILE)).unwrap();
    TokenIssuer::load_or_create(dir.path()).unwrap();
    let token = issuer.issue(&request(), NOW).unwrap();
    load_verifier(dir.path())
        .unwrap()
        .verify(&token, &aud(), NOW)
        .unwrap();
}

#[test]
fn concurrent_first_starts_agree_on_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let kids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    TokenIssuer::load_or_create(dir.path())
                        .unwrap()
                        .kid()
                        .to_owned()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(kids.iter().all(|k| k == &kids[0]), "{kids:?}");
    assert_eq!(load_verifier(dir.path()).unwrap().key_count(), 1);
    let final_kid = TokenIssuer::load_or_create(dir.path())
        .unwrap()
        .kid()
        .to_owned();
    assert_eq!(final_kid, kids[0]);
}

#[test]
fn tokens_from_another_issuer_key_are_refused() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ours = TokenIssuer::load_or_create(a.path()).unwrap();
    let theirs = TokenIssuer::load_or_create(b.path()).unwrap();
    assert_ne!(ours.kid(), theirs.kid());
    let err = ours
        .verifier()
        .verify(&theirs.issue(&request(), NOW).unwrap(), &aud(), NOW)
        .unwrap_err();
    assert!(
        err.to_string().contains("is not in the issuer's JWKS"),
        "{err}"
    );
}

#[test]
fn corrupt_key_file_is_an_error_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join(KEY_FILE);
    for junk in [
        "not a key",
        "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ] {
        fs::write(&key_path, junk).unwrap();
        let err = TokenIssuer::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IssuerError::Key { .. }), "{err}");
        assert!(err.to_string().contains(KEY_FILE), "{err}");
        assert_eq!(fs::read_to_string(&key_path).unwrap(), junk);
    }
}

#[test]
fn bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::load_or_create(dir.path()).unwrap();
    let cases = [
        TokenRequest {
            namespace: "".into(),
            ..request()
        },
        TokenRequest {
            service_account: "a/b".into(),
            ..request()
        },
        TokenRequest {
            audiences: vec![],
            ..request()
        },
        TokenRequest {
            audiences: vec!["".into()],
            ..request()
        },
        TokenRequest {
            ttl: time::Duration::ZERO,
            ..request()
        },
        TokenRequest {
            ttl: time::Duration::seconds(-5),
            ..request()
        },
        TokenRequest {
            ttl: time::Duration::MAX,
            ..request()
        },
        TokenRequest {
            pod: Some(("web-1".into(), "".into())),
            ..request()
        },
        TokenRequest {
            node: Some(("".into(), None)),
            ..request()
        },
    ];
    for req in cases {
        let err = issuer.issue(&req, NOW).unwrap_err();
        assert!(
            matches!(err, IssuerError::InvalidRequest { .. }),
            "{req:?}: {err}"
        );
    }
}

#[test]
fn debug_never_shows_the_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::load_or_create(dir.path()).unwrap();
    let shown = format!("{issuer:?}");
    assert!(
        shown.contains("[redacted]") && shown.contains(issuer.kid()),
        "{shown}"
    );
    let pem = fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!shown.contains(line), "{shown}");
    }
    let der_hex: String = issuer
        .key
        .0
        .iter()
        .map(|b| format!("{b}"))
        .collect::<Vec<_>>()
        .join(", ");
    assert!(!shown.contains(&der_hex));
}
