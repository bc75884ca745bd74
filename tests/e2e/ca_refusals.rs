//! Every bad input of the CA issue: the right status, a clear message, an
//! audit row, and no certificate.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meshid::audit::Outcome;
use meshid::test_helpers::{key_and_csr, request, CaClient, TestEnv};
use tonic::Code;

use crate::support::*;

/// Sends `req` and asserts it is refused with `code`, the message containing
/// `needle`, and that the refusal was audited with `reason_needle`.
async fn refused(
    env: &TestEnv,
    client: &mut CaClient,
    req: tonic::Request<meshid::proto::istio::v1::auth::IstioCertificateRequest>,
    code: Code,
    needle: &str,
    reason_needle: &str,
) {
    let before = audit_rows(env).len();
    let status = client
        .create_certificate(req)
        .await
        .expect_err("must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} lacks {needle:?}",
        status.message()
    );
    let rows = audit_rows(env);
    assert_eq!(rows.len(), before + 1, "exactly one audit row per refusal");
    let row = rows.last().unwrap();
    assert_eq!(row.outcome, Outcome::Refused);
    assert!(row.serial.is_none(), "no certificate for a refusal");
    let reason = row.reason.clone().unwrap_or_default();
    assert!(
        reason.contains(reason_needle),
        "audit reason {reason:?} lacks {reason_needle:?}"
    );
}

#[tokio::test]
async fn malformed_and_dishonest_csrs_are_invalid_arguments() {
    let (env, ca) = ca_with_web_pod(&[]);
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    let token = web_token(&env);
    let id = env.id("default", "web");
    let dir = env.dir.path();

    // Malformed PEM.
    let req = request(
        "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n",
        600,
        Some(&token),
        None,
    );
    refused(&env, &mut client, req, Code::InvalidArgument, "CSR", "CSR").await;

    // A signature that does not verify: flip a byte inside the signature.
    let (_k, csr) = key_and_csr(&id);
    let der = pem_decode(&csr);
    let mut broken = der.clone();
    let last = broken.len() - 3;
    broken[last] ^= 0x55;
    let broken_pem = pem_encode("CERTIFICATE REQUEST", &broken);
    let req = request(&broken_pem, 600, Some(&token), None);
    refused(
        &env,
        &mut client,
        req,
        Code::InvalidArgument,
        "signature",
        "signature",
    )
    .await;

    // RSA-1024 and curves we do not accept.
    let san = format!("subjectAltName=URI:{id}");
    let rsa1024 = openssl_csr(dir, "rsa1024", &["-newkey", "rsa:1024"], &[&san]);
    refused(
        &env,
        &mut client,
        request(&rsa1024, 600, Some(&token), None),
        Code::InvalidArgument,
        "1024",
        "1024",
    )
    .await;
    for curve in ["secp256k1", "secp521r1"] {
        let csr = openssl_csr(
            dir,
            curve,
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                &format!("ec_paramgen_curve:{curve}"),
            ],
            &[&san],
        );
        refused(
            &env,
            &mut client,
            request(&csr, 600, Some(&token), None),
            Code::InvalidArgument,
            "CSR",
            "CSR",
        )
        .await;
    }

    // CA:TRUE and keyCertSign requests.
    let p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let ca_true = openssl_csr(
        dir,
        "catrue",
        &p256,
        &[&san, "basicConstraints=critical,CA:TRUE"],
    );
    refused(
        &env,
        &mut client,
        request(&ca_true, 600, Some(&token), None),
        Code::InvalidArgument,
        "CA",
        "CA",
    )
    .await;
    let kcs = openssl_csr(
        dir,
        "kcs",
        &p256,
        &[&san, "keyUsage=critical,digitalSignature,keyCertSign"],
    );
    refused(
        &env,
        &mut client,
        request(&kcs, 600, Some(&token), None),
        Code::InvalidArgument,
        "keyCertSign",
        "keyCertSign",
    )
    .await;

    // Two URI SANs.
    let two = openssl_csr(
        dir,
        "two",
        &p256,
        &[&format!(
            "subjectAltName=URI:{id},URI:spiffe://cluster.local/ns/default/sa/db"
        )],
    );
    refused(
        &env,
        &mut client,
        request(&two, 600, Some(&token), None),
        Code::InvalidArgument,
        "SAN",
        "SAN",
    )
    .await;

    // A 1 MiB CSR.
    let huge = "A".repeat(1024 * 1024);
    refused(
        &env,
        &mut client,
        request(&huge, 600, Some(&token), None),
        Code::InvalidArgument,
        "bytes",
        "bytes",
    )
    .await;
}

