//! Why a caller on the agent's socket was not attested.

use std::path::PathBuf;

use crate::identity::IdentityError;
use crate::platform::PlatformError;

/// Why a caller could not be attested to a workload.
///
/// Every variant but [`AttestError::Platform`], [`AttestError::Proc`] and
/// [`AttestError::ProcFormat`] is a refusal ([`AttestError::is_refusal`]):
/// the caller gets `PERMISSION_DENIED` (or `UNAUTHENTICATED` for a token) and
/// no certificate, and its client retries. Messages are for the agent's log;
/// they name the pod, node, pid or uid involved and what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The kernel gave no pid for the peer (0: outside our pid namespace),
    /// so where it runs cannot be told.
    #[error("the kernel gave no pid for the caller (another pid namespace?), so where it runs cannot be told")]
    NoPid,
    /// Neither the caller's cgroup nor its uid names a running pod on this node.
    #[error(
        "no pod on node {node} matches the caller (pid {}, uid {uid}): run it in a pod \
         scheduled on this node, or annotate its pod with meshid.io/unix-uid: \"{uid}\"",
        pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
    )]
    NoPod {
        /// The caller's pid, when the kernel reported one.
        pid: Option<i32>,
        /// The caller's uid.
        uid: u32,
        /// This agent's node.
        node: String,
    },
    /// The caller's cgroup names a pod UID the platform does not know (not yet
    /// in the cache, or already deleted).
    #[error(
        "pid {pid} runs in the cgroup of pod uid {pod_uid}, which the platform does not know \
         (a pod too new for the cache, or deleted); retry shortly"
    )]
    UnknownPod {
        /// The caller's pid.
        pid: i32,
        /// The pod UID from `/proc/<pid>/cgroup`.
        pod_uid: String,
    },
    /// The caller's cgroup lines name several different pods.
    #[error(
        "pid {pid} has cgroups of several pods ({}); refusing to pick one",
        pod_uids.join(", ")
    )]
    ConflictingCgroups {
        /// The caller's pid.
        pid: i32,
        /// The pod UIDs found.
        pod_uids: Vec<String>,
    },
    /// The pod is scheduled on another node (or none): only that node's agent
    /// may serve it.
    #[error(
        "pod {pod} is on node {}, not on this agent's node {this_node}: \
         its workloads must use the agent of their own node",
        node.as_deref().unwrap_or("(none: not scheduled)")
    )]
    NotOnNode {
        /// The pod, `namespace/name`.
        pod: String,
        /// The node it is scheduled on.
        node: Option<String>,
        /// This agent's node.
        this_node: String,
    },
    /// The pod has finished (`Succeeded`, `Failed`) or its node stopped
    /// reporting (`Unknown`).
    #[error("pod {pod} is in phase {phase}: only pending or running pods get an identity")]
    PodNotRunning {
        /// The pod, `namespace/name`.
        pod: String,
        /// Its `status.phase`.
        phase: String,
    },
    /// The caller's process no longer exists (it exited before attestation
    /// finished, so its pid may already belong to another process).
    #[error("process {pid} exited before it could be attested; reconnect")]
    ProcessGone {
        /// The caller's pid.
        pid: i32,
    },
    /// The caller's pid was taken by another process during attestation (its
    /// start time changed), so the facts read may be another process's.
    #[error(
        "pid {pid} changed hands during attestation (start time {before} then {after}); \
         the caller exited and its pid was reused; reconnect"
    )]
    PidReused {
        /// The caller's pid.
        pid: i32,
        /// Start time before the lookup (clock ticks since boot).
        before: u64,
        /// Start time after it.
        after: u64,
    },
    /// Several running pods on this node carry the caller's uid annotation.
    #[error(
        "uid {uid} is claimed by several running pods on this node ({}): give each pod its \
         own meshid.io/unix-uid",
        pods.join(", ")
    )]
    AmbiguousUid {
        /// The caller's uid.
        uid: u32,
        /// The pods annotated with it, `namespace/name`.
        pods: Vec<String>,
    },
    /// The service-account token was refused by the platform. `reason` is for
    /// the agent's log only: the caller gets an opaque `UNAUTHENTICATED`.
    #[error("service-account token refused: {reason}")]
    Token {
        /// Which check failed. Never the token.
        reason: String,
    },
    /// The token is valid but not bound to a pod, so it says nothing about
    /// where the caller runs.
    #[error(
        "the token of {service_account} is not bound to a pod (no pod name and uid claims): \
         use a projected service-account token"
    )]
    TokenNotBound {
        /// The token's `namespace/service-account`.
        service_account: String,
    },
    /// The token's pod does not exist (deleted, or never did).
    #[error("the token is bound to pod {pod}, which does not exist")]
    PodGone {
        /// The pod, `namespace/name`.
        pod: String,
    },
    /// A claim of the token disagrees with the live pod of that name (the pod
    /// was recreated, or the token is stale).
    #[error(
        "the token is bound to pod {pod} with {claim} {token}, but that pod has {claim} {actual}"
    )]
    TokenPodMismatch {
        /// The pod, `namespace/name`.
        pod: String,
        /// Which fact: `uid`, `service account` or `node`.
        claim: &'static str,
        /// The token's value.
        token: String,
        /// The live pod's value.
        actual: String,
    },
    /// The pod's namespace or service account cannot form a SPIFFE ID.
    #[error("pod {pod} has no valid SPIFFE ID")]
    Identity {
        /// The pod, `namespace/name`.
        pod: String,
        /// Which rule its names break.
        #[source]
        source: IdentityError,
    },
    /// A `/proc` file exists but cannot be read (permissions, `hidepid`): the
    /// agent needs the host's pid namespace and read access to `/proc`.
    #[error("cannot read {}: {source} (the agent needs the host's /proc)", path.display())]
    Proc {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A `/proc` file does not have the kernel's format.
    #[error("unexpected format of {}: {reason}", path.display())]
    ProcFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The platform cannot answer now (API server down); worth retrying.
    #[error("cannot attest now: {0}")]
    Platform(#[source] PlatformError),
}

impl AttestError {
    /// True when the caller is not entitled to an identity (answer
    /// `PERMISSION_DENIED`, or `UNAUTHENTICATED` for a refused token); false
    /// when the agent cannot decide now (platform unavailable, `/proc`
    /// unreadable: answer `UNAVAILABLE` and log it as the agent's problem).
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            Self::Platform(_) | Self::Proc { .. } | Self::ProcFormat { .. }
        )
    }

    pub(super) fn from_platform(e: PlatformError) -> Self {
        match e {
            PlatformError::InvalidToken { reason } => Self::Token { reason },
            other => Self::Platform(other),
        }
    }
}
