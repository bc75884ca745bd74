//! The agent's side of the CA's trust stream (`TrustService.WatchTrust`, issue
//! 18): one stream per agent, kept open and re-opened with capped backoff;
//! each [`TrustUpdate`] is judged by [`apply_update`] (pure) and what passed
//! becomes the cache's trust bundle, CRLs and taint list
//! ([`CertCache::apply_trust`]) and the CA client's TLS roots
//! ([`TrustSource::trust_roots`]).
//!
//! Owns the rules on what a trust update may change; does not decide what a
//! revocation or a taint does to certificates (the cache does), nor how the
//! bundle reaches workloads (SDS, the Workload API, files).
//!
//! Rules enforced, each logged with the authority's id when it bites:
//! - an update whose roots are empty or do not parse is refused whole, and the
//!   previous state kept;
//! - an authority whose certificate does not chain, signature by signature,
//!   through its `chain` to one of the update's roots is dropped from it;
//! - an authority's CRL is used only if it verifies against that authority's
//!   certificate ([`verify_crl`]) and is not older than the one held; otherwise
//!   the authority's previous CRL (if any) stays in use;
//! - only an old authority can be tainted; a taint on any other is ignored.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio_stream::{Stream, StreamExt};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::agent::cache::{CertCache, TrustBundle};
use crate::agent::metrics::AgentMetrics;
use crate::ca_client::{CaClient, CaClientError};
use crate::pki::bundle::cert_pem;
use crate::pki::crl::{verify_crl, CrlError, RevokedSet, VerifiedCrl};
use crate::proto::meshid::ca::v1::{AuthorityState, TrustUpdate};
use crate::shutdown::Shutdown;
use crate::time::Backoff;

/// The updates of one open `WatchTrust` stream.
pub type TrustStream = Pin<Box<dyn Stream<Item = Result<TrustUpdate, tonic::Status>> + Send>>;

/// Where trust updates come from, and whose TLS follows the bundle: the CA
/// client in production, a channel in tests.
pub trait TrustSource: Send + Sync + 'static {
    /// Opens a stream of trust updates.
    fn watch(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<TrustStream, CaClientError>> + Send + '_>>;

    /// Trusts `roots` (DER) besides the configured roots when reaching the CA.
    fn trust_roots(&self, roots: &[CertificateDer<'static>]) -> Result<(), CaClientError>;
}

impl TrustSource for CaClient {
    fn watch(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<TrustStream, CaClientError>> + Send + '_>> {
        Box::pin(async move {
            let stream = self.watch_trust().await?;
            Ok(Box::pin(stream) as TrustStream)
        })
    }

    fn trust_roots(&self, roots: &[CertificateDer<'static>]) -> Result<(), CaClientError> {
        CaClient::trust_roots(self, roots)
    }
}

/// An authority of an accepted update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedAuthority {
    /// Its id (hex subject key identifier), for logs.
    pub id: String,
    /// Prepared, active or old.
    pub state: AuthorityState,
    /// Whether certificates chaining to it are to be re-issued (old only).
    pub tainted: bool,
    /// Its signing certificate, DER; chains to one of the state's roots.
    pub certificate_der: Vec<u8>,
    /// Its CRL, verified against `certificate_der`; the previous one when
    /// the update's did not verify.
    pub crl: Option<VerifiedCrl>,
}

/// What the agent believes of the CA's trust state: the last update that
/// passed [`apply_update`], less what it dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustState {
    /// The version of the update it came from (0: nothing received yet).
    pub version: u64,
    /// The trust bundle's roots, DER.
    pub roots_der: Vec<CertificateDer<'static>>,
    /// The authorities that chain to those roots.
    pub authorities: Vec<TrustedAuthority>,
}

impl TrustState {
    /// Whether an update has been accepted yet.
    pub fn is_empty(&self) -> bool {
        self.roots_der.is_empty()
    }

    /// The bundle to deliver: the roots, and every authority's CRL.
    pub fn bundle(&self) -> TrustBundle {
        let pem = self.roots_der.iter().map(|r| cert_pem(r)).collect();
        let crls: Vec<&VerifiedCrl> = self
            .authorities
            .iter()
            .filter_map(|a| a.crl.as_ref())
            .collect();
        TrustBundle {
            roots_der: self.roots_der.clone(),
            pem,
            crls_der: crls.iter().map(|c| c.der().to_vec()).collect(),
            revoked: RevokedSet::from_crls(crls),
        }
    }

    /// The tainted authorities' certificates, DER.
    pub fn tainted(&self) -> Vec<Vec<u8>> {
        self.authorities
            .iter()
            .filter(|a| a.tainted)
            .map(|a| a.certificate_der.clone())
            .collect()
    }
}

/// Something wrong with an update; each names what to look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// The update was refused whole; the previous state stays.
    #[error("trust update {version} refused, the previous trust state is kept: {reason}")]
    Refused {
        /// The update's version.
        version: u64,
        /// Why.
        reason: String,
    },
    /// An authority was left out of the update.
    #[error("authority {id} dropped from trust update {version}: {reason}")]
    AuthorityDropped {
        /// The update's version.
        version: u64,
        /// The authority's id.
        id: String,
        /// Why.
        reason: String,
    },
    /// An authority's CRL was not used.
    #[error("CRL of authority {id} refused ({}): {source}",
        if *kept_previous { "its previous CRL stays in use" } else { "it had none before" })]
    CrlRejected {
        /// The authority's id.
        id: String,
        /// Whether an earlier CRL of that authority is still used.
        kept_previous: bool,
        /// What is wrong with it.
        #[source]
        source: CrlRefusal,
    },
    /// A taint on an authority that is not old was ignored.
    #[error("authority {id} is marked tainted but is {state:?}; only an old authority can be tainted, taint ignored")]
    TaintIgnored {
        /// The authority's id.
        id: String,
        /// Its state.
        state: AuthorityState,
    },
}

