//! The `kube` platform: facts from the Kubernetes API server.
//!
//! Owns the Kubernetes backend of [`super::Platform`]: [`KubePlatform`]
//! (lookups served from reflector stores, [`informers`]; token verification
//! through the [`TokenVerifier`] seam, implemented by TokenReview or by the
//! API server's service-account issuer keys, [`token_review`], [`oidc`]);
//! reaching the API server ([`connect`]); the
//! `meshid mtls` write side ([`policy_write`]). The CA's own jobs (its key
//! material in Secrets, the leader Lease, the root-certificate ConfigMaps) are
//! [`crate::ca::kube`]'s: this module does not touch keys (it uses no `pki`).
//!
//! Rules enforced: the API server is never on the lookup path (lookups read
//! reflector stores); readiness stays false until the first full sync; a
//! PeerAuthentication that does not decode is skipped with a warning naming
//! it, the others still apply; in JWKS mode a token bound to a pod is refused
//! once that pod (by namespace, name and uid) is gone from the cache.

pub mod addresses;
pub(crate) mod backoff;
pub mod connect;
pub mod informers;
pub mod oidc;
pub mod policy_write;
pub mod token_review;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::addresses::AddressIndex;
use self::informers::Informers;
use super::{Namespace, Platform, PlatformError, Pod, VerifiedToken, VerifyFuture};
use crate::policy::PeerAuthentication;

/// Verifies a service-account token: the seam between [`KubePlatform`] and
/// the TokenReview / JWKS verifiers ([`token_review`], [`oidc`]).
pub trait TokenVerifier: Send + Sync + 'static {
    /// Verifies `token` (the bare JWT) for one of `audiences`. Errors:
    /// [`PlatformError::InvalidToken`] (refused) or [`PlatformError::Unavailable`].
    fn verify<'a>(&'a self, token: &'a str, audiences: &'a [String]) -> VerifyFuture<'a>;
}

/// How service-account tokens are verified (`--token-verification`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TokenVerification {
    /// Ask the API server (`TokenReview`): it also checks that the pod a
    /// token is bound to still exists.
    #[default]
    #[value(name = "tokenreview")]
    TokenReview,
    /// Check the signature against the issuer's JWKS locally: no API call per
    /// token, so the pod a token is bound to is checked against the informer
    /// cache instead ([`KubeConfig::check_bound_pod`]).
    #[value(name = "jwks")]
    Jwks,
}

impl TokenVerification {
    /// Whether [`KubePlatform`] must check a bound token's pod itself (JWKS
    /// mode: nobody else does; TokenReview does it on the API server).
    pub fn needs_bound_pod_check(self) -> bool {
        self == Self::Jwks
    }
}

/// Settings of a [`KubePlatform`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeConfig {
    /// Watch only the pods of this node (`spec.nodeName`, `--node-name`): the
    /// node agent, which must not hold every pod of the cluster. `None`: every
    /// pod (the CA).
    pub node_name: Option<String>,
    /// Refuse a token bound to a pod unless the informer cache holds that pod
    /// with the same namespace, name and uid (JWKS mode, see
    /// [`TokenVerification::needs_bound_pod_check`]).
    pub check_bound_pod: bool,
    /// Stop reporting ready once some watch has been failing for this long
    /// (the caches are then this stale). `None`: stay ready through any API
    /// server outage after the first sync, serving the last known state — a
    /// CA that goes unready with the API server takes every replica out at
    /// once, which is worse than slightly stale pod facts.
    pub max_staleness: Option<Duration>,
}

impl KubeConfig {
    /// Checks the settings; the error names the flag that is wrong.
    pub fn validate(&self) -> Result<(), KubeConfigError> {
        if self
            .node_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err(KubeConfigError {
                flag: "node-name",
                message: "must not be empty (leave it out to watch every pod)".into(),
            });
        }
        if self.max_staleness.is_some_and(|d| d.is_zero()) {
            return Err(KubeConfigError {
                flag: "max-staleness",
                message: "must be more than zero (leave it out to never go unready)".into(),
            });
        }
        Ok(())
    }
}

/// A [`KubeConfig`] setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {message}")]
pub struct KubeConfigError {
    /// The flag, without dashes.
    pub flag: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// The `kube` platform: informer caches of Pods, Namespaces and
/// PeerAuthentications, and a [`TokenVerifier`].
pub struct KubePlatform {
    informers: Informers,
    /// Every pod's addresses, for destination discovery; only for a node's
    /// agent (whose informers see that node's pods only): the CA's informers
    /// already hold every pod.
    addresses: Option<(AddressIndex, ::kube::Client)>,
    verifier: Arc<dyn TokenVerifier>,
    check_bound_pod: bool,
}

impl std::fmt::Debug for KubePlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubePlatform")
            .field("informers", &self.informers)
            .field("check_bound_pod", &self.check_bound_pod)
            .finish_non_exhaustive()
    }
}

