//! The CA issues what it should: valid X.509-SVIDs, audited, to the right callers.

use meshid::audit::Outcome;
use meshid::test_helpers::{connect, key_and_csr, request, CaClient, CaProcess, InProcessCa};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::*;

use crate::support::*;

fn pem_to_der(pem: &str) -> Vec<CertificateDer<'static>> {
    meshid::pki::bundle::parse_pem_certs(pem).unwrap()
}

/// Checks every X.509-SVID rule on `leaf` with x509-parser, independently of
/// the CA's own post-signing check.
fn assert_svid_rules(leaf: &[u8], expected_id: &str, granted_ttl_secs: i64) {
    let (rest, cert) = parse_x509_certificate(leaf).unwrap();
    assert!(rest.is_empty());
    // Exactly one URI SAN, the expected identity; critical since the subject is empty.
    assert!(
        cert.subject().iter_rdn().next().is_none(),
        "subject must be empty"
    );
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(
        san.critical,
        "SAN must be critical when the subject is empty"
    );
    let uris: Vec<_> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(uris, vec![expected_id]);
    // BasicConstraints present, CA:FALSE.
    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("BasicConstraints present");
    assert!(!bc.value.ca);
    // KeyUsage critical, digitalSignature, never keyCertSign or cRLSign.
    let ku = cert.key_usage().unwrap().expect("KeyUsage present");
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    // EKU serverAuth + clientAuth.
    let eku = cert.extended_key_usage().unwrap().expect("EKU present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    // SKI and AKI.
    let exts = cert.extensions();
    assert!(exts.iter().any(|e| matches!(
        e.parsed_extension(),
        ParsedExtension::SubjectKeyIdentifier(_)
    )));
    assert!(exts.iter().any(|e| matches!(
        e.parsed_extension(),
        ParsedExtension::AuthorityKeyIdentifier(_)
    )));
    // Positive serial of at most 20 octets.
    let serial = cert.raw_serial();
    assert!(
        !serial.is_empty() && serial.len() <= 20,
        "serial is {} octets",
        serial.len()
    );
    assert_eq!(serial[0] & 0x80, 0, "serial must be positive");
    // Validity: lifetime = TTL + backdate, backdate = min(60 s, TTL/10).
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    let backdate = (granted_ttl_secs / 10).min(60);
    assert_eq!(na - nb, granted_ttl_secs + backdate, "lifetime");
}

/// Verifies `chain` (leaf first) against `root_pem` with rustls-webpki, for
/// both server and client use.
fn assert_chain_verifies(chain: &[String], root_pem: &str) {
    let leaf = pem_to_der(&chain[0]).remove(0);
    let intermediates: Vec<CertificateDer<'static>> = chain[1..chain.len() - 1]
        .iter()
        .flat_map(|p| pem_to_der(p))
        .collect();
    let roots = pem_to_der(root_pem);
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap())
        .collect();
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .unwrap();
    }
}

