//! The pipeline without sockets: ordering guarantees that are awkward to
//! provoke through a real server (a failing audit store, saturation).

use std::time::Duration;

use super::*;
use crate::audit::{AuditBackend, AuditError, AuditQuery, GroupCommitConfig, SqliteBackend};
use crate::pki::authority::AuthorityConfig;
use crate::platform::local::{LocalConfig, LocalPlatform};
use crate::test_helpers::{key_and_csr, TestEnv};
use crate::time::system_clock;

/// An audit store whose disk is gone: every append fails.
struct BrokenDisk;

impl AuditBackend for BrokenDisk {
    fn append(&mut self, _batch: &[AuditRecord]) -> Result<(), AuditError> {
        Err(AuditError::Io {
            path: "/audit.db".into(),
            context: "writing",
            source: std::io::Error::other("disk full"),
        })
    }
    fn query(&mut self, _q: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        Ok(Vec::new())
    }
}

fn issuer(env: &TestEnv, backend: Box<dyn AuditBackend>, max_concurrent: usize) -> Issuer {
    env.add_pod("default", "web-1", "uid-web-1", "web", "node-a");
    env.add_node_agent("node-a");
    let clock = system_clock();
    let platform = LocalPlatform::open(LocalConfig::new(
        &env.manifests,
        env.issuer().verifier(),
        clock.clone(),
    ))
    .unwrap();
    let authority_cfg = AuthorityConfig {
        trust_domain: env.trust_domain(),
        ..AuthorityConfig::default()
    };
    let authority = crate::pki::authority::Authority::load_or_create_self_signed(
        &env.data_dir,
        &authority_cfg,
        clock.as_ref(),
    )
    .unwrap();
    let cfg = CaConfig {
        max_concurrent_requests: max_concurrent,
        trusted_node_accounts: "meshid-system/meshid-agent".parse().unwrap(),
        ..CaConfig::default()
    };
    let deps = CaDeps {
        platform,
        audit: AuditLog::start(backend, GroupCommitConfig::default()),
        authorities: crate::ca::authorities::Authorities::in_memory(
            authority,
            crate::ca::authorities::AuthoritySource::SelfSigned,
            clock.clone(),
        )
        .unwrap(),
        clock,
        metrics: CaMetrics::register(&prometheus::Registry::new()).unwrap(),
        http: axum::Router::new(),
    };
    Issuer::new(&cfg, deps)
}

fn web_request(env: &TestEnv) -> IssueRequest {
    let token = env.token(
        "default",
        "web",
        Some(("web-1", "uid-web-1")),
        Some("node-a"),
    );
    request(env, &token, "web", false)
}

/// A request for `default/<sa>` with `token`, naming `default/<sa>` in
/// `ImpersonatedIdentity` when `impersonate`.
fn request(env: &TestEnv, token: &str, sa: &str, impersonate: bool) -> IssueRequest {
    let id = env.id("default", sa);
    let (_key, csr) = key_and_csr(&id);
    IssueRequest {
        bearer: Some(BearerToken::from_header(&format!("Bearer {token}"))),
        csr,
        validity_secs: 600,
        impersonate: impersonate.then(|| id.to_string()),
        ..IssueRequest::default()
    }
}

