//! The CA's settings: plain data, validated once at start-up.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::ca::authz::{TrustedNodeAccounts, WorkloadDnsNames};
use crate::identity::TrustDomain;

/// Everything the CA needs to know that is not a dependency.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// Where the gRPC API listens (TLS).
    pub listen: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` listen (plain HTTP); None = off.
    pub metrics_listen: Option<SocketAddr>,
    /// The trust domain every issued identity belongs to.
    pub trust_domain: TrustDomain,
    /// Node agents allowed to ask for the identities of pods on their node.
    pub trusted_node_accounts: TrustedNodeAccounts,
    /// Service accounts whose certificates may carry DNS names, and which.
    pub workload_dns_names: WorkloadDnsNames,
    /// Token audiences accepted (any of them); Istio's default is `istio-ca`.
    pub audiences: Vec<String>,
    /// TTL granted when the client asks for none (`validity_duration` <= 0).
    pub default_ttl: Duration,
    /// Longest TTL granted; longer requests are clamped to it.
    pub max_ttl: Duration,
    /// DNS names on the CA's own serving certificate.
    pub serving_dns_names: Vec<String>,
    /// IP addresses on the CA's own serving certificate.
    pub serving_ips: Vec<IpAddr>,
    /// Lifetime of the serving certificate; it is renewed at half of it.
    pub serving_cert_ttl: Duration,
    /// Requests handled at once; more get `RESOURCE_EXHAUSTED` instead of queueing.
    pub max_concurrent_requests: usize,
    /// Connections open at once; more wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// How long a client may take to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Verified tokens remembered (keyed by hash) until their expiry.
    pub token_cache_size: usize,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 15012)),
            metrics_listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 15014))),
            trust_domain: TrustDomain::default(),
            trusted_node_accounts: TrustedNodeAccounts::default(),
            workload_dns_names: WorkloadDnsNames::default(),
            audiences: vec!["istio-ca".to_owned()],
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(90 * 24 * 3600),
            serving_dns_names: vec![
                "meshid-ca.meshid-system.svc".to_owned(),
                "localhost".to_owned(),
            ],
            serving_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            serving_cert_ttl: Duration::from_secs(24 * 3600),
            max_concurrent_requests: 256,
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            token_cache_size: 10_000,
        }
    }
}

/// A setting that cannot work, naming the flag.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {message}")]
pub struct ConfigError {
    /// The flag (without dashes).
    pub flag: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl CaConfig {
    /// Checks the settings against each other; the error names the flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |flag, message: &str| {
            Err(ConfigError {
                flag,
                message: message.to_owned(),
            })
        };
        if self.default_ttl.is_zero() {
            return err("default-ttl", "must be longer than 0 s");
        }
        if self.max_ttl < self.default_ttl {
            return err("max-ttl", "must not be shorter than --default-ttl");
        }
        if self.audiences.is_empty() || self.audiences.iter().any(|a| a.is_empty()) {
            return err("audiences", "needs at least one non-empty audience");
        }
        if self.serving_dns_names.is_empty() && self.serving_ips.is_empty() {
            return err(
                "serving-dns-names",
                "the serving certificate needs a DNS name or an IP address",
            );
        }
        if self.serving_cert_ttl < Duration::from_secs(60) {
            return err("serving-cert-ttl", "must be at least 60 s");
        }
        if self.max_concurrent_requests == 0 {
            return err("max-concurrent-requests", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_ttls_name_their_flag() {
        assert!(CaConfig::default().validate().is_ok());
        let cfg = CaConfig {
            max_ttl: Duration::from_secs(60),
            ..CaConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().flag, "max-ttl");
        let cfg = CaConfig {
            default_ttl: Duration::ZERO,
            ..CaConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().flag, "default-ttl");
    }
}
