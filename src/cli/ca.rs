//! `meshid ca`: the certificate authority.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::platform::{PlatformArgs, PlatformKind};
use crate::ca::authz::{TrustedNodeAccounts, WorkloadDnsNames};
use crate::ca::build::{CaPlatform, CaSetup};
use crate::ca::{self, CaConfig, CaServer};
use crate::identity::TrustDomain;
use crate::pki::key::KeyAlgorithm;
use crate::platform::Platform;
use crate::shutdown::Shutdown;
use crate::time::system_clock;

/// Flags of `meshid ca`.
#[derive(Debug, Args)]
pub struct CaArgs {
    /// Where the CA keeps its root key, root bundle (root-cert.pem), token-issuer key and audit database.
    #[arg(long, env = "MESHID_DATA_DIR", default_value = "meshid-data")]
    pub data_dir: PathBuf,
    /// The `local` platform's manifest directory (Namespaces, ServiceAccounts, Pods). Default: DATA_DIR/manifests, created if missing.
    #[arg(long, env = "MESHID_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// gRPC (TLS) listen address.
    #[arg(long, env = "MESHID_LISTEN", default_value = "127.0.0.1:15012")]
    pub listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz (plain HTTP).
    #[arg(long, env = "MESHID_METRICS_LISTEN", default_value = "127.0.0.1:15014")]
    pub metrics_listen: SocketAddr,
    /// Trust domain of every issued identity.
    #[arg(long, env = "MESHID_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: TrustDomain,
    /// Node-agent service accounts allowed to impersonate pods on their node: ns/sa,ns/sa.
    #[arg(long, env = "MESHID_TRUSTED_NODE_ACCOUNTS", default_value = "")]
    pub trusted_node_accounts: TrustedNodeAccounts,
    /// Service accounts whose certificates may also carry DNS names (a webhook's Service name, checked by the API server): `ns/sa=name,name;ns/sa=name`. No wildcards.
    #[arg(long, env = "MESHID_WORKLOAD_DNS_NAMES", default_value = "")]
    pub workload_dns_names: WorkloadDnsNames,
    /// Plug-in CA directory (Istio cacerts names: ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem; or tls.crt, tls.key, ca.crt). Default: a self-signed root in DATA_DIR.
    #[arg(long, env = "MESHID_PLUGIN_CA_DIR")]
    pub plugin_ca_dir: Option<PathBuf>,
    /// Key algorithm of a newly created self-signed root: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096.
    #[arg(long, env = "MESHID_ROOT_KEY_ALGORITHM", default_value = "ecdsa-p256")]
    pub root_key_algorithm: KeyAlgorithm,
    /// TTL granted when a client asks for none.
    #[arg(long, env = "MESHID_DEFAULT_TTL", default_value = "24h", value_parser = super::parse_duration)]
    pub default_ttl: Duration,
    /// Longest TTL granted; longer requests are clamped.
    #[arg(long, env = "MESHID_MAX_TTL", default_value = "90d", value_parser = super::parse_duration)]
    pub max_ttl: Duration,
    /// Accepted token audiences (comma-separated).
    #[arg(
        long,
        env = "MESHID_AUDIENCES",
        default_value = "istio-ca",
        value_delimiter = ','
    )]
    pub audiences: Vec<String>,
    /// DNS names on the CA's serving certificate (comma-separated).
    #[arg(
        long,
        env = "MESHID_SERVING_DNS_NAMES",
        default_value = "meshid-ca.meshid-system.svc,localhost",
        value_delimiter = ','
    )]
    pub serving_dns_names: Vec<String>,
    /// IP addresses on the CA's serving certificate (comma-separated).
    #[arg(
        long,
        env = "MESHID_SERVING_IPS",
        default_value = "127.0.0.1",
        value_delimiter = ','
    )]
    pub serving_ips: Vec<IpAddr>,
    /// Lifetime of the CA's serving certificate (renewed at half).
    #[arg(long, env = "MESHID_SERVING_CERT_TTL", default_value = "24h", value_parser = super::parse_duration)]
    pub serving_cert_ttl: Duration,
    /// Requests handled at once; beyond it clients get RESOURCE_EXHAUSTED.
    #[arg(long, env = "MESHID_MAX_CONCURRENT_REQUESTS", default_value_t = 256)]
    pub max_concurrent_requests: usize,
    /// How long a client may take for the TLS handshake and its first bytes.
    #[arg(long, env = "MESHID_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = super::parse_duration)]
    pub handshake_timeout: Duration,
    /// Longest the audit writer holds a commit back for requests already on their way, to fsync them together (0s: never wait; a lone request never waits).
    #[arg(long, env = "MESHID_AUDIT_COMMIT_DELAY", default_value = "1ms", value_parser = super::parse_duration)]
    pub audit_commit_delay: Duration,
    /// How often the audit log's checkpoint (its signed tree head) is signed while records arrive.
    #[arg(long, env = "MESHID_AUDIT_CHECKPOINT_EVERY", default_value = "10s", value_parser = super::parse_duration)]
    pub audit_checkpoint_every: Duration,
    /// Remove the bodies of audit records older than this (e.g. 400d) once a checkpoint covers them; their leaf hashes stay, so the log still verifies. Default: keep everything.
    #[arg(long, env = "MESHID_AUDIT_RETENTION", value_parser = super::parse_duration)]
    pub audit_retention: Option<Duration>,
    /// The audit store and how to reach it.
    #[command(flatten)]
    pub audit_store: super::audit::AuditStoreArgs,
    /// The Ed25519 key (PKCS#8) that signs the audit log's checkpoints; every replica sharing a store needs the same one. Created if missing. Default: DATA_DIR/audit-checkpoint-key.pk8.
    #[arg(long, env = "MESHID_AUDIT_CHECKPOINT_KEY")]
    pub audit_checkpoint_key: Option<PathBuf>,
    /// Where facts come from and how tokens are verified.
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// With `--platform kube`: the CA's own namespace, which holds Secrets `cacerts` / `istio-ca-secret` and the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "meshid-system")]
    pub namespace: String,
    /// With `--platform kube`: this replica's name, its identity in the leader Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Lifetime of each root the CA makes when it rotates (self-signed CA only).
    #[arg(long, env = "MESHID_AUTHORITY_TTL", default_value = "3650d", value_parser = super::parse_duration)]
    pub authority_ttl: Duration,
    /// Prepare the next authority when the active one has this long left. Default: min(its life / 2, 30d).
    #[arg(long, env = "MESHID_AUTHORITY_PREPARE_BEFORE", value_parser = super::parse_duration)]
    pub authority_prepare_before: Option<Duration>,
    /// Activate the prepared authority when the active one has this long left. Default: min(its life / 6, 7d).
    #[arg(long, env = "MESHID_AUTHORITY_ACTIVATE_BEFORE", value_parser = super::parse_duration)]
    pub authority_activate_before: Option<Duration>,
    /// Lifetime of each CRL; they are signed again at half of it and at every revocation.
    #[arg(long, env = "MESHID_CRL_TTL", default_value = "24h", value_parser = super::parse_duration)]
    pub crl_ttl: Duration,
    /// Commands to the running CA (over its admin socket).
    #[command(subcommand)]
    pub command: Option<super::ca_admin::CaCommand>,
}

