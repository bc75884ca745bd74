//! The node agent: attests the workloads on its node over one Unix socket,
//! obtains their certificates from the CA (it never signs), keeps them fresh,
//! and delivers them over Envoy SDS and the SPIFFE Workload API.

pub mod ca_client;
pub mod cache;
pub mod metrics;
