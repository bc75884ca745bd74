//! The certificate authority: Istio's `IstioCertificateService/CreateCertificate`
//! over TLS, wire-compatible with istio-agent, ztunnel and our node agent.
//!
//! Issuance runs in a fixed order (as SPIRE's does): authenticate
//! ([`authn`]) → authorize ([`authz`], pure) → resolve the TTL → validate the
//! CSR (only its public key is used) → sign from server-side facts → check what
//! was signed → audit → answer. Nothing is returned that has not been audited.
//! This module owns the pipeline ([`issuer`]), the gRPC surface ([`service`]),
//! its composition from plain settings ([`mod@build`]),
//! the TLS listener and its own serving certificate ([`server`], [`tls`]) and
//! the Prometheus metrics ([`metrics`]), and on Kubernetes the CA's own jobs
//! against the API server ([`kube`]: its key material in Secrets, the leader
//! Lease, the root-certificate ConfigMaps). It does not own key storage ([`crate::pki`]),
//! facts about pods and tokens ([`crate::platform`]) or the audit store ([`crate::audit`]).

pub mod admin;
pub mod authn;
pub mod authorities;
pub mod authz;
pub mod build;
pub mod config;
pub mod error;
pub mod issuer;
pub mod kube;
pub mod metrics;
pub mod server;
pub mod service;
pub mod tls;
pub mod trust_service;

pub use build::{build, BuildError, CaPlatform, CaSetup};
pub use config::CaConfig;
pub use error::CaError;
pub use issuer::{CaDeps, IssueRequest, Issuer};
pub use server::CaServer;
