//! Every rule of the verifier, one bad input at a time.

use jsonwebtoken::jwk::JwkSet;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use time::macros::datetime;

use super::*;

const NOW: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A test-only RSA-2048 key (ring cannot generate RSA keys), made once with
/// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`. It signs
/// nothing outside these tests.
const RSA_TEST_KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCkXNIrS+ZzKyRq
KtqxaGxvafQ44pzWbfV8dZa9WGx3gnsh/Qe6qsn9qEqKYA853ZHTRuGXiCm/Wbni
7Zh6nAK9bJVF15cBZ+CwFG3gd0m+/QjmM5hR1sFYYW3SabuSt0KmVsvCiDW0nMYE
ni2C6mkB1d7iSV6Exih2iRmmle69R0giVa/aL+rt9XxULOa6Ej75Izwkk4EWboo8
YKItwjDHw2a56uasphQQdg/0ZxNm0qraf+kZsVfMswGvnerRz4Ef9cdaEHrEOk4H
BDXNwiUfQ692qq/0xpQuy5oa+E/TPNudI03x6+erePtWYdy+1ZYqQM3RMbN/KLlN
1JZ5AR0BAgMBAAECggEAEdcXYuaypVaN9c4f/bipaHB2N0R1pJq71h4HVhcGcvRh
PB+0WpEWKqe9K4bgsDW6EdY0P1fivCfXkueaMNjFPV1PWIzdkaP+Ue5tvLsF8KqT
cDUyd9OZGeg9XOToHLUykU6DgGJ7fda0caTfqMGb0zytHB+9mCjQFImuFJRanQW2
o3MxotIfXzdV9qyVWTDs79lT/IbLY2gbRuSj9vu1hDYsRd1TAGqrD5fGuf5yknNT
qR1O5eCHbh4UMTAalNjuAd9jo6eSKgjFUTYOjNdPhfIOF4S9A9LbRL+Rm5aEKI1L
7GBo+/YBs+DduDk3DmcbV3hIq/WU05k2JYpEwemQCQKBgQDT47kswYC6IfVR+dTZ
W8RAZOl8DhYnSLyhuOhNDk9JG17twZU7OiRwe/P4XacHOKFHM2JtL8kMw70tbUID
gkHaZn49seHhl8rUDiRyS/kQWtysjxDT/2m22na9ZIic4rNF3WXYpZGlqLDH9397
esG7deCOeUJ+Z84bNjKBZOFiHQKBgQDGlDuOvOyBz7xkzAKUgtcs/lgqgmOokuQR
nJxOuwSxJ5KAaw+EHzAy+4eIZrfSbGtvC4piDLpzkfKrRwI/e57AMWsafR1rrlqp
rL8F9lr2hzO+xuTkjq0GOdUOaAOi7Cqhugq/S0X0bNFkXW3b6JKKfBq2tOZqgkEz
hec0U91xNQKBgBJ8re1fvLGAwPy0BYQpY4gSxeRS/k/TItIhZfNDKlvAjZnE6BZQ
zlkaF4E1+prAsCGcNBw+rRX2Bg1umPHhbYl2o9ESMhkSu1mhGkD2q/ZnVxWfLeKx
SDHyAaYonVrC1M1lsbsjRv/jJflseKz3WuvWLw9/OPP6bpslMWbkvF1pAoGAQP24
tFGesimUBgVC/uoHlIE1x8ve5AgXPrBb8+R/d5908jSX4mz2sGjkBb9ggCzdyH0l
cEusJjDpFCdsU+yYm1xRKl0yaNCqeYfBCSmEwdSkGdcsiKUtebEpyso+Dm9u0Hl8
FPmEzqdirI9raiKm+038zDlOhCNXRY6Yiea8vdUCgYEAouZ00zgeQ6D/9IQuvTZp
FoVG0A+gfLPSERWYwRsgwqT/uo15KJdsaLpBcehlKevcxoZL9YII+63wJGVJn90h
EfgVbgBLvATueAI//ixuGlPf9nz4xlXVjYh4lJP2zmg68QiVsvIApsiWprAVKfPq
GRO+h61NQgxxI7mAc2UUT8E=
-----END PRIVATE KEY-----
";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ts(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

struct TestKey {
    signer: Signer,
    kid: String,
    jwk: Value,
}

fn ec_key(kid: &str) -> TestKey {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
        "x": b64(&point[1..33]), "y": b64(&point[33..])});
    TestKey {
        signer: Signer::Ec(pair),
        kid: kid.into(),
        jwk,
    }
}

