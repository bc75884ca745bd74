//! `meshid ca`: the certificate authority.

mod root_distribution;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::platform::{PlatformArgs, PlatformKind};
use crate::audit::{AuditLog, GroupCommitConfig, SqliteBackend};
use crate::ca::authz::TrustedNodeAccounts;
use crate::ca::kube::secret as ca_secret;
use crate::ca::metrics::CaMetrics;
use crate::ca::{CaConfig, CaDeps, CaServer};
use crate::identity::TrustDomain;
use crate::pki::authority::{Authority, AuthorityConfig};
use crate::pki::key::KeyAlgorithm;
use crate::platform::kube::{KubeConfig, KubePlatform};
use crate::platform::local::{load_verifier, LocalConfig, LocalPlatform};
use crate::platform::Platform;
use crate::shutdown::Shutdown;
use crate::time::system_clock;
use crate::time::SharedClock;

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
    /// Where facts come from and how tokens are verified.
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// With `--platform kube`: the CA's own namespace, which holds Secrets `cacerts` / `istio-ca-secret` and the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "meshid-system")]
    pub namespace: String,
    /// With `--platform kube`: this replica's name, its identity in the leader Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
}

/// Runs the CA until SIGINT or SIGTERM.
pub async fn run(args: CaArgs) -> anyhow::Result<()> {
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
    start_on(args, shutdown, None).await
}

/// As [`start`], on a local platform that is already open and running when
/// `local` is given (`meshid up` shares one among the CA, the agent and
/// itself, so the manifests are watched once and their warnings logged once).
pub async fn start_on(
    args: CaArgs,
    shutdown: Shutdown,
    local: Option<Arc<dyn Platform>>,
) -> anyhow::Result<CaServer> {
    let clock = system_clock();
    ensure_dir(&args.data_dir)?;
    let authority_cfg = AuthorityConfig {
        trust_domain: args.trust_domain.clone(),
        key_algorithm: args.root_key_algorithm,
        clock_skew: time::Duration::seconds(60),
    };
    let (authority, platform): (Authority, Arc<dyn Platform>) = match args.platform.platform {
        PlatformKind::Local => local_parts(&args, &authority_cfg, &clock, &shutdown, local)?,
        PlatformKind::Kube => kube_parts(&args, &authority_cfg, &clock, &shutdown).await?,
    };
    let bundle_path = args.data_dir.join("root-cert.pem");
    crate::secret_file::write_public(&bundle_path, authority.root_bundle_pem().as_bytes())
        .with_context(|| format!("writing the root bundle to {}", bundle_path.display()))?;

    let audit_path = args.data_dir.join("audit.db");
    let backend = SqliteBackend::open(&audit_path)
        .with_context(|| format!("opening the audit store {}", audit_path.display()))?;
    let audit = AuditLog::start(
        Box::new(backend),
        GroupCommitConfig {
            commit_delay: args.audit_commit_delay,
            ..GroupCommitConfig::default()
        },
    );

    let registry = prometheus::Registry::new();
    let metrics = CaMetrics::register(&registry).context("registering metrics")?;
    let config = CaConfig {
        listen: args.listen,
        metrics_listen: Some(args.metrics_listen),
        trust_domain: args.trust_domain,
        trusted_node_accounts: args.trusted_node_accounts,
        audiences: args.audiences,
        default_ttl: args.default_ttl,
        max_ttl: args.max_ttl,
        serving_dns_names: args.serving_dns_names,
        serving_ips: args.serving_ips,
        serving_cert_ttl: args.serving_cert_ttl,
        max_concurrent_requests: args.max_concurrent_requests,
        handshake_timeout: args.handshake_timeout,
        ..CaConfig::default()
    };
    tracing::info!(
        data_dir = %args.data_dir.display(),
        platform = ?args.platform.platform,
        plugin_ca = ?args.plugin_ca_dir,
        trust_domain = %config.trust_domain,
        trusted_node_accounts = %config.trusted_node_accounts,
        audiences = ?config.audiences,
        default_ttl = ?config.default_ttl,
        max_ttl = ?config.max_ttl,
        "starting CA"
    );
    let deps = CaDeps {
        platform,
        audit,
        authority: Arc::new(authority),
        clock,
        metrics,
    };
    Ok(CaServer::start(config, deps, registry, shutdown).await?)
}

