//! mTLS policy: Istio's `PeerAuthentication` resource, as data.
//!
//! Owns the types that `security.istio.io/v1beta1` (and `v1`) PeerAuthentication
//! YAML and JSON decode into, so that existing Istio policy files and the
//! objects a Kubernetes API server returns apply unchanged, and resolves them
//! as Istio does ([`resolve`](mod@resolve): mesh > namespace > workload, oldest wins within
//! a scope, port-level overrides from the workload policy), and reports the
//! effective mode of a set of pods ([`report`](mod@report)). This module is
//! pure: data in, decision out. It uses nothing of ours but
//! [`crate::identity`], never the platform.
//!
//! Rule enforced: a policy is read exactly or refused. Unknown fields in the
//! `spec` (and its parts) and unknown modes are errors that name the field
//! (serde's path, e.g. `spec.mtls.mode: unknown variant`), never silently
//! ignored, because a misspelt `STRICT` that quietly meant PERMISSIVE would
//! leave traffic unprotected. `metadata` is lenient about the bookkeeping
//! fields an API server adds (`uid`, `resourceVersion`, `managedFields`, …).

pub mod report;
pub mod resolve;
pub mod types;

pub use report::{report, PodMode, Workload};
pub use resolve::{
    resolve, EffectiveMode, ModeSource, Policies, PolicyRef, PolicyWarning, Resolution, Scope,
    DEFAULT_NAMESPACE, DEFAULT_ROOT_NAMESPACE,
};
pub use types::{
    ApiVersion, Kind, MtlsMode, MutualTls, ObjectMeta, PeerAuthentication, PeerAuthenticationSpec,
    WorkloadSelector,
};

/// Why a PeerAuthentication is not acceptable, beyond what decoding refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A field holds a value Istio's validation refuses too.
    #[error("PeerAuthentication {policy}: {field}: {message}")]
    Invalid {
        /// `namespace/name` of the policy.
        policy: String,
        /// The path of the offending field, e.g. `spec.portLevelMtls`.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

#[cfg(test)]
mod tests;