fn rsa_key(kid: &str) -> TestKey {
    let body: String = RSA_TEST_KEY_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let pair = RsaKeyPair::from_pkcs8(&der).unwrap();
    let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
    let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&public.n), "e": b64(&public.e)});
    TestKey {
        signer: Signer::Rsa(pair),
        kid: kid.into(),
        jwk,
    }
}

impl TestKey {
    fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Ec(_) => "ES256",
            Signer::Rsa(_) => "RS256",
        }
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Ec(pair) => pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            Signer::Rsa(pair) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .unwrap();
                sig
            }
        };
        format!("{input}.{}", b64(&sig))
    }

    fn token(&self, claims: &Value) -> String {
        self.sign(&json!({"alg": self.alg(), "kid": self.kid}), claims)
    }
}

fn jwks(keys: &[&TestKey]) -> JwkSet {
    serde_json::from_value(json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}))
        .unwrap()
}

fn verifier(keys: &[&TestKey]) -> JwtVerifier {
    JwtVerifier::new(JwtVerifierConfig {
        issuer: Some(ISSUER.into()),
        jwks: jwks(keys),
        leeway: DEFAULT_LEEWAY,
    })
}

/// Claims shaped like a kubelet-projected token.
fn claims() -> Value {
    json!({
        "aud": ["istio-ca"],
        "exp": ts(NOW + Duration::hours(1)),
        "iat": ts(NOW - Duration::minutes(1)),
        "iss": ISSUER,
        "jti": "5f0c4d36-8a55-4a8e-9d0c-2a3c1f7e5b1a",
        "kubernetes.io": {
            "namespace": "shop",
            "node": {"name": "node-a", "uid": "node-uid"},
            "pod": {"name": "web-1", "uid": "pod-uid"},
            "serviceaccount": {"name": "web", "uid": "sa-uid"},
            "warnafter": ts(NOW + Duration::minutes(50)),
        },
        "nbf": ts(NOW - Duration::minutes(1)),
        "sub": "system:serviceaccount:shop:web",
    })
}

