//! `meshid agent`: the node agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::socket::limits::SocketLimits;

use anyhow::Context;
use clap::Args;

use super::platform::{PlatformArgs, PlatformKind};
use crate::agent::ca_client::{CaClient, CaClientConfig};
use crate::agent::cache::CacheConfig;
use crate::agent::server::{self, AgentConfig, AgentDeps};
use crate::identity::{SpiffeId, TrustDomain};
use crate::platform::jwt::{JwtVerifier, JwtVerifierConfig};
use crate::platform::kube::{KubeConfig, KubePlatform};
use crate::platform::local::{load_verifier, LocalConfig, LocalPlatform};
use crate::platform::Platform;
use crate::policy::DEFAULT_ROOT_NAMESPACE;
use crate::shutdown::Shutdown;
use crate::time::system_clock;
use crate::time::SharedClock;

/// Flags of `meshid agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The node this agent serves: only pods with this spec.nodeName are attested.
    #[arg(long, env = "MESHID_NODE")]
    pub node: String,
    /// The CA's address.
    #[arg(
        long,
        env = "MESHID_CA_ADDRESS",
        default_value = "https://127.0.0.1:15012"
    )]
    pub ca_address: String,
    /// PEM roots the CA's serving certificate must chain to (the CA's DATA_DIR/root-cert.pem).
    #[arg(
        long,
        env = "MESHID_CA_ROOT",
        default_value = "meshid-data/root-cert.pem"
    )]
    pub ca_root: PathBuf,
    /// The agent's own service-account token (re-read on every CSR, like a projected token).
    #[arg(long, env = "MESHID_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// The `local` platform's manifest directory.
    #[arg(
        long,
        env = "MESHID_MANIFESTS",
        default_value = "meshid-data/manifests"
    )]
    pub manifests: PathBuf,
    /// Directory holding token-issuer-jwks.json, to verify workloads' tokens sent over SDS. Without it only peer-credential attestation works.
    #[arg(long, env = "MESHID_TOKEN_JWKS_DIR")]
    pub token_jwks_dir: Option<PathBuf>,
    /// The Unix socket for SDS and the SPIFFE Workload API (use as SPIFFE_ENDPOINT_SOCKET=unix://PATH).
    #[arg(long, env = "MESHID_SOCKET", default_value = "meshid-data/agent.sock")]
    pub socket: PathBuf,
    /// Trust domain.
    #[arg(long, env = "MESHID_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: TrustDomain,
    /// Lifetime the agent asks the CA for.
    #[arg(long, env = "MESHID_WORKLOAD_TTL", default_value = "24h", value_parser = super::parse_duration)]
    pub workload_ttl: Duration,
    /// Also write cert-chain.pem, key.pem and root-cert.pem for an identity into a directory: SPIFFE_ID=DIR (repeatable).
    #[arg(long = "write-certs", env = "MESHID_WRITE_CERTS", value_parser = parse_write_certs, value_delimiter = ';')]
    pub write_certs: Vec<(SpiffeId, PathBuf)>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "MESHID_METRICS_LISTEN", default_value = "127.0.0.1:15020")]
    pub metrics_listen: SocketAddr,
    /// Audiences accepted on workload tokens sent over SDS.
    #[arg(
        long,
        env = "MESHID_AUDIENCES",
        default_value = "istio-ca",
        value_delimiter = ','
    )]
    pub audiences: Vec<String>,
    /// CSRs in flight at once.
    #[arg(long, env = "MESHID_MAX_CONCURRENT_CSRS", default_value_t = 8)]
    pub max_concurrent_csrs: usize,
    /// Root namespace: its PeerAuthentication without selector is mesh-wide (Istio uses istio-system).
    #[arg(long, env = "MESHID_ROOT_NAMESPACE", default_value = DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
    /// What one local user can hold on the socket (it is 0666).
    #[command(flatten)]
    pub limits: SocketLimitArgs,
    /// Where facts come from and how tokens are verified.
    #[command(flatten)]
    pub platform: PlatformArgs,
}

/// The agent socket's limits ([`SocketLimits`]).
#[derive(Debug, Clone, clap::Args)]
pub struct SocketLimitArgs {
    /// Connections open at once, all peers together; past it, clients wait in the listen backlog.
    #[arg(long, env = "MESHID_AGENT_MAX_CONNECTIONS", default_value_t = SocketLimits::default().max_connections)]
    pub max_connections: usize,
    /// Connections one peer uid may hold open at once; more are closed at accept.
    #[arg(long, env = "MESHID_AGENT_MAX_CONNECTIONS_PER_UID", default_value_t = SocketLimits::default().max_connections_per_uid)]
    pub max_connections_per_uid: usize,
    /// A connection that starts no request within this is closed.
    #[arg(long, env = "MESHID_AGENT_FIRST_REQUEST_TIMEOUT", default_value = "10s", value_parser = super::parse_duration)]
    pub first_request_timeout: Duration,
    /// A connection with no request in flight for this long is closed (watch streams are in flight).
    #[arg(long, env = "MESHID_AGENT_IDLE_TIMEOUT", default_value = "5m", value_parser = super::parse_duration)]
    pub idle_timeout: Duration,
}

impl Default for SocketLimitArgs {
    fn default() -> Self {
        let d = SocketLimits::default();
        Self {
            max_connections: d.max_connections,
            max_connections_per_uid: d.max_connections_per_uid,
            first_request_timeout: d.first_request_timeout,
            idle_timeout: d.idle_timeout,
        }
    }
}

