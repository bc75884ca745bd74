//! The CA's Prometheus metrics, under Istio's names where Istio has one, so
//! existing dashboards and alerts keep working.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use crate::audit::AuditStats;

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

/// Registers the audit writer's group-commit counters in `registry`, read from
/// `stats` at each scrape: `meshid_audit_commits_total`,
/// `meshid_audit_records_committed_total` (their ratio is the mean group-commit
/// batch, i.e. how many decisions share one fsync) and
/// `meshid_audit_commit_failures_total`.
pub fn register_audit(registry: &Registry, stats: AuditStats) -> Result<(), prometheus::Error> {
    registry.register(Box::new(AuditCollector::new(stats)?))
}

/// Reads [`AuditStats`] at scrape time (the counters live in the audit writer).
struct AuditCollector {
    stats: AuditStats,
    /// Name and help of each counter; fresh counters carry the values per scrape.
    opts: [Opts; 3],
    descs: Vec<Desc>,
}

impl AuditCollector {
    fn new(stats: AuditStats) -> Result<Self, prometheus::Error> {
        let opts = [
            Opts::new(
                "meshid_audit_commits_total",
                "Audit transactions committed (one fsync each).",
            ),
            Opts::new(
                "meshid_audit_records_committed_total",
                "Audit records (CA decisions) committed.",
            ),
            Opts::new(
                "meshid_audit_commit_failures_total",
                "Audit transactions that failed; none of their requests got a certificate.",
            ),
        ];
        let mut descs = Vec::new();
        for o in &opts {
            descs.extend(
                IntCounter::with_opts(o.clone())?
                    .desc()
                    .into_iter()
                    .cloned(),
            );
        }
        Ok(Self { stats, opts, descs })
    }
}

impl Collector for AuditCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let values = [
            self.stats.batches_committed(),
            self.stats.records_committed(),
            self.stats.batches_failed(),
        ];
        let mut out = Vec::new();
        for (o, value) in self.opts.iter().zip(values) {
            // The options were accepted in `new`, so this cannot fail.
            if let Ok(counter) = IntCounter::with_opts(o.clone()) {
                counter.inc_by(value);
                out.extend(counter.collect());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, AuditRecord, GroupCommitConfig, Outcome, SqliteBackend};

    #[tokio::test]
    async fn audit_group_commit_counters_are_read_at_scrape_time() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SqliteBackend::open(&dir.path().join("audit.db")).unwrap();
        let log = AuditLog::start(Box::new(backend), GroupCommitConfig::default());
        let registry = Registry::new();
        register_audit(&registry, log.stats()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        for _ in 0..3 {
            log.record(AuditRecord::new(now, Outcome::Issued))
                .await
                .unwrap();
        }
        let value = |name: &str| {
            registry
                .gather()
                .iter()
                .find(|f| f.name() == name)
                .map(|f| f.get_metric()[0].get_counter().get_value())
        };
        assert_eq!(value("meshid_audit_records_committed_total"), Some(3.0));
        assert_eq!(value("meshid_audit_commits_total"), Some(3.0));
        assert_eq!(value("meshid_audit_commit_failures_total"), Some(0.0));
        log.shutdown().await;
    }
}