fn with(mut claims: Value, pointer: &str, value: Value) -> Value {
    *claims.pointer_mut(pointer).unwrap() = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

fn aud() -> Vec<String> {
    vec!["istio-ca".into()]
}

/// The refusal reason, which must never quote the token.
fn refused_at(v: &JwtVerifier, token: &str, now: OffsetDateTime) -> String {
    match v.verify(token, &aud(), now) {
        Err(PlatformError::InvalidToken { reason }) => {
            assert!(
                token.len() < 20 || !reason.contains(token),
                "reason quotes the token: {reason}"
            );
            reason
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn refused(v: &JwtVerifier, token: &str) -> String {
    refused_at(v, token, NOW)
}

#[test]
fn es256_projected_token_is_accepted_with_every_fact() {
    let key = ec_key("ec-1");
    let got = verifier(&[&key])
        .verify(&key.token(&claims()), &aud(), NOW)
        .unwrap();
    assert_eq!(
        got,
        VerifiedToken {
            issuer: ISSUER.into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            audiences: vec!["istio-ca".into()],
            pod_name: Some("web-1".into()),
            pod_uid: Some("pod-uid".into()),
            node_name: Some("node-a".into()),
            node_uid: Some("node-uid".into()),
            expires_at: OffsetDateTime::from_unix_timestamp(ts(NOW + Duration::hours(1))).unwrap(),
        }
    );
    let td = TrustDomain::default();
    assert_eq!(
        got.identity(&td).unwrap().to_string(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
}

#[test]
fn rs256_token_is_accepted() {
    let key = rsa_key("rsa-1");
    let got = verifier(&[&key])
        .verify(&key.token(&claims()), &aud(), NOW)
        .unwrap();
    assert_eq!(
        (got.namespace.as_str(), got.service_account.as_str()),
        ("shop", "web")
    );
}

#[test]
fn both_key_types_in_one_jwks_each_verify_their_own_tokens() {
    let (ec, rsa) = (ec_key("ec-1"), rsa_key("rsa-1"));
    let v = verifier(&[&ec, &rsa]);
    assert_eq!(v.key_count(), 2);
    v.verify(&ec.token(&claims()), &aud(), NOW).unwrap();
    v.verify(&rsa.token(&claims()), &aud(), NOW).unwrap();
}

#[test]
fn missing_or_garbled_tokens_are_refused() {
    let key = ec_key("ec-1");
    let v = verifier(&[&key]);
    let good = key.token(&claims());
    let (h, rest) = good.split_once('.').unwrap();
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "empty token"),
        ("not-a-jwt".into(), "compact JWS"),
        ("a.b".into(), "compact JWS"),
        (format!("{good}.extra"), "compact JWS"),
        (format!("!!!.{rest}"), "header is not base64url"),
        (
            format!("{}.{rest}", b64(b"not json")),
            "header cannot be decoded",
        ),
        (
            format!("{}.{rest}", b64(br#"{"kid":"ec-1"}"#)),
            "header cannot be decoded",
        ),
        (format!("{h}.{rest}x"), "signature"),
        (format!("{h}=.{rest}"), "base64url"),
        (format!("Bearer {good}"), "base64url"),
        (format!("{good}\n"), "signature"),
    ];
    for (token, want) in cases {
        let reason = refused(&v, &token);
        assert!(reason.contains(want), "{token:?}: {reason}");
    }
}

#[test]
fn oversized_token_is_refused_before_parsing() {
    let key = ec_key("ec-1");
    let big = with(claims(), "/jti", json!("x".repeat(MAX_TOKEN_LEN)));
    let reason = refused(&verifier(&[&key]), &key.token(&big));
    assert!(reason.contains("the limit is 16384"), "{reason}");
}

#[test]
fn expired_token_is_refused_but_leeway_applies() {
    let key = ec_key("ec-1");
    let v = verifier(&[&key]);
    let exp = NOW - Duration::seconds(10);
    let token = key.token(&with(claims(), "/exp", json!(ts(exp))));
    v.verify(&token, &aud(), NOW).unwrap(); // 10 s past, within 30 s leeway
    let reason = refused_at(&v, &token, exp + DEFAULT_LEEWAY);
    assert!(reason.contains("expired"), "{reason}");
    let reason = refused_at(&v, &token, NOW + Duration::days(1));
    assert!(reason.contains("expired"), "{reason}");
}

#[test]
fn token_without_exp_is_refused() {
    let key = ec_key("ec-1");
    let reason = refused(&verifier(&[&key]), &key.token(&without(claims(), "exp")));
    assert!(reason.contains("no exp"), "{reason}");
    let reason = refused(
        &verifier(&[&key]),
        &key.token(&with(claims(), "/exp", json!("tomorrow"))),
    );
    assert!(reason.contains("payload cannot be decoded"), "{reason}");
}

#[test]
fn not_yet_valid_token_is_refused() {
    let key = ec_key("ec-1");
    let v = verifier(&[&key]);
    let reason = refused(
        &v,
        &key.token(&with(
            claims(),
            "/nbf",
            json!(ts(NOW + Duration::minutes(5))),
        )),
    );
    assert!(reason.contains("not valid before"), "{reason}");
    let reason = refused(
        &v,
        &key.token(&with(
            claims(),
            "/iat",
            json!(ts(NOW + Duration::minutes(5))),
        )),
    );
    assert!(reason.contains("issued in the future"), "{reason}");
    // Within the leeway: a little clock skew is tolerated.
    v.verify(
        &key.token(&with(
            claims(),
            "/nbf",
            json!(ts(NOW + Duration::seconds(20))),
        )),
        &aud(),
        NOW,
    )
    .unwrap();
    // Fractional NumericDates are allowed by RFC 7519.
    v.verify(
        &key.token(&with(claims(), "/nbf", json!(ts(NOW) as f64 - 0.5))),
        &aud(),
        NOW,
    )
    .unwrap();
}

#[test]
fn token_signed_by_an_unknown_key_is_refused() {
    let (trusted, stranger) = (ec_key("ec-1"), ec_key("ec-1"));
    let v = verifier(&[&trusted]);
    // Same kid, other key: the signature fails.
    let reason = refused(&v, &stranger.token(&claims()));
    assert!(reason.contains("signature does not verify"), "{reason}");
    // A kid the JWKS does not have.
    let other = ec_key("ec-2");
    let reason = refused(&v, &other.token(&claims()));
    assert!(reason.contains("kid \"ec-2\" is not in"), "{reason}");
    // No kid: every ES256 key is tried, none verifies.
    let token = stranger.sign(&json!({"alg": "ES256"}), &claims());
    assert!(refused(&v, &token).contains("signature does not verify"));
}

#[test]
fn token_without_kid_is_verified_by_a_key_of_its_type() {
    let (ec, rsa) = (ec_key("ec-1"), rsa_key("rsa-1"));
    let v = verifier(&[&rsa, &ec]);
    v.verify(&ec.sign(&json!({"alg": "ES256"}), &claims()), &aud(), NOW)
        .unwrap();
    v.verify(&rsa.sign(&json!({"alg": "RS256"}), &claims()), &aud(), NOW)
        .unwrap();
}

#[test]
fn tampered_payload_is_refused() {
    let key = ec_key("ec-1");
    let token = key.token(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = b64(with(
        claims(),
        "/sub",
        json!("system:serviceaccount:kube-system:admin"),
    )
    .to_string()
    .as_bytes());
    let reason = refused(
        &verifier(&[&key]),
        &format!("{}.{forged}.{}", parts[0], parts[2]),
    );
    assert!(reason.contains("signature does not verify"), "{reason}");
}

#[test]
fn alg_none_is_refused() {
    let key = ec_key("ec-1");
    let v = verifier(&[&key]);
    let payload = b64(claims().to_string().as_bytes());
    for alg in ["none", "None", "NONE"] {
        let header = b64(json!({"alg": alg, "kid": "ec-1"}).to_string().as_bytes());
        for sig in ["", "AAAA"] {
            let reason = refused(&v, &format!("{header}.{payload}.{sig}"));
            assert!(
                reason.contains("unsigned tokens are refused"),
                "{alg} {sig:?}: {reason}"
            );
        }
    }
}

#[test]
fn hmac_tokens_are_refused_whatever_the_secret() {
    use ring::hmac;
    let key = ec_key("ec-1");
    let v = verifier(&[&key]);
    let Signer::Ec(pair) = &key.signer else {
        unreachable!()
    };
    let point = pair.public_key().as_ref().to_vec();
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(&point);
    // The alg-confusion attack: the public key (in any encoding) as the HMAC secret.
    let secrets: Vec<Vec<u8>> = vec![
        point,
        spki,
        key.jwk.to_string().into_bytes(),
        b"random secret 0123456789".to_vec(),
    ];
    for (alg, algorithm) in [
        ("HS256", hmac::HMAC_SHA256),
        ("HS384", hmac::HMAC_SHA384),
        ("HS512", hmac::HMAC_SHA512),
    ] {
        for secret in &secrets {
            let input = format!(
                "{}.{}",
                b64(json!({"alg": alg, "kid": "ec-1", "typ": "JWT"})
                    .to_string()
                    .as_bytes()),
                b64(claims().to_string().as_bytes())
            );
            let tag = hmac::sign(&hmac::Key::new(algorithm, secret), input.as_bytes());
            let reason = refused(&v, &format!("{input}.{}", b64(tag.as_ref())));
            assert!(
                reason.contains("HMAC-signed tokens are refused"),
                "{alg}: {reason}"
            );
        }
    }
}

#[test]
fn symmetric_keys_in_the_jwks_are_never_used() {
    let ec = ec_key("ec-1");
    let mut set = jwks(&[&ec]);
    let oct: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(json!({"kty": "oct", "kid": "sym", "k": b64(b"secret")})).unwrap();
    set.keys.push(oct);
    let v = JwtVerifier::new(JwtVerifierConfig {
        issuer: None,
        ..JwtVerifierConfig::new(set)
    });
    assert_eq!(v.key_count(), 1);
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","kid":"sym"}"#),
        b64(claims().to_string().as_bytes())
    );
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret"),
        input.as_bytes(),
    );
    assert!(refused(&v, &format!("{input}.{}", b64(tag.as_ref()))).contains("HMAC"));
}

#[test]
fn other_algorithms_are_refused() {
    let key = ec_key("ec-1");
    let v = verifier(&[&key]);
    for alg in [
        "ES384", "ES512", "PS256", "RS384", "RS512", "EdDSA", "es256", "",
    ] {
        let header = json!({"alg": alg, "kid": "ec-1"});
        let reason = refused(&v, &key.sign(&header, &claims()));
        assert!(reason.contains("is not RS256 or ES256"), "{alg}: {reason}");
    }
    let reason = refused(
        &v,
        &key.sign(
            &json!({"alg": "ES256", "kid": "ec-1", "crit": ["exp"]}),
            &claims(),
        ),
    );
    assert!(reason.contains("crit"), "{reason}");
}

#[test]
fn key_of_the_wrong_type_for_the_alg_is_refused() {
    let (ec, rsa) = (ec_key("ec-1"), rsa_key("rsa-1"));
    let v = verifier(&[&ec, &rsa]);
    // An RS256 header naming the EC key: never try an RSA check with EC material.
    let reason = refused(
        &v,
        &rsa.sign(&json!({"alg": "RS256", "kid": "ec-1"}), &claims()),
    );
    assert!(reason.contains("cannot verify RS256"), "{reason}");
    let only_ec = verifier(&[&ec]);
    let reason = refused(&only_ec, &rsa.sign(&json!({"alg": "RS256"}), &claims()));
    assert!(reason.contains("no RS256 key"), "{reason}");
}

#[test]
fn wrong_audience_is_refused() {
    let key = ec_key("ec-1");
    let v = verifier(&[&key]);
    let reason = refused(
        &v,
        &key.token(&with(
            claims(),
            "/aud",
            json!(["https://kubernetes.default.svc"]),
        )),
    );
    assert!(reason.contains("is not one of the accepted"), "{reason}");
    let reason = refused(&v, &key.token(&without(claims(), "aud")));
    assert!(reason.contains("audience []"), "{reason}");
    // A single-string aud is fine, and so is any one match among several.
    v.verify(
        &key.token(&with(claims(), "/aud", json!("istio-ca"))),
        &aud(),
        NOW,
    )
    .unwrap();
    let several = vec!["other".to_owned(), "istio-ca".to_owned()];
    v.verify(
        &key.token(&with(claims(), "/aud", json!(["api", "other"]))),
        &several,
        NOW,
    )
    .unwrap();
    // No configured audience accepts nothing.
    assert!(v.verify(&key.token(&claims()), &[], NOW).is_err());
}

#[test]
fn wrong_or_missing_issuer_is_refused() {
    let key = ec_key("ec-1");
    let v = verifier(&[&key]);
    let reason = refused(
        &v,
        &key.token(&with(claims(), "/iss", json!("https://evil.example"))),
    );
    assert!(reason.contains("is not the trusted"), "{reason}");
    assert!(refused(&v, &key.token(&without(claims(), "iss"))).contains("no iss"));
    // Without a configured issuer, the keys alone decide.
    let any = JwtVerifier::new(JwtVerifierConfig::new(jwks(&[&key])));
    let got = any
        .verify(
            &key.token(&with(claims(), "/iss", json!("https://other"))),
            &aud(),
            NOW,
        )
        .unwrap();
    assert_eq!(got.issuer, "https://other");
}

#[test]
fn subject_must_be_a_service_account_agreeing_with_the_kubernetes_claim() {
    let key = ec_key("ec-1");
    let v = verifier(&[&key]);
    for sub in [
        "admin",
        "system:serviceaccount:shop",
        "system:serviceaccount:shop:web:x",
        "system:node:node-a",
        "system:serviceaccount::web",
        "system:serviceaccount:shop:we/b",
    ] {
        let reason = refused(&v, &key.token(&with(claims(), "/sub", json!(sub))));
        assert!(reason.contains("sub"), "{sub}: {reason}");
    }
    assert!(refused(&v, &key.token(&without(claims(), "sub"))).contains("no sub"));
    let reason = refused(
        &v,
        &key.token(&with(claims(), "/kubernetes.io/namespace", json!("other"))),
    );
    assert!(reason.contains("disagrees"), "{reason}");
    let reason = refused(
        &v,
        &key.token(&with(
            claims(),
            "/kubernetes.io/serviceaccount/name",
            json!("db"),
        )),
    );
    assert!(reason.contains("disagrees"), "{reason}");
    let mut no_sa = claims();
    no_sa["kubernetes.io"]
        .as_object_mut()
        .unwrap()
        .remove("serviceaccount");
    assert!(refused(&v, &key.token(&no_sa)).contains("disagrees"));
    // Without the kubernetes.io claim, sub alone names the account (no pod binding).
    let got = v
        .verify(&key.token(&without(claims(), "kubernetes.io")), &aud(), NOW)
        .unwrap();
    assert_eq!((got.pod_name, got.node_name), (None, None));
}

#[test]
fn debug_shows_keys_by_id_only() {
    let v = verifier(&[&ec_key("ec-1")]);
    let shown = format!("{v:?}");
    assert!(shown.contains("ES256:ec-1"), "{shown}");
}

#[test]
fn kid_can_be_peeked_for_key_refresh_without_trusting_it() {
    let key = ec_key("ec-1");
    let v = verifier(&[&key]);
    let token = ec_key("rotated").token(&claims());
    assert_eq!(peek_kid(&token).as_deref(), Some("rotated"));
    assert!(!v.has_kid("rotated") && v.has_kid("ec-1"));
    assert_eq!(peek_kid("garbage"), None);
    assert_eq!(
        peek_kid(&key.sign(&json!({"alg": "ES256"}), &claims())),
        None
    );
}
