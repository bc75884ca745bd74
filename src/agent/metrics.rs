//! The node agent's Prometheus metrics.

use prometheus::{GaugeVec, Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};

/// Counters and gauges of the agent.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    /// Unix time at which each cached identity's certificate expires.
    pub cert_expiry: GaugeVec,
    /// Certificates obtained (first ones and rotations).
    pub rotations: IntCounter,
    /// CSRs the CA refused or that failed in transit.
    pub ca_failures: IntCounter,
    /// Identities in the cache.
    pub cache_size: IntGauge,
    /// From the first interest in an identity to its first certificate.
    pub time_to_first_cert: Histogram,
    /// Callers on the socket that could not be attested.
    pub attestation_failures: IntCounter,
    /// `ListWorkloadPolicies` calls refused (not the node's operator).
    pub listings_refused: IntCounter,
    /// Connections to the socket closed at accept: their uid held its quota.
    pub connections_refused: IntCounter,
    /// Trust updates from the CA's stream that were applied.
    pub trust_updates: IntCounter,
    /// Trust updates refused whole (no usable root), and authorities dropped
    /// from an update (their certificate does not chain to the roots).
    pub trust_rejected: IntCounter,
    /// CRLs from the trust stream that failed to verify (the previous one of
    /// that authority was kept).
    pub crl_rejected: IntCounter,
    /// Certificates re-issued because they chain to a tainted authority.
    pub taint_reissues: IntCounter,
    /// Cached certificates that still chain to a tainted authority.
    pub tainted_certificates: IntGauge,
    /// Certificates replaced at once because a CRL lists them.
    pub revoked_reissues: IntCounter,
}

impl AgentMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            cert_expiry: GaugeVec::new(
                Opts::new(
                    "meshid_agent_cert_expiry_timestamp_seconds",
                    "Unix time at which the cached certificate of each identity expires.",
                ),
                &["identity"],
            )?,
            rotations: IntCounter::new(
                "meshid_agent_rotations_total",
                "Certificates obtained from the CA.",
            )?,
            ca_failures: IntCounter::new(
                "meshid_agent_ca_failures_total",
                "CSRs that failed: CA unreachable, refused, or an answer that did not check out.",
            )?,
            cache_size: IntGauge::new(
                "meshid_agent_cache_identities",
                "Identities in the certificate cache.",
            )?,
            time_to_first_cert: Histogram::with_opts(
                HistogramOpts::new(
                    "meshid_agent_time_to_first_cert_seconds",
                    "From the first request for an identity to its first certificate.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            attestation_failures: IntCounter::new(
                "meshid_agent_attestation_failures_total",
                "Callers on the agent socket that could not be attested.",
            )?,
            listings_refused: IntCounter::new(
                "meshid_agent_policy_listings_refused_total",
                "ListWorkloadPolicies calls refused: the caller is not the node's operator.",
            )?,
            connections_refused: IntCounter::new(
                "meshid_agent_connections_refused_total",
                "Connections to the agent socket closed at accept: their peer uid already held --max-connections-per-uid.",
            )?,
            trust_updates: IntCounter::new(
                "meshid_agent_trust_updates_total",
                "Trust updates received from the CA's WatchTrust stream and applied.",
            )?,
            trust_rejected: IntCounter::new(
                "meshid_agent_trust_rejected_total",
                "Trust updates refused whole, and authorities dropped from an update because they do not chain to its roots.",
            )?,
            crl_rejected: IntCounter::new(
                "meshid_agent_crl_rejected_total",
                "CRLs from the CA that failed to verify against their authority; the previous CRL was kept.",
            )?,
            taint_reissues: IntCounter::new(
                "meshid_agent_taint_reissues_total",
                "Certificates re-issued because they chain to a tainted authority.",
            )?,
            tainted_certificates: IntGauge::new(
                "meshid_agent_tainted_certificates",
                "Cached certificates that still chain to a tainted authority.",
            )?,
            revoked_reissues: IntCounter::new(
                "meshid_agent_revoked_reissues_total",
                "Cached certificates replaced at once because the CA's CRL lists them.",
            )?,
        };
        registry.register(Box::new(m.cert_expiry.clone()))?;
        registry.register(Box::new(m.rotations.clone()))?;
        registry.register(Box::new(m.ca_failures.clone()))?;
        registry.register(Box::new(m.cache_size.clone()))?;
        registry.register(Box::new(m.time_to_first_cert.clone()))?;
        registry.register(Box::new(m.attestation_failures.clone()))?;
        registry.register(Box::new(m.listings_refused.clone()))?;
        registry.register(Box::new(m.connections_refused.clone()))?;
        registry.register(Box::new(m.trust_updates.clone()))?;
        registry.register(Box::new(m.trust_rejected.clone()))?;
        registry.register(Box::new(m.crl_rejected.clone()))?;
        registry.register(Box::new(m.taint_reissues.clone()))?;
        registry.register(Box::new(m.tainted_certificates.clone()))?;
        registry.register(Box::new(m.revoked_reissues.clone()))?;
        Ok(m)
    }
}
