//! The issuance pipeline, socket-free so tests can drive it directly:
//! authenticate → authorize → TTL → CSR → sign → check → audit → answer.
//!
//! Rule enforced: the identity in a certificate comes from the authenticated
//! caller (or an authorized impersonation), never from the CSR; and every
//! decision, issued or refused, is written to the audit store before the
//! answer leaves — if that write fails, no certificate is returned.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::sync::Semaphore;

use crate::audit::{AuditLog, AuditQuery, AuditRecord, Outcome};
use crate::ca::authn::{Authenticator, Caller};
use crate::ca::authorities::Authorities;
use crate::ca::authz::{
    check_authorized, AuthzInput, Permit, TrustedNodeAccounts, WorkloadDnsNames,
};
use crate::ca::config::CaConfig;
use crate::ca::error::CaError;
use crate::ca::metrics::CaMetrics;
use crate::identity::{SpiffeId, TrustDomain};
use crate::pki::authority::IssuedCert;
use crate::pki::csr::{validate_csr_with_dns, CsrError};
use crate::pki::template::LeafRequest;
use crate::platform::Platform;
use crate::time::SharedClock;
use crate::token::{BearerToken, TokenError};

/// What the CA is built from besides its [`CaConfig`].
#[derive(Clone)]
pub struct CaDeps {
    /// Facts: tokens, pods.
    pub platform: Arc<dyn Platform>,
    /// Where every decision is recorded.
    pub audit: AuditLog,
    /// The signing authorities (the active one signs; the bundle holds all).
    pub authorities: Arc<Authorities>,
    /// Time, for TTLs and token expiry.
    pub clock: SharedClock,
    /// Prometheus metrics.
    pub metrics: CaMetrics,
    /// Read-only routes served beside `/metrics` (the audit log's
    /// checkpoint and proofs).
    pub http: axum::Router,
}

/// One `CreateCertificate` call, transport details already extracted.
#[derive(Debug, Default)]
pub struct IssueRequest {
    /// The `authorization` metadata: absent, a bearer token, or why it is not one.
    pub bearer: Option<Result<BearerToken, TokenError>>,
    /// The client's certificate chain, verified by the TLS layer.
    pub client_chain: Option<Vec<CertificateDer<'static>>>,
    /// The remote address.
    pub peer: Option<SocketAddr>,
    /// The CSR, PEM.
    pub csr: String,
    /// `validity_duration` in seconds, as sent.
    pub validity_secs: i64,
    /// Metadata `ImpersonatedIdentity`, as sent.
    pub impersonate: Option<String>,
    /// Why the request's metadata could not be read (e.g. `ImpersonatedIdentity`
    /// a number): refused inside the pipeline, so that it is audited like
    /// every other decision.
    pub metadata_error: Option<String>,
}

/// A certificate ready to return.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf, intermediates, root bundle: each its own element.
    pub cert_chain: Vec<String>,
    /// The identity in the leaf.
    pub identity: SpiffeId,
    /// The lifetime granted.
    pub granted_ttl: Duration,
    /// The leaf's serial, hex.
    pub serial_hex: String,
}

/// Runs the pipeline; shared by all connections.
pub struct Issuer {
    trust_domain: TrustDomain,
    trusted: TrustedNodeAccounts,
    dns_names: WorkloadDnsNames,
    default_ttl: Duration,
    max_ttl: Duration,
    deps: CaDeps,
    authn: Authenticator,
    inflight: Arc<Semaphore>,
    max_inflight: usize,
}

impl Issuer {
    /// Builds the pipeline from settings and dependencies.
    pub fn new(cfg: &CaConfig, deps: CaDeps) -> Self {
        let authn = Authenticator::new(
            deps.platform.clone(),
            cfg.audiences.clone(),
            cfg.trust_domain.clone(),
            deps.clock.clone(),
            cfg.token_cache_size,
        );
        Self {
            trust_domain: cfg.trust_domain.clone(),
            trusted: cfg.trusted_node_accounts.clone(),
            dns_names: cfg.workload_dns_names.clone(),
            default_ttl: cfg.default_ttl,
            max_ttl: cfg.max_ttl,
            authn,
            inflight: Arc::new(Semaphore::new(cfg.max_concurrent_requests)),
            max_inflight: cfg.max_concurrent_requests,
            deps,
        }
    }

