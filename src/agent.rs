//! The node agent: attests the workloads on its node over one Unix socket,
//! obtains their certificates from the CA (it never signs), keeps them fresh,
//! and delivers them over Envoy SDS and the SPIFFE Workload API.
//!
//! Modules: [`attest`] (what a credential proves: peer credentials or a
//! token → a workload), [`socket`] (the Unix socket, its limits, and
//! [`socket::caller`]: which credential wins, once per request),
//! [`crate::ca_client`] (the CA, over the wire), [`cache`] (per-identity
//! certificates and rotation), the three services on the socket — [`sds`]
//! (Envoy SDS), [`workload_api`] (SPIFFE Workload API), [`policy_push`] (the
//! mTLS policy stream), [`destinations`] (which workload owns an IP, for
//! captured connections) — [`files`] (certificates on disk), [`server`] (wiring
//! it together), [`mod@build`] (the composition root: plain settings in, a
//! running agent out), [`trust`] (the CA's trust stream: roots, CRLs,
//! taints), [`metrics`].

pub mod attest;
pub mod build;
pub mod cache;
pub mod destinations;
pub mod files;
pub mod metrics;
pub mod policy_push;
pub mod sds;
pub mod server;
pub mod socket;
pub mod trust;
pub mod workload_api;

pub use build::{build, AgentPlatform, AgentSetup, BuildError};