/// Why a CRL was not used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrlRefusal {
    /// It does not verify against the authority's certificate.
    #[error(transparent)]
    Invalid(#[from] CrlError),
    /// It is older than the one held (a replay would un-revoke).
    #[error("its thisUpdate {got} is older than that of the CRL held ({held})")]
    Older {
        /// thisUpdate of the CRL held.
        held: OffsetDateTime,
        /// thisUpdate of the CRL received.
        got: OffsetDateTime,
    },
}

/// Judges `update` against the state held. Pure: no I/O, no clock, no log.
/// Returns the new state (`prev` unchanged when the update is refused) and
/// what was wrong with it.
pub fn apply_update(prev: &TrustState, update: TrustUpdate) -> (TrustState, Vec<Problem>) {
    let version = update.version;
    let refuse = |reason: String| (prev.clone(), vec![Problem::Refused { version, reason }]);
    // Rule: the roots parse and there is at least one.
    if update.roots.is_empty() {
        return refuse("it carries no root".to_owned());
    }
    let mut roots = Vec::with_capacity(update.roots.len());
    for (i, der) in update.roots.iter().enumerate() {
        match parse(der) {
            Ok(cert) => roots.push(cert),
            Err(e) => return refuse(format!("root #{} does not parse: {e}", i + 1)),
        }
    }

    let mut problems = Vec::new();
    let mut authorities = Vec::with_capacity(update.authorities.len());
    for a in &update.authorities {
        let id = a.id.clone();
        // Rule: the authority chains to a root of this update.
        if let Err(reason) = chains_to_roots(&a.certificate, &a.chain, &roots) {
            problems.push(Problem::AuthorityDropped {
                version,
                id,
                reason,
            });
            continue;
        }
        // Rule: the id is the one its certificate carries (the CA's
        // `authority_id`), so that an id names one key only.
        let actual = crate::pki::authority::authority_id(&a.certificate);
        if actual.as_deref() != Some(a.id.as_str()) {
            problems.push(Problem::AuthorityDropped {
                version,
                id,
                reason: format!(
                    "its id does not match its certificate's subject key identifier ({})",
                    actual.unwrap_or_else(|| "none".to_owned())
                ),
            });
            continue;
        }
        let state = AuthorityState::try_from(a.state).unwrap_or(AuthorityState::Unspecified);
        let tainted = a.tainted && state == AuthorityState::Old;
        if a.tainted && !tainted {
            problems.push(Problem::TaintIgnored {
                id: id.clone(),
                state,
            });
        }
        // The previous CRL counts only if it verifies against this certificate.
        let previous = prev
            .authorities
            .iter()
            .find(|p| p.id == a.id)
            .and_then(|p| p.crl.as_ref())
            .filter(|crl| verify_crl(crl.der(), &a.certificate).is_ok());
        let crl = if a.crl.is_empty() {
            previous.cloned()
        } else {
            // Rule: a CRL is used only once verified against its authority.
            let judged = verify_crl(&a.crl, &a.certificate)
                .map_err(CrlRefusal::from)
                .and_then(|crl| match previous {
                    Some(held) if crl.this_update() < held.this_update() => {
                        Err(CrlRefusal::Older {
                            held: held.this_update(),
                            got: crl.this_update(),
                        })
                    }
                    _ => Ok(crl),
                });
            match judged {
                Ok(crl) => Some(crl),
                Err(source) => {
                    problems.push(Problem::CrlRejected {
                        id: id.clone(),
                        kept_previous: previous.is_some(),
                        source,
                    });
                    previous.cloned()
                }
            }
        };
        authorities.push(TrustedAuthority {
            id,
            state,
            tainted,
            certificate_der: a.certificate.clone(),
            crl,
        });
    }
    let roots_der = update.roots.into_iter().map(CertificateDer::from).collect();
    (
        TrustState {
            version,
            roots_der,
            authorities,
        },
        problems,
    )
}

