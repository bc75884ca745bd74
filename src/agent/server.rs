//! Building and running the agent: bind the socket, start the certificate
//! cache and the file writers, and serve SDS, the Workload API and the mTLS
//! policy stream on the socket until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use prometheus::Registry;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use crate::agent::attest::Attestor;
use crate::agent::cache::{CacheConfig, CertCache};
use crate::agent::destinations::DestinationService;
use crate::agent::files;
use crate::agent::metrics::AgentMetrics;
use crate::agent::policy_push::PolicyService;
use crate::agent::sds::SdsService;
use crate::agent::socket::caller::SocketAttestor;
use crate::agent::socket::limits::{Limiter, SocketLimits, TrackRequests};
use crate::agent::socket::{self, SocketError, UdsStream};
use crate::agent::trust::{TrustFollower, TrustSource};
use crate::agent::workload_api::WorkloadApiService;
use crate::ca_client::CertSigner;
use crate::h2_authority::AuthorityRepair;
use crate::identity::{SpiffeId, TrustDomain};
use crate::platform::Platform;
use crate::shutdown::Shutdown;
use crate::telemetry;
use crate::time::SharedClock;

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name.
    pub node: String,
    /// The Unix socket path.
    pub socket: PathBuf,
    /// Trust domain.
    pub trust_domain: TrustDomain,
    /// Certificate requests and refresh.
    pub cache: CacheConfig,
    /// Identities whose certificates are also written to a directory.
    pub write_certs: Vec<(SpiffeId, PathBuf)>,
    /// Operational HTTP endpoints; None = off.
    pub metrics_listen: Option<SocketAddr>,
    /// Audiences accepted on workload tokens sent over SDS.
    pub audiences: Vec<String>,
    /// Root namespace: its PeerAuthentication without selector is mesh-wide
    /// (Istio's `istio-system`; ours defaults to [`crate::policy::DEFAULT_ROOT_NAMESPACE`]).
    pub root_namespace: String,
    /// What one local user can hold on the socket.
    pub limits: SocketLimits,
}

impl AgentConfig {
    /// The defaults of `meshid agent` for `node` on `socket`: trust domain
    /// `cluster.local`, audience `istio-ca`, no metrics port, no files.
    pub fn new(node: impl Into<String>, socket: impl Into<PathBuf>) -> Self {
        Self {
            node: node.into(),
            socket: socket.into(),
            trust_domain: TrustDomain::default(),
            cache: CacheConfig::default(),
            write_certs: Vec::new(),
            metrics_listen: None,
            audiences: vec!["istio-ca".to_owned()],
            root_namespace: crate::policy::DEFAULT_ROOT_NAMESPACE.to_owned(),
            limits: SocketLimits::default(),
        }
    }
}

