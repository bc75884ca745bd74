//! The proxy's Prometheus metrics.
//!
//! Cardinality: `source_principal` is a SPIFFE ID (one per service account
//! that talks to this workload, bounded by the mesh's accounts) or `""` when
//! no identity was verified; `mode`, `outcome` and `reason` come from small
//! fixed sets. Peer addresses never become labels: they are logged.

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Name of the connections counter ([`ProxyMetrics::connections`]).
pub const CONNECTIONS_TOTAL: &str = "meshid_proxy_connections_total";

/// One series of the connections counter, as read back from a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionCount {
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The mTLS mode the connection was judged under.
    pub mode: String,
    /// `allowed`, `refused`, `handshake_failed`, …
    pub outcome: String,
    /// The verified source principal (`""` when none was verified).
    pub source_principal: String,
    /// How many connections.
    pub count: u64,
}

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
    /// HBONE mTLS connections (each carrying many tunnels) opened, by
    /// direction (`outbound`: to a peer's port 15008; `inbound`: on ours).
    pub hbone_connections: IntCounterVec,
    /// HBONE mTLS connections open now (both directions).
    pub hbone_open: IntGauge,
}

impl ProxyMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            connections: IntCounterVec::new(
                Opts::new(
                    CONNECTIONS_TOTAL,
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
            hbone_connections: IntCounterVec::new(
                Opts::new(
                    "meshid_proxy_hbone_connections_total",
                    "HBONE mTLS connections opened, each carrying many tunnelled connections, by direction (outbound: to a peer's port 15008; inbound: on ours).",
                ),
                &["direction"],
            )?,
            hbone_open: IntGauge::new(
                "meshid_proxy_hbone_open_connections",
                "HBONE mTLS connections open now (both directions).",
            )?,
        };
        registry.register(Box::new(m.hbone_connections.clone()))?;
        registry.register(Box::new(m.hbone_open.clone()))?;
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

    /// Reads the connections counter back from `registry` (where
    /// [`ProxyMetrics::register`] put it): one entry per label set.
    pub fn read_connections(registry: &Registry) -> Vec<ConnectionCount> {
        let mut out = Vec::new();
        for family in registry.gather() {
            if family.name() != CONNECTIONS_TOTAL {
                continue;
            }
            for m in family.get_metric() {
                let label = |n: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == n)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let count = m.get_counter().get_value() as u64;
                out.push(ConnectionCount {
                    direction: label("direction"),
                    mode: label("mode"),
                    outcome: label("outcome"),
                    source_principal: label("source_principal"),
                    count,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_connections_read_back_by_label() {
        let registry = Registry::new();
        let m = ProxyMetrics::register(&registry).unwrap();
        m.connection(
            "inbound",
            "STRICT",
            "allowed",
            "spiffe://cluster.local/ns/a/sa/b",
        );
        m.connection(
            "inbound",
            "STRICT",
            "allowed",
            "spiffe://cluster.local/ns/a/sa/b",
        );
        m.connection("outbound", "STRICT", "refused", "");
        let mut read = ProxyMetrics::read_connections(&registry);
        read.sort_by(|a, b| a.direction.cmp(&b.direction));
        assert_eq!(read.len(), 2, "{read:?}");
        assert_eq!(read[0].direction, "inbound");
        assert_eq!(read[0].outcome, "allowed");
        assert_eq!(read[0].source_principal, "spiffe://cluster.local/ns/a/sa/b");
        assert_eq!(read[0].count, 2);
        assert_eq!((read[1].outcome.as_str(), read[1].count), ("refused", 1));
    }
}