#[tokio::test]
async fn csr_for_another_identity_is_denied_naming_both() {
    let (env, ca) = ca_with_web_pod(&[]);
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    let (_k, csr) = key_and_csr(&env.id("default", "db"));
    let req = request(&csr, 600, Some(&web_token(&env)), None);
    refused(
        &env,
        &mut client,
        req,
        Code::PermissionDenied,
        "ns/default/sa/db",
        "ns/default/sa/web",
    )
    .await;
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated_with_an_opaque_message() {
    let (env, ca) = ca_process_with_web_pod(&[]);
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    let (_k, csr) = key_and_csr(&env.id("default", "web"));
    let now = time::OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let good = web_token(&env);

    let expired = env.token_with(
        "default",
        "web",
        None,
        None,
        &["istio-ca"],
        hour,
        now - 2 * hour,
    );
    let not_yet = env.token_with(
        "default",
        "web",
        None,
        None,
        &["istio-ca"],
        hour,
        now + hour,
    );
    let other_audience = env.token_with("default", "web", None, None, &["vault"], hour, now);
    // Correctly signed by the issuer, for a namespace Kubernetes would never
    // create (our own issuer refuses to make one, so it is signed here).
    let upper_case = resign(&env, &good, |claims| {
        claims["sub"] = "system:serviceaccount:Default:web".into();
        claims["kubernetes.io"]["namespace"] = "Default".into();
    });
    let foreign = TestEnv::new().token("default", "web", None, None);
    let alg_none = forge(&good, r#"{"alg":"none","typ":"JWT"}"#, |_| Vec::new());
    let hs256 = forge(&good, r#"{"alg":"HS256","typ":"JWT"}"#, |input| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"guessable");
        ring::hmac::sign(&key, input).as_ref().to_vec()
    });
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "no credential"),
        ("garbled", Some("not.a.jwt".into()), "token refused"),
        ("expired", Some(expired), "token refused"),
        ("not yet valid", Some(not_yet), "token refused"),
        ("unknown key", Some(foreign), "token refused"),
        ("alg none", Some(alg_none), "token refused"),
        ("HS256", Some(hs256), "token refused"),
        ("other audience", Some(other_audience), "token refused"),
        (
            "upper-case namespace",
            Some(upper_case),
            "not a valid Kubernetes name",
        ),
    ];
    for (what, token, reason) in cases {
        let req = request(&csr, 600, token.as_deref(), None);
        let status = client.create_certificate(req).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert_eq!(
            status.message(),
            "authentication failed",
            "{what}: opaque to the caller"
        );
        let row = last_refusal(&env);
        assert!(
            row.reason.as_deref().unwrap_or("").contains(reason),
            "{what}: {:?}",
            row.reason
        );
    }
    assert!(
        ca.log_text().contains("token refused"),
        "the full reason is logged"
    );
}

