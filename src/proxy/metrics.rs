//! The proxy's Prometheus metrics.
//!
//! Cardinality: `source_principal` is a SPIFFE ID (one per service account
//! that talks to this workload, bounded by the mesh's accounts) or `""` when
//! no identity was verified; `mode`, `outcome` and `reason` come from small
//! fixed sets. Peer addresses never become labels: they are logged.

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Counters and gauges of one proxy.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    /// Connections by direction, mode, outcome and verified source principal.
    pub connections: IntCounterVec,
    /// AUDIT mode: connections that STRICT would have refused, by what they
    /// were (`plaintext`, `tls_without_client_cert`).
    pub would_refuse: IntCounterVec,
    /// Live connections closed because a mode change no longer allowed them.
    pub closed_on_mode_change: IntCounter,
    /// Connections open now.
    pub open_connections: IntGauge,
    /// Unix time at which our current certificate expires.
    pub cert_expiry: Gauge,
}

impl ProxyMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            connections: IntCounterVec::new(
                Opts::new(
                    "meshid_proxy_connections_total",
                    "Connections handled, by direction (inbound, outbound), mTLS mode, outcome and verified source principal (empty when none was verified; on outbound, our own identity).",
                ),
                &["direction", "mode", "outcome", "source_principal"],
            )?,
            would_refuse: IntCounterVec::new(
                Opts::new(
                    "meshid_proxy_would_refuse_total",
                    "AUDIT mode: connections that STRICT would have refused, by what they were (plaintext, tls_without_client_cert).",
                ),
                &["kind"],
            )?,
            closed_on_mode_change: IntCounter::new(
                "meshid_proxy_closed_on_mode_change_total",
                "Live connections closed after a mode change no longer allowed them.",
            )?,
            open_connections: IntGauge::new(
                "meshid_proxy_open_connections",
                "Connections open now (inbound and outbound).",
            )?,
            cert_expiry: Gauge::new(
                "meshid_proxy_cert_expiry_timestamp_seconds",
                "Unix time at which the proxy's current certificate expires.",
            )?,
        };
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.would_refuse.clone()))?;
        registry.register(Box::new(m.closed_on_mode_change.clone()))?;
        registry.register(Box::new(m.open_connections.clone()))?;
        registry.register(Box::new(m.cert_expiry.clone()))?;
        Ok(m)
    }

    /// Counts one connection.
    pub fn connection(&self, direction: &str, mode: &str, outcome: &str, principal: &str) {
        self.connections
            .with_label_values(&[direction, mode, outcome, principal])
            .inc();
    }
}
