//! Facts in, policy writes out: the [`Platform`] trait, through which the CA
//! and the node agent verify service-account tokens and learn pods,
//! namespaces and PeerAuthentication policies, and the write side of
//! `meshid mtls` (a namespace's PeerAuthentication), the same for both backends.
//!
//! Owns the trait and its fact types ([`Pod`], [`Namespace`], [`VerifiedToken`])
//! plus the backends: [`local`] (a watched directory of Kubernetes-style YAML,
//! its policy writes, and the local token issuer of `meshid token issue`) and
//! [`kube`] (informers, TokenReview or the API server's JWKS, policy writes by
//! server-side apply). The CA's own Kubernetes jobs (Secrets, Lease, root
//! ConfigMaps) are `ca::kube`'s. The shared JWKS verification of Kubernetes
//! tokens is [`jwt`]. It does not decide
//! anything: who may have which identity is the CA's `authz`, what a policy
//! means is `policy`'s resolution. Uses `identity` and `policy` (types) only.
//!
//! Rules enforced here: a token is only ever turned into facts after its
//! signature, algorithm, time window, audience, issuer and subject have been
//! checked ([`jwt`]); the reason a token was refused goes to the server log,
//! never to the client; lookups are synchronous cache reads, so no caller
//! holds a lock across an `.await` on our account.

pub mod jwt;
pub mod kube;
pub mod local;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use time::OffsetDateTime;

use crate::identity::{IdentityError, SpiffeId, TrustDomain};
use crate::policy::PeerAuthentication;

/// The label that says a pod's proxy terminates meshid mTLS (set by the
/// injector; read by outbound capture, which then requires mTLS to it).
pub const TLS_MODE_LABEL: &str = "security.meshid.io/tlsMode";

/// [`TLS_MODE_LABEL`]'s value on a meshed pod.
pub const TLS_MODE_MESHID: &str = "meshid";

/// The service account Kubernetes gives a pod that names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// A pod, as the platform knows it: the facts identity decisions are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`: tells a pod from a later one with the same name, so a
    /// token bound to a deleted pod cannot be replayed for its successor.
    pub uid: String,
    /// `spec.nodeName`: the node agent may only ask for pods on its node.
    pub node_name: Option<String>,
    /// `spec.serviceAccountName` ([`DEFAULT_SERVICE_ACCOUNT`] when absent, as Kubernetes).
    pub service_account: String,
    /// `metadata.labels` (PeerAuthentication selectors match these).
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations` (e.g. `meshid.io/unix-uid` for local attestation).
    pub annotations: BTreeMap<String, String>,
    /// `status.phase`: `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    pub phase: Option<String>,
    /// `metadata.creationTimestamp`.
    pub creation_timestamp: Option<OffsetDateTime>,
    /// `status.podIPs` (with `status.podIP` first when only it is set): where
    /// the pod is reached; outbound capture learns a destination's identity
    /// from it.
    pub pod_ips: Vec<std::net::IpAddr>,
}

impl Pod {
    /// Whether the pod may still run workloads that need a certificate.
    ///
    /// Absent phase counts as running (hand-written local manifests rarely
    /// carry a status), and so does `Pending`: containers that are starting
    /// need their certificate before they run (ztunnel asks for it as soon as
    /// the pod is scheduled). `Succeeded` and `Failed` pods are done, and
    /// `Unknown` (the node stopped reporting) fails closed.
    pub fn is_running(&self) -> bool {
        matches!(
            self.phase.as_deref(),
            None | Some("Running") | Some("Pending")
        )
    }

