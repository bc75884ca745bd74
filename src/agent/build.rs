//! The agent's composition root: from plain settings ([`AgentSetup`]) to a
//! [`RunningAgent`] — its CA client, its platform, its socket.
//!
//! `meshid agent` fills an [`AgentSetup`] from flags, `meshid up` and the
//! tests fill it directly; nothing here knows about clap.

use std::path::PathBuf;
use std::sync::Arc;

use crate::agent::server::{self, AgentConfig, AgentDeps, AgentError, RunningAgent};
use crate::ca_client::{CaClient, CaClientConfig, CaClientError};
use crate::platform::jwt::{JwtVerifier, JwtVerifierConfig};
use crate::platform::kube::connect::{ApiServer, ConnectError};
use crate::platform::kube::{KubeConfig, KubeConfigError, KubePlatform, TokenVerification};
use crate::platform::local::{
    load_verifier, IssuerError, LocalConfig, LocalPlatform, ManifestDirError,
};
use crate::platform::Platform;
use crate::shutdown::Shutdown;
use crate::time::SharedClock;

/// Everything an agent is built from besides the shutdown it runs under.
pub struct AgentSetup {
    /// The agent's settings (its node, socket, cache, limits).
    pub config: AgentConfig,
    /// The CA's address, `https://host:port`.
    pub ca_address: String,
    /// PEM roots the CA's serving certificate must chain to.
    pub ca_root: PathBuf,
    /// The agent's own service-account token (re-read on every CSR).
    pub token_file: PathBuf,
    /// Where facts come from.
    pub platform: AgentPlatform,
    /// Time.
    pub clock: SharedClock,
}

/// Where the agent's facts come from.
pub enum AgentPlatform {
    /// A manifest directory.
    Local {
        /// The manifest directory.
        manifests: PathBuf,
        /// Directory holding the local issuer's public keys, to verify
        /// workload tokens sent over SDS; `None`: only peer credentials.
        token_jwks_dir: Option<PathBuf>,
        /// A local platform already open and running (`meshid up`).
        shared: Option<Arc<dyn Platform>>,
    },
    /// The API server: the pods of this node only.
    Kube {
        /// How service-account tokens are verified.
        token_verification: TokenVerification,
    },
}

/// Why the agent could not be built; each names what it could not open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The CA's root file could not be read.
    #[error("reading --ca-root {}", path.display())]
    CaRoot {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The agent's token file is missing.
    #[error("--token-file {} does not exist or is not a file", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
    },
    /// The CA client cannot be built from these settings.
    #[error(transparent)]
    CaClient(#[from] CaClientError),
    /// The local issuer's keys could not be loaded.
    #[error("loading token keys from {}", dir.display())]
    TokenKeys {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        #[source]
        source: IssuerError,
    },
    /// The manifest directory could not be read.
    #[error(transparent)]
    Manifests(#[from] ManifestDirError),
    /// No client for the API server.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A setting of the kube platform cannot work.
    #[error(transparent)]
    KubeConfig(#[from] KubeConfigError),
    /// The socket path cannot be made absolute.
    #[error("--socket {}", path.display())]
    SocketPath {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The agent could not start.
    #[error(transparent)]
    Start(#[from] AgentError),
}

/// Opens everything `setup` names (the CA's root, the token file, the
/// platform) and starts the agent in tasks of `shutdown`.
pub async fn build(setup: AgentSetup, shutdown: Shutdown) -> Result<RunningAgent, BuildError> {
    let AgentSetup {
        mut config,
        ca_address,
        ca_root,
        token_file,
        platform,
        clock,
    } = setup;
    let root_pem = std::fs::read_to_string(&ca_root).map_err(|source| BuildError::CaRoot {
        path: ca_root.clone(),
        source,
    })?;
    if !token_file.is_file() {
        return Err(BuildError::TokenFile { path: token_file });
    }
    // One client for CSRs and the trust stream: its TLS roots follow the bundle.
    let signer = Arc::new(CaClient::new(&CaClientConfig {
        address: ca_address.clone(),
        root_pem,
        token_file,
        impersonate: true,
    })?);
    let platform: Arc<dyn Platform> = match platform {
        AgentPlatform::Local {
            shared: Some(shared),
            ..
        } => shared,
        AgentPlatform::Local {
            manifests,
            token_jwks_dir,
            shared: None,
        } => local_platform(manifests, token_jwks_dir, &clock, &shutdown)?,
        AgentPlatform::Kube { token_verification } => {
            kube_platform(&config.node, token_verification, &clock, &shutdown).await?
        }
    };
    // Printed and used as SPIFFE_ENDPOINT_SOCKET, which needs an absolute path.
    config.socket =
        std::path::absolute(&config.socket).map_err(|source| BuildError::SocketPath {
            path: config.socket.clone(),
            source,
        })?;
    tracing::info!(
        node = %config.node,
        socket = %config.socket.display(),
        ca = %ca_address,
        workload_ttl = ?config.cache.workload_ttl,
        "starting agent"
    );
    let deps = AgentDeps {
        platform,
        signer: signer.clone(),
        trust: Some(signer),
        clock,
        registry: prometheus::Registry::new(),
    };
    Ok(server::start(config, deps, shutdown).await?)
}

/// The `local` platform: the manifest directory, workload tokens checked
/// against the local issuer's keys (when a key directory is given).
fn local_platform(
    manifests: PathBuf,
    token_jwks_dir: Option<PathBuf>,
    clock: &SharedClock,
    shutdown: &Shutdown,
) -> Result<Arc<dyn Platform>, BuildError> {
    let verifier = match token_jwks_dir {
        Some(dir) => load_verifier(&dir).map_err(|source| BuildError::TokenKeys { dir, source })?,
        None => JwtVerifier::new(JwtVerifierConfig::new(jsonwebtoken::jwk::JwkSet {
            keys: Vec::new(),
        })),
    };
    let platform = LocalPlatform::open_dir(LocalConfig::new(&manifests, verifier, clock.clone()))?;
    shutdown.spawn(platform.clone().run(shutdown.token().clone()));
    Ok(platform)
}

/// The `kube` platform: pods of this node only (`spec.nodeName`), namespaces
/// and PeerAuthentications from the API server; not ready until synced.
async fn kube_platform(
    node: &str,
    mode: TokenVerification,
    clock: &SharedClock,
    shutdown: &Shutdown,
) -> Result<Arc<dyn Platform>, BuildError> {
    let api = ApiServer::infer().await?;
    let (verifier, warm) = api.token_verifier(mode, clock.clone(), shutdown.token().clone());
    if let Some(warm) = warm {
        shutdown.spawn(warm);
    }
    let config = KubeConfig {
        node_name: Some(node.to_owned()),
        check_bound_pod: mode.needs_bound_pod_check(),
        max_staleness: None,
    };
    let platform = KubePlatform::new(api.client, config, verifier)?;
    shutdown.spawn(platform.clone().run(shutdown.token().clone()));
    Ok(platform)
}