impl From<SocketLimitArgs> for SocketLimits {
    fn from(a: SocketLimitArgs) -> Self {
        Self {
            max_connections: a.max_connections,
            max_connections_per_uid: a.max_connections_per_uid,
            first_request_timeout: a.first_request_timeout,
            idle_timeout: a.idle_timeout,
        }
    }
}

fn parse_write_certs(s: &str) -> Result<(SpiffeId, PathBuf), String> {
    let (id, dir) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not SPIFFE_ID=DIR"))?;
    let id = SpiffeId::parse(id).map_err(|e| format!("{id:?}: {e}"))?;
    if dir.is_empty() {
        return Err(format!("{s:?} names no directory"));
    }
    Ok((id, PathBuf::from(dir)))
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown
        .trigger_on_signals()
        .context("installing signal handlers")?;
    let running = start(args, shutdown.clone()).await?;
    println!(
        "meshid agent serving on unix://{} (SPIFFE_ENDPOINT_SOCKET=unix://{}), metrics on {:?}",
        running.socket.display(),
        running.socket.display(),
        running.metrics_addr
    );
    shutdown.triggered().await;
    if !shutdown.drain(Duration::from_secs(5)).await {
        tracing::warn!("some tasks were still running 5 s after shutdown began");
    }
    let _ = std::fs::remove_file(&running.socket);
    Ok(())
}

/// Builds the agent's dependencies from flags and starts it.
pub async fn start(args: AgentArgs, shutdown: Shutdown) -> anyhow::Result<server::RunningAgent> {
    start_on(args, shutdown, None).await
}

/// As [`start`], on a local platform that is already open and running when
/// `local` is given (see [`super::ca::start_on`]).
pub async fn start_on(
    args: AgentArgs,
    shutdown: Shutdown,
    local: Option<Arc<dyn Platform>>,
) -> anyhow::Result<server::RunningAgent> {
    let clock = system_clock();
    let root_pem = std::fs::read_to_string(&args.ca_root)
        .with_context(|| format!("reading --ca-root {}", args.ca_root.display()))?;
    if !args.token_file.is_file() {
        anyhow::bail!(
            "--token-file {} does not exist or is not a file",
            args.token_file.display()
        );
    }
    let signer = CaClient::new(&CaClientConfig {
        address: args.ca_address.clone(),
        root_pem,
        token_file: args.token_file.clone(),
    })?;
    let platform: Arc<dyn Platform> = match (args.platform.platform, local) {
        (PlatformKind::Local, Some(shared)) => shared,
        (PlatformKind::Local, None) => local_platform(&args, &clock, &shutdown)?,
        (PlatformKind::Kube, _) => kube_platform(&args, &clock, &shutdown).await?,
    };

    // Printed and used as SPIFFE_ENDPOINT_SOCKET, which needs an absolute path.
    let socket = std::path::absolute(&args.socket)
        .with_context(|| format!("--socket {}", args.socket.display()))?;
    let config = AgentConfig {
        node: args.node,
        socket,
        trust_domain: args.trust_domain,
        cache: CacheConfig {
            workload_ttl: args.workload_ttl,
            max_concurrent_csrs: args.max_concurrent_csrs,
            ..CacheConfig::default()
        },
        write_certs: args.write_certs,
        metrics_listen: Some(args.metrics_listen),
        audiences: args.audiences,
        root_namespace: args.root_namespace,
        limits: args.limits.into(),
    };
    tracing::info!(
        node = %config.node,
        socket = %config.socket.display(),
        ca = %args.ca_address,
        workload_ttl = ?config.cache.workload_ttl,
        "starting agent"
    );
    let deps = AgentDeps {
        platform,
        signer: Arc::new(signer),
        clock,
        registry: prometheus::Registry::new(),
    };
    Ok(server::start(config, deps, shutdown).await?)
}

/// The `local` platform: the manifest directory, workload tokens checked
/// against the local issuer's keys (when `--token-jwks-dir` is given).
fn local_platform(
    args: &AgentArgs,
    clock: &SharedClock,
    shutdown: &Shutdown,
) -> anyhow::Result<Arc<dyn Platform>> {
    let verifier = match &args.token_jwks_dir {
        Some(dir) => load_verifier(dir)
            .with_context(|| format!("loading token keys from {}", dir.display()))?,
        None => JwtVerifier::new(JwtVerifierConfig::new(jsonwebtoken::jwk::JwkSet {
            keys: Vec::new(),
        })),
    };
    let platform = LocalPlatform::open(LocalConfig::new(&args.manifests, verifier, clock.clone()))
        .with_context(|| format!("reading manifests from {}", args.manifests.display()))?;
    shutdown.spawn(platform.clone().run(shutdown.token().clone()));
    Ok(platform)
}

/// The `kube` platform: pods of this node only (`spec.nodeName`), namespaces
/// and PeerAuthentications from the API server; not ready until synced.
async fn kube_platform(
    args: &AgentArgs,
    clock: &SharedClock,
    shutdown: &Shutdown,
) -> anyhow::Result<Arc<dyn Platform>> {
    let (client, api_server) = super::platform::kube_client().await?;
    let mode = args.platform.token_verification;
    let verifier =
        super::platform::token_verifier(mode, client.clone(), api_server, clock.clone(), shutdown);
    let config = KubeConfig {
        node_name: Some(args.node.clone()),
        check_bound_pod: mode.needs_bound_pod_check(),
        max_staleness: None,
    };
    let platform = KubePlatform::new(client, config, verifier)?;
    shutdown.spawn(platform.clone().run(shutdown.token().clone()));
    Ok(platform)
}