/// The rotation settings from flags, each checked.
pub fn rotation_config(
    authority_ttl: Duration,
    prepare_before: Option<Duration>,
    activate_before: Option<Duration>,
    crl_ttl: Duration,
) -> anyhow::Result<crate::ca::authorities::RotationConfig> {
    let to_time = |flag: &str, d: Duration| {
        time::Duration::try_from(d).with_context(|| format!("{flag} {d:?} is too long"))
    };
    if authority_ttl < Duration::from_secs(10) {
        anyhow::bail!("--authority-ttl {authority_ttl:?} is shorter than 10s");
    }
    if let (Some(p), Some(a)) = (prepare_before, activate_before) {
        if a >= p {
            anyhow::bail!(
                "--authority-activate-before {a:?} must be shorter than --authority-prepare-before {p:?}: \
                 an authority is prepared before it is activated"
            );
        }
    }
    if crl_ttl < Duration::from_secs(2) {
        anyhow::bail!("--crl-ttl {crl_ttl:?} is shorter than 2s");
    }
    Ok(crate::ca::authorities::RotationConfig {
        authority_ttl: to_time("--authority-ttl", authority_ttl)?,
        policy: crate::ca::authorities::Policy {
            prepare_before: prepare_before
                .map(|d| to_time("--authority-prepare-before", d))
                .transpose()?,
            activate_before: activate_before
                .map(|d| to_time("--authority-activate-before", d))
                .transpose()?,
            can_prepare: true,
        },
        crl_ttl: to_time("--crl-ttl", crl_ttl)?,
    })
}