    /// The signing authorities (for the serving certificate and the root bundle).
    pub fn authorities(&self) -> &Arc<Authorities> {
        &self.deps.authorities
    }

    /// Handles one request end to end, auditing the outcome before returning.
    pub async fn issue(&self, req: IssueRequest) -> Result<Issued, CaError> {
        let started = tokio::time::Instant::now();
        // Every path below records exactly one decision; announcing it now lets the
        // audit writer hold a ready batch back (briefly, and only while others are
        // on their way) so that one fsync covers this record too.
        let audit = self.deps.audit.expect();
        let metrics = &self.deps.metrics;
        metrics.csr_count.inc();
        let mut record = AuditRecord::new(self.deps.clock.now(), Outcome::Refused);
        record.peer = req.peer.map(|p| p.to_string());
        record.requested_ttl_secs = Some(req.validity_secs);

        let result = match self.inflight.clone().try_acquire_owned() {
            Ok(_permit) => self.decide(&req, &mut record).await,
            Err(_) => {
                metrics.overloaded.inc();
                Err(CaError::Overloaded(self.max_inflight))
            }
        };
        match result {
            Ok(issued) => {
                record.outcome = Outcome::Issued;
                if let Err(e) = audit.record(record).await {
                    tracing::error!(identity = %issued.identity, error = %e, "audit write failed; certificate withheld");
                    metrics
                        .sign_errors
                        .with_label_values(&["audit_unavailable"])
                        .inc();
                    return Err(CaError::AuditUnavailable(e));
                }
                metrics.issued.inc();
                metrics
                    .issuance_seconds
                    .observe(started.elapsed().as_secs_f64());
                // DEBUG, not INFO: the audit record just committed holds the same
                // facts and more (identity, TTL, serial, key hash, caller, pod,
                // node, peer; `meshid audit list`), and
                // `citadel_server_success_cert_issuance_count` counts issuances.
                // At INFO this line cost ~3 % of the CA's CPU under load (formatting
                // plus one write(2) per certificate). Refusals stay at WARN below.
                tracing::debug!(
                    identity = %issued.identity,
                    ttl_secs = issued.granted_ttl.as_secs(),
                    serial = %issued.serial_hex,
                    "certificate issued"
                );
                Ok(issued)
            }
            Err(e) => {
                if matches!(e, CaError::Unauthenticated(_)) {
                    metrics.authentication_failures.inc();
                }
                metrics
                    .sign_errors
                    .with_label_values(&[e.metric_label()])
                    .inc();
                // A note made on the way (the candidate pods of an
                // impersonation) stays, after the reason for the refusal.
                record.reason = Some(match record.reason.take() {
                    Some(note) => format!("{e} ({note})"),
                    None => e.to_string(),
                });
                let caller = record.caller.clone().unwrap_or_default();
                // Rule: no answer leaves unaudited, a refusal included: if the
                // record cannot be written the caller is told to retry.
                if let Err(audit_err) = audit.record(record).await {
                    tracing::error!(error = %audit_err, refusal = %e, "audit write of a refusal failed; answering UNAVAILABLE");
                    return Err(CaError::AuditUnavailable(audit_err));
                }
                tracing::warn!(caller = %caller, peer = ?req.peer, reason = %e, "certificate refused");
                Err(e)
            }
        }
    }