/// What the agent is built from besides its config.
pub struct AgentDeps {
    /// Facts about pods on this node.
    pub platform: Arc<dyn Platform>,
    /// The CA.
    pub signer: Arc<dyn CertSigner>,
    /// The CA's trust stream (roots, CRLs, taints); `None`: the bundle comes
    /// from the CA's answers alone.
    pub trust: Option<Arc<dyn TrustSource>>,
    /// Time.
    pub clock: SharedClock,
    /// Where metrics are registered.
    pub registry: Registry,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The socket could not be bound.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The metrics port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A started agent.
#[derive(Debug)]
pub struct RunningAgent {
    /// The socket path.
    pub socket: PathBuf,
    /// The metrics address, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// The certificate cache.
    pub cache: Arc<CertCache>,
}

/// Binds everything and serves in tasks tracked by `shutdown`.
pub async fn start(
    cfg: AgentConfig,
    deps: AgentDeps,
    shutdown: Shutdown,
) -> Result<RunningAgent, AgentError> {
    let listener = socket::bind(&cfg.socket)?;
    let metrics = AgentMetrics::register(&deps.registry)?;
    let refused_connections = metrics.connections_refused.clone();
    let cache = CertCache::new(
        cfg.cache.clone(),
        deps.signer.clone(),
        deps.platform.clone(),
        cfg.node.clone(),
        cfg.trust_domain.clone(),
        deps.clock.clone(),
        metrics.clone(),
    );
    shutdown.spawn(Arc::clone(&cache).run(shutdown.clone()));
    if let Some(source) = deps.trust.clone() {
        let follower = TrustFollower::new(source, Arc::clone(&cache), metrics.clone());
        shutdown.spawn(
            follower
                .run(shutdown.clone())
                .instrument(tracing::info_span!("trust_stream")),
        );
    }
    for (identity, dir) in &cfg.write_certs {
        shutdown.spawn(files::keep_written(
            Arc::clone(&cache),
            identity.clone(),
            dir.clone(),
            shutdown.clone(),
        ));
    }

    let metrics_addr = match cfg.metrics_listen {
        Some(addr) => {
            let platform = deps.platform.clone();
            let stop = shutdown.clone();
            let ready: telemetry::ReadinessCheck =
                Arc::new(move || !stop.is_triggered() && platform.is_ready());
            Some(
                telemetry::serve(addr, deps.registry.clone(), ready, shutdown.clone())
                    .await
                    .map_err(|source| AgentError::Bind { addr, source })?,
            )
        }
        None => None,
    };

    let attestor = Arc::new(Attestor::new(
        deps.platform.clone(),
        cfg.node.clone(),
        cfg.trust_domain.clone(),
    ));
    let socket = SocketAttestor::new(attestor, cfg.audiences.clone(), metrics.clone());
    let sds = SdsService::new(socket.clone(), Arc::clone(&cache)).with_shutdown(&shutdown);
    let workload_api =
        WorkloadApiService::new(socket.clone(), Arc::clone(&cache), cfg.trust_domain.clone())
            .with_shutdown(&shutdown);
    let destinations = DestinationService::new(
        socket.clone(),
        deps.platform.clone(),
        cfg.trust_domain.clone(),
    )
    .with_shutdown(&shutdown);
    let policy = PolicyService::new(
        socket,
        deps.platform.clone(),
        cfg.root_namespace.clone(),
        cfg.trust_domain.clone(),
        metrics,
    )
    .with_shutdown(&shutdown);

    let (conn_tx, conn_rx) =
        mpsc::channel::<Result<AuthorityRepair<UdsStream>, std::io::Error>>(1024);
    shutdown.spawn(accept_loop(
        listener,
        conn_tx,
        cfg.limits,
        refused_connections,
        shutdown.clone(),
    ));
    shutdown.spawn_server(
        "agent gRPC",
        tonic::transport::Server::builder()
            // Peers that stop answering are dropped (issue 12: the socket is 0666).
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
            .layer(TrackRequests)
            .add_service(sds.into_server())
            .add_service(workload_api.into_server())
            .add_service(policy.into_server())
            .add_service(destinations.into_server())
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), shutdown.triggered_owned()),
    );
    tracing::info!(socket = %cfg.socket.display(), node = %cfg.node, "agent serving SDS, the SPIFFE Workload API, mTLS policy and destinations");
    Ok(RunningAgent {
        socket: cfg.socket,
        metrics_addr,
        cache,
    })
}

async fn accept_loop(
    listener: UnixListener,
    conns: mpsc::Sender<Result<AuthorityRepair<UdsStream>, std::io::Error>>,
    limits: SocketLimits,
    refused: prometheus::IntCounter,
    shutdown: Shutdown,
) {
    let limiter = Limiter::new(&limits);
    loop {
        // Rule (limits): the slot is taken before accept, so past the cap
        // clients wait in the backlog holding nothing of ours.
        let slot = tokio::select! {
            _ = shutdown.triggered() => return,
            slot = limiter.slot() => match slot {
                Some(slot) => slot,
                None => return,
            },
        };
        tokio::select! {
            _ = shutdown.triggered() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let uid = stream.peer_cred().ok().map(|c| c.uid());
                    let held = match limiter.admit(uid) {
                        Ok(held) => held,
                        Err(quota) => {
                            // Closed at once (dropped); counted, and logged at
                            // debug only, so a flood cannot flood the log too.
                            refused.inc();
                            tracing::debug!(error = %quota, "agent socket connection refused");
                            continue;
                        }
                    };
                    // gRPC C-core sends the socket path as :authority (see h2_authority).
                    let conn = AuthorityRepair::new(UdsStream::limited(stream, limits, slot, held));
                    if conns.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the agent socket failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}