    /// The one rule, for the CA and the agent alike, for "this pod may hold
    /// the identity `namespace/service_account` now": the pod is in that
    /// namespace, runs under that service account, and [is running](Self::is_running)
    /// (which counts `Pending`, for native sidecars and early issuance).
    pub fn may_hold(&self, namespace: &str, service_account: &str) -> Result<(), PodRefusal> {
        let pod = || format!("{}/{}", self.namespace, self.name);
        if self.namespace != namespace || self.service_account != service_account {
            return Err(PodRefusal::OtherAccount {
                pod: pod(),
                runs_as: format!("{}/{}", self.namespace, self.service_account),
                wanted: format!("{namespace}/{service_account}"),
            });
        }
        if !self.is_running() {
            return Err(PodRefusal::NotRunning {
                pod: pod(),
                phase: self.phase.clone().unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Whether the pod's proxy terminates meshid mTLS ([`TLS_MODE_LABEL`]).
    pub fn is_meshed(&self) -> bool {
        self.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some(TLS_MODE_MESHID)
    }

    /// The pod's SPIFFE ID, `spiffe://<td>/ns/<namespace>/sa/<service account>`.
    pub fn identity(&self, td: &TrustDomain) -> Result<SpiffeId, IdentityError> {
        SpiffeId::for_service_account(td, &self.namespace, &self.service_account)
    }
}

impl crate::policy::Workload for Pod {
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
}

/// Why a pod may not hold an identity ([`Pod::may_hold`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PodRefusal {
    /// The pod runs under another service account (or namespace).
    #[error("pod {pod} runs as {runs_as}, not {wanted}")]
    OtherAccount {
        /// `namespace/name`.
        pod: String,
        /// Its `namespace/serviceAccountName`.
        runs_as: String,
        /// The account asked for.
        wanted: String,
    },
    /// The pod has finished (`Succeeded`, `Failed`) or its node stopped
    /// reporting (`Unknown`).
    #[error("pod {pod} is {phase}, not running")]
    NotRunning {
        /// `namespace/name`.
        pod: String,
        /// `status.phase`.
        phase: String,
    },
}

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

/// What a verified service-account token says. Only built after every check
/// in [`jwt`] (or a TokenReview) passed; holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `iss`.
    pub issuer: String,
    /// The namespace from `sub = system:serviceaccount:<ns>:<sa>`.
    pub namespace: String,
    /// The service account from `sub`.
    pub service_account: String,
    /// `aud`, as the token lists it (at least one of them was one we accept).
    pub audiences: Vec<String>,
    /// `kubernetes.io.pod.name`, for tokens bound to a pod.
    pub pod_name: Option<String>,
    /// `kubernetes.io.pod.uid`, for tokens bound to a pod.
    pub pod_uid: Option<String>,
    /// `kubernetes.io.node.name`, for tokens bound to a node (Kubernetes 1.30+).
    pub node_name: Option<String>,
    /// `kubernetes.io.node.uid`.
    pub node_uid: Option<String>,
    /// `exp`: a cached verification must not outlive it.
    pub expires_at: OffsetDateTime,
}

impl VerifiedToken {
    /// The caller's SPIFFE ID, from the token's namespace and service account.
    pub fn identity(&self, td: &TrustDomain) -> Result<SpiffeId, IdentityError> {
        SpiffeId::for_service_account(td, &self.namespace, &self.service_account)
    }
}

/// The name `meshid mtls set-mode` gives a new namespace-wide
/// PeerAuthentication, on either backend (Istio's convention).
pub const NAMESPACE_POLICY_NAME: &str = "default";

/// What can go wrong getting facts from a platform (the local token
/// issuer's own errors are [`local::issuer::IssuerError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// The token was refused. `reason` is for the server log and the audit
    /// record only: callers get an opaque UNAUTHENTICATED.
    #[error("invalid service-account token: {reason}")]
    InvalidToken {
        /// Which check failed, in words an operator can act on. Never the token.
        reason: String,
    },
    /// The platform cannot answer now (API server down, TokenReview failed);
    /// worth retrying, unlike [`PlatformError::InvalidToken`].
    #[error("platform unavailable: {0}")]
    Unavailable(String),
    /// A manifest file cannot be used.
    #[error("manifest {}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Manifest {
        /// The file.
        file: PathBuf,
        /// The 1-based line of the problem, when known.
        line: Option<usize>,
        /// What is wrong (for YAML errors, serde's path and position).
        message: String,
    },
    /// Reading or writing a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A JWKS has no key we can verify tokens with.
    #[error("unusable JWKS: {reason}")]
    Jwks {
        /// What is wrong with it.
        reason: String,
    },
}

impl PlatformError {
    pub(crate) fn invalid_token(reason: impl Into<String>) -> Self {
        Self::InvalidToken {
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// The future [`Platform::verify_token`] returns.
pub type VerifyFuture<'a> =
    Pin<Box<dyn Future<Output = Result<VerifiedToken, PlatformError>> + Send + 'a>>;

/// A source of facts: tokens, pods, namespaces, policies.
///
/// Token verification is async (the `kube` backend calls TokenReview); every
/// other method reads a synchronous in-memory cache (a reflector store on
/// Kubernetes, the parsed manifests locally) and never blocks on the network.
pub trait Platform: Send + Sync + 'static {
    /// Verifies a service-account token (the bare JWT, without `Bearer `) for
    /// one of `audiences`. Errors: [`PlatformError::InvalidToken`] (refused) or
    /// [`PlatformError::Unavailable`] (cannot tell now).
    fn verify_token<'a>(&'a self, token: &'a str, audiences: &'a [String]) -> VerifyFuture<'a>;

    /// The pod with this `metadata.uid`.
    fn pod_by_uid(&self, uid: &str) -> Option<Pod>;

    /// The pod `namespace/name`.
    fn pod(&self, namespace: &str, name: &str) -> Option<Pod>;

    /// Every pod scheduled on `node` (`spec.nodeName`), in any phase.
    fn pods_on_node(&self, node: &str) -> Vec<Pod>;

    /// Pods whose `status.podIPs` hold `ip`: one, normally; more when a
    /// finished pod's address was reused (the caller picks the running one).
    fn pods_with_ip(&self, ip: std::net::IpAddr) -> Vec<Pod>;

    /// Whether [`Self::pods_with_ip`] has seen every pod (on Kubernetes, the
    /// agent's cluster-wide address watch listed once). Until then no
    /// destination is answered: an address not yet seen may be meshed.
    fn addresses_synced(&self) -> bool {
        self.is_ready()
    }

    /// Bumped on every change [`Self::pods_with_ip`] would show.
    fn address_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes()
    }

    /// Every pod of `namespace` running as `service_account`, in any phase.
    fn pods_for_service_account(&self, namespace: &str, service_account: &str) -> Vec<Pod>;

    /// Every namespace.
    fn namespaces(&self) -> Vec<Namespace>;

    /// Every PeerAuthentication, in every namespace (`metadata.namespace` filled in).
    fn peer_authentications(&self) -> Vec<PeerAuthentication>;

    /// A generation counter bumped on every change of pods, namespaces or
    /// policies; `changed().await` on it to react.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Whether the caches hold a complete first view (for `/readyz`).
    fn is_ready(&self) -> bool;
}
