//! Generated protobuf and gRPC code, and nothing else but the redacted `Debug`
//! of the generated messages that carry private keys. Conversions to domain
//! types live beside those types.
//!
//! The module tree mirrors the proto packages, because prost refers to other
//! packages by relative paths (`super::super::config::core::v3::DataSource`).

#![allow(warnings, clippy::all, clippy::pedantic, unreachable_pub)]

use std::fmt;

/// `istio.v1.auth`: the Istio CA API (`IstioCertificateService`).
pub mod istio {
    /// Package `istio.v1.auth`.
    pub mod v1 {
        /// Package `istio.v1.auth`.
        pub mod auth {
            tonic::include_proto!("istio.v1.auth");
        }
    }
}

/// Envoy's public API: the subset SDS needs (envoyproxy/data-plane-api).
pub mod envoy {
    /// `envoy.config.*`.
    pub mod config {
        /// `envoy.config.core.*`.
        pub mod core {
            /// Package `envoy.config.core.v3`: `Node`, `DataSource`.
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    /// `envoy.extensions.*`.
    pub mod extensions {
        /// `envoy.extensions.transport_sockets.*`.
        pub mod transport_sockets {
            /// `envoy.extensions.transport_sockets.tls.*`.
            pub mod tls {
                /// Package `envoy.extensions.transport_sockets.tls.v3`: `Secret` and
                /// the TLS material in it.
                pub mod v3 {
                    tonic::include_proto!("envoy.extensions.transport_sockets.tls.v3");
                }
            }
        }
    }
    /// `envoy.service.*`.
    pub mod service {
        /// `envoy.service.discovery.*`.
        pub mod discovery {
            /// Package `envoy.service.discovery.v3`: xDS request/response envelopes.
            pub mod v3 {
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }
        /// `envoy.service.secret.*`.
        pub mod secret {
            /// Package `envoy.service.secret.v3`: `SecretDiscoveryService`.
            pub mod v3 {
                tonic::include_proto!("envoy.service.secret.v3");
            }
        }
    }
}

/// Google API types referenced by Envoy's protos.
pub mod google {
    /// Package `google.rpc`: `Status` (the NACK detail of an xDS request).
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// The SPIFFE Workload API (`SpiffeWorkloadAPI`). Its proto has no package,
/// which prost writes to `_.rs`.
pub mod spiffe_workload {
    tonic::include_proto!("_");
}

/// meshid's own APIs.
pub mod meshid {
    /// `meshid.policy.*`.
    pub mod policy {
        /// Package `meshid.policy.v1`: `PolicyDiscovery`, the agent → proxy
        /// stream of effective mTLS modes.
        pub mod v1 {
            tonic::include_proto!("meshid.policy.v1");
        }
    }
    /// `meshid.destination.*`.
    pub mod destination {
        /// Package `meshid.destination.v1`: `DestinationDiscovery`, which
        /// workload owns an IP address, for captured outbound connections.
        pub mod v1 {
            tonic::include_proto!("meshid.destination.v1");
        }
    }
    /// `meshid.ca.*`.
    pub mod ca {
        /// Package `meshid.ca.v1`: `TrustService`, the CA → agent stream of
        /// authorities, trust bundle and CRLs.
        pub mod v1 {
            tonic::include_proto!("meshid.ca.v1");
        }
    }
}

impl fmt::Debug for spiffe_workload::X509svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("x509_svid", &format_args!("{} bytes", self.x509_svid.len()))
            .field("x509_svid_key", &"[redacted]")
            .field("bundle", &format_args!("{} bytes", self.bundle.len()))
            .field("hint", &self.hint)
            .finish()
    }
}

impl fmt::Debug for envoy::extensions::transport_sockets::tls::v3::TlsCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("certificate_chain", &self.certificate_chain)
            .field("private_key", &"[redacted]")
            .finish()
    }
}