/// `token` with its claims edited by `edit`, signed again with the local
/// issuer's real key (as a compromised or careless issuer would).
fn resign(env: &TestEnv, token: &str, edit: impl Fn(&mut serde_json::Value)) -> String {
    let mut parts = token.split('.');
    let header = parts.next().unwrap();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    edit(&mut claims);
    let signing_input = format!(
        "{header}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
    );
    let pem = std::fs::read_to_string(env.data_dir.join("token-issuer-key.pem")).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &pem_decode(&pem),
        &rng,
    )
    .unwrap();
    let sig = key.sign(&rng, signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// Re-signs `token`'s claims under another header.
fn forge(token: &str, header: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let signing_input = format!("{}.{payload}", URL_SAFE_NO_PAD.encode(header));
    let sig = sign(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

#[tokio::test]
async fn impersonation_is_refused_unless_trusted_and_on_node() {
    let (env, ca) = ca_with_web_pod(&[]);
    env.add_pod("shop", "cart-1", "uid-cart", "cart", "node-b");
    let mut client = ca.client(&env.root_pem()).await.unwrap();

    // A workload that is not a node agent.
    let target = env.id("meshid-system", "meshid-agent");
    let (_k, csr) = key_and_csr(&target);
    let req = request(&csr, 600, Some(&web_token(&env)), Some(&target.to_string()));
    refused(
        &env,
        &mut client,
        req,
        Code::PermissionDenied,
        "ns/default/sa/web",
        "trusted-node-accounts",
    )
    .await;

    // A trusted agent asking for a service account with no pod on its node.
    let agent = env.node_agent_token("node-a");
    let cart = env.id("shop", "cart");
    let (_k, csr) = key_and_csr(&cart);
    let req = request(&csr, 600, Some(&agent), Some(&cart.to_string()));
    refused(
        &env,
        &mut client,
        req,
        Code::PermissionDenied,
        "ns/shop/sa/cart",
        "node-a",
    )
    .await;

    // Not a SPIFFE ID at all.
    let req = request(&csr, 600, Some(&agent), Some("cart"));
    refused(
        &env,
        &mut client,
        req,
        Code::InvalidArgument,
        "ImpersonatedIdentity",
        "ImpersonatedIdentity",
    )
    .await;
}

#[tokio::test]
async fn token_whose_pod_uid_differs_from_the_pod_is_denied() {
    let (env, ca) = ca_with_web_pod(&[]);
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    let stale = env.token(
        "default",
        "web",
        Some(("web-1", "uid-of-an-old-pod")),
        Some("node-a"),
    );
    let (_k, csr) = key_and_csr(&env.id("default", "web"));
    let req = request(&csr, 600, Some(&stale), None);
    refused(
        &env,
        &mut client,
        req,
        Code::PermissionDenied,
        "uid-of-an-old-pod",
        "uid-web-1",
    )
    .await;

    // And a token whose pod was deleted (the manifest change is picked up live).
    env.remove_pod("default", "web-1");
    let token = web_token(&env);
    let mut denied = false;
    for _ in 0..50 {
        let status = client
            .create_certificate(request(&csr, 600, Some(&token), None))
            .await;
        if matches!(&status, Err(s) if s.code() == Code::PermissionDenied && s.message().contains("does not exist"))
        {
            denied = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        denied,
        "a token for a deleted pod is refused once the manifest is gone"
    );
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_decode(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// Issue 12 part 4: `ImpersonatedIdentity` as a number, list or bool used to
/// be refused before the pipeline ran, leaving no audit record.
#[tokio::test]
async fn impersonated_identity_that_is_not_a_string_is_audited() {
    use prost_types::value::Kind;
    let (env, ca) = ca_with_web_pod(&[]);
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    let (_k, csr) = key_and_csr(&env.id("default", "web"));
    for kind in [
        Kind::NumberValue(42.0),
        Kind::BoolValue(true),
        Kind::ListValue(prost_types::ListValue { values: vec![] }),
    ] {
        let mut req = request(&csr, 600, Some(&web_token(&env)), None);
        req.get_mut().metadata = Some(prost_types::Struct {
            fields: [(
                "ImpersonatedIdentity".to_owned(),
                prost_types::Value { kind: Some(kind) },
            )]
            .into(),
        });
        refused(
            &env,
            &mut client,
            req,
            Code::InvalidArgument,
            "must be a string",
            "must be a string",
        )
        .await;
    }
}