/// Runs the CA until SIGINT or SIGTERM, or one admin command.
pub async fn run(mut args: CaArgs) -> anyhow::Result<()> {
    if let Some(command) = args.command.take() {
        return super::ca_admin::run(command).await;
    }
    let shutdown = Shutdown::new();
    shutdown
        .trigger_on_signals()
        .context("installing signal handlers")?;
    let server = start(args, shutdown.clone()).await?;
    println!(
        "meshid CA listening on {} (TLS), metrics on {:?}",
        server.addr, server.metrics_addr
    );
    shutdown.triggered().await;
    if !shutdown.drain(Duration::from_secs(5)).await {
        tracing::warn!("some tasks were still running 5 s after shutdown began");
    }
    Ok(())
}

/// Builds every dependency from the flags and starts the CA.
pub async fn start(args: CaArgs, shutdown: Shutdown) -> anyhow::Result<CaServer> {
    Ok(ca::build(args.into_setup(None)?, shutdown).await?)
}

impl CaArgs {
    /// The flags as plain settings. `shared`: a local platform already open
    /// and running (`meshid up` shares one among the CA, the agent and
    /// itself).
    pub fn into_setup(self, shared: Option<Arc<dyn Platform>>) -> anyhow::Result<CaSetup> {
        let audit_store = self.audit_store.location(&self.data_dir)?;
        let platform = match self.platform.platform {
            PlatformKind::Local => CaPlatform::Local {
                manifests: self.manifests,
                shared,
            },
            PlatformKind::Kube => CaPlatform::Kube {
                token_verification: self.platform.token_verification,
                namespace: self.namespace,
                pod_name: self.pod_name,
            },
        };
        Ok(CaSetup {
            config: CaConfig {
                listen: self.listen,
                metrics_listen: Some(self.metrics_listen),
                trust_domain: self.trust_domain,
                trusted_node_accounts: self.trusted_node_accounts,
                workload_dns_names: self.workload_dns_names,
                audiences: self.audiences,
                default_ttl: self.default_ttl,
                max_ttl: self.max_ttl,
                serving_dns_names: self.serving_dns_names,
                serving_ips: self.serving_ips,
                serving_cert_ttl: self.serving_cert_ttl,
                max_concurrent_requests: self.max_concurrent_requests,
                handshake_timeout: self.handshake_timeout,
                ..CaConfig::default()
            },
            data_dir: self.data_dir,
            plugin_ca_dir: self.plugin_ca_dir,
            root_key_algorithm: self.root_key_algorithm,
            audit_commit_delay: self.audit_commit_delay,
            audit_checkpoint_every: self.audit_checkpoint_every,
            audit_retention: self.audit_retention,
            audit_store: Some(audit_store),
            audit_checkpoint_key: self.audit_checkpoint_key,
            platform,
            rotation: rotation_config(
                self.authority_ttl,
                self.authority_prepare_before,
                self.authority_activate_before,
                self.crl_ttl,
            )?,
            clock: system_clock(),
        })
    }
}