/// The `local` platform: the CA in DATA_DIR (or the plug-in directory), facts
/// from the manifest directory, tokens from the local issuer.
fn local_parts(
    args: &CaArgs,
    authority_cfg: &AuthorityConfig,
    clock: &SharedClock,
    shutdown: &Shutdown,
    shared: Option<Arc<dyn Platform>>,
) -> anyhow::Result<(Authority, Arc<dyn Platform>)> {
    let authority = match &args.plugin_ca_dir {
        Some(dir) => Authority::load_plugin(dir, authority_cfg, clock.as_ref())
            .with_context(|| format!("loading the plug-in CA from {}", dir.display()))?,
        None => {
            Authority::load_or_create_self_signed(&args.data_dir, authority_cfg, clock.as_ref())
                .with_context(|| format!("loading the CA from {}", args.data_dir.display()))?
        }
    };
    if let Some(platform) = shared {
        return Ok((authority, platform));
    }
    let manifests = match &args.manifests {
        Some(dir) => dir.clone(),
        None => {
            let dir = args.data_dir.join("manifests");
            ensure_dir(&dir)?;
            dir
        }
    };
    // Rule: the CA reads only the issuer's public JWKS; it never creates or
    // reads the issuer's private key (`meshid token issue` and `meshid up` do).
    let verifier = load_verifier(&args.data_dir).with_context(|| {
        format!(
            "reading the token issuer's public keys ({}) from {}: create the local issuer first \
             with `meshid token issue --data-dir {}` (or run `meshid up`)",
            crate::platform::local::JWKS_FILE,
            args.data_dir.display(),
            args.data_dir.display()
        )
    })?;
    let platform = LocalPlatform::open(LocalConfig {
        manifest_dir: manifests.clone(),
        verifier,
        clock: clock.clone(),
        poll_interval: crate::platform::local::DEFAULT_POLL_INTERVAL,
    })
    .with_context(|| format!("reading manifests from {}", manifests.display()))?;
    shutdown.spawn(platform.clone().run(shutdown.token().clone()));
    tracing::info!(manifests = %manifests.display(), "local platform");
    Ok((authority, platform))
}

/// The `kube` platform: the CA from Secret `cacerts` or the shared
/// self-signed root in `istio-ca-secret` (retried while the API server is
/// away), informers over every pod, and the root-certificate ConfigMap in
/// every namespace, written by the replica holding the Lease.
async fn kube_parts(
    args: &CaArgs,
    authority_cfg: &AuthorityConfig,
    clock: &SharedClock,
    shutdown: &Shutdown,
) -> anyhow::Result<(Authority, Arc<dyn Platform>)> {
    if args.plugin_ca_dir.is_some() {
        anyhow::bail!(
            "--plugin-ca-dir is for --platform local; on Kubernetes put the plug-in CA in Secret {}/{}",
            args.namespace,
            ca_secret::PLUGIN_SECRET
        );
    }
    let (client, api_server) = super::platform::kube_client().await?;
    let loaded = ca_secret::load_ca(
        &client,
        &args.namespace,
        authority_cfg,
        clock.as_ref(),
        &ca_secret::RetryPolicy::default(),
        shutdown.token(),
    )
    .await
    .with_context(|| {
        format!(
            "loading the CA from Secrets in namespace {}",
            args.namespace
        )
    })?;
    tracing::info!(source = ?loaded.source, namespace = %args.namespace, "CA loaded from the cluster");

    let mode = args.platform.token_verification;
    let verifier =
        super::platform::token_verifier(mode, client.clone(), api_server, clock.clone(), shutdown);
    let config = KubeConfig {
        node_name: None,
        check_bound_pod: mode.needs_bound_pod_check(),
        max_staleness: None,
    };
    let platform = KubePlatform::new(client.clone(), config, verifier)?;
    shutdown.spawn(platform.clone().run(shutdown.token().clone()));
    root_distribution::spawn(
        client,
        &args.namespace,
        args.pod_name.clone(),
        loaded.authority.root_bundle_pem(),
        clock.clone(),
        shutdown,
    );
    Ok((loaded.authority, platform))
}

fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    crate::secret_file::ensure_private_dir(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    // Fail now, with the path, rather than at the first key or audit write.
    let probe = dir.join(".meshid-write-probe");
    std::fs::write(&probe, b"")
        .with_context(|| format!("directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}
