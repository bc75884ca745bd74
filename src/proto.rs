//! Generated protobuf and gRPC code, and nothing else. Conversions to domain
//! types live beside those types.

#![allow(warnings, clippy::all, clippy::pedantic, unreachable_pub)]

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