impl KubePlatform {
    /// A platform reading from `client`'s API server. Nothing is fetched until
    /// [`KubePlatform::run`]; until its first sync, [`Platform::is_ready`] is false.
    pub fn new(
        client: ::kube::Client,
        config: KubeConfig,
        verifier: Arc<dyn TokenVerifier>,
    ) -> Result<Arc<Self>, KubeConfigError> {
        config.validate()?;
        tracing::info!(
            node = config.node_name.as_deref().unwrap_or("(all nodes)"),
            check_bound_pod = config.check_bound_pod,
            max_staleness = ?config.max_staleness,
            "kube platform configured"
        );
        let addresses = config
            .node_name
            .as_ref()
            .map(|_| (AddressIndex::default(), client.clone()));
        Ok(Arc::new(Self {
            addresses,
            informers: Informers::new(client, config.node_name, config.max_staleness),
            verifier,
            check_bound_pod: config.check_bound_pod,
        }))
    }

    /// Drives every watch (list, then watch; relist on `410 Gone`; retry with
    /// kube's default backoff when the API server is away) until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        match &self.addresses {
            Some((index, client)) => {
                tokio::join!(
                    self.informers.run(cancel.clone()),
                    index.run(client.clone(), cancel.clone())
                );
            }
            None => self.informers.run(cancel).await,
        }
    }

    /// The informer caches themselves.
    pub fn informers(&self) -> &Informers {
        &self.informers
    }

    /// JWKS mode: a token bound to a pod is only good while that pod (same
    /// namespace, name and uid) exists. A token that names no pod passes.
    fn check_bound_pod(&self, token: &VerifiedToken) -> Result<(), PlatformError> {
        let Some(name) = token.pod_name.as_deref() else {
            return Ok(());
        };
        let namespace = &token.namespace;
        let Some(uid) = token.pod_uid.as_deref() else {
            return Err(PlatformError::invalid_token(format!(
                "token is bound to pod {namespace}/{name} but carries no pod uid"
            )));
        };
        if !self.informers.pods_synced() {
            return Err(PlatformError::Unavailable(format!(
                "cannot check pod {namespace}/{name} the token is bound to: the pod cache has not synced yet"
            )));
        }
        match self.informers.pod(namespace, name) {
            Some(pod) if pod.uid == uid => Ok(()),
            Some(pod) => Err(PlatformError::invalid_token(format!(
                "token is bound to pod {namespace}/{name} uid {uid}, which no longer exists \
                 (a pod of that name now has uid {})",
                pod.uid
            ))),
            None => Err(PlatformError::invalid_token(format!(
                "token is bound to pod {namespace}/{name} uid {uid}, which no longer exists"
            ))),
        }
    }
}

impl Platform for KubePlatform {
    fn verify_token<'a>(&'a self, token: &'a str, audiences: &'a [String]) -> VerifyFuture<'a> {
        Box::pin(async move {
            let verified = self.verifier.verify(token, audiences).await?;
            if self.check_bound_pod {
                self.check_bound_pod(&verified)?;
            }
            Ok(verified)
        })
    }

    fn pod_by_uid(&self, uid: &str) -> Option<Pod> {
        self.informers.pod_by_uid(uid)
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.informers.pod(namespace, name)
    }

    fn pods_on_node(&self, node: &str) -> Vec<Pod> {
        self.informers.pods_on_node(node)
    }

    fn pods_with_ip(&self, ip: std::net::IpAddr) -> Vec<Pod> {
        match &self.addresses {
            Some((index, _)) => index.pods_with_ip(ip),
            None => self.informers.pods_with_ip(ip),
        }
    }

    fn addresses_synced(&self) -> bool {
        match &self.addresses {
            Some((index, _)) => index.synced(),
            None => self.informers.pods_synced(),
        }
    }

    fn address_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        match &self.addresses {
            Some((index, _)) => index.changes(),
            None => self.informers.changes(),
        }
    }

    fn pods_for_service_account(&self, namespace: &str, service_account: &str) -> Vec<Pod> {
        self.informers
            .pods_for_service_account(namespace, service_account)
    }

    fn namespaces(&self) -> Vec<Namespace> {
        self.informers.namespaces()
    }

    fn peer_authentications(&self) -> Vec<PeerAuthentication> {
        self.informers.peer_authentications()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.informers.changes()
    }

    fn is_ready(&self) -> bool {
        self.informers.is_ready()
    }
}

impl TokenVerifier for token_review::TokenReviewer {
    fn verify<'a>(&'a self, token: &'a str, audiences: &'a [String]) -> VerifyFuture<'a> {
        Box::pin(token_review::TokenReviewer::verify(self, token, audiences))
    }
}

impl TokenVerifier for oidc::OidcJwks {
    fn verify<'a>(&'a self, token: &'a str, audiences: &'a [String]) -> VerifyFuture<'a> {
        Box::pin(oidc::OidcJwks::verify(self, token, audiences))
    }
}