#[tokio::test]
async fn workload_token_gets_a_valid_svid_that_is_audited() {
    let (env, ca) = ca_with_web_pod(&[]);
    let id = env.id("default", "web");
    let token = web_token(&env);
    let (_key, csr) = key_and_csr(&id);
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    let chain = issue(&mut client, &csr, 3600, &token).await;

    assert!(chain.len() >= 2, "leaf and root bundle at least");
    assert_eq!(
        chain.last().unwrap(),
        &env.root_pem(),
        "root bundle is the last element"
    );
    let leaf = pem_to_der(&chain[0]).remove(0);
    assert_svid_rules(&leaf, &id.to_string(), 3600);
    assert_chain_verifies(&chain, &env.root_pem());

    // openssl agrees, for both purposes.
    let dir = env.dir.path();
    write(dir, "leaf.pem", &chain[0]);
    let root = write(dir, "root.pem", &env.root_pem());
    for purpose in ["sslserver", "sslclient"] {
        let out = openssl(
            dir,
            &[
                "verify",
                "-purpose",
                purpose,
                "-CAfile",
                root.to_str().unwrap(),
                "leaf.pem",
            ],
        );
        assert!(out.contains("leaf.pem: OK"), "{out}");
    }

    // Audited before it was returned, with every field the issue names.
    let rows = audit_rows(&env);
    let row = rows
        .iter()
        .find(|r| {
            r.outcome == Outcome::Issued && r.granted_identity.as_deref() == Some(&id.to_string())
        })
        .expect("issued row");
    assert_eq!(row.caller.as_deref(), Some(id.to_string().as_str()));
    assert_eq!(
        row.requested_identity.as_deref(),
        Some(id.to_string().as_str())
    );
    assert_eq!(row.node.as_deref(), Some("node-a"));
    assert_eq!(row.pod_name.as_deref(), Some("web-1"));
    assert_eq!(row.pod_uid.as_deref(), Some("uid-web-1"));
    assert_eq!(row.requested_ttl_secs, Some(3600));
    assert_eq!(row.granted_ttl_secs, Some(3600));
    assert!(row.serial.is_some() && row.public_key_sha256.is_some());
    assert!(row.not_before.is_some() && row.not_after.is_some());
    let (_, cert) = parse_x509_certificate(&leaf).unwrap();
    assert_eq!(
        row.serial.as_deref().unwrap().to_lowercase(),
        hex(cert.raw_serial())
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn trusted_node_agent_gets_identity_of_a_pod_on_its_node() {
    let (env, ca) = ca_with_web_pod(&[]);
    let agent_token = env.node_agent_token("node-a");
    let target = env.id("default", "web");
    let (_key, csr) = key_and_csr(&target);
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    let chain = client
        .create_certificate(request(
            &csr,
            600,
            Some(&agent_token),
            Some(&target.to_string()),
        ))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    let leaf = pem_to_der(&chain[0]).remove(0);
    assert_svid_rules(&leaf, &target.to_string(), 600);
    let row = audit_rows(&env)
        .into_iter()
        .find(|r| {
            r.outcome == Outcome::Issued
                && r.granted_identity.as_deref() == Some(&target.to_string())
        })
        .unwrap();
    assert_eq!(
        row.caller.as_deref(),
        Some(env.id("meshid-system", "meshid-agent").to_string().as_str())
    );
}

#[tokio::test]
async fn ttl_rules_default_and_clamp_and_are_audited() {
    let (env, ca) = ca_with_web_pod(&["--default-ttl", "2h", "--max-ttl", "3h"]);
    let id = env.id("default", "web");
    let token = env.token("default", "web", None, None);
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    for (asked, granted) in [
        (-5_i64, 7200_i64),
        (0, 7200),
        (i64::MAX, 10_800),
        (600, 600),
    ] {
        let (_key, csr) = key_and_csr(&id);
        let chain = issue(&mut client, &csr, asked, &token).await;
        assert_svid_rules(&pem_to_der(&chain[0]).remove(0), &id.to_string(), granted);
        let row = audit_rows(&env)
            .into_iter()
            .rev()
            .find(|r| r.outcome == Outcome::Issued)
            .unwrap();
        assert_eq!(
            (row.requested_ttl_secs, row.granted_ttl_secs),
            (Some(asked), Some(granted))
        );
    }
}

#[tokio::test]
async fn renewal_with_an_issued_client_certificate_needs_no_token() {
    let (env, ca) = ca_with_web_pod(&[]);
    let id = env.id("default", "web");
    let token = env.token("default", "web", None, None);
    let (key, csr) = key_and_csr(&id);
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    let chain = issue(&mut client, &csr, 600, &token).await;

    let cert_pem: String = chain[..chain.len() - 1].concat();
    let key_pem = key.secret_pkcs8_pem();
    let mut renewing = connect(ca.addr, &env.root_pem(), Some((&cert_pem, &key_pem)))
        .await
        .unwrap();
    let (_key2, csr2) = key_and_csr(&id);
    let renewed = renewing
        .create_certificate(request(&csr2, 600, None, None))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_svid_rules(&pem_to_der(&renewed[0]).remove(0), &id.to_string(), 600);

    // The certificate authenticates only its own identity.
    let other = env.id("default", "db");
    let (_key3, csr3) = key_and_csr(&other);
    let status = renewing
        .create_certificate(request(&csr3, 600, None, Some(&other.to_string())))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

#[tokio::test]
async fn restart_on_the_same_data_dir_keeps_the_root_and_the_audit_history() {
    let (env, mut ca) = ca_process_with_web_pod(&[]);
    let root_before = env.root_pem();
    let token = env.token("default", "web", None, None);
    let id = env.id("default", "web");
    let (_k, csr) = key_and_csr(&id);
    let mut client = ca.client(&root_before).await.unwrap();
    issue(&mut client, &csr, 600, &token).await;
    let status = ca.terminate().unwrap();
    assert!(status.success(), "SIGTERM ends the CA cleanly: {status:?}");
    let rows_before = audit_rows(&env).len();

    let ca2 = CaProcess::spawn(bin(), &env, &[]).unwrap();
    assert_eq!(env.root_pem(), root_before, "same root after restart");
    let mut client = ca2.client(&root_before).await.unwrap();
    let (_k, csr) = key_and_csr(&id);
    let chain = issue(&mut client, &csr, 600, &token).await;
    assert_chain_verifies(&chain, &root_before);
    assert!(audit_rows(&env).len() > rows_before);
}

#[tokio::test]
async fn metrics_health_and_readiness_are_served() {
    let (env, ca) = ca_with_web_pod(&[]);
    let token = env.token("default", "web", None, None);
    let (_k, csr) = key_and_csr(&env.id("default", "web"));
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    issue(&mut client, &csr, 600, &token).await;
    let _ = client
        .create_certificate(request(&csr, 600, Some("garbage"), None))
        .await;

    assert_eq!(http_get(ca.metrics_addr, "/healthz").0, 200);
    assert_eq!(http_get(ca.metrics_addr, "/readyz").0, 200);
    let (code, body) = http_get(ca.metrics_addr, "/metrics");
    assert_eq!(code, 200);
    for name in [
        "citadel_server_csr_count 2",
        "citadel_server_success_cert_issuance_count 1",
        "citadel_server_authentication_failure_count 1",
        "citadel_server_csr_sign_err_count{error=\"unauthenticated\"} 1",
        "citadel_server_root_cert_expiry_timestamp",
        "meshid_ca_issuance_duration_seconds_bucket",
    ] {
        assert!(body.contains(name), "missing {name} in:\n{body}");
    }
}

#[tokio::test]
async fn token_cli_writes_a_projected_token_without_newline_that_the_ca_accepts() {
    let (env, ca) = ca_with_web_pod(&[]);
    let out = env.dir.path().join("token");
    let status = std::process::Command::new(BIN)
        .args([
            "token",
            "issue",
            "-n",
            "default",
            "--service-account",
            "web",
            "--pod",
            "web-1",
        ])
        .arg("--data-dir")
        .arg(&env.data_dir)
        .arg("--manifests")
        .arg(&env.manifests)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let token = std::fs::read_to_string(&out).unwrap();
    assert!(!token.ends_with('\n') && !token.ends_with('\r'));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (_k, csr) = key_and_csr(&env.id("default", "web"));
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    issue(&mut client, &csr, 600, &token).await;
    let row = audit_rows(&env)
        .into_iter()
        .rev()
        .find(|r| r.outcome == Outcome::Issued)
        .unwrap();
    assert_eq!(
        row.pod_uid.as_deref(),
        Some("uid-web-1"),
        "pod UID came from the manifest"
    );
    assert_eq!(
        row.node.as_deref(),
        Some("node-a"),
        "node came from the manifest"
    );

    // `meshid audit list` shows it, filtered, as JSON lines.
    let out = std::process::Command::new(BIN)
        .args([
            "audit",
            "list",
            "-n",
            "default",
            "--outcome",
            "issued",
            "-o",
            "json",
        ])
        .arg("--data-dir")
        .arg(&env.data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(
        lines[0]["granted_identity"],
        "spiffe://cluster.local/ns/default/sa/web"
    );
}

/// Asks for a certificate with a token; the chain, or a panic naming the status.
async fn issue(client: &mut CaClient, csr: &str, ttl: i64, token: &str) -> Vec<String> {
    client
        .create_certificate(request(csr, ttl, Some(token), None))
        .await
        .unwrap()
        .into_inner()
        .cert_chain
}

/// Lifetime in seconds of the leaf at the head of `chain`.
fn lifetime_secs(chain: &[String]) -> i64 {
    let der = pem_to_der(&chain[0]).remove(0);
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()
}

/// Renews with the leaf+key of `chain`/`key`, asking for `validity` seconds.
async fn renew(
    ca: &InProcessCa,
    env: &meshid::test_helpers::TestEnv,
    chain: &[String],
    key: &meshid::pki::key::PrivateKey,
    validity: i64,
) -> Result<(Vec<String>, meshid::pki::key::PrivateKey), tonic::Status> {
    let id = env.id("default", "web");
    let cert_pem: String = chain[..chain.len() - 1].concat();
    let mut client = connect(
        ca.addr,
        &env.root_pem(),
        Some((&cert_pem, &key.secret_pkcs8_pem())),
    )
    .await
    .unwrap();
    let (key2, csr2) = key_and_csr(&id);
    let renewed = client
        .create_certificate(request(&csr2, validity, None, None))
        .await?
        .into_inner()
        .cert_chain;
    Ok((renewed, key2))
}

/// Stops `ca`, deletes pod `default/web-1`, and starts a CA on the same data
/// directory: the restarted CA knows the pod is gone from its first request.
fn restart_without_web_1(ca: InProcessCa, env: &meshid::test_helpers::TestEnv) -> InProcessCa {
    drop(ca);
    env.remove_pod("default", "web-1");
    InProcessCa::with_flags(env, &[]).unwrap()
}

/// The attack of issue 12: a 60 s certificate, renewed with
/// `validity_duration = 10 years`, used to come back as a 90-day one, and kept
/// renewing after its pod was deleted.
#[tokio::test]
async fn a_renewal_never_outlives_the_certificate_it_renews_nor_its_pod() {
    let (env, ca) = ca_with_web_pod(&[]);
    env.add_pod("default", "web-2", "uid-web-2", "web", "node-b");
    let id = env.id("default", "web");
    let token = web_token(&env);
    let (key, csr) = key_and_csr(&id);
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    let chain = issue(&mut client, &csr, 60, &token).await;
    // 60 s, plus a backdate of at most a tenth of it.
    let first = lifetime_secs(&chain);
    assert!((60..=66).contains(&first), "{first}");

    // Asking for ten years gets no more than the presented certificate had,
    // however often it renews.
    let (renewed, key2) = renew(&ca, &env, &chain, &key, 315_360_000).await.unwrap();
    assert!(
        lifetime_secs(&renewed) <= first,
        "{}",
        lifetime_secs(&renewed)
    );
    let (again, key3) = renew(&ca, &env, &renewed, &key2, 315_360_000)
        .await
        .unwrap();
    assert!(lifetime_secs(&again) <= first);
    // The renewal is recorded for the pod the first certificate was issued to.
    let row = audit_rows(&env)
        .into_iter()
        .rev()
        .find(|r| r.outcome == Outcome::Issued)
        .unwrap();
    assert_eq!(row.pod_uid.as_deref(), Some("uid-web-1"));

    // The pod goes; another pod of the account still runs, but the
    // certificate was for web-1: renewal stops.
    // Restarted on the same data directory (same root, same audit store)
    // with the pod gone, so the CA has surely read the change.
    let ca = restart_without_web_1(ca, &env);
    let status = renew(&ca, &env, &again, &key3, 60).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("web-1"), "{}", status.message());
    let refusal = last_refusal(&env);
    assert!(
        refusal
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("no longer may hold"),
        "{refusal:?}"
    );
}

/// A certificate issued without a pod binding renews only while a pod of its
/// service account runs.
#[tokio::test]
async fn a_renewal_stops_when_no_pod_of_the_account_runs() {
    let (env, ca) = ca_with_web_pod(&[]);
    let id = env.id("default", "web");
    let token = env.token("default", "web", None, None);
    let (key, csr) = key_and_csr(&id);
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    let chain = issue(&mut client, &csr, 600, &token).await;
    renew(&ca, &env, &chain, &key, 600).await.unwrap();
    let ca = restart_without_web_1(ca, &env);
    let status = renew(&ca, &env, &chain, &key, 600).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("no running pod"),
        "{}",
        status.message()
    );
}

/// Issue 12 part 4: the audit database deleted under a running CA used to
/// leave `/readyz` at 200 while the CA went on "auditing" into the unlinked
/// file. Now it is unready and issues nothing until the file is back.
#[tokio::test]
async fn a_ca_whose_audit_database_was_deleted_is_unready_and_issues_nothing() {
    let (env, ca) = ca_process_with_web_pod(&[]);
    let token = env.token("default", "web", None, None);
    let id = env.id("default", "web");
    let mut client = ca.client(&env.root_pem()).await.unwrap();
    let (_k, csr) = key_and_csr(&id);
    issue(&mut client, &csr, 600, &token).await;
    assert_eq!(http_get(ca.metrics_addr, "/readyz").0, 200);

    let db = env.data_dir.join("audit.db");
    let aside = env.dir.path().join("audit.db.aside");
    std::fs::rename(&db, &aside).unwrap();
    assert_eq!(http_get(ca.metrics_addr, "/readyz").0, 503);
    let status = client
        .create_certificate(request(&csr, 600, Some(&token), None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(ca.log_text().contains("deleted"), "the cause is logged");

    // Put back, the CA issues again, into the file read back, and a good
    // commit makes it ready at once (a failed one keeps it unready for 10 s).
    std::fs::rename(&aside, &db).unwrap();
    issue(&mut client, &csr, 600, &token).await;
    assert_eq!(http_get(ca.metrics_addr, "/readyz").0, 200);
    assert!(
        audit_rows(&env)
            .iter()
            .filter(|r| r.outcome == Outcome::Issued)
            .count()
            >= 2
    );
}
