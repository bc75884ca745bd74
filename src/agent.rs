//! The node agent: attests the workloads on its node over one Unix socket,
//! obtains their certificates from the CA (it never signs), keeps them fresh,
//! and delivers them over Envoy SDS and the SPIFFE Workload API.
//!
//! Modules: [`attest`] (who is calling), [`ca_client`] (the CA, over the
//! wire), [`cache`] (per-identity certificates and rotation), [`socket`] (the
//! Unix socket and peer credentials), [`files`] (certificates on disk),
//! [`metrics`].

pub mod attest;
pub mod ca_client;
pub mod cache;
pub mod files;
pub mod metrics;
pub mod policy_push;
pub mod sds;
pub mod server;
pub mod socket;
pub mod workload_api;