    async fn decide(
        &self,
        req: &IssueRequest,
        record: &mut AuditRecord,
    ) -> Result<Issued, CaError> {
        // 1. Authenticate.
        let caller = self
            .authn
            .authenticate(
                req.bearer.as_ref().map(Result::as_ref),
                req.client_chain.as_deref(),
            )
            .await?;
        record.caller = Some(caller.identity().to_string());
        // Rule: a revoked certificate authenticates nothing, a renewal
        // included (rustls only checked its chain).
        if let Caller::Certificate { serial_hex, .. } = &caller {
            if self.deps.authorities.current().is_revoked(serial_hex) {
                return Err(CaError::Unauthenticated(
                    crate::ca::authn::AuthnError::Revoked {
                        serial: serial_hex.clone(),
                    },
                ));
            }
        }
        if let Some(reason) = &req.metadata_error {
            return Err(CaError::InvalidRequest(reason.clone()));
        }
        if let Caller::Token(t) = &caller {
            record.pod_name = t.claims.pod_name.clone();
            record.pod_uid = t.claims.pod_uid.clone();
            record.node = t.claims.node_name.clone();
        }

        // 2. Authorize, from the platform's current facts.
        let impersonate = match req.impersonate.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => Some(SpiffeId::parse(raw).map_err(|e| {
                CaError::InvalidRequest(format!(
                    "metadata ImpersonatedIdentity {raw:?} is not a SPIFFE ID: {e}"
                ))
            })?),
        };
        let requested = impersonate
            .clone()
            .unwrap_or_else(|| caller.identity().clone());
        record.requested_identity = Some(requested.to_string());
        set_kubernetes_fields(record, &requested);
        let issuance = self.issuance_of(&caller).await?;
        let issued_to = issuance
            .as_ref()
            .and_then(|r| Some((r.pod_name.clone()?, r.pod_uid.clone()?)));
        let permit = self.authorize(&caller, impersonate.as_ref(), issued_to)?;
        record.granted_identity = Some(permit.identity.to_string());
        set_kubernetes_fields(record, &permit.identity);
        if permit.node.is_some() {
            record.node = permit.node.clone();
        }
        if permit.impersonated || !permit.pods.is_empty() {
            record_permit_pods(record, &permit);
        }

        // 3. TTL (a renewal never outlives the certificate it renews).
        let mut ttl = resolve_ttl(req.validity_secs, self.default_ttl, self.max_ttl);
        if let Caller::Certificate { lifetime, .. } = &caller {
            let granted = issuance
                .as_ref()
                .and_then(|r| u64::try_from(r.granted_ttl_secs?).ok())
                .map(Duration::from_secs);
            ttl = renewal_ttl(ttl, presented_ttl(*lifetime, granted), self.default_ttl);
        }
        record.granted_ttl_secs = i64::try_from(ttl.as_secs()).ok();

        // 4. CSR: only its public key is used, for the permitted identity.
        let allowed_dns = self.dns_names.for_identity(&permit.identity);
        let csr = validate_csr_with_dns(req.csr.as_bytes(), &permit.identity, allowed_dns)
            .map_err(|e| match e {
                CsrError::SanMismatch { .. } => CaError::IdentityMismatch(e.to_string()),
                other => CaError::InvalidCsr(other),
            })?;
        record.public_key_sha256 = Some(csr.public_key_sha256_hex());

        // 5. Sign from server-side facts; the authority re-checks what it signed.
        let leaf = LeafRequest {
            id: permit.identity.clone(),
            ttl: time::Duration::try_from(ttl).unwrap_or(time::Duration::MAX),
            dns_names: csr.dns_names().to_vec(),
            ip_addresses: Vec::new(),
        };
        // One snapshot for the signature, the chain and the bundle: a
        // rotation between them would hand out a chain that does not fit.
        let authorities = self.deps.authorities.current();
        let active = authorities.active();
        let signed: IssuedCert = active
            .sign_leaf(csr.public_key_der(), &leaf, self.deps.clock.as_ref())
            .map_err(CaError::Signing)?;
        record.serial = Some(signed.serial_hex.clone());
        record.not_before = Some(signed.not_before);
        record.not_after = Some(signed.not_after);

