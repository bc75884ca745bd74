//! The `kube` platform: facts from the Kubernetes API server.
//!
//! Owns the Kubernetes backend of [`super::Platform`]: token verification by
//! TokenReview or by the API server's service-account issuer keys
//! ([`token_review`], [`oidc`]); reflector stores for Pods, Namespaces and
//! PeerAuthentications ([`informers`]); the CA's key material in Secrets
//! ([`ca_secret`]); the root-certificate ConfigMap in every namespace
//! ([`root_configmap`]), written by one replica at a time ([`lease`]).
//!
//! Rules enforced: the API server is never on the lookup path (lookups read
//! reflector stores); readiness stays false until the first full sync; a
//! PeerAuthentication that does not decode is skipped with a warning naming
//! it, the others still apply.

pub mod ca_secret;
pub mod informers;
pub mod lease;
pub mod oidc;
pub mod root_configmap;
pub mod token_review;

#[cfg(test)]
pub(crate) mod mock_api;
