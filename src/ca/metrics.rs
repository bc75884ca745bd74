//! The CA's Prometheus metrics, under Istio's names where Istio has one, so
//! existing dashboards and alerts keep working.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// Counters and gauges of the CA.
#[derive(Debug, Clone)]
pub struct CaMetrics {
    /// Every `CreateCertificate` request (Istio: `citadel_server_csr_count`).
    pub csr_count: IntCounter,
    /// Requests whose credential failed (`citadel_server_authentication_failure_count`).
    pub authentication_failures: IntCounter,
    /// Refusals and failures after authentication, by kind (`citadel_server_csr_sign_err_count{error}`).
    pub sign_errors: IntCounterVec,
    /// Certificates issued (`citadel_server_success_cert_issuance_count`).
    pub issued: IntCounter,
    /// Unix time at which the earliest root expires (`citadel_server_root_cert_expiry_timestamp`).
    pub root_expiry: Gauge,
    /// Time from request to answer, for issued certificates.
    pub issuance_seconds: Histogram,
    /// Requests turned away with `RESOURCE_EXHAUSTED`.
    pub overloaded: IntCounter,
}

impl CaMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            csr_count: IntCounter::new(
                "citadel_server_csr_count",
                "Total CSRs received by the CA.",
            )?,
            authentication_failures: IntCounter::new(
                "citadel_server_authentication_failure_count",
                "Requests refused because the caller could not be authenticated.",
            )?,
            sign_errors: IntCounterVec::new(
                Opts::new(
                    "citadel_server_csr_sign_err_count",
                    "CSRs that did not yield a certificate, by error.",
                ),
                &["error"],
            )?,
            issued: IntCounter::new(
                "citadel_server_success_cert_issuance_count",
                "Certificates issued and returned.",
            )?,
            root_expiry: Gauge::new(
                "citadel_server_root_cert_expiry_timestamp",
                "Unix time (seconds) at which the earliest root certificate expires.",
            )?,
            issuance_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "meshid_ca_issuance_duration_seconds",
                    "Time from receiving a CSR to answering with a certificate.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ]),
            )?,
            overloaded: IntCounter::new(
                "meshid_ca_overloaded_count",
                "Requests refused with RESOURCE_EXHAUSTED because too many were in flight.",
            )?,
        };
        registry.register(Box::new(m.csr_count.clone()))?;
        registry.register(Box::new(m.authentication_failures.clone()))?;
        registry.register(Box::new(m.sign_errors.clone()))?;
        registry.register(Box::new(m.issued.clone()))?;
        registry.register(Box::new(m.root_expiry.clone()))?;
        registry.register(Box::new(m.issuance_seconds.clone()))?;
        registry.register(Box::new(m.overloaded.clone()))?;
        Ok(m)
    }
}