        // 6. Leaf, each intermediate, then the whole root bundle last.
        let mut cert_chain = Vec::with_capacity(3);
        cert_chain.push(signed.pem);
        cert_chain.extend(active.chain_pem());
        cert_chain.push(authorities.bundle_pem().to_owned());
        Ok(Issued {
            cert_chain,
            identity: permit.identity,
            granted_ttl: ttl,
            serial_hex: signed.serial_hex,
        })
    }

    /// For a renewal: what the audit store recorded when the presented
    /// certificate was issued (its pod and granted TTL). None for a token
    /// caller, and for a certificate the store does not know (issued before
    /// it, or by a replica with its own store).
    async fn issuance_of(&self, caller: &Caller) -> Result<Option<AuditRecord>, CaError> {
        let Caller::Certificate { serial_hex, .. } = caller else {
            return Ok(None);
        };
        let query = AuditQuery {
            serial: Some(serial_hex.clone()),
            outcome: Some(Outcome::Issued),
            limit: Some(1),
            ..AuditQuery::default()
        };
        let records = self
            .deps
            .audit
            .query(query)
            .await
            .map_err(CaError::AuditUnavailable)?;
        Ok(records.into_iter().next())
    }

    fn authorize(
        &self,
        caller: &Caller,
        impersonate: Option<&SpiffeId>,
        issued_to: Option<(String, String)>,
    ) -> Result<Permit, CaError> {
        let platform = &self.deps.platform;
        let caller_pod = match caller {
            Caller::Token(t) => t
                .claims
                .pod_name
                .as_deref()
                .and_then(|name| platform.pod(&t.claims.namespace, name)),
            Caller::Certificate { .. } => None,
        };
        // The pods of the impersonated account or, for a renewal, of the
        // certificate's own account.
        let account = match (impersonate, caller) {
            (Some(id), _) => Some(id),
            (None, Caller::Certificate { identity, .. }) => Some(identity),
            (None, Caller::Token(_)) => None,
        };
        let target_pods = match account.map(SpiffeId::kubernetes) {
            Some(Ok(k)) => platform.pods_for_service_account(k.namespace, k.service_account),
            _ => Vec::new(),
        };
        let input = AuthzInput {
            caller,
            impersonate,
            trust_domain: &self.trust_domain,
            trusted: &self.trusted,
            caller_pod: caller_pod.as_ref(),
            target_pods: &target_pods,
            issued_to: issued_to.as_ref().map(|(n, u)| (n.as_str(), u.as_str())),
        };
        Ok(check_authorized(&input)?)
    }
}

/// The audit record's pod is the pod the certificate is for. A node agent's
/// own pod is not that pod: with impersonation the record names the pod of
/// the requested service account on the agent's node, or, when several such
/// pods run there (the certificate is for their shared identity), none, and
/// the note lists them. The caller and node still say which agent asked.
fn record_permit_pods(record: &mut AuditRecord, permit: &Permit) {
    match permit.pods.as_slice() {
        [(name, uid)] => {
            record.pod_name = Some(name.clone());
            record.pod_uid = Some(uid.clone());
        }
        pods => {
            record.pod_name = None;
            record.pod_uid = None;
            let listed: Vec<String> = pods
                .iter()
                .map(|(name, uid)| format!("{name} (uid {uid})"))
                .collect();
            record.reason = Some(format!(
                "for one of {} pods of {} on node {}: {}",
                pods.len(),
                permit.identity,
                permit.node.as_deref().unwrap_or("?"),
                listed.join(", ")
            ));
        }
    }
}

fn set_kubernetes_fields(record: &mut AuditRecord, id: &SpiffeId) {
    if let Ok(k) = id.kubernetes() {
        record.namespace = Some(k.namespace.to_owned());
        record.service_account = Some(k.service_account.to_owned());
    }
}

/// The TTL granted for a requested `validity_duration` (seconds): <= 0 means
/// the default; anything above the maximum is clamped to it.
/// The lifetime of a renewal: what was asked for (already capped by
/// `--max-ttl`), but never longer than the certificate presented, nor than
/// `--default-ttl`. Rule enforced: a stolen short-lived certificate cannot
/// be renewed into a longer one.
/// The TTL the presented certificate was granted: as recorded at its
/// issuance, or, unknown to the store, its lifetime less the largest backdate
/// the template adds (a tenth of the TTL, `pki::template::backdate`), so that
/// renewing never lengthens it.
pub fn presented_ttl(lifetime: Duration, recorded: Option<Duration>) -> Duration {
    recorded.unwrap_or(lifetime * 10 / 11).min(lifetime)
}

pub fn renewal_ttl(resolved: Duration, presented: Duration, default: Duration) -> Duration {
    resolved.min(presented).min(default)
}

pub fn resolve_ttl(requested_secs: i64, default: Duration, max: Duration) -> Duration {
    match u64::try_from(requested_secs) {
        Ok(0) | Err(_) => default.min(max),
        Ok(secs) => Duration::from_secs(secs).min(max),
    }
}

#[cfg(test)]
mod tests;
