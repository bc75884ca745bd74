//! `meshid agent`: the node agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::builder::TypedValueParser as _;
use clap::Args;

use super::platform::{PlatformArgs, PlatformKind};
use crate::agent::build::{AgentPlatform, AgentSetup};
use crate::agent::cache::CacheConfig;
use crate::agent::server::{self, AgentConfig};
use crate::agent::socket::limits::SocketLimits;
use crate::identity::{SpiffeId, TrustDomain};
use crate::platform::Platform;
use crate::policy::DEFAULT_ROOT_NAMESPACE;
use crate::shutdown::Shutdown;
use crate::time::system_clock;

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
    /// When the CA taints an authority, re-issue at most this many of the certificates that chain to it per --taint-reissue-interval (so a taint does not send every node's whole cache to the CA at once).
    #[arg(long, env = "MESHID_TAINT_REISSUE_BATCH", default_value_t = CacheConfig::default().taint_batch, value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub taint_reissue_batch: usize,
    /// The pace of those re-issue batches.
    #[arg(long, env = "MESHID_TAINT_REISSUE_INTERVAL", default_value = "5s", value_parser = super::parse_duration)]
    pub taint_reissue_interval: Duration,
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
    Ok(crate::agent::build(args.into_setup(None), shutdown).await?)
}

impl AgentArgs {
    /// The flags as plain settings. `shared`: a local platform already open
    /// and running (`meshid up`).
    pub fn into_setup(self, shared: Option<Arc<dyn Platform>>) -> AgentSetup {
        let platform = match self.platform.platform {
            PlatformKind::Local => AgentPlatform::Local {
                manifests: self.manifests,
                token_jwks_dir: self.token_jwks_dir,
                shared,
            },
            PlatformKind::Kube => AgentPlatform::Kube {
                token_verification: self.platform.token_verification,
            },
        };
        AgentSetup {
            config: AgentConfig {
                node: self.node,
                socket: self.socket,
                trust_domain: self.trust_domain,
                cache: CacheConfig {
                    workload_ttl: self.workload_ttl,
                    max_concurrent_csrs: self.max_concurrent_csrs,
                    taint_batch: self.taint_reissue_batch,
                    taint_interval: self.taint_reissue_interval,
                    ..CacheConfig::default()
                },
                write_certs: self.write_certs,
                metrics_listen: Some(self.metrics_listen),
                audiences: self.audiences,
                root_namespace: self.root_namespace,
                limits: self.limits.into(),
            },
            ca_address: self.ca_address,
            ca_root: self.ca_root,
            token_file: self.token_file,
            platform,
            clock: system_clock(),
        }
    }
}