#[tokio::test]
async fn no_certificate_leaves_when_the_audit_write_fails() {
    let env = TestEnv::new();
    let issuer = issuer(&env, Box::new(BrokenDisk), 8);
    let err = issuer.issue(web_request(&env)).await.unwrap_err();
    assert!(matches!(err, CaError::AuditUnavailable(_)), "{err}");
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("no certificate"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_refusal_whose_audit_write_fails_answers_unavailable() {
    let env = TestEnv::new();
    let issuer = issuer(&env, Box::new(BrokenDisk), 8);
    // A request that would be refused (garbage token).
    let mut req = web_request(&env);
    req.bearer = Some(BearerToken::from_header("Bearer garbage"));
    let err = issuer.issue(req).await.unwrap_err();
    assert!(matches!(err, CaError::AuditUnavailable(_)), "{err}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn impersonated_identity_that_is_not_a_string_is_refused_and_audited() {
    let env = TestEnv::new();
    let db = env.data_dir.join("audit.db");
    let issuer = issuer(&env, Box::new(SqliteBackend::open(&db).unwrap()), 8);
    let mut req = agent_request(&env, "web");
    req.impersonate = None;
    req.metadata_error = Some("metadata ImpersonatedIdentity must be a string".into());
    let err = issuer.issue(req).await.unwrap_err();
    assert!(matches!(err, CaError::InvalidRequest(_)), "{err}");
    let rows = issuer
        .deps
        .audit
        .query(AuditQuery::default())
        .await
        .unwrap();
    let row = rows.last().expect("the refusal is audited");
    assert_eq!(row.outcome, Outcome::Refused);
    assert!(row
        .reason
        .as_deref()
        .unwrap_or("")
        .contains("must be a string"));
    assert_eq!(
        row.caller.as_deref(),
        Some("spiffe://cluster.local/ns/meshid-system/sa/meshid-agent")
    );
}

#[tokio::test]
async fn saturated_ca_refuses_with_resource_exhausted_instead_of_queueing() {
    let env = TestEnv::new();
    let db = env.data_dir.join("audit.db");
    let issuer = issuer(&env, Box::new(SqliteBackend::open(&db).unwrap()), 1);
    // Every slot is taken by requests still in flight.
    let _busy = issuer.inflight.clone().try_acquire_owned().unwrap();
    let started = tokio::time::Instant::now();
    let err = issuer.issue(web_request(&env)).await.unwrap_err();
    assert!(matches!(err, CaError::Overloaded(1)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not queued"
    );
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::ResourceExhausted
    );
    // The refusal is audited like any other.
    let rows = issuer
        .deps
        .audit
        .query(AuditQuery::default())
        .await
        .unwrap();
    assert!(rows.iter().any(|r| r
        .reason
        .as_deref()
        .is_some_and(|x| x.contains("overloaded"))));

    drop(_busy);
    issuer.issue(web_request(&env)).await.unwrap();
}

/// The node agent of node-a asking for `default/<sa>`.
fn agent_request(env: &TestEnv, sa: &str) -> IssueRequest {
    let token = env.node_agent_token("node-a");
    request(env, &token, sa, true)
}

#[tokio::test]
async fn an_impersonated_issuance_is_audited_with_the_workloads_pod_not_the_agents() {
    let env = TestEnv::new();
    // Two pods of `api` on node-a, one on node-b.
    env.add_pod("default", "api-2", "uid-api-2", "api", "node-a");
    env.add_pod("default", "api-1", "uid-api-1", "api", "node-a");
    env.add_pod("default", "api-9", "uid-api-9", "api", "node-b");
    let db = env.data_dir.join("audit.db");
    let issuer = issuer(&env, Box::new(SqliteBackend::open(&db).unwrap()), 8);

    issuer.issue(agent_request(&env, "web")).await.unwrap();
    issuer.issue(agent_request(&env, "api")).await.unwrap();
    let rows = issuer
        .deps
        .audit
        .query(AuditQuery::default())
        .await
        .unwrap();
    let row = |sa: &str| {
        rows.iter()
            .find(|r| r.service_account.as_deref() == Some(sa))
            .unwrap_or_else(|| panic!("no row for {sa}: {rows:?}"))
    };
    let web = row("web");
    assert_eq!(
        web.caller.as_deref(),
        Some("spiffe://cluster.local/ns/meshid-system/sa/meshid-agent")
    );
    assert_eq!(web.node.as_deref(), Some("node-a"));
    assert_eq!(web.pod_name.as_deref(), Some("web-1"));
    assert_eq!(web.pod_uid.as_deref(), Some("uid-web-1"));
    assert_eq!(web.reason, None);

    // Several candidates: no single pod is named; the note lists those on the node.
    let api = row("api");
    assert_eq!(api.pod_name, None);
    assert_eq!(api.pod_uid, None);
    let note = api.reason.as_deref().unwrap();
    assert!(note.contains("2 pods"), "{note}");
    assert!(
        note.contains("api-1 (uid uid-api-1), api-2 (uid uid-api-2)"),
        "{note}"
    );
    assert!(!note.contains("api-9"), "{note}");
}

#[test]
fn ttl_defaults_and_clamps() {
    let day = Duration::from_secs(86_400);
    let max = Duration::from_secs(90 * 86_400);
    assert_eq!(resolve_ttl(0, day, max), day);
    assert_eq!(resolve_ttl(-5, day, max), day);
    assert_eq!(resolve_ttl(i64::MIN, day, max), day);
    assert_eq!(resolve_ttl(3600, day, max), Duration::from_secs(3600));
    assert_eq!(resolve_ttl(i64::MAX, day, max), max);
    assert_eq!(resolve_ttl(91 * 86_400, day, max), max);
}

#[test]
fn a_renewal_is_never_longer_than_the_presented_certificate_or_the_default() {
    let s = Duration::from_secs;
    // Asked (and allowed by --max-ttl) for 90 days; presented 60 s.
    assert_eq!(renewal_ttl(s(7_776_000), s(60), s(86_400)), s(60));
    // Presented longer than the default: the default.
    assert_eq!(
        renewal_ttl(s(7_776_000), s(7_776_000), s(86_400)),
        s(86_400)
    );
    // Asked for less: what was asked.
    assert_eq!(renewal_ttl(s(30), s(60), s(86_400)), s(30));
}

#[test]
fn the_presented_ttl_excludes_the_backdate() {
    let s = Duration::from_secs;
    // Recorded at issuance: exact.
    assert_eq!(presented_ttl(s(66), Some(s(60))), s(60));
    // Unknown to the store: 60 s granted with the largest backdate (6 s) is
    // 66 s of lifetime; renewing from that must not exceed 60.
    assert!(presented_ttl(s(66), None) <= s(60));
    // A record can never claim more than the certificate itself shows.
    assert_eq!(presented_ttl(s(66), Some(s(9_999))), s(66));
}