/// `certificate` is signed by `chain[0]`, each chain element by the next,
/// and the last (or `certificate` itself when the chain is empty) by one of
/// `roots`: issuer name equal to the root's subject and the signature
/// verifying with the root's key.
fn chains_to_roots(
    certificate: &[u8],
    chain: &[Vec<u8>],
    roots: &[X509Certificate<'_>],
) -> Result<(), String> {
    let cert = parse(certificate).map_err(|e| format!("its certificate does not parse: {e}"))?;
    let mut parsed = Vec::with_capacity(chain.len());
    for (i, der) in chain.iter().enumerate() {
        parsed
            .push(parse(der).map_err(|e| format!("chain element #{} does not parse: {e}", i + 1))?);
    }
    let mut child = &cert;
    for (i, issuer) in parsed.iter().enumerate() {
        if child.issuer().as_raw() != issuer.subject().as_raw()
            || child.verify_signature(Some(issuer.public_key())).is_err()
        {
            return Err(format!(
                "chain element #{} (\"{}\") did not sign \"{}\"",
                i + 1,
                issuer.subject(),
                child.subject()
            ));
        }
        child = issuer;
    }
    let signed_by_root = roots.iter().any(|root| {
        child.issuer().as_raw() == root.subject().as_raw()
            && child.verify_signature(Some(root.public_key())).is_ok()
    });
    if signed_by_root {
        Ok(())
    } else {
        Err(format!(
            "\"{}\" (issuer \"{}\") is not signed by any root of the update",
            child.subject(),
            child.issuer()
        ))
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(format!("{} trailing bytes", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// Follows the trust stream and applies what it delivers.
pub struct TrustFollower {
    source: Arc<dyn TrustSource>,
    cache: Arc<CertCache>,
    metrics: AgentMetrics,
    backoff: Backoff,
}

impl std::fmt::Debug for TrustFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustFollower")
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl TrustFollower {
    /// Re-opens the stream after 0.5 s doubling to 30 s (jittered).
    pub const DEFAULT_BACKOFF: Backoff =
        Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

    /// A follower feeding `cache` from `source`.
    pub fn new(source: Arc<dyn TrustSource>, cache: Arc<CertCache>, metrics: AgentMetrics) -> Self {
        Self {
            source,
            cache,
            metrics,
            backoff: Self::DEFAULT_BACKOFF,
        }
    }

    /// Another reconnection pace.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Keeps the stream open until shutdown: on an error or the end of a
    /// stream, opens a new one after a capped, jittered backoff (reset by
    /// every update received).
    pub async fn run(self, shutdown: Shutdown) {
        let mut state = TrustState::default();
        let mut failures: u32 = 0;
        loop {
            let opened = tokio::select! {
                _ = shutdown.triggered() => return,
                opened = self.source.watch() => opened,
            };
            match opened {
                Ok(mut stream) => loop {
                    let item = tokio::select! {
                        _ = shutdown.triggered() => return,
                        item = stream.next() => item,
                    };
                    match item {
                        Some(Ok(update)) => {
                            failures = 0;
                            state = self.handle(&state, update);
                        }
                        Some(Err(status)) => {
                            tracing::warn!(code = ?status.code(), message = status.message(),
                                "trust stream from the CA failed; re-opening it");
                            break;
                        }
                        None => {
                            tracing::info!("the CA closed the trust stream; re-opening it");
                            break;
                        }
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the trust stream to the CA; retrying");
                }
            }
            let delay = self.backoff.jittered(failures);
            failures = failures.saturating_add(1);
            tokio::select! {
                _ = shutdown.triggered() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Judges one update, logs and counts its problems, and applies it.
    /// Returns the state now held.
    pub fn handle(&self, prev: &TrustState, update: TrustUpdate) -> TrustState {
        let (next, problems) = apply_update(prev, update);
        for problem in &problems {
            match problem {
                Problem::Refused { .. } | Problem::AuthorityDropped { .. } => {
                    self.metrics.trust_rejected.inc();
                    tracing::error!(error = %problem, "trust update from the CA");
                }
                Problem::CrlRejected { id, source, .. } => {
                    self.metrics.crl_rejected.inc();
                    tracing::error!(authority = %id, reason = %source, error = %problem, "CRL from the CA not used");
                }
                Problem::TaintIgnored { .. } => {
                    tracing::warn!(error = %problem, "trust update from the CA");
                }
            }
        }
        if next.is_empty() {
            return next;
        }
        let refused = problems
            .iter()
            .any(|p| matches!(p, Problem::Refused { .. }));
        if refused {
            return next;
        }
        if next.roots_der != prev.roots_der {
            if let Err(e) = self.source.trust_roots(&next.roots_der) {
                tracing::error!(error = %e, "cannot make the CA client trust the new bundle; it keeps its roots");
            }
        }
        self.metrics.trust_updates.inc();
        tracing::info!(
            version = next.version,
            roots = next.roots_der.len(),
            authorities = next.authorities.len(),
            tainted = next.authorities.iter().filter(|a| a.tainted).count(),
            crls = next.authorities.iter().filter(|a| a.crl.is_some()).count(),
            "trust update applied"
        );
        publish(&self.cache, &next);
        next
    }
}

/// Installs `state` in `cache`: its bundle and its taint list.
pub fn publish(cache: &CertCache, state: &TrustState) {
    cache.apply_trust(state.bundle(), &state.tainted());
}

#[cfg(test)]
pub(crate) mod test_ca;
#[cfg(test)]
mod tests;
